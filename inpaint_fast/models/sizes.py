"""The image sizes PIC and DFNet accept: one rule per network.

The networks check their inputs with these rules, and training and inference check ``--size``
with the same ones before anything is built, so an unusable size is one clear error up front,
never a failure deep inside a layer or a kernel. Each function returns '' for a usable size, else
what is wrong and what would work.

Two kinds of rule:

* the networks' own (:func:`pic_size_problem`, :func:`dfnet_size_problem`): multiples, minimum
  sides; every backend;
* the fused kernels' index and launch limits (:func:`pic_kernel_problem`,
  :func:`dfnet_kernel_problem`), per backend, because only some kernels have them. The Triton
  kernels address everything inside one batch item with 32-bit offsets, so each per-image extent
  must stay below 2^31 (``INDEX_LIMIT`` in inpaint_fast/triton_kernels/__init__.py); the CUDA
  kernels index positions, channels and rows with ``int`` up to 2^30 - 1 (``kMaxIndexSize`` in
  csrc/cuda/common.cuh) and launch the batch (and the fusion block's tile rows) on a grid axis of at
  most 65535 blocks; the ``cpu`` backend (int64 indices) and the ``reference`` have none. The
  numbers below are PIC's and DFNet's default architectures (the ones the command line builds).
"""

from __future__ import annotations

import math
from typing import Optional

__all__ = ["PIC_LAYERS", "DFNET_DEPTH", "dfnet_kernel_problem", "dfnet_size_problem", "pic_discriminator_minimum",
           "pic_kernel_problem", "pic_size_problem"]

PIC_LAYERS = 5  # PIC's encoder halves the image 5 times (the attention sits at input/8)
DFNET_DEPTH = 8  # DFNet's encoder: 8 stride-2 levels

# The kernels' limits (see the module docstring).
TRITON_INDEX_LIMIT = 2**31  # every per-image extent must be below this
CUDA_INDEX_LIMIT = 2**30 - 1  # the largest N, channel count, h or w the CUDA kernels index with int
CUDA_GRID_LIMIT = 65535  # the CUDA grid's y/z extent: the batch, the fusion block's tile rows
# PIC's three attention layers (G's attn1, D's and D_rec's attn2) run at input/8 on 128 value
# channels (G's also on 128 channels of encoder features, the long-range term), 32 query channels.
PIC_ATTENTION_STRIDE = 8
PIC_ATTENTION_CHANNELS = 128
# DFNet's fusion blocks: (level, feature channels) for levels 0..5 (level k at input/2^k); A = 3
# alpha channels, Cm = 32 mid channels. The Triton kernels' per-image workspaces hold
# max(6, 3A) = 9 values per pixel of a level; their partial-sum rows, max(1 + 2 Cm, A^2 + 4A) = 65
# values per 16x16 tile of the whole launch (the compiled kernels' tile).
DFNET_FUSION_LEVELS = ((0, 4), (1, 64), (2, 128), (3, 256), (4, 512), (5, 512))
DFNET_WORKSPACE_PER_PIXEL = 9
DFNET_PARTIAL_ROW = 65
DFNET_TILE = 16
DFNET_CUDA_TILE_ROWS = 8  # output rows per CUDA block (kTileH in csrc/cuda/fusion_block.cu)

# Backends whose kernels have limits; None or "auto" (not resolved yet) means any of them may run.
_LIMITED = ("triton", "cuda")


def pic_discriminator_minimum(layers: int = PIC_LAYERS) -> int:
    """The smallest side PIC's discriminators take: after ``layers`` halvings their final,
    unpadded 3x3 conv needs 3 pixels."""
    return 3 * 2**layers


def pic_size_problem(height: int, width: int, *, layers: int = PIC_LAYERS, training: bool = False) -> str:
    """'' when PIC (with ``layers`` halvings) takes an image of height x width, else why not.

    Multiples of 2^layers (32), more than one 32x32 cell (the generator instance-normalises the
    input/32 latent, undefined for one position), and in training at least
    :func:`pic_discriminator_minimum` (96) on each side."""
    cell = 2**layers
    if height < cell or width < cell or height % cell or width % cell:
        return (f"height and width must be positive multiples of {cell} (the encoder halves the image {layers} "
                f"times); got {height}x{width}")
    if height * width <= cell * cell:
        return (f"the image must have more than one {cell}x{cell} cell (the generator's InstanceNorm at input/{cell} "
                f"needs more than one position); got {height}x{width}, use e.g. {cell}x{2 * cell} or larger")
    low = pic_discriminator_minimum(layers)
    if training and (height < low or width < low):
        return (f"training needs height and width of at least {low} (the discriminators end in an unpadded 3x3 "
                f"conv after {layers} halvings); got {height}x{width}")
    return ""


def dfnet_size_problem(height: int, width: int, *, depth: int = DFNET_DEPTH) -> str:
    """'' when DFNet (``depth`` stride-2 levels) takes an image of height x width, else why not:
    multiples of 2^depth (256), so that each nearest x2 upsample meets its skip."""
    m = 2**depth
    if height < m or width < m or height % m or width % m:
        return (f"height and width must be positive multiples of {m} ({depth} stride-2 levels, and each nearest "
                f"x2 upsample must meet its skip), got {height}x{width}. Pad or resize the image and mask to e.g. "
                f"{max(m, -(-height // m) * m)}x{max(m, -(-width // m) * m)}, then crop or resize the result back.")
    return ""


