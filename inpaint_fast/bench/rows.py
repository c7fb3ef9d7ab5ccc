"""CSV rows (the schema of :mod:`.results`) for a run's :class:`.outcome.Result` objects.

One result becomes one row per metric: ``ms`` always, then, when it was timed, ``tflops``,
``fraction_of_gemm``, ``gbps`` and ``images_per_s`` where the op counts them, ``peak_mb`` and
``speedup_vs_reference``.

``fraction_of_gemm`` (p20/p50/p80) is the result's FLOP rate over the FLOP rate of the run's
GEMM ceiling (:func:`.outcome.fraction_of_gemm`): on the CPU the ceiling timed in the bursts just
before and after the result (its note then states that rate), else the ceiling's median; written
for every timed result that counts FLOPs when the run measured a ceiling (a timed
``ceiling_gemm`` result among ``results``, or ``ceiling=``), and absent otherwise. The ceiling's
own row is an ordinary result (its ``ms``, ``tflops`` and ``peak_mb``, over all bursts), so the
fraction can be recomputed from the CSV: ``fraction_of_gemm.pX = tflops.pX / R``, R the rate in
the note or, without one, ``ceiling_gemm tflops.p50``.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

from .outcome import Result, find_gemm_ceiling, fraction_of_gemm

__all__ = ["results_to_rows"]


def results_to_rows(results: Sequence[Result], env: dict, ceiling: Optional[Result] = None) -> List[dict]:
    """CSV rows (see :mod:`.results`) for ``results``, with ``env`` (:func:`.env.environment`).
    ``ceiling``: the GEMM ceiling the fractions divide by (default: the one in ``results``)."""
    ceiling = ceiling if ceiling is not None else find_gemm_ceiling(results)
    rows = []
    for r in results:
        note = r.note
        if r.ceiling_rate and r.flops and r.timing is not None and ceiling is not None:
            around = f"GEMM ceiling around it {r.ceiling_rate / 1e9:.4g} TFLOP/s"
            note = f"{note}; {around}" if note else around
        base = dict(kernel=r.kernel, provider=r.provider, mode=r.mode, dtype=r.dtype, shape=r.shape,
                    status=r.status, note=note, **env)
        t = r.timing
        if t is None:
            rows.append(dict(base, metric="ms"))
            continue
        rows.append(dict(base, metric="ms", p20=t.p20, p50=t.p50, p80=t.p80))
        if r.flops:
            rows.append(dict(base, metric="tflops", p20=r.flops / t.p80 / 1e9, p50=r.flops / t.p50 / 1e9,
                             p80=r.flops / t.p20 / 1e9))
            fraction = fraction_of_gemm(r, ceiling)
            if fraction is not None:
                rows.append(dict(base, metric="fraction_of_gemm", p20=fraction[0], p50=fraction[1], p80=fraction[2]))
        if r.nbytes:
            rows.append(dict(base, metric="gbps", p20=r.nbytes / t.p80 / 1e6, p50=r.nbytes / t.p50 / 1e6,
                             p80=r.nbytes / t.p20 / 1e6))
        if r.items:
            rows.append(dict(base, metric="images_per_s", p20=r.items / t.p80 * 1e3, p50=r.items / t.p50 * 1e3,
                             p80=r.items / t.p20 * 1e3))
        rows.append(dict(base, metric="peak_mb", p50=r.peak_mb))
        if r.speedup is not None:
            rows.append(dict(base, metric="speedup_vs_reference", p20=r.speedup[0], p50=r.speedup[1],
                             p80=r.speedup[2]))
    return rows
