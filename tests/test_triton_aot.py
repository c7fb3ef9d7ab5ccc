"""The GPU-readiness machinery of the Triton kernels, on a CPU machine.

* ``inpaint_fast.triton_kernels.aot``: the offline compile (stand-in driver, real launchers, Triton's own
  JIT path) — the resource limits of ``make gpu-compile-check`` can fail, the manifest saves
  recompiles, and a cache built here is found by Triton's unpatched compile path (its keys are the
  ones a GPU process computes from the same launches); the cache report of a run.
* ``inpaint_fast.triton_kernels.gpu_run_shapes``: the GPU run's cases, and inputs whose strides do not
  depend on ``fill`` (the offline compile uses unfilled ones).
* Launcher guards: the int32 index range, the single-configuration mode, PyTorch's two TF32 APIs.

The compiling tests run a few kernels in subprocesses without ``TRITON_INTERPRET`` (the package is
imported under the interpreter here) and skip where Triton has no NVIDIA backend.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

from inpaint_fast.triton_kernels import INDEX_LIMIT, autotune_enabled, check_index_range  # noqa: E402
from inpaint_fast.triton_kernels import aot  # noqa: E402
from inpaint_fast.triton_kernels import gpu_run_shapes as shapes  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _has_nvidia_backend() -> bool:
    import triton.backends

    return "nvidia" in getattr(triton.backends, "backends", {})


needs_nvidia = pytest.mark.skipif(not _has_nvidia_backend(), reason="this triton has no NVIDIA backend")


def _run_compiled(script: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """``script`` in a fresh interpreter on the compiled path (no TRITON_INTERPRET)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-6000:]
    return proc


# ---------------------------------------------------------------------------------------------
# Resource limits and the ptxas report (no compile)
# ---------------------------------------------------------------------------------------------
def _entry(**kw):
    base = dict(kernel="attention:_fwd_kernel", target="sm_90", triton="x", variant="fp16", config="w4 s2",
                regs=128, spill_stores=0, spill_loads=0, stack=0, smem=1024, threads=128)
    base.update(kw)
    return aot.Entry(**base)


def test_limits():
    limit90, limit80 = aot.TARGETS["sm_90"][1], aot.TARGETS["sm_80"][1]
    assert (limit90, limit80) == (232448, 166912)
    assert _entry().problems(limit90) == []
    assert _entry(smem=limit90).problems(limit90) == []
    assert "shared memory" in _entry(smem=limit90 + 1).problems(limit90)[0]
    assert "shared memory" in _entry(target="sm_80", smem=limit80 + 16).problems(limit80)[0]
    assert _entry(spill_stores=aot.SPILL_LIMIT_BYTES).problems(limit90) == []
    assert "spilled" in _entry(spill_stores=aot.SPILL_LIMIT_BYTES + 4).problems(limit90)[0]
    assert "registers" in _entry(regs=255, threads=512).problems(limit90)[0]
    assert "no resource report" in _entry(regs=-1).problems(limit90)[0]
    assert "compile error" in _entry(error="PTXASError: boom").problems(limit90)[0]


def test_ptxas_report_parsing():
    log = """ptxas info    : 11 bytes gmem
ptxas info    : Compiling entry function '_fwd_kernel' for 'sm_90a'
ptxas info    : Function properties for _fwd_kernel
    96 bytes stack frame, 84 bytes spill stores, 92 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers
"""
    e = _entry(regs=-1, spill_stores=-1, spill_loads=-1, stack=-1)
    aot._parse_ptxas(log, e)
    assert (e.regs, e.stack, e.spill_stores, e.spill_loads) == (255, 96, 84, 92)


def test_manifest_round_trip(tmp_path):
    entries = {"ab" * 32: _entry().to_json(), "cd" * 32: _entry(kernel="fusion:_map_kernel", error="E").to_json()}
    path = tmp_path / "m.json"
    aot.save_manifest(entries, path)
    assert aot.load_manifest(path) == entries
    assert len(path.read_text().splitlines()) == 6 + len(entries)  # one entry per line: reviewable diffs


def test_table_names_every_column():
    rows, failures = aot.evaluate({"ab" * 32: _entry(spill_stores=40).to_json()}, {"ab" * 32: "manifest"})
    text = aot._table(rows)
    for column in ("kernel", "constexpr variant", "config", "regs", "spill st/ld", "smem B"):
        assert column in text
    assert len(failures) == 1 and "40 B spilled" in failures[0]


