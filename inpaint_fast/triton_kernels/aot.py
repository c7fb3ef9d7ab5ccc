"""Ahead-of-time compilation of the Triton kernels on a machine without a GPU.

Everything here drives the package's *real launchers* (inpaint_fast/triton_kernels/*.py) on CPU tensors
with a stand-in Triton driver that reports a GPU target (``GPUTarget("cuda", 90 | 80, 32)``),
device 0 and stream 0. Every launch then goes through Triton's own JIT path — specialisation of
the arguments (dtypes, 16-byte alignment, integers equal to 1 or divisible by 16), constexprs,
options, cache key — and is compiled (``warmup=True``: compiled, never launched); an autotuner
compiles every configuration it would benchmark. So what is compiled is exactly what the launchers
launch, and binaries land under the same cache keys a GPU process computes.

Commands (``python -m inpaint_fast.triton_kernels.aot <command> --help``):

* ``check`` — the compile check (``make gpu-compile-check``): every kernel × variant × config at
  PIC's and DFNet's shapes plus the GPU run's cases, for sm_90 and sm_80, fp32/fp16/bf16. Fails on
  a compile error, on shared memory over the target's per-block limit, on more registers than a
  block may hold, and on spills over ``SPILL_LIMIT_BYTES``; prints one table. Results are cached in
  the committed manifest ``aot_manifest.json``, keyed by Triton's own cache hash (kernel source
  and its callees, Triton build, ptxas version, target, specialisation, config), so only what
  changed is compiled; ``--refresh`` rewrites the manifest for this Triton version.
* ``build-cache DIR`` — the sm_90 binaries of the GPU run's cases (gpu_run_shapes) into DIR, a
  ``TRITON_CACHE_DIR`` the GPU run carries (binaries only).
* ``verify-cache DIR`` — an independent second pass: Triton's unpatched compile path must find
  every key in DIR (a miss means the key computed here differs from the one written).
* ``report FILE`` — summarise a cache report written by a run with
  ``INPAINT_FAST_TRITON_CACHE_REPORT=FILE`` (hits, misses, compile seconds, per kernel).

Registers and spills are not in Triton's metadata without a driver: they are taken from ptxas's
own ``-v`` report of the compile that produced the cubin (Triton runs ptxas with ``-v`` and prints
the log when ``knobs.nvidia.dump_ptxas_log`` is set, which does not enter the cache key); shared
memory is the compiled metadata's ``shared`` (what the launch requests).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import multiprocessing
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

MANIFEST = Path(__file__).with_name("aot_manifest.json")
MANIFEST_FORMAT = 1
# Per-block shared memory a kernel may request (the opt-in maximum, cudaDevAttrMaxSharedMemoryPerBlockOptin).
TARGETS = {"sm_90": (90, 232448), "sm_80": (80, 166912)}
REGISTERS_PER_BLOCK = 65536  # sm_80 and sm_90: a block's threads share one 64 K-register file
# Spill stores a kernel may have: 32 bytes, eight 32-bit values. A threshold, not a bound with a
# clean gap: at some specialisations (odd sizes, strided layouts, sm_80, another Triton) ptxas parks
# a handful of values (pointers, scalars, an index) in local memory, reloaded from L1, while what
# the check exists to stop — spilled accumulator or operand fragments — grows with the tile, to
# hundreds of bytes and kilobytes (the sweeps in benchmarks/NOTES.md: up to 95 KB). Configurations
# over it are not listed.
SPILL_LIMIT_BYTES = 32
# A CI run compiles what the manifest lacks; past this many it stops and asks for a refresh
# (a new Triton version or a rewritten kernel: hundreds of compiles, over an hour on 2 cores).
DEFAULT_MAX_COMPILES = 120


# ---------------------------------------------------------------------------------------------
# The stand-in driver and the patched JIT
# ---------------------------------------------------------------------------------------------
class _OfflineDriver:
    """What Triton's JIT asks of the active driver on its compile path, answered without a GPU."""

    def __init__(self, arch: int):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", arch, 32)

    @staticmethod
    def is_active() -> bool:
        return False

    def get_current_target(self):
        return self.target

    def get_current_device(self) -> int:
        return 0

    def set_current_device(self, device) -> None:
        pass

    def get_current_stream(self, device=None) -> int:
        return 0

    def get_active_torch_device(self):
        import torch

        return torch.device("cpu")

    def get_device_capability(self, device=None):
        return divmod(self.target.arch, 10)

    def get_benchmarker(self):
        raise RuntimeError("the offline Triton driver cannot benchmark: nothing is launched")


def _our_jit_functions():
    from triton.runtime.jit import JITFunction

    from . import fusion_block, short_long_attention

    for mod in (short_long_attention, fusion_block):
        for value in vars(mod).values():
            if isinstance(value, JITFunction):
                yield value


