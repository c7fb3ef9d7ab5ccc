"""Paired A/B of the cpu attention's GEMM choices (INPAINT_FAST_CPU_GEMM), alternated call by call.

    python benchmarks/ab_cpu_gemm.py                                  # PIC's 512² shape, fwd and bwd, pre and none
    python benchmarks/ab_cpu_gemm.py --size 256 --reps 30 --choices blas strip
    OMP_NUM_THREADS=1 python benchmarks/ab_cpu_gemm.py --passes fwd
    python benchmarks/ab_cpu_gemm.py --choices auto --ceiling --passes fwd bwd fwd+bwd

On a shared or frequency-scaling CPU the speed of the whole machine drifts by tens of percent
within minutes, more than the difference between two GEMMs: timings of separate runs (or separate
builds) then compare the machine's states, not the code. Here both choices run in one process on
the same inputs, one call each in turn, so every pair of calls sees the same machine state; the
speed-up reported is the median over pairs of time(first choice) / time(other choice), with the
median time of each choice beside it. The inputs are those of ``inpaint-fast bench --op attention``
(image side S: N = (S/8)² positions, Cq = 32, C = 128, Cp = 128 or 0, batch 1, fp32), and the
direct ops are called (``short_long_attention_fwd`` / ``_bwd``; ``fwd+bwd`` is one call of each), so autograd is not
timed.

``--ceiling`` adds the GEMM ceiling to every round: one fp32 2048³ ``torch.mm`` on the same threads
after the choices' calls, and a column with each choice's fraction of it, the median over rounds of
(the op's FLOP rate) / (that round's GEMM rate), FLOPs as in ``inpaint-fast bench``
(:func:`inpaint_fast.bench.short_long_attention.attention_flops`). Pairing each call with a GEMM a
few hundred milliseconds away is what makes the fraction mean something on a machine whose speed
drifts faster than a benchmark run (benchmarks/NOTES.md); ``--choices`` may then be a single value.
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


CEILING_N = 2048  # the fp32 GEMM ceiling of inpaint_fast.bench.ceilings, timed once per round


def _calls(side: int, cp: int, seed: int):
    import inpaint_fast  # noqa: F401  (registers the ops)

    fwd = torch.ops.inpaint_fast.short_long_attention_fwd
    bwd = torch.ops.inpaint_fast.short_long_attention_bwd
    q, x, gamma, pre, mask, alpha = _inputs(side, cp, seed)
    y, cf, sa, ca, lse = fwd(q, x, gamma, pre, mask, alpha, 1.0)
    gy = torch.randn_like(y)
    gcf = torch.randn_like(cf) if cp else torch.empty(0)
    calls = {
        "fwd": lambda: fwd(q, x, gamma, pre, mask, alpha, 1.0),
        "bwd": lambda: bwd(gy, gcf, q, x, gamma, pre, mask, alpha, sa, ca, lse, 1.0),
    }
    calls["fwd+bwd"] = lambda: (calls["fwd"](), calls["bwd"]())
    return calls


def _ceiling_call():
    a, b = torch.randn(CEILING_N, CEILING_N), torch.randn(CEILING_N, CEILING_N)
    return lambda: torch.mm(a, b)


def _timed(call) -> float:
    t0 = time.perf_counter()
    call()
    return time.perf_counter() - t0


def ab(call, choices, reps: int, ceiling=None):
    """{choice: [seconds]} for `reps` rounds, each calling `call` once per choice in turn, after
    one untimed round; with `ceiling` (a call), it is timed last in every round, under the key
    None."""
    times = {c: [] for c in choices}
    if ceiling is not None:
        times[None] = []
    saved = os.environ.get(ENV)
    try:
        for r in range(reps + 1):
            for c in choices:
                os.environ[ENV] = c
                dt = _timed(call)
                if r:
                    times[c].append(dt)
            if ceiling is not None:
                dt = _timed(ceiling)
                if r:
                    times[None].append(dt)
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
    p.add_argument("--passes", nargs="+", default=["fwd", "bwd"], choices=["fwd", "bwd", "fwd+bwd"])
    p.add_argument("--cp", nargs="+", type=int, default=[128, 0], metavar="CP",
                   help="pre channels (0: self-attention only; default 128 0)")
    p.add_argument("--reps", type=int, default=15, metavar="N", help="timed rounds (default 15)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ceiling", action="store_true",
                   help=f"also time a fp32 {CEILING_N}³ GEMM every round and report each choice's paired fraction of it")
    args = p.parse_args(argv)
    if args.reps < 1:
        raise SystemExit(f"--reps {args.reps}: expected at least 1")
    if len(args.choices) < (1 if args.ceiling else 2):
        raise SystemExit(f"--choices: expected at least two values of {ENV} to compare (or one, with --ceiling)")

    from inpaint_fast.bench.short_long_attention import attention_flops

    base = args.choices[0]
    ceiling = _ceiling_call() if args.ceiling else None
    gemm_flops = 2.0 * CEILING_N**3
    print(f"# {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}; {args.reps} rounds, choices alternated call by call"
          + (f", then one fp32 {CEILING_N}³ GEMM" if args.ceiling else ""))
    print(f"{'pass':7} {'case':26} {'choice':7} {'median ms':>10} {'speed-up vs ' + base:>18}"
          + (f" {'of GEMM':>8} {'GEMM TFLOP/s':>13}" if args.ceiling else ""))
    for cp in args.cp:
        calls = _calls(args.size, cp, args.seed)
        n = (args.size // 8) ** 2
        case = f"B1-C128-Cq32-Cp{cp}-N{n}"
        for pass_ in args.passes:
            try:
                times = ab(calls[pass_], args.choices, args.reps, ceiling)
            except RuntimeError as e:
                print(f"{pass_:7} {case:26} error: {str(e).splitlines()[0]}", file=sys.stderr)
                return 1
            flops = attention_flops(1, n, 32, 128, cp, pass_)
            for c in args.choices:
                ratio = statistics.median(b / t for b, t in zip(times[base], times[c]))
                line = f"{pass_:7} {case:26} {c:7} {1e3 * statistics.median(times[c]):10.2f} {ratio:18.3f}"
                if args.ceiling:
                    fraction = statistics.median((flops / t) / (gemm_flops / g) for t, g in zip(times[c], times[None]))
                    rate = gemm_flops / statistics.median(times[None]) / 1e12
                    line += f" {100 * fraction:7.1f}% {rate:13.3f}"
                print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