# ---------------------------------------------------------------------------------------------
# Real compiles through the launchers (a few kernels)
# ---------------------------------------------------------------------------------------------
@needs_nvidia
def test_offline_compile_reports_resources_and_limits_can_fail():
    """Two attention forward configs compiled offline for sm_90 through the real launcher: one
    that spills (4 warps hold 2 × 64 × 128 fp32 accumulators with 3xTF32 operand splits) and one
    whose pipelined fp32 tiles need more shared memory than a block may have; both must fail the
    check, with ptxas's numbers and the compiled metadata's shared memory in the record."""
    proc = _run_compiled(
        """
        import json
        from inpaint_fast.triton_kernels import aot, gpu_run_shapes as S, short_long_attention as K
        K.TILES[90]["fwd"]["tf32x3"] = [(64, 64, 4, 2)]
        K.TILES[90]["fwd"]["tf32"] = [(128, 64, 8, 4)]
        rec = aot.Recorder("sm_90")
        cases = [S.AttentionCase(B=1, Cq=32, C=128, Cp=128, H=32, W=32, dtype="fp32", precision=p,
                                 backward=False, autotune=True) for p in ("highest", "high")]
        with aot.offline(90, sm_count=S.SM_COUNT, compile_fn=rec):
            for c in cases:
                S.launch(c, "cpu", fill=False)
        print(json.dumps({h: e.to_json() for h, e in rec.seen.items()}))
        """
    )
    entries = json.loads(proc.stdout.strip().splitlines()[-1])
    by_prec = {("tf32x3" if "PREC=tf32x3" in e["variant"] else "tf32"): e for e in entries.values()}
    assert set(by_prec) == {"tf32x3", "tf32"}
    spilling, big = aot.Entry(**by_prec["tf32x3"]), aot.Entry(**by_prec["tf32"])
    assert spilling.config == "BLOCK_M=64 BLOCK_N=64 w4 s2" and spilling.threads == 128
    assert spilling.regs > 0 and spilling.spill_stores > 0
    assert any("spilled" in p for p in spilling.problems(aot.TARGETS["sm_90"][1]))
    assert big.smem > aot.TARGETS["sm_90"][1]
    assert any("shared memory" in p for p in big.problems(aot.TARGETS["sm_90"][1]))


@needs_nvidia
def test_manifest_cache_and_verify(tmp_path):
    """check --refresh compiles and records; a second check compiles nothing; build-cache writes
    binaries that Triton's own (unpatched) compile path finds under the keys it computes; a
    removed entry is reported as a miss."""
    manifest, cache = tmp_path / "manifest.json", tmp_path / "cache"
    proc = _run_compiled(
        f"""
        import io, json, shutil
        from pathlib import Path
        from inpaint_fast.triton_kernels import aot, gpu_run_shapes as S
        cases = [S.AttentionCase(B=2, Cq=32, C=128, Cp=0, H=1, W=97, dtype="fp16", backward=False)]
        out = io.StringIO()
        rc1 = aot.check(cases, ["sm_90"], Path({str(manifest)!r}), refresh=True, jobs=1, out=out)
        first = out.getvalue()
        out = io.StringIO()
        rc2 = aot.check(cases, ["sm_90"], Path({str(manifest)!r}), jobs=1, out=out)
        second = out.getvalue()
        rc3 = aot.build_cache({str(cache)!r}, cases, 90, jobs=1, out=io.StringIO())
        out = io.StringIO()
        rc4 = aot.verify_cache({str(cache)!r}, cases, out=out)
        good = out.getvalue()
        index = json.loads((Path({str(cache)!r}) / aot.INDEX_FILE).read_text())
        suffixes = sorted({{p.suffix for p in Path({str(cache)!r}).rglob("*") if p.is_file()}})
        shutil.rmtree(next(Path({str(cache)!r}).rglob("*.cubin")).parent)  # the kernel's entry
        out = io.StringIO()
        rc5 = aot.verify_cache({str(cache)!r}, cases, out=out)
        print(json.dumps(dict(rc=[rc1, rc2, rc3, rc4, rc5], first=first, second=second, good=good,
                              bad=out.getvalue(), n=len(index["entries"]), suffixes=suffixes)))
        """
    )
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["rc"] == [0, 0, 0, 0, 1], r
    assert r["n"] == 1  # one forward kernel
    assert "1 to compile" in r["first"] and "0 to compile" in r["second"], r
    assert "1 cache hits" in r["good"] and " 0 misses" in r["good"], r["good"]
    assert "1 misses" in r["bad"], r["bad"]
    files = set(r["suffixes"])  # before the removal
    assert ".cubin" in files and ".source" not in files and ".llir" not in files, files


