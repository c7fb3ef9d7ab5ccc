"""End-to-end benchmark: one PIC completion at 2048², exactly ``inpaint-fast inpaint --model pic``, fused vs reference.

    python benchmarks/bench_completion.py                                    # 2048², every provider
    python benchmarks/bench_completion.py --device cpu --memory-limit 16     # capped child processes
    python benchmarks/bench_completion.py --sizes 1024 2048 --providers reference cpu --reps 3 --no-csv

A completion is the command's pipeline (inpaint_fast/inpaint.py: size checks, PIC in eval mode,
inpaint_pic) on a synthetic S x S image with PIC's centre hole, working size S, one sample, PIC
with random weights; the providers differ only in the backend of the attention. A row is ``ok``
only if the known pixels of the output equal the input exactly; see
inpaint_fast/bench/completion.py for the method. --memory-limit GIB runs each (size, provider) in
a child process capped at GIB (RLIMIT_DATA): the reference's 16 GiB N×N map at 2048² is then an
allocation failure, recorded as oom, and the note of every row states the limit. Rows (kernel
``completion_pic``, mode ``inference``) are upserted into the committed
benchmarks/results/benchmarks.csv (--csv PATH: elsewhere); on a CPU that other processes keep
busy that write is refused unless --force.
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
    p.add_argument("--sizes", nargs="+", type=int, metavar="S",
                   help="image sides = working sizes (multiple of 32; default 2048)")
    p.add_argument("--providers", nargs="+", metavar="NAME",
                   help="reference and this package's backends (default: reference + every backend available "
                        "on the device)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda if available")
    p.add_argument("--reps", type=int, default=1, metavar="N",
                   help="timed completions per provider after the untimed first one (default 1: at 2048² one "
                        "takes minutes on a CPU)")
    p.add_argument("--memory-limit", type=float, metavar="GIB",
                   help="run each (size, provider) in a child process whose memory is capped at GIB GiB "
                        "(RLIMIT_DATA, Linux): an allocation over it is recorded as oom and the sweep goes on")
    p.add_argument("--csv", default=RESULTS_CSV, help="results CSV to upsert into")
    p.add_argument("--no-csv", action="store_true")
    p.add_argument("--force", action="store_true",
                   help="write into the committed CSV even though other processes are running on the CPUs")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights, the image and the latent draw")
    args = p.parse_args(argv)
    if args.reps < 1:
        p.error(f"--reps: expected 1 or more, got {args.reps}")
    if args.memory_limit is not None and not (0 < args.memory_limit < float("inf")):
        p.error(f"--memory-limit: expected a positive number of GiB, got {args.memory_limit:g}")
    if args.memory_limit is not None and not sys.platform.startswith("linux"):
        p.error(f"--memory-limit: needs Linux (RLIMIT_DATA); this is {sys.platform}")

    import torch
    from tqdm import tqdm

    import inpaint_fast
    from inpaint_fast.bench.completion import default_sizes, run_completion_bench
    from inpaint_fast.bench.script_run import begin, finish
    from inpaint_fast.models.sizes import pic_size_problem

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    sizes = tuple(args.sizes or default_sizes(device))
    for s in sizes:
        problem = pic_size_problem(s, s)
        if problem:
            print(f"error: --sizes: PIC: {problem}", file=sys.stderr)
            return 2
    providers = args.providers or ["reference"] + [
        b for b in inpaint_fast.available_backends(device) if b != "reference"
    ]

    try:
        env, busy = begin(device, args.csv, args.no_csv, args.force, args.memory_limit)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    with tqdm(total=len(sizes) * len(providers), desc="completion", unit="run", file=sys.stderr,
              leave=False, disable=None) as bar:
        results = run_completion_bench(sizes, providers, device, reps=args.reps, seed=args.seed,
                                       memory_limit_gib=args.memory_limit, progress=bar)
    summary = lambda r: (f"{r.kernel} {r.provider:>9} {r.shape}: {r.timing.p50 / 1e3:8.2f} s per completion, "  # noqa: E731
                         f"peak {r.peak_mb:8.1f} MiB")
    return finish(results, env, busy, args.csv, args.no_csv, summary, time.perf_counter() - start)

if __name__ == "__main__":
    sys.exit(main())
