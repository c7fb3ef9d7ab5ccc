"""The benchmark rows of the GPU run's performance targets, in one process, saved case by case.

    python benchmarks/bench_gpu_targets.py --csv PATH              # on a CUDA GPU
    python benchmarks/bench_gpu_targets.py --csv PATH --dry-run    # the same plumbing, on the CPU, tiny

benchmarks/gpu_session.sh runs it as its bench stage. First the two ceilings the targets are
ratios of (inpaint_fast/bench/ceilings.py: a large bf16 GEMM and a device-to-device copy), then
the pieces below in priority order, every provider of a piece in the same process, so every ratio
a target asks for is measured in one run on one machine. Each piece is an ``inpaint-fast bench``
command line (so options are checked as the CLI checks them) and runs through the same harness:
correctness gate against the fp64 reference first, then device events with the L2 flushed,
medians. Rows are upserted into ``--csv`` after every case (and the ceilings right away):
gpu_session.sh's stage time limit may kill this process, and whatever it measured by then is kept.

The CSV holds only this run's rows; they are merged into the committed
benchmarks/results/benchmarks.csv afterwards (``inpaint_fast.bench.results.upsert_rows``).
``--dry-run`` checks the GPU pieces' command lines, then runs tiny CPU pieces (``cpu`` for
``cuda``, Triton's interpreter, no ``compile``: Inductor's C++ compile would take minutes).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

# (label, ``inpaint-fast bench`` options), most important first. --channels pins PIC's channels:
# without it a 512² attention sweep adds the general channel sweep.
PIC = "--channels 32:128:128"
PIECES = [
    ("attention bf16 fwd+bwd at PIC 512² (B=8, N=4096): vs SDPA and the eager reference",
     f"--op attention --dtype bf16 --sizes 512 --batch 8 {PIC} --mode fwd+bwd --providers reference triton cuda sdpa"),
    ("fusion block bf16 eval fwd at fuse_0 (B=8, c=4, 512²) and fuse_1 (c=64, 256²): vs copy and torch.compile",
     "--op fusion_block --dtype bf16 --sizes 512 --levels 0 1 --batch 8 --mode eval-fwd "
     "--providers reference triton cuda compile"),
    ("attention bf16 fwd and fwd+bwd at N=16384 (B=1): vs the GEMM rate; training peak memory",
     f"--op attention --dtype bf16 --sizes 1024 --batch 1 {PIC} --mode fwd fwd+bwd "
     "--providers reference triton cuda sdpa"),
    ("attention fp32 fwd+bwd at PIC 512² (B=8): vs SDPA in fp32",
     f"--op attention --dtype fp32 --sizes 512 --batch 8 {PIC} --mode fwd+bwd --providers reference triton cuda sdpa"),
]
DRY_PIECES = [
    ("attention fp32 fwd+bwd at N=64 (dry run)",
     "--op attention --dtype fp32 --sizes 64 --batch 1 --channels 8:12:12 --mode fwd+bwd "
     "--providers reference triton cpu sdpa"),
    # No triton here: the interpreter takes seconds per fusion-block call; the attention piece
    # already runs the triton provider through the harness.
    ("fusion block fp32 eval fwd at levels 0 and 1 of 8² (dry run)",
     "--op fusion_block --dtype fp32 --sizes 8 --levels 0 1 --batch 1 --mode eval-fwd --providers reference cpu"),
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--csv", required=True, help="results CSV to upsert into after every case")
    p.add_argument("--dry-run", action="store_true", help="tiny CPU pieces (cpu backend, Triton interpreter)")
    args = p.parse_args(argv)
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton

    import torch

    from inpaint_fast.bench import results_to_rows, run
    from inpaint_fast.bench.ceilings import measure_ceilings
    from inpaint_fast.bench.env import environment
    from inpaint_fast.bench.progress import CaseLines
    from inpaint_fast.bench.report import format_case_line
    from inpaint_fast.bench.results import upsert_rows
    from inpaint_fast.bench.timing import TimingConfig
    from inpaint_fast.cli import build_parser, plan_bench

    parser = build_parser()

    def plan(options: str, device):
        return plan_bench(parser.parse_args(["bench", *shlex.split(options)]), device)

    if args.dry_run:
        # The GPU pieces are never run here; planning them checks their options and providers.
        for label, options in PIECES:
            cases = sum(len(c) for _, c, _, _ in plan(options, torch.device("cuda")))
            print(f"checked GPU piece: {label}: {cases} cases", flush=True)
        device, pieces = torch.device("cpu"), DRY_PIECES
        config = TimingConfig(min_run_time=0.05, min_reps=2, warmup_time=0.01)
    else:
        if not torch.cuda.is_available():
            print("bench_gpu_targets: no CUDA GPU is visible; expected one (or pass --dry-run)", file=sys.stderr)
            return 2
        device, pieces, config = torch.device("cuda"), PIECES, TimingConfig()
    env = environment(device)
    if os.environ.get("GPU_SESSION_COMMIT"):  # a copy of the tree without .git cannot tell
        env["commit"] = os.environ["GPU_SESSION_COMMIT"]
    print(f"device: {env['device_name']} | torch {env['torch_version']} | triton {env['triton_version']} | "
          f"cuda {env['cuda_version']} | commit {env['commit']}", flush=True)
    # The fp32 rows depend on it (Triton's fp32 dots and the reference's matmuls follow it).
    print(f"fp32 matmul precision: {torch.get_float32_matmul_precision()}", flush=True)
    saved = [0]

    def save(results):
        saved[0] = upsert_rows(args.csv, results_to_rows(results, env))

    failed = []
    start = time.perf_counter()
    ceilings = measure_ceilings(device, config)
    save(ceilings)
    for r in ceilings:
        if r.timing is None:
            metric = r.note
        elif r.flops:
            metric = f"{r.flops / r.timing.p50 / 1e9:.1f} TFLOP/s"
        else:
            metric = f"{r.nbytes / r.timing.p50 / 1e6:.0f} GB/s"
        print(f"ceiling {r.kernel} {r.shape}: {r.status}: {metric}", flush=True)
        if r.status != "ok":
            failed.append(f"{r.kernel}: {r.status}: {r.note}")

    for i, (label, options) in enumerate(pieces, 1):
        t0 = time.perf_counter()
        print(f"== piece {i}/{len(pieces)}: {label}\n   inpaint-fast bench {options}", flush=True)
        try:
            steps = plan(options, device)
        except (ValueError, SystemExit) as exc:
            failed.append(f"piece {i}: bad options: {exc}")
            print(f"   bad options: {exc}", flush=True)
            continue
        total = sum(len(cases) * len(modes) for _, cases, modes, _ in steps)
        lines = CaseLines(total, sys.stdout)

        def on_case(results):
            save(results)
            lines(results)

        for bench, cases, modes, providers in steps:
            results = run(bench, cases, modes, providers, device, config, on_case=on_case)
            failed += [f"{format_case_line([r])}: {r.status}: {r.note}" for r in results if r.status == "wrong"]
        print(f"   piece {i} done in {time.perf_counter() - t0:.1f} s", flush=True)
    print(f"{saved[0]} rows in {args.csv} after {time.perf_counter() - start:.1f} s", flush=True)
    for line in failed:
        print(f"FAILED {line}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
