"""What one (provider, case, mode) came to: its :class:`Result`, and the status of a failure.

A provider that raises is recorded, never re-raised: :func:`failure_status` turns the exception
into the CSV ``status`` and ``note`` (see :mod:`.results` for the statuses).

:func:`fraction_of_gemm` states a result's FLOP rate as a fraction of the run's GEMM ceiling (the
``ceiling_gemm`` result of :mod:`.ceilings`): ``(flops / t) / (ceiling flops / ceiling t_p50)``
at the result's p20/p50/p80 times, the ceiling at its median, as the speedups take the
reference at its median.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Optional, Sequence, Tuple

import torch

from .op_bench import Unavailable
from .timing import Timing

__all__ = ["GEMM_CEILING", "Result", "attach_speedups", "failure_status", "find_gemm_ceiling", "fraction_of_gemm",
           "is_oom"]

GEMM_CEILING = "ceiling_gemm"  # the kernel name of the GEMM ceiling's result (.ceilings)


@dataclass
class Result:
    """One (provider, case, mode) outcome."""

    kernel: str
    provider: str
    mode: str
    dtype: str
    shape: str
    status: str = "ok"
    note: str = ""
    timing: Optional[Timing] = None
    peak_mb: float = math.nan
    flops: Optional[float] = None
    nbytes: Optional[float] = None
    speedup: Optional[Tuple[float, float, float]] = field(default=None)
    items: Optional[int] = None  # images per call (end-to-end steps): adds an images_per_s metric
    # CPU runs: the GEMM ceiling burst timed just before this result (:class:`.ceilings.GemmCeiling`),
    # and, once the run is over, the ceiling's FLOP rate (per ms) around it, which its
    # fraction_of_gemm divides by.
    ceiling_burst: Optional[int] = None
    ceiling_rate: Optional[float] = None


# How a failed allocation reads: CUDA's "out of memory", torch's CPU allocator ("can't allocate
# memory"; older torch "not enough memory"; a plain RuntimeError), the C library's ENOMEM text.
_OOM_MESSAGES = ("out of memory", "not enough memory", "can't allocate memory", "cannot allocate memory")


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` says the device (or the host) ran out of memory."""
    oom_types = (MemoryError, getattr(torch, "OutOfMemoryError", MemoryError))
    text = str(exc).lower()
    return isinstance(exc, oom_types) or any(m in text for m in _OOM_MESSAGES)


def _requested(exc: BaseException) -> str:
    """' (tried to allocate 16.0 GiB)' from torch's allocator message, else ''."""
    m = re.search(r"tried to allocate (\d+) bytes", str(exc))
    if not m:
        return ""
    n = int(m.group(1))
    return f" (tried to allocate {n / 2**30:.1f} GiB)" if n >= 2**30 else f" (tried to allocate {n / 2**20:.1f} MiB)"


def failure_status(exc: BaseException) -> Tuple[str, str]:
    """(status, note) for an exception raised by a provider."""
    if isinstance(exc, Unavailable):
        return exc.status, str(exc)
    import inpaint_fast

    if isinstance(exc, getattr(inpaint_fast, "BackendError", ())):  # the op's own "cannot serve this"
        return "unavailable", str(exc)
    if is_oom(exc):
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return "oom", "out of memory" + _requested(exc)
    first = (str(exc).strip().splitlines() or [""])[0]
    status = "unsupported" if isinstance(exc, NotImplementedError) else "error"
    return status, f"{type(exc).__name__}: {first}"[:300]


def attach_speedups(results: Sequence[Result]) -> None:
    """Speedup of every timed result over the ``reference`` provider's median time for the same
    (kernel, mode, dtype, shape): (ref_p50/p80, ref_p50/p50, ref_p50/p20)."""
    ref = {
        (r.kernel, r.mode, r.dtype, r.shape): r.timing.p50
        for r in results
        if r.provider == "reference" and r.timing is not None
    }
    for r in results:
        ref_ms = ref.get((r.kernel, r.mode, r.dtype, r.shape))
        if ref_ms is not None and r.timing is not None:
            r.speedup = (ref_ms / r.timing.p80, ref_ms / r.timing.p50, ref_ms / r.timing.p20)


def find_gemm_ceiling(results: Sequence[Result]) -> Optional[Result]:
    """The last timed ``ceiling_gemm`` result in ``results`` that counts FLOPs (None if none)."""
    found = None
    for r in results:
        if r.kernel == GEMM_CEILING and r.status == "ok" and r.timing is not None and r.flops:
            found = r
    return found


def fraction_of_gemm(result: Result, ceiling: Optional[Result]) -> Optional[Tuple[float, float, float]]:
    """``result``'s FLOP rate over the ceiling's FLOP rate, at the result's p20/p50/p80 (the p20
    rate comes from the p80 time, so p20 <= p50 <= p80): the rate of the ceiling timed next to the
    result (``result.ceiling_rate``) where the run recorded one, else the ceiling's median. None
    when either was not timed, ``result`` counts no FLOPs, or ``result`` is a ceiling itself."""
    if ceiling is None or ceiling.timing is None or not ceiling.flops or result.kernel.startswith("ceiling_"):
        return None
    t = result.timing
    if t is None or not result.flops:
        return None
    rate = result.ceiling_rate or ceiling.flops / ceiling.timing.p50  # FLOP per ms, as below
    return (result.flops / t.p80 / rate, result.flops / t.p50 / rate, result.flops / t.p20 / rate)
