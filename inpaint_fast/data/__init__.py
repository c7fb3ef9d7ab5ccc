"""Data for training and testing inpainting models: image folders, masks, image IO.

Conventions: images are float32 (3, H, W) in [0, 1], RGB; masks float32 (1, H, W), 1 = known,
0 = hole, fractional allowed. All randomness of sample i in epoch e comes from
``(seed, e, i)`` alone (:func:`sample_rng`), so results do not depend on workers, ranks or order.

Dataset and IO (:mod:`inpaint_fast.data.images`):

* :class:`InpaintingDataset` — a folder of images with PIC's or DFNet's transforms and masks.
* :func:`load_image`, :func:`load_mask`, :func:`save_image` — file IO (mask conventions
  ``"dfnet"``: white = known, soft; ``"pic"``: exactly 0 = known).
* :func:`find_images`, :func:`sample_rng` — helpers.

Masks (:mod:`inpaint_fast.data.masks`), generators ``g(size, rng) -> (1, S, S)``:

* :func:`center_mask`, :func:`regular_mask` (+ :func:`regular_mask_rectangles`),
  :func:`irregular_mask`, :func:`pic_mask` — PIC's types 0, 1, 2 and its 1/2 training mix;
* :func:`free_form_mask` — DFNet's (DeepCodebase) free-form strokes with a hole-ratio window;
* :class:`MaskFolder` — mask files;
* :func:`make_mask_source` (spec → :class:`MaskSource`, ``source(index, epoch)``), ``MASK_SPECS``.
"""

from .images import (
    IMAGE_EXTENSIONS,
    MASK_CONVENTIONS,
    RECIPES,
    InpaintingDataset,
    find_images,
    load_image,
    load_mask,
    sample_rng,
    save_image,
)
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
    "IMAGE_EXTENSIONS",
    "MASK_CONVENTIONS",
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
]