@contextlib.contextmanager
def offline(arch: int, sm_count: Optional[int] = None, compile_fn=None):
    """Within the block, Triton launches compile for ``GPUTarget("cuda", arch, 32)`` instead of
    running: the active driver is replaced, ``JITFunction.run`` is forced to ``warmup=True`` and
    ``Autotuner.run`` compiles each (pruned) configuration instead of benchmarking it.

    ``sm_count``: the multiprocessors the fusion block's backward sizes its grid for (it asks the
    CUDA device otherwise). ``compile_fn``: stands in for ``triton.compiler.compile`` (same
    signature), e.g. a :class:`Recorder`.
    """
    import triton.compiler
    from triton.runtime import autotuner, jit
    from triton.runtime.driver import driver

    from . import fusion_block

    saved_driver = driver._active
    saved_run, saved_tune = jit.JITFunction.run, autotuner.Autotuner.run
    saved_compile, saved_programs = triton.compiler.compile, fusion_block._max_programs

    def run(self, *args, grid, warmup, **kwargs):
        return saved_run(self, *args, grid=grid, warmup=True, **kwargs)

    def tune(self, *args, **kwargs):
        self.nargs = dict(zip(self.arg_names, args))
        try:
            return [self.fn.run(*args, **kwargs, **config.all_kwargs()) for config in self.prune_configs(kwargs)]
        finally:
            self.nargs = None

    def reset_binders():
        # A JITFunction caches its target per device when first run: drop it on entry and exit so
        # another target (or the real driver) is asked again.
        for fn in _our_jit_functions():
            fn.device_caches.clear()

    driver.set_active(_OfflineDriver(arch))
    jit.JITFunction.run, autotuner.Autotuner.run = run, tune
    if compile_fn is not None:
        triton.compiler.compile = compile_fn
    if sm_count is not None:
        fusion_block._max_programs = lambda t: fusion_block._PROGRAMS_PER_SM * sm_count
    reset_binders()
    try:
        yield
    finally:
        reset_binders()
        driver._active = saved_driver
        jit.JITFunction.run, autotuner.Autotuner.run = saved_run, saved_tune
        triton.compiler.compile, fusion_block._max_programs = saved_compile, saved_programs


# ---------------------------------------------------------------------------------------------
# Recording compiles
# ---------------------------------------------------------------------------------------------
CONFIG_KEYS = ("BLOCK_M", "BLOCK_N", "TH", "TW", "GH", "GW")
_PTXAS_REGS = re.compile(r"Used (\d+) registers")
_PTXAS_SPILLS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


@dataclass
class Entry:
    """One compiled kernel: what it is and the resources it needs."""

    kernel: str
    target: str
    triton: str
    variant: str
    config: str
    regs: int = -1
    spill_stores: int = -1
    spill_loads: int = -1
    stack: int = -1
    smem: int = -1
    threads: int = 0
    error: str = ""

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if not (k == "error" and not v)}

    def problems(self, smem_limit: int) -> List[str]:
        if self.error:
            return ["compile error: " + self.error.strip().splitlines()[-1][:200] if self.error.strip() else "compile error"]
        out = []
        if self.regs < 0 or self.smem < 0:
            out.append("no resource report (ptxas log not captured)")
        if self.smem > smem_limit:
            out.append(f"shared memory {self.smem} B > {smem_limit} B ({self.target} per-block limit)")
        if self.regs * self.threads > REGISTERS_PER_BLOCK:
            out.append(f"{self.regs} registers x {self.threads} threads > {REGISTERS_PER_BLOCK}")
        if self.spill_stores > SPILL_LIMIT_BYTES:
            out.append(f"{self.spill_stores} B spilled > {SPILL_LIMIT_BYTES} B")
        return out


def _describe(src, options) -> tuple:
    """(kernel, variant, config) of a compile request, from its constexprs and options."""
    fn = src.fn
    names = fn.arg_names
    declared = {p.name for p in fn.params if p.is_constexpr}
    consts = {names[k[0]]: v for k, v in src.constants.items() if len(k) == 1}
    ptrs = [(n, t) for n, t in src.signature.items() if isinstance(t, str) and t.startswith("*")]
    dtype = ptrs[0][1][1:] if ptrs else "?"
    variant, config, ones = [dtype], [], []
    # Pointers of another element type than the first (e.g. fp32 gates or statistics next to bf16
    # features): part of the specialisation, and of the registers ptxas allocates.
    others = [f"{n}:{t[1:]}" for n, t in ptrs if t != ptrs[0][1] and n not in consts]
    if others:
        variant.append(" ".join(others))
    for name in names:
        if name not in consts:
            continue
        value = consts[name]
        if name in CONFIG_KEYS:
            config.append(f"{name}={value}")
        elif name in declared:
            value = getattr(value, "name", value)  # tl.dtype → its name
            variant.append(f"{name}={int(value) if isinstance(value, bool) else value}")
        else:
            ones.append(name)  # an integer argument equal to 1, specialised as a constant
    if ones:
        variant.append("1:" + ",".join(ones))
    # Specialised arguments (pointers, integers) Triton could not mark 16-divisible / 16-byte
    # aligned (odd sizes, strided views): the same constexprs compile differently without it.
    odd = []
    for i, p in enumerate(fn.params):
        if p.is_constexpr or p.do_not_specialize or p.name in consts:
            continue
        ty = src.signature.get(p.name, "")
        divisible = any(a[0] == "tt.divisibility" for a in src.attrs.get((i,), ()))  # (3.9 keeps empty entries)
        if isinstance(ty, str) and (ty.startswith("*") or ty in ("i32", "i64")) and not divisible:
            odd.append(p.name)
    if odd:
        variant.append("~16:" + ",".join(odd))
    config.append(f"w{options.num_warps}")
    config.append(f"s{options.num_stages}")
    module = fn.__module__.rsplit(".", 1)[-1].replace("short_long_attention", "attention").replace("fusion_block", "fusion")
    return f"{module}:{fn.__name__}", " ".join(variant), " ".join(config)


def _cache_hash(src, target, options: dict) -> tuple:
    """Triton's cache hash of a compile request, computed exactly as ``triton.compiler.compile``
    does (and the parsed options)."""
    from triton._C.libtriton import get_cache_invalidating_env_vars
    from triton.compiler.compiler import get_cache_key, make_backend

    backend = make_backend(target)
    opts = backend.parse_options(dict(options or {}, **src.parse_options()))
    key = get_cache_key(src, backend, opts, env_vars=get_cache_invalidating_env_vars())
    return hashlib.sha256(key.encode("utf-8")).hexdigest(), opts


