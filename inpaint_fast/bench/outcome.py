"""What one (provider, case, mode) came to: its :class:`Result`, and the status of a failure.

A provider that raises is recorded, never re-raised: :func:`failure_status` turns the exception
into the CSV ``status`` and ``note`` (see :mod:`.results` for the statuses).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence, Tuple

import torch

from .op_bench import Unavailable
from .timing import Timing

__all__ = ["Result", "attach_speedups", "failure_status", "is_oom"]


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


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` says the device (or the host) ran out of memory."""
    oom_types = (MemoryError, getattr(torch, "OutOfMemoryError", MemoryError))
    return isinstance(exc, oom_types) or "out of memory" in str(exc).lower()


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
        return "oom", "out of memory"
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
