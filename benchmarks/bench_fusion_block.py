"""Full benchmark sweep of ``fusion_block`` (DFNet's learned alpha composite).

    python benchmarks/bench_fusion_block.py                         # the device's full sweep
    python benchmarks/bench_fusion_block.py --mode eval-fwd --levels 0 1 --sizes 512 1024

Takes every option of ``inpaint-fast bench`` and upserts into the committed
benchmarks/results/benchmarks.csv unless one of them chooses otherwise (--csv PATH, --no-csv);
on a CPU that other processes keep busy that write is refused unless --force.
Cases, inputs and providers live in ``inpaint_fast/bench/fusion_block.py`` (so the installed CLI
has them too); in short:

* DFNet's levels k = 0 … 5: feature (B, c_k, S/2^k, S/2^k), c = [4, 64, 128, 256, 512, 512],
  image (B, 3, S, S) at full resolution; B = 1 on CPU, 6 on CUDA (DFNet's per-GPU batch).
* Modes eval-fwd, eval-fwd+bwd (BatchNorm running stats), train-fwd, train-fwd+bwd (batch
  stats, running stats updated in place); bwd alone on request.
* Bytes of one forward, reported as GB/s for eval-fwd and train-fwd (compulsory traffic):
      (c·B·h·w  +  3·B·min(H·W, 4·h·w)  +  9·B·h·w) × dtype size
  i.e. read F_k, read the image pixels the bilinear downscale touches (2×2 per output pixel
  for k ≥ 1; all of them at k ≤ 1), write Y, α and R.
* Providers: reference (eager), this package's backends on the device, and on CUDA compile
  (torch.compile of the reference). Each is checked against the reference (outputs, gradients,
  updated running stats) before it is timed.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS_CSV = os.path.join(HERE, "results", "benchmarks.csv")


def bench_argv(argv):
    """The ``inpaint-fast bench`` arguments of this sweep (see inpaint_fast.bench.destination.sweep_argv)."""
    from inpaint_fast.bench.destination import sweep_argv

    return sweep_argv("fusion_block", argv, RESULTS_CSV)


if __name__ == "__main__":
    from inpaint_fast.cli import main

    sys.exit(main(bench_argv(sys.argv[1:])))
