"""Plot benchmark results (the CSV) with matplotlib: one PNG per (op, mode, dtype, device, metric).

    python benchmarks/plot.py                                   # every group, ms / TFLOP/s / GB/s / peak MiB
    python benchmarks/plot.py --kernel short_long_attention --metric tflops --device H100

Each plot has a line per provider over the case shapes (in size order), the median as the line
and the p20-p80 band shaded. Files go to benchmarks/results/plots/ unless --out says otherwise.
Needs matplotlib (``pip install matplotlib`` or the package's ``plot`` extra).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Optional, Sequence

from inpaint_fast.bench.results import provider_key, read_rows, shape_key

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CSV = os.path.join(HERE, "results", "benchmarks.csv")
DEFAULT_OUT = os.path.join(HERE, "results", "plots")
LABELS = {"ms": "time (ms, lower is better)", "tflops": "TFLOP/s", "gbps": "GB/s", "peak_mb": "peak memory (MiB)",
          "speedup_vs_reference": "speedup over reference (×)"}  # fmt: skip


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+]+", "-", text).strip("-")


def plot(rows: Sequence[dict], out_dir: str, metrics: Sequence[str]) -> list:
    """Write the PNGs for ``rows``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    groups = {}
    for r in rows:
        if r["metric"] in metrics and r["p50"] and r["status"] in ("ok", "unverified"):
            groups.setdefault((r["kernel"], r["mode"], r["dtype"], r["device_name"], r["metric"]), []).append(r)
    written = []
    for (kernel, mode, dtype, device, metric), grows in sorted(groups.items()):
        shapes = sorted({r["shape"] for r in grows}, key=shape_key)
        fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(shapes) + 2), 4.5))
        for provider in sorted({r["provider"] for r in grows}, key=provider_key):
            by_shape = {r["shape"]: r for r in grows if r["provider"] == provider}
            xs = [i for i, s in enumerate(shapes) if s in by_shape]
            p50 = [float(by_shape[shapes[i]]["p50"]) for i in xs]
            ax.plot(xs, p50, marker="o", label=provider)
            lo = [float(by_shape[shapes[i]]["p20"] or by_shape[shapes[i]]["p50"]) for i in xs]
            hi = [float(by_shape[shapes[i]]["p80"] or by_shape[shapes[i]]["p50"]) for i in xs]
            ax.fill_between(xs, lo, hi, alpha=0.2)
        ax.set_xticks(range(len(shapes)))
        ax.set_xticklabels(shapes, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel(LABELS.get(metric, metric))
        if metric in ("ms", "peak_mb"):
            ax.set_yscale("log")
        ax.set_title(f"{kernel} {mode} {dtype}\n{device}", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(out_dir, _slug(f"{kernel}_{mode}_{dtype}_{metric}_{device}") + ".png")
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--csv", default=DEFAULT_CSV)
    p.add_argument("--out", default=DEFAULT_OUT, help="folder for the PNGs")
    p.add_argument("--metric", nargs="+", default=["ms", "tflops", "gbps", "peak_mb"], choices=sorted(LABELS))
    p.add_argument("--kernel", help="short_long_attention | fusion_block")
    p.add_argument("--device", help="only devices whose name contains this (case-insensitive)")
    args = p.parse_args(argv)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("plot.py needs matplotlib, which is not installed: pip install matplotlib", file=sys.stderr)
        return 1
    rows = [
        r for r in read_rows(args.csv)
        if (args.kernel is None or r["kernel"] == args.kernel)
        and (args.device is None or args.device.lower() in r["device_name"].lower())
    ]  # fmt: skip
    if not rows:
        print(f"no results in {args.csv} match", file=sys.stderr)
        return 1
    for path in plot(rows, args.out, args.metric):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