# ---------------------------------------------------------------------------------------------
# The cache report of a run
# ---------------------------------------------------------------------------------------------
def test_cache_report(tmp_path, monkeypatch):
    """Kernel compiles (Triton's compilation listener, chained) and the launcher/driver C modules
    (a load is a hit unless a build preceded it) land in the report file, one JSON line each."""
    import triton.runtime.build as build
    from triton import knobs

    calls = []
    monkeypatch.setattr(knobs.compilation, "listener", lambda **kw: calls.append(kw["cache_hit"]))
    # stand-ins for the C compiler and the module loader, restored after the test
    monkeypatch.setattr(build, "_build", lambda name, src, srcdir, *a, **k: f"{srcdir}/{name}.so")
    monkeypatch.setattr(build, "_load_module_from_path", lambda name, path: (name, path))
    monkeypatch.setattr(build, "_inpaint_fast_reported", False, raising=False)
    path = tmp_path / "report.jsonl"
    aot.install_cache_report(str(path))

    class Times:
        total = 2_500_000

    class Src:
        name = "_fwd_kernel"

    for hit in (True, True, False):
        knobs.compilation.listener(src=Src(), metadata={"hash": "h", "num_warps": 4, "num_stages": 2},
                                   metadata_group={}, times=Times(), cache_hit=hit)
    assert calls == [True, True, False]  # the listener installed before is chained
    build._load_module_from_path("cuda_utils", "/c/cuda_utils.so")  # found in the cache
    so = build._build("__triton_launcher", "l.c", "/tmp")  # a miss: built, then loaded
    assert build._load_module_from_path("__triton_launcher", so) == ("__triton_launcher", so)
    s = aot.summarize_report(str(path))
    assert (s["hits"], s["misses"], s["module_hits"], s["module_misses"]) == (2, 1, 1, 1)
    assert s["kernels"]["_fwd_kernel"] == {"hits": 2, "misses": 1, "miss_seconds": 2.5}
    assert s["kernels"]["[module] __triton_launcher"]["misses"] == 1


# ---------------------------------------------------------------------------------------------
# gpu_run_shapes
# ---------------------------------------------------------------------------------------------
def test_gpu_run_cases():
    cases = shapes.gpu_run_cases()
    names = [c.name for c in cases]
    assert len(names) == len(set(names))
    attn = [c for c in shapes.ATTENTION_TEST_CASES]
    assert {c.N for c in attn} >= {1, 97, 1024, 1025, 4096, 16384}
    assert {(c.dtype, c.precision) for c in attn} == {("fp32", "highest"), ("fp32", "high"), ("fp16", "highest"),
                                                      ("bf16", "highest")}
    assert {c.layout for c in attn} == {"contiguous", "channels_last", "transposed"}
    dfnet = {shapes.FusionCase.dfnet(2, k, 256, a, t, d, precision=p)
             for k in range(6) for a in (1, 3) for t in (False, True) for d, p in shapes.TEST_PRECISIONS}
    assert dfnet <= set(shapes.FUSION_TEST_CASES)
    assert {c.layout for c in shapes.FUSION_TEST_CASES} == {"contiguous", "channels_last", "transposed"}
    assert not any(c.autotune for c in shapes.ATTENTION_TEST_CASES)
    bench = shapes.attention_bench_cases()
    assert bench and all(c.autotune for c in bench)
    assert {c.N for c in bench} == {256, 1024, 4096, 16384}
    assert shapes.fusion_bench_cases()


