"""The ceilings the benchmarks are stated against, measured in the same run as the kernels.

* ``ceiling_gemm`` — a large GEMM (``torch.mm``, fresh operands, result written into a
  preallocated tensor): the attainable matmul rate, in TFLOP/s (2·M·N·K per call).

  - CUDA: bf16 in and out, 8192³ (cuBLAS; ≈1.1 TFLOP, a few ms: past any launch or tail
    effect). The attention target "fwd at N = 16384 ≥ 40% of the bf16 GEMM rate" divides by it.
  - CPU: fp32 in and out, 2048³ (≈17 GFLOP, a few hundred ms on two cores), on the threads the
    kernels run on (``torch.get_num_threads()`` at the time of each call). ``inpaint-fast bench``
    (and so the sweep scripts in benchmarks/) measures it in every CPU run, as
    :class:`GemmCeiling`: one short burst of calls before every timed op result and one at the
    end. Each op result's ``fraction_of_gemm`` row (:mod:`.rows`) divides by the median of the two
    bursts around it, so that the ceiling and the op see the same machine: a shared or
    frequency-scaling CPU drifts by tens of percent within a minute (benchmarks/NOTES.md), and
    one pooled rate then put results of the same run against a machine that was not there. All
    bursts are also pooled into the run's one ``ceiling_gemm`` result.

* ``ceiling_copy`` — a device-to-device copy (``dst.copy_(src)``): the attainable memory
  bandwidth, in GB/s counting the bytes read plus the bytes written (2·size). The fusion-block
  target "≥ 70% of the copy bandwidth" divides by this row. 1 GiB on CUDA (far beyond the
  50–60 MB L2 of an H100/H200).

:func:`measure_ceilings` is the GPU run's (benchmarks/bench_gpu_targets.py): both ceilings, timed
like every provider (:func:`.timing.time_fn`: device events, L2 flushed before each call, median
and p20/p80). On the CPU it measures tiny ones (a 256³ bf16 GEMM, an 8 MiB copy), only so that
the dry run of benchmarks/gpu_session.sh exercises the GPU code path quickly; the CPU's real GEMM
ceiling is :class:`GemmCeiling`'s. All are written as ordinary result rows (provider ``torch``,
mode ``fwd``, dtype the GEMM's). Before timing, each result is spot-checked (a GEMM block against
a float64 product, the copy for equality): a broken library is reported ``wrong`` and not timed,
as the correctness gate does for providers.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .op_bench import DTYPES
from .outcome import GEMM_CEILING, Result, failure_status
from .timing import Timing, TimingConfig, peak_memory_mb, quantiles, time_fn

__all__ = ["CEILING_KERNELS", "GEMM_SPECS", "GemmCeiling", "gemm_spec", "measure_ceilings"]

CEILING_KERNELS = (GEMM_CEILING, "ceiling_copy")
# The GEMM ceiling of each device type: (side n of the n³ product, dtype of inputs and output).
GEMM_SPECS: Dict[str, Tuple[int, str]] = {"cuda": (8192, "bf16"), "cpu": (2048, "fp32")}
DRY_RUN_GEMM = (256, "bf16")  # measure_ceilings on the CPU: the GPU run's dry run, plumbing only


def gemm_spec(device: torch.device) -> Tuple[int, str]:
    """(side, dtype) of ``device``'s GEMM ceiling (:data:`GEMM_SPECS`)."""
    return GEMM_SPECS["cuda" if device.type == "cuda" else "cpu"]


def _sizes(device: torch.device) -> Tuple[int, int]:
    """(GEMM side, copy bytes) of :func:`measure_ceilings` for ``device``."""
    return (GEMM_SPECS["cuda"][0], 2**30) if device.type == "cuda" else (DRY_RUN_GEMM[0], 8 * 2**20)


def _gemm_result(n: int, dtype: str) -> Result:
    return Result(GEMM_CEILING, "torch", "fwd", dtype, f"M{n}-N{n}-K{n}")


