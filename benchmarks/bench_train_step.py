"""End-to-end benchmark: training-step images/s and peak memory of PIC and DFNet, fused vs reference.

    python benchmarks/bench_train_step.py                              # the device's default grid
    python benchmarks/bench_train_step.py --model pic --sizes 512 1024 --batch 8 --amp bf16
    python benchmarks/bench_train_step.py --providers reference cuda triton --no-csv
    python benchmarks/bench_train_step.py --device cpu --model pic --sizes 1024 --batch 1 --reps 1 \
        --memory-limit 20                                              # CPU, 1024², capped child processes

One step is exactly the step of ``inpaint-fast train`` (inpaint_fast/training/tasks.py); the
providers differ only in the backend of the fused ops. Every provider's first step is compared
with the reference's (losses) before it is timed; see inpaint_fast/bench/train_step.py for the
method. Default grid: on CUDA PIC (batch 8) and DFNet (batch 6) at 256², 512², 1024²; on CPU one
small step of each. --memory-limit GIB runs each (case, provider) in a child process capped at GIB
(RLIMIT_DATA; an allocation over it is recorded as oom, the note of every row states the limit);
--reps N times exactly N steps (for steps of seconds to minutes). Rows are upserted into the
committed benchmarks/results/benchmarks.csv (--csv PATH: elsewhere); on a CPU that other
processes keep busy that write is refused unless --force.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS_CSV = os.path.join(HERE, "results", "benchmarks.csv")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", nargs="+", choices=("pic", "dfnet"), help="default: both")
    p.add_argument("--sizes", nargs="+", type=int, metavar="S", help="image sides (PIC: multiple of 32, >= 96; "
                   "DFNet: multiple of 256)")
    p.add_argument("--batch", type=int, help="batch size (default: PIC 8 / DFNet 6 on CUDA, small on CPU)")
    p.add_argument("--amp", default="off", choices=("off", "bf16", "fp16"), help="autocast dtype of the step")
    p.add_argument("--providers", nargs="+", metavar="NAME",
                   help="reference and this package's backends (default: reference + every backend available "
                        "on the device); the reference runs first as the gate's oracle")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda if available")
    p.add_argument("--quick", action="store_true", help="smaller grid and shorter timings")
    p.add_argument("--csv", default=RESULTS_CSV, help="results CSV to upsert into")
    p.add_argument("--no-csv", action="store_true")
    p.add_argument("--force", action="store_true",
                   help="write into the committed CSV even though other processes are running on the CPUs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reps", type=int, metavar="N",
                   help="time exactly N steps per provider, one by one (default: as many as fit the timing budget, "
                        "at least 3; at large sizes a step takes minutes on a CPU)")
    p.add_argument("--memory-limit", type=float, metavar="GIB",
                   help="run each (case, provider) in a child process whose memory is capped at GIB GiB "
                        "(RLIMIT_DATA, Linux): an allocation over it is recorded as oom and the sweep goes on")
    args = p.parse_args(argv)
    if args.reps is not None and args.reps < 1:
        p.error(f"--reps: expected 1 or more, got {args.reps}")
    if args.memory_limit is not None and not (0 < args.memory_limit < float("inf")):
        p.error(f"--memory-limit: expected a positive number of GiB, got {args.memory_limit:g}")
    if args.memory_limit is not None and not sys.platform.startswith("linux"):
        p.error(f"--memory-limit: needs Linux (RLIMIT_DATA); this is {sys.platform}")

    import dataclasses

    import torch
    from tqdm import tqdm

    import inpaint_fast
    from inpaint_fast.bench.script_run import begin, finish
    from inpaint_fast.bench.train_step import QUICK_STEP_TIMING, STEP_TIMING, default_cases, run_train_bench

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cases = default_cases(device, args.quick)
    if args.model:
        cases = [c for c in cases if c.model in args.model] or [
            dataclasses.replace(default_cases(device, args.quick)[0], model=m) for m in args.model
        ]
    if args.sizes:
        cases = [dataclasses.replace(c, size=s) for c in {c.model: c for c in cases}.values() for s in args.sizes]
    cases = [dataclasses.replace(c, amp=args.amp, batch=args.batch or c.batch) for c in cases]
    providers = args.providers or ["reference"] + [
        b for b in inpaint_fast.available_backends(device) if b != "reference"
    ]
    if providers[0] != "reference":
        providers = ["reference"] + [b for b in providers if b != "reference"]

    try:
        env, busy = begin(device, args.csv, args.no_csv, args.force, args.memory_limit)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    with tqdm(total=len(cases) * len(providers), desc="train-step", unit="run", file=sys.stderr,
              leave=False, disable=None) as bar:
        results = run_train_bench(cases, providers, device, QUICK_STEP_TIMING if args.quick else STEP_TIMING,
                                  progress=bar, seed=args.seed, reps=args.reps,
                                  memory_limit_gib=args.memory_limit)
    summary = lambda r: (f"{r.kernel} {r.provider:>9} {r.shape}: {r.items / r.timing.p50 * 1e3:8.2f} images/s, "  # noqa: E731
                         f"peak {r.peak_mb:8.1f} MiB")
    return finish(results, env, busy, args.csv, args.no_csv, summary, time.perf_counter() - start)

if __name__ == "__main__":
    sys.exit(main())