@pytest.mark.parametrize("case", [
    shapes.AttentionCase(B=2, Cq=4, C=6, Cp=5, H=3, W=7, dtype="fp32", layout="channels_last"),
    shapes.AttentionCase(B=2, Cq=4, C=6, Cp=5, H=3, W=7, dtype="bf16", layout="transposed"),
    shapes.AttentionCase(B=1, Cq=4, C=6, Cp=0, H=1, W=7, dtype="fp16"),
], ids=lambda c: c.name)
def test_unfilled_inputs_have_the_launch_strides(case):
    """The offline compile builds inputs with fill=False: shapes, strides and dtypes must be the
    filled ones' (they are the specialisation), and the layout must be the one named."""
    filled, empty = shapes.attention_inputs(case, "cpu"), shapes.attention_inputs(case, "cpu", fill=False)
    for k in filled:
        a, b = filled[k], empty[k]
        assert (a is None) == (b is None), k
        if a is not None:
            assert (a.shape, a.stride(), a.dtype) == (b.shape, b.stride(), b.dtype), k
    x = filled["x"]
    if case.layout == "channels_last":
        assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    if case.layout == "transposed":
        assert x.stride(2) == 1 and x.stride(3) == case.H
    for a, b in zip(shapes.attention_grads(case, "cpu"), shapes.attention_grads(case, "cpu", fill=False)):
        assert (a.shape, a.stride(), a.dtype) == (b.shape, b.stride(), b.dtype) and a.is_contiguous()


def test_unfilled_fusion_inputs_match():
    case = shapes.FusionCase.dfnet(2, 3, 64, c_alpha=1, training=True, dtype="bf16")
    filled, empty = shapes.fusion_inputs(case, "cpu"), shapes.fusion_inputs(case, "cpu", fill=False)
    assert list(filled) == ["feat", "image", *shapes.PARAM_NAMES]
    for k in filled:
        assert (filled[k].shape, filled[k].stride(), filled[k].dtype) == (empty[k].shape, empty[k].stride(),
                                                                          empty[k].dtype), k
    assert filled["feat"].shape == (2, 256, 8, 8) and filled["image"].shape == (2, 3, 64, 64)
    assert filled["conv3_weight"].shape == (1, 1, 1, 1)


def _signature(t):
    """What a tensor contributes to a Triton launch's specialisation (fresh tensors are 16-byte
    aligned): dtype, shape and strides."""
    return None if t is None else (t.dtype, tuple(t.shape), t.stride())


@pytest.mark.parametrize("kind", ["attention", "fusion"])
def test_gpu_tests_launch_what_the_cache_is_built_from(kind):
    """The GPU tests (tests/gpu_cases.py) run the cases of gpu_run_shapes, which the cache is
    compiled from, but build their inputs with the CPU tests' sample_inputs: for every case the
    tensors they hand the op must have the dtypes, shapes and strides the cache builder's inputs
    have, or the GPU run compiles them again on the device. (The op passes these tensors to the
    launchers as they are; upstream gradients reach the backward contiguous in both.)"""
    import gpu_cases as gc
    from op_samples import attention_sample_inputs, fusion_sample_inputs

    if kind == "attention":
        for case in shapes.ATTENTION_TEST_CASES:
            shape, spec, with_pre, layout = gc.as_attn_case(case)
            ours = attention_sample_inputs(shape, gc.parse_spec(spec)[0], with_pre, layout)
            theirs = shapes.attention_inputs(case, "meta", fill=False)
            got = [_signature(t) for t in ours]
            want = [_signature(theirs[k]) for k in ("q", "x", "gamma", "pre", "mask", "alpha")]
            assert got == want, f"{case.name}: the GPU test's inputs {got} != the cache's {want}"
    else:
        for case in shapes.FUSION_TEST_CASES:
            shape, spec, training, layout = gc.as_fusion_case(case)
            feat, image, params = fusion_sample_inputs(shape, torch.float64, layout)
            dtype = gc.parse_spec(spec)[0]
            ours = dict(feat=feat, image=image, **params._asdict())
            ours = {k: v.to(dtype) for k, v in ours.items()}  # gpu_cases.fusion_inputs: `.to` keeps strides
            theirs = shapes.fusion_inputs(case, "meta", fill=False)
            assert set(ours) == set(theirs), case.name
            for k in theirs:
                assert _signature(ours[k]) == _signature(theirs[k]), \
                    f"{case.name}: `{k}` {_signature(ours[k])} in the GPU test, {_signature(theirs[k])} in the cache"


