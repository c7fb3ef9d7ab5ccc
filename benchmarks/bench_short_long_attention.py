"""Full benchmark sweep of ``short_long_attention`` (PIC's short+long-range attention).

    python benchmarks/bench_short_long_attention.py                 # the device's full sweep
    python benchmarks/bench_short_long_attention.py --dtype bf16 --mode fwd --sizes 512 1024

Takes every option of ``inpaint-fast bench`` and upserts into the committed
benchmarks/results/benchmarks.csv unless one of them chooses otherwise (--csv PATH, --no-csv);
on a CPU that other processes keep busy that write is refused unless --force.
Cases, inputs and providers live in ``inpaint_fast/bench/short_long_attention.py`` (so the
installed CLI has them too); in short:

* PIC's layer: C = Cp = 128, Cq = 32, with pre / mask / alpha; N = (S/8)² for an S×S image
  (N = 256, 1 024, 4 096, 16 384 at S = 128 … 1024); B·N constant (4 096 CPU, 16 384 CUDA).
* General channel sweep (full runs, at S = 512, N = 4 096): (Cq, C, Cp) = (16, 64, 64),
  (48, 192, 96), (64, 256, 256) and (32, 128, 0) — PIC's discriminator mode, no pre.
  ``--channels 32:128:128 16:64:0`` runs given triples at every size instead.
* FLOPs (matmuls only, docs/short_long_attention.md#cost), reported as TFLOP/s and, on the
  CPU, as fraction_of_gemm: the op's FLOP/s over that of an fp32 2048³ torch.mm measured in
  the same run, between the cases, on the same threads (benchmarks/README.md, "Metrics and
  ceilings"):
      fwd      2·B·N²·(Cq + C + Cp)
      bwd      2·B·N²·(3·Cq + 2·(C + Cp))
      fwd+bwd  the sum
  e.g. PIC's layer at 512² (B = 1, N = 4 096, Cq = 32, C = Cp = 128): fwd 9.66 GFLOP, bwd
  20.4 GFLOP.
* Providers: reference (eager, N×N), this package's backends on the device, and on CUDA
  compile (torch.compile of the reference), sdpa (SDPA on [x | pre] + eager epilogue), flex
  (compiled FlexAttention + eager epilogue).
* Every provider is checked against the reference before it is timed (outputs and gradients).
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS_CSV = os.path.join(HERE, "results", "benchmarks.csv")


def bench_argv(argv):
    """The ``inpaint-fast bench`` arguments of this sweep (see inpaint_fast.bench.destination.sweep_argv)."""
    from inpaint_fast.bench.destination import sweep_argv

    return sweep_argv("attention", argv, RESULTS_CSV)


if __name__ == "__main__":
    from inpaint_fast.cli import main

    sys.exit(main(bench_argv(sys.argv[1:])))