def _gemm_call(device: torch.device, n: int, dtype: str) -> Tuple[Callable[[], torch.Tensor], Optional[str]]:
    """(the GEMM call, None) with seeded operands, or (call, why it is wrong) when a spot-checked
    block of its result is further from a float64 product than the dtype's rounding allows."""
    g = torch.Generator(device=device).manual_seed(0)
    tdtype = DTYPES[dtype]
    a = torch.randn(n, n, device=device, dtype=tdtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=tdtype, generator=g)
    out = torch.empty(n, n, device=device, dtype=tdtype)
    torch.mm(a, b, out=out)
    k = min(n, 64)
    want = a[:k].double() @ b[:, :k].double()
    err = (out[:k, :k].double() - want).abs().max().item()
    if tdtype == torch.bfloat16:
        allowed = 2**-7 * want.abs().max().item()  # bf16 rounding of the result, ~1 unit
    else:  # n rounded products and sums: the textbook bound n·u·(|a|·|b|), plus the result's rounding
        eps = torch.finfo(tdtype).eps
        bound = (a[:k].abs().double() @ b[:, :k].abs().double()).max().item()
        allowed = (n + 1) * eps / 2 * bound
    call = lambda: torch.mm(a, b, out=out)  # noqa: E731
    if not err <= allowed:
        return call, f"GEMM block max err {err:.3g} > allowed {allowed:.3g}"
    return call, None


def _gemm(device: torch.device, n: int, config: TimingConfig, dtype: str = "bf16") -> Result:
    res = _gemm_result(n, dtype)
    try:
        call, wrong = _gemm_call(device, n, dtype)
        if wrong:
            res.status, res.note = "wrong", wrong
            return res
        res.timing, res.peak_mb = time_fn(call, device, config), peak_memory_mb(call, device)
        res.flops = 2.0 * n * n * n
        res.note = f"torch.mm, {dtype} in and out"
    except Exception as exc:  # noqa: BLE001 - recorded, as for any provider
        res.status, res.note = failure_status(exc)
    return res


def _copy(device: torch.device, nbytes: int, config: TimingConfig) -> Result:
    numel = nbytes // 2
    res = Result("ceiling_copy", "torch", "fwd", "bf16", f"bytes{numel * 2}")
    try:
        src = torch.randn(numel, device=device, dtype=torch.float32).to(torch.bfloat16)
        dst = torch.empty_like(src)
        dst.copy_(src)
        if not torch.equal(dst, src):
            res.status, res.note = "wrong", "the copy differs from its source"
            return res
        call = lambda: dst.copy_(src)  # noqa: E731
        res.timing, res.peak_mb = time_fn(call, device, config), peak_memory_mb(call, device)
        res.nbytes = 2.0 * numel * 2  # read src + write dst
        res.note = "dst.copy_(src); GB/s counts read + write"
    except Exception as exc:  # noqa: BLE001
        res.status, res.note = failure_status(exc)
    return res


def measure_ceilings(device: torch.device, config: TimingConfig = TimingConfig(),
                     sizes: Optional[Tuple[int, int]] = None) -> List[Result]:
    """The GEMM and copy ceilings on ``device`` (``sizes``: (GEMM side, copy bytes), default per
    device: 8192³ bf16 and 1 GiB on CUDA, the dry run's tiny 256³ bf16 and 8 MiB on the CPU)."""
    n, nbytes = sizes or _sizes(device)
    results = [_gemm(device, n, config, GEMM_SPECS["cuda"][1]), _copy(device, nbytes, config)]
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return results


