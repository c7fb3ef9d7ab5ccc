"""The one CSV schema of benchmark results, and its upsert.

One row is one metric of one measurement (long format, as Liger-Kernel's
``all_benchmark_data.csv``):

=================  =====================================================================
kernel             ``short_long_attention`` | ``fusion_block`` | ``train_step_pic`` |
                   ``train_step_dfnet`` (one whole training step, benchmarks/bench_train_step.py) |
                   ``completion_pic`` (one ``inpaint-fast inpaint --model pic``,
                   benchmarks/bench_completion.py) | ``ceiling_gemm`` | ``ceiling_copy`` (the
                   ceilings the fractions divide by, inpaint_fast/bench/ceilings.py)
provider           implementation: ``reference`` (eager PyTorch), ``cpu``, ``triton``,
                   ``cuda``, ``auto`` (this package's backends), ``compile`` (torch.compile
                   of the reference), ``sdpa``, ``flex`` (compiled FlexAttention)
mode               ``fwd`` | ``bwd`` | ``fwd+bwd``; the fusion block prefixes ``eval-`` or
                   ``train-`` (BatchNorm with running or batch statistics); ``train-step``,
                   ``inference`` (the end-to-end rows)
dtype              ``fp32`` | ``bf16`` | ``fp16`` | ``fp64``
shape              compact string, e.g. ``B1-C128-Cq32-Cp128-N4096`` or
                   ``B1-k2-c128-64x64-img256``
metric             ``ms`` | ``tflops`` | ``gbps`` | ``peak_mb`` | ``speedup_vs_reference`` |
                   ``images_per_s`` (end-to-end rows) | ``fraction_of_gemm`` (the FLOP rate over
                   the same run's GEMM ceiling, inpaint_fast/bench/rows.py)
p20, p50, p80      the metric at the 20th/50th/80th percentile of the timings (throughputs
                   and speedups are derived from the time quantiles, so p20 <= p50 <= p80);
                   ``peak_mb`` is one measurement, in p50. Empty when there is no value.
device_name        ``torch.cuda.get_device_name()``, or the CPU model, instruction set and thread count
torch_version, triton_version, cuda_version, commit, timestamp (UTC, ISO 8601)
status             ``ok`` | ``wrong`` (failed the correctness gate, not timed) |
                   ``unavailable`` | ``unsupported`` | ``oom`` | ``error`` |
                   ``unverified`` (timed, but the reference could not run to check it)
note               why, for every status but ``ok`` (and the correctness error when ok)
=================  =====================================================================

Rows are upserted on (kernel, provider, mode, dtype, shape, metric, device_name). A new
measurement of a (kernel, provider, mode, dtype, shape, device_name) replaces *all* the metrics
stored for it, so a provider that turned wrong leaves no stale timings behind.
"""

from __future__ import annotations

import csv
import io
import math
import os
from typing import Dict, Iterable, List

from ..training.files import atomic_write

__all__ = ["COLUMNS", "KEY", "format_value", "provider_key", "read_rows", "shape_key", "upsert_rows"]

COLUMNS = [
    "kernel",
    "provider",
    "mode",
    "dtype",
    "shape",
    "metric",
    "p20",
    "p50",
    "p80",
    "device_name",
    "torch_version",
    "triton_version",
    "cuda_version",
    "commit",
    "timestamp",
    "status",
    "note",
]
KEY = ("kernel", "provider", "mode", "dtype", "shape", "metric", "device_name")
_MEASUREMENT = ("kernel", "provider", "mode", "dtype", "shape", "device_name")
PROVIDER_ORDER = ("reference", "cpu", "triton", "cuda", "auto", "compile", "sdpa", "flex")
MODE_ORDER = ("fwd", "bwd", "fwd+bwd")


def provider_key(name: str):
    """Sort key: reference, this package's backends, then the PyTorch baselines, then the rest."""
    return (PROVIDER_ORDER.index(name) if name in PROVIDER_ORDER else len(PROVIDER_ORDER), name)


def shape_key(shape: str):
    """Natural sort key of a shape string: ``B4-...-N1024`` before ``B1-...-N4096``, sizes in
    numeric order (image size first, then N or level, for the fusion block's ``-img`` shapes)."""
    parts = shape.split("-")
    parts = parts[-1:] + parts[:-1] if parts and parts[-1].startswith("img") else parts[::-1]
    return [(int("".join(ch for ch in p if ch.isdigit()) or 0), p) for p in parts]


def mode_key(mode: str):
    variant, _, pass_ = mode.rpartition("-") if mode.split("-")[0] in ("eval", "train") else ("", "", mode)
    return (variant, MODE_ORDER.index(pass_) if pass_ in MODE_ORDER else len(MODE_ORDER), mode)


def format_value(v) -> str:
    """A CSV cell: floats with 6 significant digits, NaN/None as empty."""
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return str(v)


def read_rows(path: str) -> List[Dict[str, str]]:
    """All rows of a results CSV (missing file: no rows). Unknown columns are dropped."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return [{c: row.get(c) or "" for c in COLUMNS} for row in csv.DictReader(f)]


def upsert_rows(path: str, rows: Iterable[dict]) -> int:
    """Insert ``rows`` into the CSV at ``path``, replacing earlier rows of the same measurement.

    Returns the number of rows in the file afterwards. The file is rewritten atomically.
    """
    new = [{c: format_value(r.get(c)) for c in COLUMNS} for r in rows]
    replaced = {tuple(r[c] for c in _MEASUREMENT) for r in new}
    kept = [r for r in read_rows(path) if tuple(r[c] for c in _MEASUREMENT) not in replaced]
    merged: Dict[tuple, dict] = {}
    for r in kept + new:  # a duplicate key inside ``rows``: the last one wins
        merged[tuple(r[c] for c in KEY)] = r

    def write(f) -> None:
        text = io.TextIOWrapper(f, encoding="utf-8", newline="")
        writer = csv.DictWriter(text, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(merged.values())
        text.flush()
        text.detach()  # atomic_write flushes, syncs and closes the file itself

    atomic_write(path, write)
    return len(merged)
