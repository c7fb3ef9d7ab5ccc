"""The image-folder dataset: images paired with masks, transformed as in PIC or DFNet.

File reading, the conventions of images and masks and the per-sample random generator live in
:mod:`inpaint_fast.data.files`; the mask generators in :mod:`inpaint_fast.data.masks`.
"""

from __future__ import annotations

import operator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .files import (
    STREAM_IMAGE,
    PathLike,
    check_side,
    find_images,
    non_negative_int,
    open_image,
    pil_to_tensor,
    resize_square,
    sample_rng,
)
from .masks import MaskSource, make_mask_source

__all__ = ["FOLDER_MASK_READING", "PIC_LOAD_RATIO", "PIC_ROTATION_DEGREES", "RECIPES", "InpaintingDataset"]

RECIPES = ("pic", "dfnet")
# How each recipe reads a folder of mask files (docs/pic.md#data-and-masks,
# docs/dfnet.md#masks-and-data): PIC binarises and
# flips/rotates/crops them, DFNet keeps grey levels soft and only resizes.
FOLDER_MASK_READING = {"pic": {"binary": True, "augment": True}, "dfnet": {"binary": False, "augment": False}}

# PIC trains on a 266² resize randomly cropped to 256² (docs/pic.md#data-and-masks); other sizes keep the ratio.
PIC_LOAD_RATIO = 266 / 256
PIC_ROTATION_DEGREES = 3.0


def _random_crop(img: Image.Image, size: int, rng: np.random.Generator) -> Image.Image:
    """A size x size crop at a uniformly drawn offset (torchvision RandomCrop's distribution)."""
    w, h = img.size
    top = int(rng.integers(0, h - size + 1))
    left = int(rng.integers(0, w - size + 1))
    return img.crop((left, top, left + size, top + size))


class InpaintingDataset(torch.utils.data.Dataset):
    """A folder of images (recursive), each paired with a mask, transformed as in PIC or DFNet.

    Args:
        root: folder searched recursively for ``IMAGE_EXTENSIONS`` (case-insensitive), sorted.
        size: side S of the square samples.
        masks: a spec for :func:`~inpaint_fast.data.make_mask_source` ("center", "regular",
            "irregular", "pic", "free_form", or a folder of mask files, read the recipe's way:
            :data:`FOLDER_MASK_READING`), or a ready :class:`~inpaint_fast.data.MaskSource`.
        mask_holes: the colour of the holes in a folder's mask files, "white" (default) or
            "black" (see :func:`mask_from_pil`).
        recipe: the training transforms (docs/pic.md#data-and-masks, docs/dfnet.md#masks-and-data):

            * ``"pic"``: resize to round(S·266/256) square (266 at S = 256, 532 at 512; Python's
              round, half to even: 66 at 64), aspect not kept, then a random S x S crop,
              random horizontal flip (p = 0.5), random rotation by U(−3°, 3°) about the centre
              with nearest-neighbour sampling and black corners (which end up in the ground
              truth, as in PIC). PIC's ColorJitter(0, 0, 0, 0) is a no-op and is left out. The
              angle bound is ``PIC_ROTATION_DEGREES`` (PIC's loader at commit 034a758 uses ±3°,
              docs/pic.md#data-and-masks;
              other versions of PIC's loader use ``RandomRotation(5)`` behind a ``--rotation`` flag).
            * ``"dfnet"``: resize to S x S (aspect not kept), random horizontal flip (p = 0.5).

        train: False → test transforms: resize to S x S only, deterministic; masks are then drawn
            with epoch 0 whatever :meth:`set_epoch` says, so an evaluation set is fixed.
        seed: non-negative int; sample i of epoch e draws from ``sample_rng(seed, e, i, ·)`` only.

    ``dataset[i]`` → ``{"image": (3, S, S) float32 in [0, 1], "mask": (1, S, S) float32 (1 = known),
    "path": str}``.

    DataLoader workers: the dataset holds no RNG state, so any ``num_workers`` gives the same
    batches. Call :meth:`set_epoch` before iterating each epoch; with ``persistent_workers=True``
    the workers keep the copy of the dataset (and epoch) they started with, so do not combine the
    two (or rebuild the loader each epoch).
    """

    def __init__(
        self,
        root: PathLike,
        *,
        size: int,
        masks="pic",
        recipe: str = "pic",
        train: bool = True,
        seed: int = 0,
        mask_holes: str = "white",
    ) -> None:
        self.size = check_side(size)
        if self.size is None:
            raise ValueError("InpaintingDataset: size is required")
        if recipe not in RECIPES:
            raise ValueError(f"InpaintingDataset: recipe must be one of {RECIPES}, got {recipe!r}")
        self.root = Path(root)
        self.recipe = recipe
        self.train = bool(train)
        self.seed = non_negative_int("seed", seed)
        self.epoch = 0
        self.paths = find_images(self.root)
        if isinstance(masks, MaskSource):
            if masks.size != self.size:
                raise ValueError(
                    f"InpaintingDataset: the mask source makes {masks.size}² masks, the dataset size is {self.size}"
                )
            self.masks = masks
        else:
            self.masks = make_mask_source(masks, self.size, seed=self.seed, holes=mask_holes,
                                          **FOLDER_MASK_READING[recipe])

    def __len__(self) -> int:
        return len(self.paths)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random transforms and masks the next samples use."""
        self.epoch = non_negative_int("epoch", epoch)

    def transform(self, img: Image.Image, index: int, epoch: int) -> torch.Tensor:
        """The recipe's transform of one PIL image → (3, S, S); random only through
        ``sample_rng(seed, epoch, index, STREAM_IMAGE)``."""
        s = self.size
        img = img.convert("RGB")
        if not self.train:
            return pil_to_tensor(resize_square(img, s))
        rng = sample_rng(self.seed, epoch, index, STREAM_IMAGE)
        if self.recipe == "pic":
            img = resize_square(img, int(round(s * PIC_LOAD_RATIO)))
            img = _random_crop(img, s, rng)
            if rng.random() < 0.5:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
            angle = float(rng.uniform(-PIC_ROTATION_DEGREES, PIC_ROTATION_DEGREES))
            img = img.rotate(angle, resample=Image.NEAREST, expand=False, fillcolor=(0, 0, 0))
        else:  # dfnet
            img = resize_square(img, s)
            if rng.random() < 0.5:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
        return pil_to_tensor(img)

    def __getitem__(self, i: int) -> dict:
        n = len(self.paths)
        index = operator.index(i)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"InpaintingDataset: index {i} out of range for {n} images")
        path = self.paths[index]
        image = self.transform(open_image(path, caller="InpaintingDataset"), index, self.epoch)
        mask = self.masks(index, self.epoch if self.train else 0)
        return {"image": image, "mask": mask, "path": str(path)}

    def __repr__(self) -> str:
        return (
            f"InpaintingDataset(root={str(self.root)!r}, images={len(self)}, size={self.size}, "
            f"masks={self.masks!r}, recipe={self.recipe!r}, train={self.train}, seed={self.seed})"
        )
