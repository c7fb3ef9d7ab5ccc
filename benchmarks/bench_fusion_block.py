"""Full benchmark sweep of ``fusion_block`` (DFNet's learned alpha composite).

    python benchmarks/bench_fusion_block.py                         # the device's full sweep
    python benchmarks/bench_fusion_block.py --mode eval-fwd --levels 0 1 --sizes 512 1024
    python benchmarks/bench_fusion_block.py --large-levels          # exactly fuse_0 and fuse_1 at 512²

Takes every option of ``inpaint-fast bench`` and upserts into the committed
benchmarks/results/benchmarks.csv unless one of them chooses otherwise (--csv PATH, --no-csv);
on a CPU that other processes keep busy that write is refused unless --force. One option of its
own: ``--large-levels`` runs exactly DFNet's two large levels of a 512² image, fuse_0 (c = 4,
512×512) and fuse_1 (c = 64, 256×256), i.e. ``--sizes 512 --levels 0 1`` (so it cannot be given
with --sizes or --levels; every other option still applies: --mode, --dtype, --batch, ...).
Cases, inputs and providers live in ``inpaint_fast/bench/fusion_block.py`` (so the installed CLI
has them too); in short:

* DFNet's levels k = 0 … 5: feature (B, c_k, S/2^k, S/2^k), c = [4, 64, 128, 256, 512, 512],
  image (B, 3, S, S) at full resolution; B = 1 on CPU, 6 on CUDA (DFNet's per-GPU batch).
* Modes eval-fwd, eval-fwd+bwd (BatchNorm running stats), train-fwd, train-fwd+bwd (batch
  stats, running stats updated in place); bwd alone on request.
* Bytes of one forward, reported as GB/s for eval-fwd and train-fwd (compulsory traffic):
      (c·B·h·w  +  3·B·min(H·W, 4·h·w)  +  9·B·h·w) × dtype size
  i.e. read F_k, read the image pixels the bilinear downscale touches (2×2 per output pixel
  for k ≥ 1; all of them at k ≤ 1), write Y, α and R. At 512², B = 1, fp32: 16.8 MB at
  fuse_0, 22.3 MB at fuse_1 (every level: docs/fusion_block.md#cost).
* FLOPs (a multiply-add = 2), reported as TFLOP/s for every mode and, on the CPU, as
  fraction_of_gemm (of the run's fp32 2048³ GEMM rate):
      fwd      2·B·h·w·(3c + 1065 + 35 + 12·[h·w < H·W])
      bwd      2·B·h·w·(2·(3c + 1065) + 70)
      fwd+bwd  the sum
  convs 3c + 6·32 + 9·32·3 + 3² = 3c + 1065 multiply-adds per pixel (map2img, conv1, the 3×3
  conv, conv3), BatchNorm 32 + 3, the bilinear resize 4 taps × 3 colours; per pixel that is
  fwd 2 224 / bwd 4 448 FLOPs at fuse_0, 2 608 / 5 168 at fuse_1.
* Providers: reference (eager), this package's backends on the device, and on CUDA compile
  (torch.compile of the reference). Each is checked against the reference (outputs, gradients,
  updated running stats) before it is timed.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS_CSV = os.path.join(HERE, "results", "benchmarks.csv")
LARGE_LEVELS = ["--sizes", "512", "--levels", "0", "1"]  # fuse_0 and fuse_1 of a 512² image


def expand_large_levels(argv):
    """``argv`` with ``--large-levels`` replaced by :data:`LARGE_LEVELS`; ValueError if --sizes or
    --levels is given with it."""
    argv = list(argv)
    if "--large-levels" not in argv:
        return argv
    rest = [a for a in argv if a != "--large-levels"]
    clash = sorted({a.split("=")[0] for a in rest if a.split("=")[0] in ("--sizes", "--levels")})
    if clash:
        raise ValueError(f"--large-levels: not allowed with {' or '.join(clash)}; it means "
                         f"{' '.join(LARGE_LEVELS)} (fuse_0 and fuse_1 at 512²)")
    return LARGE_LEVELS + rest


def bench_argv(argv):
    """The ``inpaint-fast bench`` arguments of this sweep (see inpaint_fast.bench.destination.sweep_argv)."""
    from inpaint_fast.bench.destination import sweep_argv

    return sweep_argv("fusion_block", expand_large_levels(argv), RESULTS_CSV)


def main(argv):
    from inpaint_fast.cli import main as cli_main

    if "-h" in argv or "--help" in argv:
        print(__doc__)  # this script's own option, before the options of inpaint-fast bench
    try:
        args = bench_argv(argv)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
