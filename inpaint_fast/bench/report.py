"""The console table of ``inpaint-fast bench``.

Throughput is TFLOP/s where the op counts FLOPs and GB/s where it counts bytes (the formulas:
benchmarks/README.md); ``of GEMM`` is the median FLOP rate as a percentage of the run's GEMM ceiling
(:func:`.outcome.fraction_of_gemm`; ``-`` when the run measured none, as on CUDA).
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence

from .outcome import Result, find_gemm_ceiling, fraction_of_gemm

__all__ = ["format_case_line", "format_table"]

HEADER = ("implementation", "op", "mode", "dtype", "shape", "ms", "p20-p80 ms", "throughput", "of GEMM",
          "speedup", "peak MiB", "status")  # fmt: skip


def _num(v: float, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if v == 0:
        return "0"
    mag = math.floor(math.log10(abs(v)))
    return f"{v:.{max(digits - 1 - mag, 0)}f}"


def _row(r: Result, notes: List[str], ceiling: Optional[Result] = None) -> tuple:
    t = r.timing
    status = r.status
    if r.status != "ok" and r.note:
        notes.append(r.note)
        status = f"{r.status} [{len(notes)}]"
    rates = []
    if t is not None and r.flops:
        rates.append(f"{_num(r.flops / t.p50 / 1e9)} TFLOP/s")
    if t is not None and r.nbytes:
        rates.append(f"{_num(r.nbytes / t.p50 / 1e6)} GB/s")
    throughput = ", ".join(rates) or "-"
    fraction = fraction_of_gemm(r, ceiling)
    return (
        r.provider,
        r.kernel,
        r.mode,
        r.dtype,
        r.shape,
        _num(t.p50) if t else "-",
        f"{_num(t.p20)}-{_num(t.p80)}" if t else "-",
        throughput,
        f"{_num(100 * fraction[1])}%" if fraction else "-",
        f"{r.speedup[1]:.2f}x" if r.speedup else "-",
        _num(r.peak_mb, 4) if t else "-",
        status,
    )


def format_table(results: Sequence[Result]) -> str:
    """A fixed-width table, grouped by (op, dtype, shape, mode) with the reference first, and
    numbered notes for every row that was not timed. FLOP rates are also stated against the GEMM
    ceiling among ``results`` (if any)."""
    order = {}
    for r in results:
        order.setdefault((r.kernel, r.dtype, r.shape, r.mode), len(order))
    ranked = sorted(results, key=lambda r: (order[(r.kernel, r.dtype, r.shape, r.mode)], r.provider != "reference"))
    notes: List[str] = []
    ceiling = find_gemm_ceiling(results)
    rows = [HEADER] + [_row(r, notes, ceiling) for r in ranked]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    right = {5, 6, 7, 8, 9, 10}
    lines = []
    for n, row in enumerate(rows):
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines += [f"[{i}] {note}" for i, note in enumerate(notes, 1)]
    return "\n".join(lines)


def _provider_summary(r: Result) -> str:
    """``cpu 4.20 ms``; a result that was not timed shows its status instead (``cpu wrong``)."""
    if r.timing is None:
        return f"{r.provider} {r.status}"
    flag = "" if r.status == "ok" else f" ({r.status})"
    return f"{r.provider} {_num(r.timing.p50)} ms{flag}"


def format_case_line(results: Sequence[Result]) -> str:
    """One case and mode in a line, every provider's median:
    ``short_long_attention fwd fp32 B1-C128-Cq32-Cp128-N1024: reference 9.20 ms, cpu 4.20 ms``."""
    first = results[0]
    return f"{first.kernel} {first.mode} {first.dtype} {first.shape}: " + ", ".join(map(_provider_summary, results))
