"""Timing and peak-memory measurement of one callable, on CPU or CUDA.

Timing
  * CUDA: ``triton.testing.do_bench`` when Triton imports (device events, L2 flushed before every
    run, warm-up and repetitions sized by time); otherwise an equivalent loop of CUDA events with
    an L2 flush. Host clocks are never put around asynchronous launches.
  * CPU: ``torch.utils.benchmark.Timer.blocked_autorange`` (with all of torch's intra-op threads),
    topped up with further blocks until at least ``min_reps`` measurements exist.
  Warm-up calls run before any measurement and are never part of it. Results are milliseconds at
  the 20th, 50th and 80th percentiles of the measurements.

Peak memory (MiB above what was allocated before the call, one call)
  * CUDA: ``torch.cuda.reset_peak_memory_stats`` / ``max_memory_allocated`` minus
    ``memory_allocated`` before the call (the caching allocator's view: tensors, not reserved slack).
  * CPU (Linux): peak resident set size over the call. Freed heap memory is first returned to the
    OS (``malloc_trim(0)``), ``"5"`` written to ``/proc/self/clear_refs`` resets the high-water
    mark ``VmHWM`` to the current ``VmRSS``, the call runs once, and the result is
    ``VmHWM - VmRSS_before``. It is process-wide (other threads count) and page-granular, and it
    misses memory reused from the allocator's free lists that ``malloc_trim`` could not release.
    Where ``/proc`` is unavailable (macOS, Windows, a locked-down container) it is NaN.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import math
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import torch

__all__ = ["Timing", "TimingConfig", "time_fn", "peak_memory_mb", "quantiles"]


@dataclass(frozen=True)
class Timing:
    """Milliseconds at the 20th, 50th and 80th percentiles, and how many measurements made them."""

    p20: float
    p50: float
    p80: float
    reps: int = 0


@dataclass(frozen=True)
class TimingConfig:
    """How long to measure. ``quick`` trades precision for wall time."""

    min_run_time: float = 1.0  # CPU: seconds of measurement per (provider, case, mode)
    min_reps: int = 5  # CPU: at least this many measurements (blocks)
    warmup_time: float = 0.1  # CPU: seconds of warm-up calls (at least one call)
    gpu_warmup_ms: float = 25.0  # CUDA: do_bench's warmup
    gpu_rep_ms: float = 100.0  # CUDA: do_bench's rep

    @classmethod
    def quick(cls) -> "TimingConfig":
        return cls(min_run_time=0.3, min_reps=3, warmup_time=0.05, gpu_warmup_ms=10.0, gpu_rep_ms=50.0)


def quantiles(values: Sequence[float], qs: Sequence[float] = (0.2, 0.5, 0.8)) -> List[float]:
    """Linear-interpolation quantiles (numpy's default), without needing numpy."""
    xs = sorted(values)
    if not xs:
        return [math.nan for _ in qs]
    out = []
    for q in qs:
        pos = q * (len(xs) - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, len(xs) - 1)
        out.append(xs[lo] + (xs[hi] - xs[lo]) * (pos - lo))
    return out


def time_fn(fn: Callable[[], object], device: torch.device, config: TimingConfig = TimingConfig()) -> Timing:
    """Time ``fn()`` (which must do the whole unit of work, including any backward)."""
    if device.type == "cuda":
        return _time_cuda(fn, config)
    return _time_cpu(fn, config)


def _time_cpu(fn: Callable[[], object], config: TimingConfig) -> Timing:
    from torch.utils.benchmark import Timer

    # Warm-up: at least one call, then more until warmup_time has passed (capped).
    start = time.perf_counter()
    fn()
    one = time.perf_counter() - start
    extra = min(int(config.warmup_time / max(one, 1e-9)), 50)
    for _ in range(extra):
        fn()

    # Timer's default is ONE thread; benchmark with the threads torch would really use.
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    m = timer.blocked_autorange(min_run_time=config.min_run_time)
    times = list(m.times)  # seconds per call, one entry per block
    deadline = time.perf_counter() + max(config.min_run_time, 5 * one)
    while len(times) < config.min_reps and (time.perf_counter() < deadline or len(times) < 2):
        times.extend(timer.timeit(m.number_per_run).times)
    p20, p50, p80 = (t * 1e3 for t in quantiles(times))
    return Timing(p20, p50, p80, len(times))


def _time_cuda(fn: Callable[[], object], config: TimingConfig) -> Timing:
    try:
        from triton.testing import do_bench
    except Exception:  # noqa: BLE001 - any import failure means "no Triton"
        do_bench = None
    if do_bench is not None:
        p50, p20, p80 = do_bench(
            fn, warmup=config.gpu_warmup_ms, rep=config.gpu_rep_ms, quantiles=[0.5, 0.2, 0.8]
        )
        return Timing(p20, p50, p80, 0)
    return _time_cuda_events(fn, config)


def _time_cuda_events(fn: Callable[[], object], config: TimingConfig) -> Timing:
    """do_bench's method without Triton: events around each call, L2 flushed before each."""
    flush = torch.empty(256 * 1024 * 1024, dtype=torch.int8, device="cuda")
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        flush.zero_()
        fn()
    end.record()
    torch.cuda.synchronize()
    estimate = max(start.elapsed_time(end) / 5, 1e-3)
    n_warmup = max(1, int(config.gpu_warmup_ms / estimate))
    n_rep = max(1, int(config.gpu_rep_ms / estimate))
    for _ in range(n_warmup):
        fn()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n_rep)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n_rep)]
    for i in range(n_rep):
        flush.zero_()
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    times = [s.elapsed_time(e) for s, e in zip(starts, ends)]
    p20, p50, p80 = quantiles(times)
    return Timing(p20, p50, p80, n_rep)


def peak_memory_mb(fn: Callable[[], object], device: torch.device) -> float:
    """Peak memory of one ``fn()`` call above what was in use before it, in MiB (NaN if unknown)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        out = fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        del out
        return (peak - before) / 2**20
    return _peak_rss_mb(fn)


_LIBC: Optional[ctypes.CDLL] = None


def _malloc_trim() -> None:
    global _LIBC
    try:
        if _LIBC is None:
            _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _LIBC.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def _proc_status_kb(*keys: str) -> dict:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in keys:
                out[name] = int(value.split()[0])
    return out


def _peak_rss_mb(fn: Callable[[], object]) -> float:
    try:
        gc.collect()
        _malloc_trim()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current VmRSS
        before = _proc_status_kb("VmRSS")["VmRSS"]
    except (OSError, KeyError, ValueError):
        return math.nan
    out = fn()
    peak = _proc_status_kb("VmHWM")["VmHWM"]
    del out
    return max(peak - before, 0) / 1024
