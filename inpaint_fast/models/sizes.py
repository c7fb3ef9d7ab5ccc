"""The image sizes PIC and DFNet accept: one rule per network.

The networks check their inputs with these rules, and training and inference check ``--size``
with the same ones before anything is built, so an unusable size is one clear error up front,
never a failure deep inside a layer or a kernel. Each function returns '' for a usable size, else
what is wrong and what would work.
"""

from __future__ import annotations

__all__ = ["PIC_LAYERS", "DFNET_DEPTH", "dfnet_size_problem", "pic_discriminator_minimum", "pic_size_problem"]

PIC_LAYERS = 5  # PIC's encoder halves the image 5 times (the attention sits at input/8)
DFNET_DEPTH = 8  # DFNet's encoder: 8 stride-2 levels


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
