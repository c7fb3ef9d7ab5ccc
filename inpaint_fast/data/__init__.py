"""Data for training and testing inpainting models: image folders, masks, image IO.

Conventions: images are float32 (3, H, W) in [0, 1], RGB; masks float32 (1, H, W), 1 = known,
0 = hole, fractional allowed. Mask files: white (255) = hole, black (0) = known, grey = partly
known; ``holes="black"`` reads files that mark known pixels white. All randomness of sample i
in epoch e comes from ``(seed, e, i)`` alone (:func:`sample_rng`), so results do not depend on
workers, ranks or order.

Files (:mod:`inpaint_fast.data.files`):

* :func:`load_image`, :func:`load_mask`, :func:`save_image`, :func:`save_mask` — file IO (masks
  soft, or ``binary=True``: PIC's "any pixel touched by a hole is a hole");
* :func:`find_images`, :func:`sample_rng` — helpers.

Dataset (:mod:`inpaint_fast.data.images`):

* :class:`InpaintingDataset` — a folder of images with PIC's or DFNet's transforms and masks;
  :data:`FOLDER_MASK_READING` says how each recipe reads mask folders.

Masks (:mod:`inpaint_fast.data.masks`), generators ``g(size, rng) -> (1, S, S)``:

* :func:`center_mask`, :func:`regular_mask` (+ :func:`regular_mask_rectangles`),
  :func:`irregular_mask`, :func:`pic_mask` — PIC's types 0, 1, 2 and its 1/2 training mix;
* :func:`free_form_mask` — DFNet's (DeepCodebase) free-form strokes with a hole-ratio window;
* :class:`MaskFolder` — mask files (``hole_fraction`` spots inverted ones);
* :func:`make_mask_source` (spec → :class:`MaskSource`, ``source(index, epoch)``), ``MASK_SPECS``.
"""

from .files import (
    IMAGE_EXTENSIONS,
    MASK_HOLE_COLOURS,
    find_images,
    load_image,
    load_mask,
    sample_rng,
    save_image,
    save_mask,
)
from .images import FOLDER_MASK_READING, RECIPES, InpaintingDataset
from .masks import (
    MASK_SPECS,
    MaskFolder,
    MaskSource,
    center_mask,
    free_form_mask,
    irregular_mask,
    make_mask_source,
    pic_mask,
    regular_mask,
    regular_mask_rectangles,
)

__all__ = [
    "FOLDER_MASK_READING",
    "IMAGE_EXTENSIONS",
    "MASK_HOLE_COLOURS",
    "MASK_SPECS",
    "RECIPES",
    "InpaintingDataset",
    "MaskFolder",
    "MaskSource",
    "center_mask",
    "find_images",
    "free_form_mask",
    "irregular_mask",
    "load_image",
    "load_mask",
    "make_mask_source",
    "pic_mask",
    "regular_mask",
    "regular_mask_rectangles",
    "sample_rng",
    "save_image",
    "save_mask",
]