# ---------------------------------------------------------------------------------------------
# Launcher guards
# ---------------------------------------------------------------------------------------------
def test_index_range_refused_up_front():
    """C·H·W ≥ 2³¹ per batch item overflows the kernels' int32 offsets: refused, naming the sizes.
    Meta tensors: the check runs before anything is allocated or launched."""
    from inpaint_fast.triton_kernels import fusion_block, short_long_attention

    meta = dict(device="meta", dtype=torch.float16)
    H = W = 4096  # N = 2^24
    q, x = torch.empty(1, 32, H, W, **meta), torch.empty(1, 128, H, W, **meta)  # C·N = 2^31
    gamma = torch.empty(1, **meta)
    with pytest.raises(ValueError, match=r"`x` of shape \(1, 128, 4096, 4096\).*2147483648 elements.*2\^31"):
        short_long_attention.short_long_attention_fwd(q, x, gamma, None, None, None, 1.0)
    sa, lse = torch.empty(1, 128, H, W, **meta), torch.empty(1, H, W, device="meta")
    with pytest.raises(ValueError, match="`x` of shape"):
        short_long_attention.short_long_attention_bwd(x, torch.empty(0, **meta), q, x, gamma, None, None, None, sa,
                                                      torch.empty(0, **meta), lse, 1.0)
    # A strided view spans more than its elements: every 9th channel of a wider tensor (2^28
    # elements, offsets up to 127·9·2^21 > 2^31).
    wide = torch.empty(1, 1152, 1024, 2048, **meta)[:, ::9]
    with pytest.raises(ValueError, match=r"`x` of shape \(1, 128, 1024, 2048\) \(strides \(2415919104, 18874368,"):
        short_long_attention.short_long_attention_fwd(q[:, :, :1024, :2048], wide, gamma, None, None, None, 1.0)
    feat = torch.empty(1, 512, 2048, 2048, **meta)  # DFNet level 4 of a 32768² image
    image = torch.empty(1, 3, 32768, 32768, **meta)
    params = [torch.empty(n, **meta) for n in (3, 3, 32, 32, 32, 32, 32, 32, 3, 3, 3, 3, 3, 3, 3, 3)]
    params[0], params[2] = torch.empty(3, 512, 1, 1, **meta), torch.empty(32, 6, 1, 1, **meta)
    params[8], params[14] = torch.empty(3, 32, 3, 3, **meta), torch.empty(3, 3, 1, 1, **meta)
    with pytest.raises(ValueError, match=r"fusion_block \(triton backend\): `feat` of shape \(1, 512, 2048, 2048\)"):
        fusion_block.fusion_block_fwd(feat, image, *params, False, 1e-5)


def test_batch_over_the_grid_limit_is_refused():
    from inpaint_fast.triton_kernels import short_long_attention as K

    q, x = torch.empty(K.MAX_BATCH + 1, 2, 1, 1, device="meta"), torch.empty(K.MAX_BATCH + 1, 3, 1, 1, device="meta")
    with pytest.raises(ValueError, match="batch 65536 .* over 65535"):
        K.short_long_attention_fwd(q, x, torch.empty(1, device="meta"), None, None, None, 1.0)


def test_index_range_limit_is_exact():
    check_index_range("op", x=torch.empty(1, 1, 1, INDEX_LIMIT - 1, device="meta"), none=None)
    with pytest.raises(ValueError, match="spans 2147483648 elements"):
        check_index_range("op", x=torch.empty(1, 1, 1, INDEX_LIMIT, device="meta"))
    check_index_range("op", workspace=INDEX_LIMIT - 1)
    with pytest.raises(ValueError, match="workspace spans 2147483648 elements"):
        check_index_range("op", workspace=INDEX_LIMIT)


