"""benchmarks/gpu_session.sh (the one-call GPU run) works without a GPU: its dry run, its time
budget, a killed run's archive, and the helpers the GPU tests and the build report rely on."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tarfile
import time

import pytest
import torch

import gpu_cases as gc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_session.sh")
STAGES = ["env", "build", "load", "tests", "memcheck", "bench", "racecheck"]


def _env(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INPAINT_FAST_GPU", "TRITON_"))}
    env.update(PY=sys.executable, OUT=str(tmp_path / "out"), GPU_SESSION_WORK=str(tmp_path / "work"),
               TRITON_CACHE_DIR=str(tmp_path / "triton-cache"), **extra)
    return env


def _stage_rows(summary: str) -> dict:
    rows = {}
    for line in summary.splitlines():
        parts = line.split()
        if parts and parts[0] in STAGES:
            rows[parts[0]] = parts[1]
    return rows


def _archive_names(tmp_path) -> set:
    with tarfile.open(tmp_path / "out" / "gpu_session.tar.gz") as tar:
        return {os.path.relpath(m.name, "work") for m in tar.getmembers() if m.isfile()}


def test_dry_run_runs_every_stage(tmp_path):
    """Every stage on the CPU (cpu backend for cuda, Triton's interpreter, no sanitizer): exit 0,
    every stage ok, and the archive holds each stage's log, the test reports and the CSV."""
    proc = subprocess.run(["bash", SCRIPT, "--dry-run"], cwd=ROOT, env=_env(tmp_path), capture_output=True,
                          text=True, timeout=900)
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert proc.returncode == 0, summary + proc.stdout[-6000:] + proc.stderr[-3000:]
    assert _stage_rows(summary) == {s: "ok" for s in STAGES}, summary
    names = _archive_names(tmp_path)
    for name in [f"{s}.log" for s in STAGES] + ["resources.txt", "benchmarks.csv", "summary.txt"]:
        assert name in names, sorted(names)
    for group in ("cuda", "triton_attn_half", "triton_attn_fp32", "triton_fusion"):
        assert f"tests_{group}.log" in names and f"tests_{group}.xml" in names, sorted(names)
    work = tmp_path / "work"
    assert "compute-sanitizer skipped (dry run" in (work / "memcheck.log").read_text()
    # Every parity test reported a line, and the pytest groups ran tests (not 0 selected).
    reports = [line for p in work.glob("tests_*.jsonl") for line in p.read_text().splitlines()]
    expected = 2 * (len(gc.ATTN_CASES_DRY) + len(gc.FUSION_CASES_DRY))
    assert len(reports) == expected, reports
    assert "parity tests reported: %d, failing: 0" % expected in summary, summary
    csv = (work / "benchmarks.csv").read_text()
    for kernel in ("ceiling_gemm", "ceiling_copy", "short_long_attention", "fusion_block"):
        assert f"\n{kernel}," in csv, csv[:2000]


def test_budget_skips_what_does_not_fit(tmp_path):
    """A stage with under 20 s of the budget left is skipped and named, and the run fails. With 26 s
    the env stage gets its 20 (26 minus the 5 kept for packing) and, however fast it is (it imports
    torch: over a second), leaves the tests under 20."""
    proc = subprocess.run(["bash", SCRIPT, "--dry-run"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=_env(tmp_path, STAGES="env tests", BUDGET_S="26"))
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert proc.returncode == 1, summary
    assert _stage_rows(summary) == {"env": "ok", "tests": "skipped"}, summary
    assert "out of time" in summary


def test_killed_run_returns_finished_stages(tmp_path):
    """The archive is re-packed after every stage: killing the whole run mid-stage (as the device
    tool does at its limit) leaves the finished stages' logs in $OUT."""
    proc = subprocess.Popen(["bash", SCRIPT, "--dry-run"], cwd=ROOT, env=_env(tmp_path, STAGES="env tests"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            summary = tmp_path / "out" / "summary.txt"
            if summary.exists() and re.search(r"^tests\s+running", summary.read_text(), re.M):
                break
            time.sleep(0.5)
        else:
            pytest.fail("the tests stage never started")
        time.sleep(1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the session this test started, by its id
        proc.wait()
    names = _archive_names(tmp_path)
    assert "env.log" in names and "summary.txt" in names, sorted(names)


@pytest.mark.parametrize("args,message", [(["--bogus"], "unknown argument '--bogus'"),
                                          (["--dry-run"], "unknown stage 'nope'")])
def test_bad_arguments_are_named(tmp_path, args, message):
    env = _env(tmp_path, STAGES="nope") if args == ["--dry-run"] else _env(tmp_path)
    proc = subprocess.run(["bash", SCRIPT, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


# ---- helpers -----------------------------------------------------------------------------------
PTXAS = """\
ptxas info    : 28 bytes gmem
ptxas info    : Compiling entry function '_ZN12inpaint_fast4cuda56_GLOBAL__N__3d2ad2fe_23_short_long_attention_cu_bd7d295e18attn_bwd_dq_kernelI13__nv_bfloat16EEvPKT_S6_S6_PKfS8_S8_Pfiiiif' for 'sm_90a'
ptxas info    : Function properties for _ZN12inpaint_fast4cuda56_GLOBAL__N__3d2ad2fe_23_short_long_attention_cu_bd7d295e18attn_bwd_dq_kernelI13__nv_bfloat16EEvPKT_S6_S6_PKfS8_S8_Pfiiiif
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 112 registers, used 1 barriers
ptxas info    : Compile time = 63.2 ms
ptxas info    : Compiling entry function '_Z5otherPd' for 'sm_90a'
ptxas info    : Function properties for _Z5otherPd
    24 bytes stack frame, 16 bytes spill stores, 8 bytes spill loads
ptxas info    : Used 255 registers, used 0 barriers, 2688 bytes smem
"""  # from nvcc 13 --resource-usage (the first kernel: this repository's sm_90a build)


def test_resource_report_reads_ptxas(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import resource_report as rr
    finally:
        sys.path.pop(0)
    kernels = rr.parse(PTXAS)
    figures = [(k["arch"], k["registers"], k["smem"], k["spill_stores"], k["spill_loads"], k["stack"]) for k in kernels]
    assert figures == [("sm_90a", 112, 0, 0, 0, 0), ("sm_90a", 255, 2688, 16, 8, 24)]
    log = tmp_path / "build.log"
    log.write_text(PTXAS)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "resource_report.py"), str(log)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "2 kernels; 1 spill" in proc.stdout, proc.stdout
    if "attn_bwd_dq_kernel<__nv_bfloat16>" not in proc.stdout:  # c++filt missing: mangled names
        assert "_ZN12inpaint_fast" in proc.stdout, proc.stdout
    (tmp_path / "empty.log").write_text("no nvcc here\n")
    empty = [sys.executable, os.path.join(ROOT, "benchmarks", "resource_report.py"), str(tmp_path / "empty.log")]
    assert subprocess.run(empty, capture_output=True).returncode == 1
    assert subprocess.run(empty + ["--allow-none"], capture_output=True).returncode == 0


def test_poisoned_shows_unwritten_elements():
    with gc.poisoned("cpu"):
        out = torch.empty(5)
        out[:4] = 1.0
    assert torch.isnan(out[4]) and not torch.isnan(out[:4]).any()
    assert not torch.are_deterministic_algorithms_enabled()  # restored


def test_checks_report_every_failure_with_its_error():
    want = torch.zeros(4, dtype=torch.float64)
    checks = gc.Checks("case")
    checks.oracle("a", torch.full((4,), float("nan")), want.float(), want, torch.float32)
    checks.oracle("b", torch.ones(4), want.float(), want, torch.float32)
    checks.oracle("c", torch.zeros(4), want.float(), want, torch.float32)
    checks.bitwise("d", torch.tensor([0.0]), torch.tensor([-0.0]))
    checks.bitwise("e", torch.tensor([float("nan")]), torch.tensor([float("nan")]))
    with pytest.raises(AssertionError) as exc:
        checks.finish()
    message = str(exc.value)
    assert "3 of 5 checks failed" in message
    assert "a: max error nan" in message and "b: max error 1.000e+00" in message and "d: a second run" in message
    assert "\nc:" not in message and "\ne:" not in message


def test_dtype_specs():
    assert gc.parse_spec("fp32-high") == (torch.float32, "high")
    assert gc.parse_spec("bf16") == (torch.bfloat16, None)
    with pytest.raises(ValueError, match="expected one of bf16, fp16, fp32-highest, fp32-high"):
        gc.parse_spec("fp16-high")


def test_case_lists_are_the_gpu_runs():
    """PIC's attention sizes (N = 1024, 4096, 16384) and the odd sizes (1, 97, 1025) are in the
    lists the GPU tests and the sanitizer read."""
    S = gc.shapes
    attn = {c[0] for c in gc.ATTN_CASES}
    assert {S.PIC_1024, S.PIC_4096, S.PIC_16384} <= attn
    assert {s[4] * s[5] for s in attn} >= {1, 97, 1025, 1024, 4096, 16384}
    assert {c[1] for c in gc.ATTN_CASES} == set(gc.ALL_SPECS) and {c[2] for c in gc.ATTN_CASES} == {True, False}
    assert {c[3] for c in gc.ATTN_CASES} == {"contiguous", "channels_last", "transposed"}
    dfnet = [(2, c, 256 >> k, 256 >> k, 256, 256) for k, c in enumerate(S.FUSION_LEVEL_CHANNELS)]
    levels = {c[0][:6] for c in gc.FUSION_CASES}
    assert set(dfnet) <= levels and {c[0][6] for c in gc.FUSION_CASES} == {1, 3}
    assert {(c[1], c[2]) for c in gc.FUSION_CASES if c[0][:6] == dfnet[0]} == {
        (s, t) for s in gc.ALL_SPECS for t in (False, True)}
    # The sanitizer runs only kernels the tests compiled: its cases are a subset.
    assert set(gc.sanitizer_attn_cases()) <= set(gc.attn_cases()) and gc.sanitizer_attn_cases()
    assert set(gc.sanitizer_fusion_cases()) <= set(gc.fusion_cases()) and gc.sanitizer_fusion_cases()


def test_setup_arch_override():
    """setup.py's INPAINT_FAST_CUDA_ARCHS (read only where CUDA builds, so the dry run never does)."""
    import ast

    source = open(os.path.join(ROOT, "setup.py")).read()
    tree = ast.parse(source)
    names = {"_architectures", "_default_gencode", "_gencode_from_env"}
    wanted = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names]
    namespace = {"os": os, "re": re, "HERE": ROOT}
    exec(compile(ast.Module(body=wanted, type_ignores=[]), "setup.py", "exec"), namespace)  # noqa: S102
    gencode = namespace["_gencode_from_env"]
    old = os.environ.pop("INPAINT_FAST_CUDA_ARCHS", None)
    try:
        # The default is csrc/cuda/architectures.txt, which the CMake build and the compile check read too.
        assert gencode() == ["-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90",
                             "-gencode=arch=compute_90a,code=sm_90a", "-gencode=arch=compute_90,code=compute_90"]
        for consumer in ("CMakeLists.txt", "csrc/cuda/compile_check.sh"):
            assert "csrc/cuda/architectures.txt" in open(os.path.join(ROOT, consumer)).read(), consumer
        os.environ["INPAINT_FAST_CUDA_ARCHS"] = "90a"
        assert gencode() == ["-gencode=arch=compute_90a,code=sm_90a"]
        os.environ["INPAINT_FAST_CUDA_ARCHS"] = "80, 90"
        assert gencode() == ["-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90"]
        os.environ["INPAINT_FAST_CUDA_ARCHS"] = "sm_90"
        with pytest.raises(SystemExit, match="INPAINT_FAST_CUDA_ARCHS: sm_90: expected compute capabilities"):
            gencode()
    finally:
        os.environ.pop("INPAINT_FAST_CUDA_ARCHS", None)
        if old is not None:
            os.environ["INPAINT_FAST_CUDA_ARCHS"] = old