def _parse_ptxas(log: str, entry: Entry) -> None:
    regs = _PTXAS_REGS.findall(log)
    spills = _PTXAS_SPILLS.findall(log)
    if regs:
        entry.regs = int(regs[-1])
    if spills:
        entry.stack, entry.spill_stores, entry.spill_loads = (int(x) for x in spills[-1])


class _Stub:
    """Stands in for a compiled kernel the JIT caches when a request was not compiled here."""

    def __init__(self, hash_: str):
        self.hash = hash_


class Recorder:
    """Stands in for ``triton.compiler.compile`` inside :func:`offline`: computes each request's
    cache hash, and compiles (really, through ``triton.compiler.compile``, capturing ptxas's
    report) the requests that are not in ``known`` and fall in this shard."""

    def __init__(self, target: str, known: Iterable[str] = (), compile_missing: bool = True, shard=(0, 1),
                 label: str = "", on_compiled=None):
        import triton

        self.on_compiled = on_compiled
        self.target, self.known, self.compile_missing = target, set(known), compile_missing
        self.shard, self.label = shard, label
        self.triton = triton.__version__
        self.seen: Dict[str, Entry] = {}  # hash → entry (resources filled in where compiled here)
        self.uses: Dict[str, set] = {}  # hash → case names
        self.compiled: List[str] = []
        self.case = ""
        self.compile_seconds = 0.0

    def __call__(self, src, target=None, options=None, _env_vars=None):
        import triton.compiler.compiler as cc
        from triton import knobs

        h, opts = _cache_hash(src, target, options)
        self.uses.setdefault(h, set()).add(self.case)
        if h not in self.seen:
            kernel, variant, config = _describe(src, opts)
            self.seen[h] = Entry(kernel, self.target, self.triton, variant, config, threads=32 * opts.num_warps)
        if h in self.known or not self.compile_missing or int(h, 16) % self.shard[1] != self.shard[0]:
            return _Stub(h)
        if h in self.compiled or self.seen[h].error:
            return _Stub(h)
        entry = self.seen[h]
        log = io.StringIO()
        t0 = time.perf_counter()
        # A binary found in a cache comes without ptxas's report: always compile here.
        saved = knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile
        knobs.nvidia.dump_ptxas_log = knobs.compilation.always_compile = True
        try:
            with contextlib.redirect_stdout(log):
                kernel = cc.compile(src, target=target, options=options)
        except Exception as exc:  # noqa: BLE001  (a compile error is a result, reported in the table)
            entry.error = f"{type(exc).__name__}: {exc}"[-4000:] + "\n" + log.getvalue()[-2000:]
            return _Stub(h)
        finally:
            knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile = saved
            self.compile_seconds += time.perf_counter() - t0
        if kernel.hash != h:
            raise RuntimeError(f"{entry.kernel}: the cache hash computed here ({h[:12]}) differs from the one "
                               f"triton.compiler.compile used ({kernel.hash[:12]}); aot._cache_hash is out of date")
        _parse_ptxas(log.getvalue(), entry)
        entry.smem = int(kernel.metadata.shared)
        self.compiled.append(h)
        if self.on_compiled is not None:
            self.on_compiled(kernel)
        return kernel


# ---------------------------------------------------------------------------------------------
# Launcher modules
# ---------------------------------------------------------------------------------------------
# Triton 3.6 launches a kernel through a small C extension module generated per argument
# signature (``__triton_launcher``) plus one driver module (``cuda_utils``), each built with the
# machine's C compiler on first use and cached in TRITON_CACHE_DIR under sha256(C source +
# platform). build-cache builds them here too, so the GPU run needs neither a compiler nor
# Python's headers for them, nor the ~1 s per module. They link against libcuda.so.1, absent
# here: a stub with that soname stands in at link time, and --no-as-needed keeps it as a NEEDED
# entry so the GPU machine's driver resolves the cu* symbols when the module is loaded. A module
# that does not load there (another glibc, say) is rebuilt by Triton, which the cache report shows.
def _stub_libcuda(directory: str) -> str:
    import subprocess

    os.makedirs(directory, exist_ok=True)
    stub = os.path.join(directory, "libcuda.so.1")
    if not os.path.exists(stub):
        subprocess.check_call(["gcc", "-shared", "-fPIC", "-x", "c", "/dev/null", "-Wl,-soname,libcuda.so.1", "-o", stub])
    return directory


def _offline_build(name, src, srcdir, library_dirs, include_dirs, libraries):
    """triton.runtime.build._build's command (3.6), with ``-Wl,--no-as-needed`` before the libraries."""
    import subprocess
    import sysconfig

    from triton.runtime.build import _library_flag

    so = os.path.join(srcdir, f"{name}{sysconfig.get_config_var('EXT_SUFFIX')}")
    scheme = sysconfig.get_default_scheme()
    if scheme == "posix_local":
        scheme = "posix_prefix"
    py_include_dir = sysconfig.get_paths(scheme=scheme)["include"]
    cmd = [os.environ.get("CC") or shutil.which("gcc") or "cc", src, "-O3", "-shared", "-fPIC", "-Wno-psabi", "-o", so,
           "-Wl,--no-as-needed"]
    cmd += [_library_flag(lib) for lib in libraries]
    cmd += [f"-L{d}" for d in library_dirs]
    cmd += [f"-I{d}" for d in [*include_dirs, srcdir, py_include_dir] if d is not None]
    subprocess.check_call(cmd, stdout=subprocess.DEVNULL)
    return so


