"""End-to-end benchmark: training-step images/s and peak memory of PIC and DFNet, fused vs reference.

    python benchmarks/bench_train_step.py                              # the device's default grid
    python benchmarks/bench_train_step.py --model pic --sizes 512 1024 --batch 8 --amp bf16
    python benchmarks/bench_train_step.py --providers reference cuda triton --no-csv

One step is exactly the step of ``inpaint-fast train`` (inpaint_fast/training/tasks.py); the
providers differ only in the backend of the fused ops. Every provider's first step is compared
with the reference's (losses) before it is timed; see inpaint_fast/bench/train_step.py for the
method. Default grid: on CUDA PIC (batch 8) and DFNet (batch 6) at 256², 512², 1024²; on CPU one
small step of each. Rows are upserted into the committed benchmarks/results/benchmarks.csv (--csv
PATH: elsewhere); on a CPU that other processes keep busy that write is refused unless --force.
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
    args = p.parse_args(argv)

    import dataclasses

    import torch
    from tqdm import tqdm

    import inpaint_fast
    from inpaint_fast.bench.rows import results_to_rows
    from inpaint_fast.bench.destination import Destination, is_committed_csv, refuse_noisy_reference
    from inpaint_fast.bench.env import busy_cpus, environment
    from inpaint_fast.bench.report import format_table
    from inpaint_fast.bench.results import upsert_rows
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

    env = environment(device)
    print(f"device: {env['device_name']} | torch {env['torch_version']} | commit {env['commit']}", flush=True)
    busy = busy_cpus() if device.type == "cpu" else 0
    if busy:
        print(f"warning: {busy} other process(es) are running on this machine's {os.cpu_count()} CPUs; "
              "CPU timings will be slow and noisy", file=sys.stderr)
    dest = None if args.no_csv else Destination(args.csv, "--csv", is_committed_csv(args.csv))
    try:  # before the run: noisy timings must not replace the committed reference rows
        refuse_noisy_reference(dest, busy, os.cpu_count(), args.force)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    with tqdm(total=len(cases) * len(providers), desc="train-step", unit="run", file=sys.stderr,
              leave=False, disable=None) as bar:
        results = run_train_bench(cases, providers, device, QUICK_STEP_TIMING if args.quick else STEP_TIMING,
                                  progress=bar, seed=args.seed)
    if busy:  # keep the caveat with the numbers
        for r in results:
            r.note = "; ".join(filter(None, [r.note, f"{busy} other processes were running at the start"]))
    print(format_table(results))
    for r in results:
        if r.timing is not None:
            print(f"{r.kernel} {r.provider:>9} {r.shape}: {r.items / r.timing.p50 * 1e3:8.2f} images/s, "
                  f"peak {r.peak_mb:8.1f} MiB")
    print(f"{len(results)} results in {time.perf_counter() - start:.1f} s")
    if not args.no_csv:
        n = upsert_rows(args.csv, results_to_rows(results, env))
        print(f"results upserted into {args.csv} ({n} rows)")
    wrong = [r for r in results if r.status == "wrong"]
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