def _backends(backend: Optional[str]):
    return _LIMITED if backend in (None, "auto") else (backend,)


def pic_kernel_problem(height: int, width: int, batch: int = 1, backend: Optional[str] = None) -> str:
    """'' when ``backend``'s attention kernels take PIC's attention for height x width images, ``batch``
    of them in one call, else why not.

    ``batch``: the attention's batch (inference: images x samples; training: G decodes 2 x the
    batch). ``backend``: the implementation that will run (reference, cpu, triton, cuda); None or
    "auto" checks the limits of every backend that has some.
    """
    positions = (height // PIC_ATTENTION_STRIDE) * (width // PIC_ATTENTION_STRIDE)
    for name in _backends(backend):
        if name == "triton":
            extent = PIC_ATTENTION_CHANNELS * positions
            if extent >= TRITON_INDEX_LIMIT:
                most = TRITON_INDEX_LIMIT * PIC_ATTENTION_STRIDE**2 // PIC_ATTENTION_CHANNELS
                return (f"the triton backend's attention addresses the {PIC_ATTENTION_CHANNELS} channels x "
                        f"(H/{PIC_ATTENTION_STRIDE})(W/{PIC_ATTENTION_STRIDE}) positions of one image with 32-bit "
                        f"offsets, so height x width must be below 2^{int(math.log2(most))} = {most} pixels "
                        f"(e.g. {_square_below(most, 32)}x{_square_below(most, 32)}); got {height}x{width}; use the "
                        "cuda or cpu backend, or a smaller size")
        if name == "cuda" and positions > CUDA_INDEX_LIMIT:
            return (f"the cuda backend's attention indexes the (H/{PIC_ATTENTION_STRIDE})(W/{PIC_ATTENTION_STRIDE}) "
                    f"positions with int, at most {CUDA_INDEX_LIMIT}; got {height}x{width} ({positions} positions)")
        if name in _LIMITED and batch > CUDA_GRID_LIMIT:
            return (f"the {name} backend's attention launches the batch on a CUDA grid axis of at most "
                    f"{CUDA_GRID_LIMIT} blocks, so at most {CUDA_GRID_LIMIT} images per call; got {batch}")
    return ""


def dfnet_kernel_problem(height: int, width: int, batch: int = 1, backend: Optional[str] = None) -> str:
    """'' when ``backend``'s fusion-block kernels take DFNet's six fusion blocks for ``batch`` images of
    height x width (multiples of 256), else why not. ``backend`` as for :func:`pic_kernel_problem`."""
    for name in _backends(backend):
        if name == "triton":
            extents = [("the input image", 3 * height * width)]
            for level, channels in DFNET_FUSION_LEVELS:
                pixels = (height >> level) * (width >> level)
                extents += [(f"level {level}'s features ({channels} channels at input/{2**level})", channels * pixels),
                            (f"level {level}'s workspace", DFNET_WORKSPACE_PER_PIXEL * pixels)]
            what, extent = max(extents, key=lambda e: e[1])
            if extent >= TRITON_INDEX_LIMIT:
                most = height * width * TRITON_INDEX_LIMIT // extent  # the extent is proportional to H*W
                return (f"the triton backend's fusion blocks address each image with 32-bit offsets, and {what} "
                        f"span {extent} >= 2^31 elements: height x width must be below {most} pixels (e.g. "
                        f"{_square_below(most, 256)}x{_square_below(most, 256)}); got {height}x{width}; use the cuda "
                        "or cpu backend, or a smaller size")
            tiles = batch * -(-height // DFNET_TILE) * -(-width // DFNET_TILE)
            if tiles * DFNET_PARTIAL_ROW >= TRITON_INDEX_LIMIT:
                most = (TRITON_INDEX_LIMIT - 1) // (DFNET_PARTIAL_ROW * (tiles // batch))
                return (f"the triton backend's fusion blocks address their partial sums ({DFNET_PARTIAL_ROW} per "
                        f"{DFNET_TILE}x{DFNET_TILE} tile of the whole batch) with 32-bit offsets: at "
                        f"{height}x{width} the batch can be at most {most}; got {batch}")
        if name == "cuda":
            tile_rows = -(-height // DFNET_CUDA_TILE_ROWS)
            if tile_rows > CUDA_GRID_LIMIT or width > CUDA_INDEX_LIMIT:
                return (f"the cuda backend's fusion blocks launch one block per {DFNET_CUDA_TILE_ROWS} rows on a grid "
                        f"axis of at most {CUDA_GRID_LIMIT} blocks, so the height can be at most "
                        f"{CUDA_GRID_LIMIT * DFNET_CUDA_TILE_ROWS} (and the width {CUDA_INDEX_LIMIT}); got "
                        f"{height}x{width}")
            if batch > CUDA_GRID_LIMIT:
                return (f"the cuda backend's fusion blocks launch the batch on a CUDA grid axis of at most "
                        f"{CUDA_GRID_LIMIT} blocks; got a batch of {batch}")
    return ""


def _square_below(pixels: int, multiple: int) -> int:
    """The largest multiple of ``multiple`` whose square is below ``pixels``."""
    side = math.isqrt(pixels - 1) // multiple * multiple
    return side
