"""Render benchmark results (the CSV) as Markdown, so README numbers are never typed by hand.

    python benchmarks/readme_table.py                                   # print the tables
    python benchmarks/readme_table.py --update-readme                   # rewrite the repo README's marked block
    python benchmarks/readme_table.py --readme OTHER.md --write         # ... or another file's
    python benchmarks/readme_table.py --device H100 --dtype bf16 --metric ms peak_mb
    python benchmarks/readme_table.py --device EPYC --metric tflops fraction_of_gemm

One table per (device, metric): a row per (op, mode, dtype, shape), a column per provider with
the median (p50), and the best speedup over the reference. A provider that was not timed shows
its status (``wrong``, ``unavailable``, ...). ``--write`` replaces everything between
``<!-- bench:start -->`` and ``<!-- bench:end -->`` in the README.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

from inpaint_fast.bench.results import mode_key, provider_key, read_rows, shape_key

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CSV = os.path.join(HERE, "results", "benchmarks.csv")
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
UNITS = {"ms": "ms", "tflops": "TFLOP/s", "gbps": "GB/s", "peak_mb": "peak MiB", "speedup_vs_reference": "× reference",
         "fraction_of_gemm": "fraction of the run's GEMM ceiling (fp32 2048³ on the CPU)"}  # fmt: skip
OP_NAMES = {"short_long_attention": "attention", "fusion_block": "fusion block", "ceiling_gemm": "GEMM ceiling",
            "ceiling_copy": "copy ceiling"}  # fmt: skip
# What a cell that holds no number means (the CSV row's `note` says more for each case).
STATUS_MEANING = {
    "wrong": "failed the correctness gate (an output or gradient further from the fp64 oracle than the dtype's "
             "tolerance, or than twice the reference's own error) and so was not timed",
    "unsupported": "the provider cannot run this mode (e.g. FlexAttention has no CPU backward)",
    "unavailable": "the provider cannot run here (not built, wrong device or dtype)",
    "oom": "out of memory",
    "error": "the provider raised an error",
    "†": "timed without a correctness check (the reference could not run to make the fp64 oracle, e.g. out of memory)",
}


def _fmt(value: str) -> str:
    v = float(value)
    if v == 0 or abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.3g}"


def select(rows: Sequence[dict], device: Optional[str] = None, kernel: Optional[str] = None,
           dtype: Optional[str] = None) -> List[dict]:
    """Rows whose device name contains ``device`` and whose kernel/dtype match (None: any)."""
    return [
        r for r in rows
        if (device is None or device.lower() in r["device_name"].lower())
        and (kernel is None or r["kernel"] == kernel)
        and (dtype is None or r["dtype"] == dtype)
    ]  # fmt: skip


def render(rows: Sequence[dict], metrics: Sequence[str] = ("ms", "peak_mb")) -> str:
    """Markdown for ``rows`` (CSV rows as read by ``read_rows``)."""
    out: List[str] = []
    devices = OrderedDict((r["device_name"], None) for r in rows)
    for device in devices:
        drows = [r for r in rows if r["device_name"] == device]
        meta = max(drows, key=lambda r: r["timestamp"])
        versions = f"torch {meta['torch_version']}"
        if meta["cuda_version"]:
            versions += f", CUDA {meta['cuda_version']}"
        if meta["triton_version"] and meta["cuda_version"]:
            versions += f", Triton {meta['triton_version']}"
        out.append(f"**{device}** ({versions}; commit {meta['commit']}, {meta['timestamp'][:10]})")
        out.append("")
        for metric in metrics:
            table = _table(drows, metric)
            if table:
                out += table + [""]
        out += _legend(drows)
    return "\n".join(out).rstrip() + "\n"


def _legend(rows: Sequence[dict]) -> List[str]:
    """One line per kind of non-numeric cell that occurs in ``rows``."""
    statuses = {r["status"] for r in rows if r["metric"] == "ms"}
    present = [s for s in STATUS_MEANING if s in statuses or (s == "†" and "unverified" in statuses)]
    return [f"`{s}`: {STATUS_MEANING[s]}." if s != "†" else f"{s}: {STATUS_MEANING[s]}." for s in present] + (
        [""] if present else [])


def _table(rows: Sequence[dict], metric: str) -> List[str]:
    cells: Dict[tuple, Dict[str, str]] = {}
    speedups: Dict[tuple, List[tuple]] = {}
    providers = set()
    for r in rows:
        key = (r["kernel"], r["mode"], r["dtype"], r["shape"])
        if r["metric"] == metric and r["status"] in ("ok", "unverified") and r["p50"]:
            cells.setdefault(key, {})[r["provider"]] = _fmt(r["p50"]) + ("†" if r["status"] == "unverified" else "")
            providers.add(r["provider"])
        elif r["metric"] == "ms" and r["status"] not in ("ok", "unverified"):
            cells.setdefault(key, {})[r["provider"]] = r["status"]
            providers.add(r["provider"])
        if r["metric"] == "speedup_vs_reference" and r["provider"] != "reference" and r["p50"]:
            speedups.setdefault(key, []).append((float(r["p50"]), r["provider"]))
    if not any(v for c in cells.values() for v in c.values() if v[:1].isdigit()):
        return []
    cols = sorted(providers, key=provider_key)
    header = ["op", "mode", "dtype", "shape"] + cols + (["best speedup"] if metric == "ms" else [])
    lines = [f"{UNITS.get(metric, metric)} (median)", "", "| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] * 4 + ["---:"] * (len(header) - 4)) + "|"]
    op_rank = {k: i for i, k in enumerate(OP_NAMES)}
    order = sorted(cells, key=lambda k: (op_rank.get(k[0], len(op_rank)), k[0], k[2], mode_key(k[1]), shape_key(k[3])))
    for key in order:
        kernel, mode, dtype, shape = key
        row = [OP_NAMES.get(kernel, kernel), mode, dtype, shape] + [cells[key].get(p, "") for p in cols]
        if metric == "ms":
            best = max(speedups.get(key, []), default=None)
            row.append(f"{best[0]:.2f}× ({best[1]})" if best else "")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def replace_block(text: str, block: str) -> str:
    """``text`` with everything between the bench markers replaced by ``block``."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"markers {START} ... {END} not found (in that order)")
    note = "<!-- generated by benchmarks/readme_table.py from benchmarks/results/benchmarks.csv: do not edit -->"
    return text[: start + len(START)] + "\n" + note + "\n" + block.rstrip("\n") + "\n" + text[end:]


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--csv", default=DEFAULT_CSV, help="results CSV (default: benchmarks/results/benchmarks.csv)")
    p.add_argument("--device", help="only devices whose name contains this (case-insensitive)")
    p.add_argument("--kernel", help="short_long_attention | fusion_block")
    p.add_argument("--dtype", help="fp32 | bf16 | fp16 | fp64")
    p.add_argument("--metric", nargs="+", default=["ms", "peak_mb"], choices=sorted(UNITS))
    p.add_argument("--readme", help="README to update (with --write)")
    p.add_argument("--write", action="store_true", help="rewrite the marked block of --readme in place")
    p.add_argument("--update-readme", action="store_true", help="same as --readme <repo>/README.md --write")
    args = p.parse_args(argv)
    if args.update_readme:
        args.readme, args.write = args.readme or os.path.join(os.path.dirname(HERE), "README.md"), True

    rows = select(read_rows(args.csv), args.device, args.kernel, args.dtype)
    if not rows:
        print(f"no results in {args.csv} match", file=sys.stderr)
        return 1
    block = render(rows, args.metric)
    if args.write:
        if not args.readme:
            p.error("--write needs --readme")
        with open(args.readme) as f:
            text = f.read()
        try:
            new = replace_block(text, block)
        except ValueError as exc:
            print(f"{args.readme}: {exc}", file=sys.stderr)
            return 1
        with open(args.readme, "w") as f:
            f.write(new)
        print(f"updated {args.readme}")
    else:
        sys.stdout.write(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