@contextlib.contextmanager
def _module_builds(stub_dir: str):
    """Within the block, Triton's launcher/driver modules build against the libcuda stub."""
    from triton import knobs

    saved = knobs.nvidia.libcuda_path, knobs.build.impl
    knobs.nvidia.libcuda_path, knobs.build.impl = _stub_libcuda(stub_dir), _offline_build
    try:
        yield
    finally:
        knobs.nvidia.libcuda_path, knobs.build.impl = saved


def _build_launcher(kernel) -> None:
    """The launcher module of a compiled kernel, into the cache; loading it here fails (no driver)."""
    from triton.backends.nvidia.driver import CudaLauncher

    try:
        CudaLauncher(kernel.src, kernel.metadata)
    except (ImportError, OSError, RuntimeError):
        pass  # built and cached before the load that needs the real libcuda


def _build_cuda_utils() -> None:
    from pathlib import Path as _P

    import triton.backends.nvidia.driver as nv

    try:
        nv.compile_module_from_src(src=_P(os.path.join(nv.dirname, "driver.c")).read_text(), name="cuda_utils",
                                   library_dirs=nv.library_dirs(), include_dirs=nv.include_dirs,
                                   libraries=nv.libraries)
    except (ImportError, OSError, RuntimeError):
        pass


def prebuilds_modules() -> bool:
    """Whether this Triton builds a C module per kernel signature the way prebuilding assumes
    (3.6: ``__triton_launcher`` + ``cuda_utils`` through ``compile_module_from_src``); newer ones
    launch differently, and their modules are left to the device (~1 s each, in the cache report)."""
    import triton.backends.nvidia.driver as nv

    return hasattr(nv, "compile_module_from_src")


def check_modules(path: Path) -> List[str]:
    """Problems of the prebuilt modules in a cache folder: each must record libcuda.so.1 as NEEDED."""
    import subprocess

    problems = []
    for so in sorted(path.rglob("*.so")):
        dyn = subprocess.run(["readelf", "-d", str(so)], capture_output=True, text=True).stdout
        if "libcuda.so.1" not in dyn:
            problems.append(f"{so.relative_to(path)}: libcuda.so.1 is not NEEDED")
    return problems


# ---------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------
def check_cases() -> List:
    """The compile check's cases: PIC's attention (B=8, C=Cp=128, Cq=32, N = 1024, 4096, 16384,
    with and without pre; also C = Cp = 64 and, with Cq = 64, 256) and DFNet's six fusion levels at
    256² and 512² (eval and train, c_alpha 3 and 1), fp32 (both matmul precisions) / fp16 / bf16
    (and fp64 attention, which the kernel tests launch), autotuning on (every configuration), plus
    every case of the GPU run (gpu_run_shapes), whose tests launch the fixed configuration."""
    from .gpu_run_shapes import DTYPES, FUSION_LEVEL_CHANNELS, AttentionCase, FusionCase, gpu_run_cases

    out = []
    for dtype, prec in (("fp32", "highest"), ("fp32", "high"), ("fp16", "highest"), ("bf16", "highest"),
                        ("fp64", "highest")):
        for Cp in (128, 0):
            for side in (32, 64, 128):
                out.append(AttentionCase(B=8, Cq=32, C=128, Cp=Cp, H=side, W=side, dtype=dtype, precision=prec,
                                         autotune=True))
            # value channels in one 64-wide chunk (the fused dK/dV backward of every class), and
            # in several 128-wide chunks with a 64-wide head (the unfused one, the dK launch)
            out.append(AttentionCase(B=8, Cq=32, C=64, Cp=Cp // 2, H=64, W=64, dtype=dtype, precision=prec,
                                     autotune=True))
            out.append(AttentionCase(B=8, Cq=64, C=256, Cp=2 * Cp, H=64, W=64, dtype=dtype, precision=prec,
                                     autotune=True))
    for dtype in DTYPES:
        for size in (256, 512):
            for k in range(len(FUSION_LEVEL_CHANNELS)):
                for a in (3, 1):
                    for training in (False, True):
                        out.append(FusionCase.dfnet(2, k, size, a, training, dtype))
    seen, unique = set(), []
    for c in out + gpu_run_cases():
        if c not in seen:
            seen.add(c)
            unique.append(c)
    return unique


def cache_cases(bench_autotune: bool) -> List:
    from .gpu_run_shapes import gpu_run_cases

    return gpu_run_cases(bench_autotune)


# ---------------------------------------------------------------------------------------------
# Workers
# ---------------------------------------------------------------------------------------------
def _prepare_env(cache_dir: Optional[str]) -> None:
    """The environment a worker needs before triton is imported: compiled path (no interpreter),
    and its own cache folder."""
    os.environ.pop("TRITON_INTERPRET", None)
    if cache_dir is not None:
        os.environ["TRITON_CACHE_DIR"] = cache_dir


def _worker(job: dict) -> dict:
    _prepare_env(job["cache_dir"])
    if job.get("binary_only"):
        os.environ["TRITON_STORE_BINARY_ONLY"] = "1"  # not part of the cache key: cubin + json only
    import torch

    from . import gpu_run_shapes as shapes

    torch.set_num_threads(1)
    arch, _ = TARGETS[job["target"]]
    launchers = job.get("launchers")
    rec = Recorder(job["target"], job["known"], job["compile"], tuple(job["shard"]),
                   on_compiled=_build_launcher if launchers else None)
    cases = job["cases"]
    t0 = time.perf_counter()
    with _module_builds(job["stub_dir"]) if launchers else contextlib.nullcontext():
        if launchers and job["shard"][0] == 0:
            _build_cuda_utils()
        with offline(arch, sm_count=shapes.SM_COUNT, compile_fn=rec):
            for case in cases:
                rec.case = case.name
                shapes.launch(case, "cpu", fill=False)
    return {
        "target": job["target"],
        "shard": job["shard"],
        "entries": {h: e.to_json() for h, e in rec.seen.items()},
        "uses": {h: sorted(u) for h, u in rec.uses.items()},
        "compiled": rec.compiled,
        "seconds": time.perf_counter() - t0,
        "compile_seconds": rec.compile_seconds,
    }