def test_autotune_switch(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("INPAINT_FAST_TRITON_AUTOTUNE", "1")
    assert not autotune_enabled()  # the interpreter always runs the one fixed tile
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert autotune_enabled()
    monkeypatch.setenv("INPAINT_FAST_TRITON_AUTOTUNE", "0")
    assert not autotune_enabled()
    monkeypatch.delenv("INPAINT_FAST_TRITON_AUTOTUNE")
    assert autotune_enabled()
    monkeypatch.setenv("INPAINT_FAST_TRITON_AUTOTUNE", "maybe")
    with pytest.raises(ValueError, match="INPAINT_FAST_TRITON_AUTOTUNE"):
        autotune_enabled()


def test_tile_lists_cover_every_launch():
    """Each target has a list for every kernel and operand class it can launch (the fused dK/dV
    kernel: the classes that fuse there), no duplicates, tl.dot-sized blocks; the first entry is the
    fixed configuration, so the single-configuration mode launches one the compile check checked."""
    from inpaint_fast.triton_kernels import short_long_attention as K

    assert set(K.TILES) == {90, 80}
    for family, kinds in K.TILES.items():
        assert set(kinds) == {"fwd", "dq", "dkdv", "dkdv_fused"}
        for kind, classes in kinds.items():
            need = set(K.FUSED_DK_CLASSES[family]) if kind == "dkdv_fused" else set(K.OPERAND_CLASSES)
            assert need <= set(classes), (family, kind)
            for cls, tiles in classes.items():
                assert tiles and len(set(tiles)) == len(tiles), (family, kind, cls)
                for m, n, w, st in tiles:
                    assert m in (16, 32, 64, 128) and n in (16, 32, 64, 128) and w in (4, 8) and 1 <= st <= 3


def test_unfused_dk_path_matches_the_fused_one(monkeypatch):
    """On a GPU, 3xTF32/fp64 (and TF32 on sm_80) take the separate dK launch even when one chunk
    holds every channel; the interpreter fuses there. Forcing the GPU's path here must give the
    same gradients (interpreter, fp64, one chunk)."""
    from inpaint_fast.triton_kernels import interpreter_mode
    from inpaint_fast.triton_kernels import short_long_attention as K

    if not interpreter_mode():
        pytest.skip("the interpreter's choice is what is compared")
    case = shapes.AttentionCase(B=2, Cq=3, C=12, Cp=20, H=5, W=7, dtype="fp64")
    inputs = shapes.attention_inputs(case, "cpu")
    gy, gcf = shapes.attention_grads(case, "cpu")
    args = [inputs[k] for k in ("q", "x", "gamma", "pre", "mask", "alpha")]
    _y, _cf, sa, ca, lse = K.short_long_attention_fwd(*args, 0.8)
    fused = K.short_long_attention_bwd(gy, gcf, *args, sa, ca, lse, 0.8)
    monkeypatch.setattr(K, "FUSE_DK_UNDER_INTERPRETER", False)
    unfused = K.short_long_attention_bwd(gy, gcf, *args, sa, ca, lse, 0.8)
    for a, b in zip(fused, unfused):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


_PRECISION_SCRIPT = r"""
import json, torch
from inpaint_fast.triton_kernels import fp32_matmul_allows_tf32
from inpaint_fast.triton_kernels.short_long_attention import _precision
from inpaint_fast.bench.gate import tolerance
out = {}
def record(name):
    out[name] = [fp32_matmul_allows_tf32(), _precision(torch.float32), tolerance(torch.float32)]
record("default")
torch.set_float32_matmul_precision("high"); record("legacy high")
torch.set_float32_matmul_precision("medium"); record("legacy medium")
torch.set_float32_matmul_precision("highest"); record("legacy highest")
torch.backends.cuda.matmul.allow_tf32 = True; record("legacy allow_tf32")
torch.backends.cuda.matmul.allow_tf32 = False; record("legacy allow_tf32 off")
if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    try:
        torch.get_float32_matmul_precision()
        out["legacy getter raises"] = False
    except RuntimeError:
        out["legacy getter raises"] = True
    record("new tf32")
    torch.backends.cuda.matmul.fp32_precision = "ieee"; record("new ieee")
    torch.backends.cuda.matmul.fp32_precision = "none"
    torch.backends.fp32_precision = "tf32"; record("new global tf32")
    torch.backends.fp32_precision = "ieee"; record("new global ieee")
print(json.dumps(out))
"""


def test_matmul_precision_under_both_tf32_apis():
    """PyTorch's legacy API (set_float32_matmul_precision, allow_tf32) and the new one
    (torch.backends[.cuda.matmul].fp32_precision) both steer the fp32 dots and the benchmark gate;
    the new one used to crash both (the legacy getter raises once it is used). A fresh process:
    the mixed-API state is global."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", _PRECISION_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    ieee, tf32 = [False, "tf32x3", 1e-3], [True, "tf32", 1e-2]
    assert r["default"] == ieee and r["legacy highest"] == ieee and r["legacy allow_tf32 off"] == ieee
    assert r["legacy high"] == tf32 and r["legacy medium"] == tf32 and r["legacy allow_tf32"] == tf32
    if "new tf32" in r:
        assert r["legacy getter raises"], "torch no longer raises on mixed APIs: the new-API test lost its point"
        assert r["new tf32"] == tf32 and r["new ieee"] == ieee
        assert r["new global tf32"] == tf32 and r["new global ieee"] == ieee
