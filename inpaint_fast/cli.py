"""The ``inpaint-fast`` command line.

    inpaint-fast bench --quick                       # both ops, small sweep, < 3 min on 2 CPU cores
    inpaint-fast bench --op attention --mode fwd --sizes 256 512 1024 --dtype bf16 --device cuda

Every subcommand is a pair ``add_<name>_parser(subparsers)`` / ``run_<name>(args) -> int``
registered in ``COMMANDS``; heavy imports happen inside ``run_<name>`` so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

__all__ = ["main", "build_parser", "COMMANDS"]

DEFAULT_CSV = os.path.join("benchmarks", "results", "benchmarks.csv")


def _split(values: Optional[Sequence[str]]) -> Optional[List[str]]:
    """``--x a b,c`` -> [a, b, c]; None stays None."""
    if values is None:
        return None
    return [v for item in values for v in item.split(",") if v]


# ---------------------------------------------------------------------------------------------
# bench


def add_bench_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "bench",
        help="benchmark the ops against the reference (ms, TFLOP/s or GB/s, peak memory)",
        description=(
            "Benchmark inpaint_fast's ops against the eager reference and the PyTorch baselines. "
            "Every provider is first checked against the reference on the same inputs; a wrong one "
            "is reported and not timed. Results are printed as a table and upserted into a CSV "
            f"(default {DEFAULT_CSV} when run from the repository root). Exit status 1 if a provider "
            "failed the correctness gate."
        ),
    )
    p.add_argument("--op", default="all", help="attention | fusion_block | all (default: all)")
    p.add_argument("--mode", nargs="+", metavar="MODE",
                   help="fwd, bwd, fwd+bwd; the fusion block also takes eval-/train- prefixes "
                        "(a bare mode means both). Default: the sweep's modes")
    p.add_argument("--dtype", nargs="+", metavar="DTYPE", help="fp32 bf16 fp16 fp64 (default: per device)")
    p.add_argument("--sizes", nargs="+", metavar="S",
                   help="input image sides in pixels: attention runs at N = (S/8)^2 positions, the fusion "
                        "block on an S x S image (default: per device)")
    p.add_argument("--levels", nargs="+", metavar="K", help="fusion block: DFNet levels 0..5 (default: per device)")
    p.add_argument("--batch", type=int,
                   help="batch size (default: attention keeps B*N constant; fusion block 1 on CPU, 6 on CUDA)")
    p.add_argument("--providers", nargs="+", metavar="NAME",
                   help="reference cpu triton cuda auto compile sdpa flex (default: reference + this package's "
                        "backends available on the device; on CUDA also sdpa, and compile/flex without --quick)")
    p.add_argument("--quick", action="store_true", help="a small sweep with short timings (the README's first run)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda if available, else cpu")
    p.add_argument("--csv", metavar="PATH",
                   help=f"results CSV to upsert into (default: {DEFAULT_CSV} when ./benchmarks exists)")
    p.add_argument("--no-csv", action="store_true", help="do not write results")
    p.add_argument("--min-run-time", type=float, metavar="SEC", help="CPU: seconds of measurement per result")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    return p


def _csv_path(args) -> Optional[str]:
    if args.no_csv:
        return None
    if args.csv:
        return args.csv
    return DEFAULT_CSV if os.path.isdir("benchmarks") else None  # run from the repository root


def plan_bench(args, device) -> List[Tuple[object, list, tuple, tuple]]:
    """(op bench, cases, modes, providers) for every selected op; raises ValueError on bad args."""
    from inpaint_fast.bench import OPS, get_op
    from inpaint_fast.bench.core import with_sweep_overrides

    benches = list(OPS.values()) if args.op == "all" else [get_op(args.op)]
    requested_providers = _split(args.providers)
    if requested_providers:
        known = {n for b in benches for n in b.providers()}
        unknown = [n for n in requested_providers if n not in known]
        if unknown:
            raise ValueError(f"unknown provider(s) {unknown}; known: {sorted(known)}")
    plan = []
    for bench in benches:
        sweep = with_sweep_overrides(
            bench.default_sweep(device, args.quick),
            sizes=tuple(int(s) for s in _split(args.sizes)) if args.sizes else None,
            dtypes=tuple(_split(args.dtype)) if args.dtype else None,
            levels=tuple(int(k) for k in _split(args.levels)) if args.levels else None,
            batch=args.batch,
        )
        modes = bench.resolve_modes(_split(args.mode) if args.mode else sweep.modes)
        if requested_providers:
            providers = tuple(n for n in requested_providers if n in bench.providers())
        else:
            providers = bench.default_providers(device, args.quick)
        if providers:
            plan.append((bench, bench.cases(sweep, device), modes, providers))
    return plan


def _busy_cpus() -> int:
    """How many other runnable tasks share the CPUs right now (min of a few /proc/loadavg samples)."""
    counts = []
    for _ in range(5):
        try:
            with open("/proc/loadavg") as f:
                counts.append(int(f.read().split()[3].split("/")[0]) - 1)  # minus this process
        except (OSError, IndexError, ValueError):
            return 0
        time.sleep(0.05)
    return max(min(counts), 0)


def run_bench(args) -> int:
    import torch
    from tqdm import tqdm

    from inpaint_fast.bench import TimingConfig, results_to_rows, run
    from inpaint_fast.bench.env import environment
    from inpaint_fast.bench.report import format_table
    from inpaint_fast.bench.results import upsert_rows

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda, but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    try:
        plan = plan_bench(args, device)
    except (ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    config = TimingConfig.quick() if args.quick else TimingConfig()
    if args.min_run_time is not None:
        config = dataclasses.replace(config, min_run_time=args.min_run_time)
    env = environment(device)
    print(f"device: {env['device_name']} | torch {env['torch_version']} | commit {env['commit']}", flush=True)
    busy = _busy_cpus() if device.type == "cpu" else 0
    if busy:
        print(f"warning: {busy} other process(es) are running on this machine's {os.cpu_count()} CPUs; "
              "CPU timings will be slow and noisy (torch's threads wait on each other)", file=sys.stderr)

    total = sum(len(cases) * len(modes) * len(provs) for _, cases, modes, provs in plan)
    start = time.perf_counter()
    results = []
    with tqdm(total=total, desc="bench", unit="run", file=sys.stderr, leave=False, disable=None) as bar:
        for bench, cases, modes, providers in plan:
            results += run(bench, cases, modes, providers, device, config, progress=bar, seed=args.seed)
    if busy:  # keep the caveat with the numbers
        for r in results:
            r.note = "; ".join(filter(None, [r.note, f"{busy} other processes were running at the start"]))
    print(format_table(results))
    print(f"{len(results)} results in {time.perf_counter() - start:.1f} s")

    path = _csv_path(args)
    if path:
        n = upsert_rows(path, results_to_rows(results, env))
        print(f"results upserted into {path} ({n} rows)")
    elif not args.no_csv:
        print("results not saved (no benchmarks/ folder here, i.e. not the repository root): pass --csv PATH")
    wrong = [r for r in results if r.status == "wrong"]
    if wrong:
        print(f"{len(wrong)} result(s) failed the correctness gate", file=sys.stderr)
    return 1 if wrong else 0


# ---------------------------------------------------------------------------------------------
# entry point

# name -> (add the subparser, run it). `train` and `inpaint` join here (DESIGN.md §3).
COMMANDS: Dict[str, Tuple[Callable, Callable]] = {
    "bench": (add_bench_parser, run_bench),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inpaint-fast", description="Fused kernels for deep image inpainting.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (add, _) in COMMANDS.items():
        add(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return COMMANDS[args.command][1](args)


if __name__ == "__main__":
    sys.exit(main())