def _run_jobs(jobs: List[dict], workers: int) -> List[dict]:
    """Each job in a fresh spawned process (at most ``workers`` at a time): the offline patches and
    the JIT's per-device caches must not leak between targets, nor into the caller."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(processes=max(1, min(workers, len(jobs))), maxtasksperchild=1) as pool:
        return pool.map(_worker, jobs, chunksize=1)


# ---------------------------------------------------------------------------------------------
# Manifest
# ---------------------------------------------------------------------------------------------
def load_manifest(path: Path = MANIFEST) -> Dict[str, dict]:
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    if data.get("format") != MANIFEST_FORMAT:
        raise SystemExit(f"{path}: manifest format {data.get('format')!r}, expected {MANIFEST_FORMAT}; refresh it "
                         "with `python -m inpaint_fast.triton_kernels.aot check --refresh`")
    return data["entries"]


def save_manifest(entries: Dict[str, dict], path: Path = MANIFEST) -> None:
    """One entry per line, sorted by (triton, target, kernel, variant, config): reviewable diffs."""
    order = sorted(entries, key=lambda h: tuple(entries[h][k] for k in ("triton", "target", "kernel", "variant", "config")) + (h,))
    lines = [f"  {json.dumps(h)}: {json.dumps(entries[h], sort_keys=True)}" for h in order]
    text = (
        "{\n"
        f'"format": {MANIFEST_FORMAT},\n'
        '"about": "Compiled resources of every Triton kernel variant and config (python -m inpaint_fast.triton_kernels.aot '
        'check); keys are Triton cache hashes. Refresh: python -m inpaint_fast.triton_kernels.aot check --refresh",\n'
        '"entries": {\n' + ",\n".join(lines) + "\n}\n}\n"
    )
    path.write_text(text)


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------
def _table(rows: List[tuple]) -> str:
    head = ("target", "kernel", "constexpr variant", "config", "regs", "spill st/ld", "smem B", "from", "status")
    cells = [head] + [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(cells[0]), fmt(tuple("-" * w for w in widths))] + [fmt(r) for r in cells[1:]])


def summary(entries: Dict[str, dict]) -> str:
    """Per target and kernel: how many binaries, and the worst registers / spills / shared memory."""
    agg: Dict[tuple, list] = {}
    for e in entries.values():
        a = agg.setdefault((e["target"], e["kernel"]), [0, 0, 0, 0])
        a[0] += 1
        a[1], a[2], a[3] = max(a[1], e["regs"]), max(a[2], e["spill_stores"]), max(a[3], e["smem"])
    rows = [(t, k, n, r, sp, sm, f"{TARGETS[t][1]}") for (t, k), (n, r, sp, sm) in sorted(agg.items())]
    head = ("target", "kernel", "binaries", "max regs", "max spill B", "max smem B", "smem limit B")
    cells = [head] + [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(cells[0]), fmt(tuple("-" * w for w in widths))] + [fmt(r) for r in cells[1:]])


def evaluate(entries: Dict[str, dict], origin: Dict[str, str]) -> tuple:
    """(table rows, failures) for the given hash → entry map."""
    rows, failures = [], []
    for h in sorted(entries, key=lambda h: tuple(entries[h][k] for k in ("target", "kernel", "variant", "config"))):
        e = Entry(**entries[h])
        problems = e.problems(TARGETS[e.target][1])
        status = "ok" if not problems else "FAIL: " + "; ".join(problems)
        if problems:
            failures.append(f"{e.target} {e.kernel} [{e.variant}] [{e.config}] ({h[:10]}): " + "; ".join(problems)
                            + ("\n" + e.error if e.error else ""))
        spills = f"{e.spill_stores}/{e.spill_loads}" if e.spill_stores >= 0 else "?"
        rows.append((e.target, e.kernel, e.variant, e.config, e.regs, spills, e.smem, origin.get(h, "?"), status))
    return rows, failures


# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------
def check(cases: Sequence, targets: Sequence[str] = tuple(TARGETS), manifest_path: Path = MANIFEST,
          use_manifest: bool = True, refresh: bool = False, jobs: int = 2,
          max_compiles: int = DEFAULT_MAX_COMPILES, out=sys.stdout) -> int:
    """The compile check over ``cases`` (see the module docstring); returns the exit status
    (0 ok, 1 over the limits, 2 too many kernels missing from the manifest)."""
    import triton

    t0 = time.time()
    version = triton.__version__
    manifest = load_manifest(manifest_path) if use_manifest or refresh else {}
    known = {h for h, e in manifest.items() if e.get("triton") == version and not e.get("error")} if use_manifest else set()
    with tempfile.TemporaryDirectory(prefix="inpaint_fast_aot_") as tmp:
        # Phase 1: each target's job computes every key (cheap: no compile); phase 2 compiles what
        # the manifest lacks, shared between the workers by hash. Fresh cache folders: a binary
        # found in a cache would come without ptxas's resource report.
        phase1 = [dict(target=t, cases=list(cases), known=sorted(known), compile=False, shard=(0, 1),
                       cache_dir=os.path.join(tmp, t)) for t in targets]
        keyed = _run_jobs(phase1, jobs)
        missing = {t: sorted(h for h in r["entries"] if h not in known) for t, r in zip(targets, keyed)}
        n_missing = sum(len(v) for v in missing.values())
        seen = {h: e for r in keyed for h, e in r["entries"].items()}
        print(f"{len(cases)} cases, {len(seen)} distinct kernels for {', '.join(targets)} (Triton {version}); "
              f"{len(seen) - n_missing} in the manifest, {n_missing} to compile", file=out, flush=True)
        if n_missing > max_compiles:
            print(f"error: {n_missing} kernels are not in {manifest_path} for Triton {version} (more than "
                  f"--max-compiles {max_compiles}: a new Triton version or rewritten kernels). Refresh the manifest "
                  "on a machine with time to spare — python -m inpaint_fast.triton_kernels.aot check --refresh (about 3 s "
                  "per kernel per core) — and commit it.", file=sys.stderr)
            return 2
        compiled: Dict[str, dict] = {}
        if n_missing:
            phase2 = [dict(target=t, cases=list(cases), known=sorted(known), compile=True, shard=(i, jobs),
                           cache_dir=os.path.join(tmp, f"{t}-{i}")) for t in targets if missing[t] for i in range(jobs)]
            for r in _run_jobs(phase2, jobs):
                for h in r["compiled"]:
                    compiled[h] = r["entries"][h]
                for h, e in r["entries"].items():  # a compile error is recorded, not compiled
                    if e.get("error"):
                        compiled[h] = e
    entries, origin = {}, {}
    for h, e in seen.items():
        if h in compiled:
            entries[h], origin[h] = compiled[h], "compiled"
        elif h in manifest and h in known:
            # resources from the manifest; the description from this code (it may say more)
            described = {k: e[k] for k in ("kernel", "variant", "config")}
            entries[h], origin[h] = dict(manifest[h], **described), "manifest"
        else:
            entries[h], origin[h] = e, "?"  # not compiled in this shard split: cannot happen
    rows, failures = evaluate(entries, origin)
    print(_table(rows), file=out)
    print("\n" + summary(entries), file=out)
    n_comp = sum(1 for o in origin.values() if o == "compiled")
    print(f"\n{len(rows)} kernels ({n_comp} compiled now, {len(rows) - n_comp} from the manifest), "
          f"{len(failures)} over the limits (shared memory per block: "
          + ", ".join(f"{t} {TARGETS[t][1]} B" for t in targets)
          + f"; spill stores > {SPILL_LIMIT_BYTES} B; registers x threads > {REGISTERS_PER_BLOCK}), "
          f"{time.time() - t0:.0f} s", file=out)
    if refresh:
        kept = {h: e for h, e in manifest.items() if not (e.get("triton") == version and e.get("target") in targets)}
        kept.update({h: e for h, e in entries.items() if origin[h] in ("compiled", "manifest")})
        save_manifest(kept, manifest_path)
        print(f"wrote {manifest_path}: {len(kept)} entries", file=out)
    elif n_comp and not failures:
        print(f"note: {n_comp} kernels are not in {manifest_path} yet; refresh it "
              "(python -m inpaint_fast.triton_kernels.aot check --refresh) so CI does not compile them again", file=out)
    if failures:
        print("\nFAILED:\n" + "\n".join(failures), file=sys.stderr)
        return 1
    return 0


def cmd_check(args) -> int:
    cases = check_cases()
    if args.cases:
        cases = [c for c in cases if re.search(args.cases, c.name)]
    return check(cases, args.targets, args.manifest, use_manifest=not args.no_manifest, refresh=args.refresh,
                 jobs=args.jobs, max_compiles=args.max_compiles)


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _strip_cache(path: Path) -> int:
    """Drops what a launch does not read from every cache entry (the ``.source`` TTIR Triton always
    keeps), rewriting each group file to match; returns the bytes freed."""
    freed = 0
    for grp in path.glob("*/__grp__*.json"):
        data = json.loads(grp.read_text())
        children = data.get("child_paths", {})
        for name in list(children):
            if name.endswith(".source"):
                p = grp.parent / name
                if p.exists():
                    freed += p.stat().st_size
                    p.unlink()
                del children[name]
        grp.write_text(json.dumps(data))
    return freed


INDEX_FILE = "inpaint_fast_cache_index.json"


def triton_build_key() -> str:
    """A short hash of this Triton build as its cache keys see it (version, sources and the
    ``libtriton`` binary): two installs with different values share no cache entry."""
    from triton.runtime.cache import triton_key

    return hashlib.sha256(triton_key().encode("utf-8")).hexdigest()[:16]


def build_cache(out_dir, cases: Sequence, arch: int = 90, jobs: int = 2, max_mib: float = 40.0, out=sys.stdout,
                launchers: bool = True) -> int:
    """Compiles ``cases``' kernels for sm_<arch> into a fresh ``out_dir`` (binaries only, and with
    ``launchers`` their launcher modules), checks their resources like :func:`check`, and writes an
    index (every hash, the cases using it, every module)."""
    import triton

    t0 = time.time()
    path = Path(out_dir).resolve()
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    target = f"sm_{arch}"
    if launchers and not prebuilds_modules():
        print(f"note: Triton {triton.__version__} builds its launcher modules another way; not prebuilding them",
              file=out)
        launchers = False
    if target not in TARGETS:
        raise ValueError(f"arch {arch}: expected one of {sorted(a for a, _ in TARGETS.values())}")
    # Every worker writes into the one folder (Triton's cache writes are atomic renames); each
    # compiles its share of the hashes.
    stub_dir = tempfile.mkdtemp(prefix="inpaint_fast_libcuda_stub_")
    jobs_ = [dict(target=target, cases=list(cases), known=[], compile=True, shard=(i, jobs), cache_dir=str(path),
                  binary_only=True, launchers=launchers, stub_dir=stub_dir) for i in range(jobs)]
    entries, uses = {}, {}
    for r in _run_jobs(jobs_, jobs):
        for h in r["compiled"]:
            entries[h] = r["entries"][h]
        for h, e in r["entries"].items():
            if e.get("error"):
                entries[h] = e
            uses.setdefault(h, set()).update(r["uses"].get(h, ()))
    shutil.rmtree(stub_dir, ignore_errors=True)
    freed = _strip_cache(path)
    modules = sorted(str(p.relative_to(path)) for p in path.rglob("*.so"))
    module_problems = check_modules(path)
    rows, failures = evaluate(entries, {h: "compiled" for h in entries})
    failures += module_problems
    print(_table(rows), file=out)
    print("\n" + summary(entries), file=out)
    size = _dir_size(path)
    index = {
        "triton": triton.__version__,
        "triton_build": triton_build_key(),
        "target": target,
        "cases": [c.name for c in cases],
        "entries": {h: dict(entries[h], cases=sorted(uses.get(h, ()))) for h in sorted(entries)},
        "modules": modules,
    }
    (path / INDEX_FILE).write_text(json.dumps(index, indent=1, sort_keys=True))
    print(f"\n{len(cases)} cases -> {len(entries)} kernels and {len(modules)} launcher/driver modules in {path}: "
          f"{size / 2**20:.1f} MiB "
          f"({freed / 2**20:.1f} MiB of .source dropped), Triton {triton.__version__}, {target}, "
          f"{time.time() - t0:.0f} s; {len(failures)} over the limits", file=out)
    if size > max_mib * 2**20:
        print(f"error: the cache is {size / 2**20:.1f} MiB, over the {max_mib} MiB allowed", file=sys.stderr)
        return 1
    if failures:
        print("\nFAILED:\n" + "\n".join(failures), file=sys.stderr)
        return 1
    return 0


def cmd_build_cache(args) -> int:
    cases = cache_cases(not args.bench_single_config)
    if args.cases:
        cases = [c for c in cases if re.search(args.cases, c.name)]
    return build_cache(args.dir, cases, args.arch, args.jobs, args.max_mib, launchers=not args.no_launchers)


def _verify_worker(job: dict) -> dict:
    """Second pass over the cases with Triton's compile path untouched: the compilation listener
    records each request as a cache hit or miss."""
    _prepare_env(job["cache_dir"])
    import torch
    from triton import knobs

    from . import gpu_run_shapes as shapes

    torch.set_num_threads(1)
    hits, misses = [], []

    def listener(*, src, metadata, metadata_group, times, cache_hit):
        (hits if cache_hit else misses).append(metadata["hash"])

    knobs.compilation.listener = listener
    with offline(job["arch"], sm_count=shapes.SM_COUNT):
        for case in job["cases"]:
            shapes.launch(case, "cpu", fill=False)
    return {"hits": hits, "misses": misses}


def verify_cache(cache_dir, cases: Optional[Sequence] = None, out=sys.stdout) -> int:
    """Runs ``cases`` (default: the ones the index names) again in a fresh process through Triton's
    unpatched compile path against a copy of ``cache_dir``: every request must be a cache hit, and
    every indexed entry must be hit. Returns 0 when so."""
    path = Path(cache_dir).resolve()
    index_path = path / INDEX_FILE
    if not index_path.exists():
        print(f"error: {index_path} not found (build the cache with `build-cache {cache_dir}`)", file=sys.stderr)
        return 1
    index = json.loads(index_path.read_text())
    if cases is None:
        names = set(index["cases"])
        cases = list(dict.fromkeys(c for c in cache_cases(True) + cache_cases(False) if c.name in names))
    arch = int(index["target"].removeprefix("sm_"))
    # A copy, so that a miss (which compiles and writes) leaves the folder under test as it was.
    with tempfile.TemporaryDirectory(prefix="inpaint_fast_verify_") as tmp:
        work = os.path.join(tmp, "cache")
        shutil.copytree(path, work)
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(processes=1) as pool:
            r = pool.apply(_verify_worker, (dict(cache_dir=work, arch=arch, cases=list(cases)),))
    hit, indexed = set(r["hits"]), set(index["entries"])
    print(f"verify {path}: {len(cases)} cases, {len(r['hits'])} cache hits ({len(hit)} kernels), "
          f"{len(r['misses'])} misses; {len(indexed)} kernels indexed, {len(indexed - hit)} of them not hit", file=out)
    for h in r["misses"][:20]:
        print(f"  miss: {h[:16]}", file=out)
    return 0 if not r["misses"] and hit == indexed else 1


def cmd_verify_cache(args) -> int:
    return verify_cache(args.dir)


# ---------------------------------------------------------------------------------------------
# Cache report of a real run
# ---------------------------------------------------------------------------------------------
def install_cache_report(path: str) -> None:
    """Appends one JSON line per Triton compile request of this process to ``path``: kernel, hash,
    cache hit or miss, seconds, and the constexpr variant — written as it happens, so a run that is
    killed still reports what it compiled. Chains any listener already installed."""
    from triton import knobs

    previous = knobs.compilation.listener
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)

    def listener(*, src, metadata, metadata_group, times, cache_hit):
        try:
            consts = {}
            fn = getattr(src, "fn", None)
            if fn is not None:
                consts = {fn.arg_names[k[0]]: str(getattr(v, "name", v)) for k, v in src.constants.items() if len(k) == 1}
            line = {"kernel": src.name, "hash": metadata.get("hash", ""), "hit": bool(cache_hit),
                    "seconds": round(times.total / 1e6, 3), "num_warps": metadata.get("num_warps"),
                    "num_stages": metadata.get("num_stages"), "constexprs": consts, "pid": os.getpid()}
            with open(target, "a") as f:
                f.write(json.dumps(line, sort_keys=True) + "\n")
        except Exception as exc:  # noqa: BLE001  (a report must never break a compile)
            print(f"inpaint_fast: cache report failed: {exc}", file=sys.stderr)
        if previous is not None:
            previous(src=src, metadata=metadata, metadata_group=metadata_group, times=times, cache_hit=cache_hit)

    knobs.compilation.listener = listener
    _report_module_builds(target)


def _report_module_builds(target: Path) -> None:
    """Adds the launcher/driver C modules to the report: Triton loads one per signature (a hit when
    the cache has it) and builds it with the C compiler first on a miss."""
    import triton.runtime.build as build

    if getattr(build, "_inpaint_fast_reported", False):
        return
    real_build, real_load = build._build, build._load_module_from_path
    built = set()

    def write(line: dict) -> None:
        try:
            with open(target, "a") as f:
                f.write(json.dumps(dict(line, pid=os.getpid()), sort_keys=True) + "\n")
        except OSError as exc:
            print(f"inpaint_fast: cache report failed: {exc}", file=sys.stderr)

    def _build(name, src, srcdir, *args, **kwargs):
        t0 = time.perf_counter()
        so = real_build(name, src, srcdir, *args, **kwargs)
        built.add(name)
        write({"module": name, "hit": False, "seconds": round(time.perf_counter() - t0, 3)})
        return so

    def _load(name, path):
        mod = real_load(name, path)
        if name in built:
            built.discard(name)
        else:
            write({"module": name, "hit": True, "seconds": 0.0})
        return mod

    build._build, build._load_module_from_path = _build, _load
    build._inpaint_fast_reported = True


def summarize_report(path: str) -> dict:
    lines = [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]
    per_kernel: Dict[str, dict] = {}
    for line in lines:
        name = line["kernel"] if "kernel" in line else f"[module] {line['module']}"
        k = per_kernel.setdefault(name, {"hits": 0, "misses": 0, "miss_seconds": 0.0})
        if line["hit"]:
            k["hits"] += 1
        else:
            k["misses"] += 1
            k["miss_seconds"] += line["seconds"]
    kernels = [x for x in lines if "kernel" in x]
    modules = [x for x in lines if "module" in x]
    return {
        "hits": sum(1 for x in kernels if x["hit"]),
        "misses": sum(1 for x in kernels if not x["hit"]),
        "miss_seconds": round(sum(x["seconds"] for x in lines if not x["hit"]), 1),
        "module_hits": sum(1 for x in modules if x["hit"]),
        "module_misses": sum(1 for x in modules if not x["hit"]),
        "kernels": per_kernel,
    }


def cmd_report(args) -> int:
    s = summarize_report(args.file)
    print(f"Triton kernels: {s['hits']} cache hits, {s['misses']} misses; launcher/driver modules: "
          f"{s['module_hits']} hits, {s['module_misses']} misses ({s['miss_seconds']} s compiling in all)")
    for name, k in sorted(s["kernels"].items()):
        print(f"  {name:28s} hits {k['hits']:4d}  misses {k['misses']:4d}  ({k['miss_seconds']:.1f} s)")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inpaint_fast.triton_kernels.aot", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    jobs = max(1, min(os.cpu_count() or 1, 2))
    p = sub.add_parser("check", help="compile every kernel variant and config for sm_90/sm_80 and check its resources")
    p.add_argument("--refresh", action="store_true", help="rewrite the manifest's entries for this Triton version")
    p.add_argument("--manifest", type=Path, default=MANIFEST)
    p.add_argument("--no-manifest", action="store_true", help="ignore the manifest: compile everything")
    p.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    p.add_argument("--cases", default="", help="only cases whose name matches this regular expression")
    p.add_argument("--jobs", type=int, default=jobs)
    p.add_argument("--max-compiles", type=int, default=DEFAULT_MAX_COMPILES,
                   help="fail instead of compiling more than this many missing kernels (default %(default)s)")
    p.set_defaults(func=cmd_check)
    p = sub.add_parser("build-cache", help="compile the GPU run's sm_90 kernels into a TRITON_CACHE_DIR folder")
    p.add_argument("dir")
    p.add_argument("--arch", type=int, default=90)
    p.add_argument("--jobs", type=int, default=jobs)
    p.add_argument("--cases", default="", help="only cases whose name matches this regular expression")
    p.add_argument("--bench-single-config", action="store_true",
                   help="the benchmark's attention cases with autotuning off (default: every autotune config)")
    p.add_argument("--max-mib", type=float, default=40.0)
    p.add_argument("--no-launchers", action="store_true", help="kernels only: no prebuilt launcher modules")
    p.set_defaults(func=cmd_build_cache)
    p = sub.add_parser("verify-cache", help="check that Triton's own compile path finds every key of a built cache")
    p.add_argument("dir")
    p.set_defaults(func=cmd_verify_cache)
    p = sub.add_parser("report", help="summarise an INPAINT_FAST_TRITON_CACHE_REPORT file")
    p.add_argument("file")
    p.set_defaults(func=cmd_report)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
