"""Plot benchmark results (the CSV) with matplotlib: one PNG per (op, mode, dtype, device, metric).

    python benchmarks/plot.py                     # every group: ms, TFLOP/s, fraction of GEMM, GB/s, peak MiB
    python benchmarks/plot.py --kernel short_long_attention --metric tflops fraction_of_gemm --device EPYC
    python benchmarks/plot.py --peak-memory       # only peak memory against resolution

Each plot has a line per provider over the case shapes (in size order), the median as the line
and the p20-p80 band shaded.

Peak memory against resolution (:func:`plot_peak_memory`, also drawn by a plain run when the
CSV has such rows): one PNG per device, ``peak_memory_vs_resolution_<device>.png``, a panel per
kernel of :data:`PEAK_KERNELS` present (``train_step_pic``: one PIC training step;
``completion_pic``: one PIC completion, mode ``inference``; shapes ``B<batch>-img<S>``), the
peak MiB (log scale) against the image side S (log 2), one line per (provider, batch[, dtype]):
the reference and each fused provider. A result that ran out of memory (status ``oom``, no
``peak_mb``) is an ``x`` at the memory limit its note states (``memory limit 16 GiB
(RLIMIT_DATA)``), labelled OOM; without a stated limit, at the top of the panel, labelled
"OOM (limit unknown)". Every limit the panel's rows state is drawn as a dashed line.

Files go to benchmarks/results/plots/ unless --out says otherwise. Needs matplotlib
(``pip install matplotlib`` or the package's ``plot`` extra).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from inpaint_fast.bench.results import provider_key, read_rows, shape_key

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CSV = os.path.join(HERE, "results", "benchmarks.csv")
DEFAULT_OUT = os.path.join(HERE, "results", "plots")
LABELS = {"ms": "time (ms, lower is better)", "tflops": "TFLOP/s", "gbps": "GB/s", "peak_mb": "peak memory (MiB)",
          "speedup_vs_reference": "speedup over reference (×)", "fraction_of_gemm": "fraction of the GEMM ceiling",
          "images_per_s": "images/s"}  # fmt: skip
PEAK_KERNELS = ("train_step_pic", "completion_pic")
PEAK_TITLES = {"train_step_pic": "PIC training step", "completion_pic": "PIC completion (inference)"}
_UNITS_MIB = {"k": 2**-10, "m": 1.0, "g": 2**10, "t": 2**20}
_LIMIT = re.compile(r"memory limit\s*(?:of\s*)?([0-9]+(?:\.[0-9]+)?)\s*([KMGT])i?B", re.IGNORECASE)
_SHAPE = re.compile(r"^B(\d+)-img(\d+)$")


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


def memory_limit_mib(note: str) -> Optional[float]:
    """The memory limit a row's note states (``memory limit 16 GiB (RLIMIT_DATA)``), in MiB; None
    if it states none. KiB/MiB/GiB/TiB and KB/MB/GB/TB are all read as powers of 1024."""
    m = _LIMIT.search(note or "")
    return float(m.group(1)) * _UNITS_MIB[m.group(2).lower()] if m else None


def peak_memory_series(rows: Sequence[dict], kernels: Sequence[str] = PEAK_KERNELS) -> Dict[str, Dict[str, dict]]:
    """The data of :func:`plot_peak_memory`: ``{device: {kernel: {(provider, batch, dtype):
    {"ok": [(side, peak MiB)], "oom": [(side, limit MiB or None)]}}}}``, sides ascending.
    ``peak_mb`` rows of status ok/unverified give the points; ``oom`` rows (any metric: an
    untimed result has only its ``ms`` row) the out-of-memory marks. Shapes other than
    ``B<batch>-img<side>`` are skipped."""
    out: Dict[str, Dict[str, dict]] = {}
    for r in rows:
        m = _SHAPE.match(r["shape"])
        if r["kernel"] not in kernels or not m:
            continue
        oom = r["status"] == "oom"
        if not oom and not (r["metric"] == "peak_mb" and r["status"] in ("ok", "unverified") and r["p50"]):
            continue  # other metrics; results that failed otherwise (wrong, error) have no point
        batch, side = int(m.group(1)), int(m.group(2))
        line = out.setdefault(r["device_name"], {}).setdefault(r["kernel"], {}).setdefault(
            (r["provider"], batch, r["dtype"]), {"ok": {}, "oom": {}})
        if oom:
            line["oom"][side] = memory_limit_mib(r["note"])
        else:
            line["ok"][side] = float(r["p50"])
    for kernels_ in out.values():
        for lines in kernels_.values():
            for line in lines.values():
                line["ok"] = sorted(line["ok"].items())
                line["oom"] = sorted(line["oom"].items())
    return out


def _line_order(key: Tuple[str, int, str]):
    provider, batch, dtype = key
    return (provider_key(provider), batch, dtype)


def plot_peak_memory(rows: Sequence[dict], out_dir: str, kernels: Sequence[str] = PEAK_KERNELS) -> List[str]:
    """Peak memory against resolution: one PNG per device (see the module docstring); returns
    their paths (none when ``rows`` hold no such results)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    written = []
    for device, by_kernel in sorted(peak_memory_series(rows, kernels).items()):
        panels = [k for k in kernels if k in by_kernel]
        fig, axes = plt.subplots(1, len(panels), figsize=(6.0 * len(panels), 4.8), squeeze=False)
        for ax, kernel in zip(axes[0], panels):
            lines = by_kernel[kernel]
            dtypes = {dtype for _, _, dtype in lines}
            values = [mb for line in lines.values() for _, mb in line["ok"]]
            # Every limit a row of this panel states (rows measured under a cap all say so), OOM or not.
            limits = [lim for r in rows if r["device_name"] == device and r["kernel"] == kernel
                      for lim in [memory_limit_mib(r["note"])] if lim is not None]
            top = max(values + limits, default=1.0) * 2.0  # where an OOM without a stated limit goes
            sides = sorted({s for line in lines.values() for s, _ in line["ok"] + line["oom"]})
            for key in sorted(lines, key=_line_order):
                provider, batch, dtype = key
                line = lines[key]
                label = f"{provider} B={batch}" + (f" {dtype}" if len(dtypes) > 1 else "")
                (drawn,) = ax.plot([s for s, _ in line["ok"]], [mb for _, mb in line["ok"]], marker="o", label=label)
                color = drawn.get_color()
                for side, limit in line["oom"]:
                    y = limit if limit is not None else top
                    ax.plot([side], [y], marker="x", markersize=11, mew=2.5, linestyle="none", color=color)
                    below = [(s, mb) for s, mb in line["ok"] if s < side]
                    if below:  # a dotted step from the line's last point that fitted
                        ax.plot([below[-1][0], side], [below[-1][1], y], linestyle=":", color=color)
                    text = f"{label}: OOM" + ("" if limit is not None else " (limit unknown)")
                    ax.annotate(text, (side, y), textcoords="offset points", xytext=(-6, 6), ha="right", fontsize=8,
                                color=color)
            for limit in sorted(set(limits)):
                ax.axhline(limit, color="grey", linestyle="--", linewidth=0.8)
                ax.annotate(f"memory limit {limit / 1024:g} GiB", (sides[0] if sides else 1, limit),
                            textcoords="offset points", xytext=(2, -11), fontsize=7, color="grey")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(NullFormatter())
            ax.set_ylim(top=top * 1.5)
            if sides:
                ax.set_xticks(sides)
                ax.set_xticklabels([f"{s}²" for s in sides])
                ax.set_xlim(sides[0] / 1.3, sides[-1] * 1.3)
            ax.set_xlabel("image side (pixels)")
            ax.set_ylabel("peak memory (MiB, log)")
            ax.set_title(PEAK_TITLES.get(kernel, kernel), fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(f"peak memory against resolution\n{device}", fontsize=10)
        fig.tight_layout()
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, f"peak_memory_vs_resolution_{_slug(device)}.png")
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--csv", default=DEFAULT_CSV)
    p.add_argument("--out", default=DEFAULT_OUT, help="folder for the PNGs")
    p.add_argument("--metric", nargs="+", default=["ms", "tflops", "fraction_of_gemm", "gbps", "peak_mb"],
                   choices=sorted(LABELS))
    p.add_argument("--kernel", help="short_long_attention | fusion_block")
    p.add_argument("--device", help="only devices whose name contains this (case-insensitive)")
    p.add_argument("--peak-memory", action="store_true",
                   help="only the peak memory against resolution plot (train_step_pic, completion_pic): "
                        "peak_memory_vs_resolution_<device>.png")
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
    written = [] if args.peak_memory else plot(rows, args.out, args.metric)
    written += plot_peak_memory(rows, args.out)
    if args.peak_memory and not written:
        print(f"no {' or '.join(PEAK_KERNELS)} results in {args.csv} match", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