class GemmCeiling:
    """The CPU GEMM ceiling of one benchmark run, sampled in bursts between the op timings.

    ``sample()`` runs one burst: a warm-up call, then calls timed one by one with the host clock
    (as ``torch.utils.benchmark`` times the providers, on the same threads) until at least two
    have run and ``config.min_run_time / 4`` seconds have passed; it returns the burst's index.
    :func:`.runner.run` calls it before every timed result and records the index in the result
    (``Result.ceiling_burst``). :meth:`result` runs a last burst, tops the calls up to
    ``config.min_reps``, and returns the one ``ceiling_gemm`` result: p20/p50/p80 over every
    timed call of the run, and the peak memory of one call. :meth:`attach` then gives every
    sampled result the rate of the bursts around it (``Result.ceiling_rate``). A GEMM that fails
    its spot check is ``wrong`` and never timed (then no ``fraction_of_gemm`` rows are written).
    """

    def __init__(self, device: torch.device, config: TimingConfig = TimingConfig(), n: Optional[int] = None,
                 dtype: Optional[str] = None):
        if device.type != "cpu":
            raise ValueError(f"GemmCeiling times with the host clock: CPU only, got {device}; on CUDA use "
                             "measure_ceilings (device events)")
        spec_n, spec_dtype = gemm_spec(device)
        self.device, self.config = device, config
        self.n, self.dtype = n or spec_n, dtype or spec_dtype
        self.times: List[float] = []  # seconds, one per timed call
        self.burst_times: List[List[float]] = []  # the same calls, by burst
        self._call: Optional[Callable[[], torch.Tensor]] = None
        self._failure: Optional[Tuple[str, str]] = None  # (status, note)

    @classmethod
    def for_run(cls, device: torch.device, config: TimingConfig = TimingConfig()) -> Optional["GemmCeiling"]:
        """The ceiling ``inpaint-fast bench`` samples through a run on ``device``: one on the CPU,
        None elsewhere (the GPU run measures its ceilings itself, :func:`measure_ceilings`)."""
        return cls(device, config) if device.type == "cpu" else None

    def _prepare(self) -> bool:
        if self._call is None and self._failure is None:
            try:
                call, wrong = _gemm_call(self.device, self.n, self.dtype)
                if wrong:
                    self._failure = ("wrong", wrong)
                else:
                    self._call = call
            except Exception as exc:  # noqa: BLE001 - recorded in the ceiling's row
                self._failure = failure_status(exc)
        return self._call is not None

    def _timed_calls(self, count: int, seconds: float) -> List[float]:
        start = time.perf_counter()
        done = []
        while len(done) < count or time.perf_counter() - start < seconds:
            t0 = time.perf_counter()
            self._call()
            done.append(time.perf_counter() - t0)
        self.times += done
        return done

    def sample(self) -> Optional[int]:
        """One burst (see the class docstring): its index, or None when the GEMM cannot be timed
        (the failure is kept for :meth:`result`)."""
        if not self._prepare():
            return None
        try:
            self._call()  # warm-up: caches and threads were the op's a moment ago
            self.burst_times.append(self._timed_calls(2, self.config.min_run_time / 4))
            return self.bursts - 1
        except Exception as exc:  # noqa: BLE001
            self._call, self._failure = None, failure_status(exc)
            return None

    @property
    def bursts(self) -> int:
        """How many bursts have been timed."""
        return len(self.burst_times)

    def rate_around(self, burst: int) -> Optional[float]:
        """FLOP per ms of the median call of burst ``burst`` and the one after it (the bursts just
        before and after the result that recorded ``burst``); None for an unknown burst."""
        if not 0 <= burst < len(self.burst_times):
            return None
        times = [t for b in self.burst_times[burst:burst + 2] for t in b]
        return 2.0 * self.n**3 / (quantiles(times)[1] * 1e3)

    def attach(self, results: Sequence[Result]) -> None:
        """Give every result that recorded a burst (``ceiling_burst``) the ceiling's rate around it
        (``ceiling_rate``), which its fraction_of_gemm then divides by. Call after :meth:`result`,
        whose last burst is the one after the run's last result."""
        for r in results:
            if r.ceiling_burst is not None and self._call is not None:
                r.ceiling_rate = self.rate_around(r.ceiling_burst)

    def result(self) -> Result:
        """The run's ``ceiling_gemm`` result (after one last burst)."""
        self.sample()
        res = _gemm_result(self.n, self.dtype)
        if self._call is None:
            res.status, res.note = self._failure or ("error", "the GEMM ceiling was never measured")
            return res
        try:
            self._timed_calls(max(self.config.min_reps - len(self.times), 0), 0.0)
            p20, p50, p80 = (t * 1e3 for t in quantiles(self.times))
            res.timing = Timing(p20, p50, p80, len(self.times))
            res.peak_mb = peak_memory_mb(self._call, self.device)
            res.flops = 2.0 * self.n**3
            res.note = (f"torch.mm, {self.dtype} in and out, {torch.get_num_threads()} threads; {len(self.times)} "
                        f"calls in {self.bursts} bursts between the op timings; each op's fraction_of_gemm "
                        "divides by the two bursts around it")
        except Exception as exc:  # noqa: BLE001
            res.timing, res.peak_mb = None, math.nan
            res.status, res.note = failure_status(exc)
        return res
