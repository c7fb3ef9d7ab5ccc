"""Paired A/B of the cpu attention's GEMM choices (INPAINT_FAST_CPU_GEMM), alternated call by call.

    python benchmarks/ab_cpu_gemm.py                                  # PIC's 512² shape, fwd and bwd, pre and none
    python benchmarks/ab_cpu_gemm.py --size 256 --reps 30 --choices blas strip
    OMP_NUM_THREADS=1 python benchmarks/ab_cpu_gemm.py --passes fwd

On a shared or frequency-scaling CPU the speed of the whole machine drifts by tens of percent
within minutes, more than the difference between two GEMMs: timings of separate runs (or separate
builds) then compare the machine's states, not the code. Here both choices run in one process on
the same inputs, one call each in turn, so every pair of calls sees the same machine state; the
speed-up reported is the median over pairs of time(first choice) / time(other choice), with the
median time of each choice beside it. The inputs are those of ``inpaint-fast bench --op attention``
(image side S: N = (S/8)² positions, Cq = 32, C = 128, Cp = 128 or 0, batch 1, fp32), and the
direct ops are called (``short_long_attention_fwd`` / ``_bwd``), so autograd is not timed.
Prints a table; writes nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

ENV = "INPAINT_FAST_CPU_GEMM"


def _inputs(side: int, cp: int, seed: int):
    if side % 8:
        raise SystemExit(f"--size {side}: expected a multiple of 8 (attention runs on the S/8 x S/8 feature map)")
    g = torch.Generator().manual_seed(seed)
    h = side // 8
    q = torch.randn(1, 32, h, h, generator=g)
    x = torch.randn(1, 128, h, h, generator=g)
    gamma = torch.tensor([0.5])
    pre = mask = alpha = None
    if cp:
        pre = torch.randn(1, cp, h, h, generator=g)
        mask = (torch.rand(1, 1, h, h, generator=g) > 0.5).float()
        alpha = torch.tensor([0.7])
    return q, x, gamma, pre, mask, alpha


def _calls(side: int, cp: int, seed: int):
    import inpaint_fast  # noqa: F401  (registers the ops)

    fwd = torch.ops.inpaint_fast.short_long_attention_fwd
    bwd = torch.ops.inpaint_fast.short_long_attention_bwd
    q, x, gamma, pre, mask, alpha = _inputs(side, cp, seed)
    y, cf, sa, ca, lse = fwd(q, x, gamma, pre, mask, alpha, 1.0)
    gy = torch.randn_like(y)
    gcf = torch.randn_like(cf) if cp else torch.empty(0)
    return {
        "fwd": lambda: fwd(q, x, gamma, pre, mask, alpha, 1.0),
        "bwd": lambda: bwd(gy, gcf, q, x, gamma, pre, mask, alpha, sa, ca, lse, 1.0),
    }


def ab(call, choices, reps: int):
    """{choice: [seconds]} for `reps` rounds, each calling `call` once per choice in turn, after
    one untimed round."""
    times = {c: [] for c in choices}
    saved = os.environ.get(ENV)
    try:
        for r in range(reps + 1):
            for c in choices:
                os.environ[ENV] = c
                t0 = time.perf_counter()
                call()
                dt = time.perf_counter() - t0
                if r:
                    times[c].append(dt)
    finally:
        if saved is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = saved
    return times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=512, metavar="S", help="image side in pixels (default 512: N = 4096)")
    p.add_argument("--choices", nargs="+", default=["blas", "strip"], metavar="C",
                   help=f"values of {ENV} to compare, the first is the baseline (default: blas strip)")
    p.add_argument("--passes", nargs="+", default=["fwd", "bwd"], choices=["fwd", "bwd"])
    p.add_argument("--cp", nargs="+", type=int, default=[128, 0], metavar="CP",
                   help="pre channels (0: self-attention only; default 128 0)")
    p.add_argument("--reps", type=int, default=15, metavar="N", help="timed rounds (default 15)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.reps < 1:
        raise SystemExit(f"--reps {args.reps}: expected at least 1")
    if len(args.choices) < 2:
        raise SystemExit(f"--choices: expected at least two values of {ENV} to compare")

    base = args.choices[0]
    print(f"# {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}; {args.reps} rounds, choices alternated call by call")
    print(f"{'pass':5} {'case':26} {'choice':7} {'median ms':>10} {'speed-up vs ' + base:>18}")
    for cp in args.cp:
        calls = _calls(args.size, cp, args.seed)
        n = (args.size // 8) ** 2
        case = f"B1-C128-Cq32-Cp{cp}-N{n}"
        for pass_ in args.passes:
            try:
                times = ab(calls[pass_], args.choices, args.reps)
            except RuntimeError as e:
                print(f"{pass_:5} {case:26} error: {str(e).splitlines()[0]}", file=sys.stderr)
                return 1
            for c in args.choices:
                ratio = statistics.median(b / t for b, t in zip(times[base], times[c]))
                print(f"{pass_:5} {case:26} {c:7} {1e3 * statistics.median(times[c]):10.2f} {ratio:18.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
