"""Image and mask file IO, the per-sample random generator, and the image-folder dataset.

Conventions (shared by the whole package): an image is a float32 tensor (3, H, W) in [0, 1], RGB;
a mask is a float32 tensor (1, H, W), 1 = known/visible, 0 = hole, fractional values allowed.

Mask *files* are the other way round, as in most inpainting tools and in PIC's released masks:
white (255) = hole, black (0) = known, grey = partly known. ``holes="black"`` reads files that
mark the known pixels white instead (DFNet's released masks). ``binary=True`` applies PIC's rule,
any pixel touched by a hole is a hole; otherwise grey levels are kept as soft values (DFNet).

Reproducibility: every random choice of a sample (crop, flip, rotation, and its mask) comes from a
NumPy generator built by :func:`sample_rng` from ``(seed, epoch, index)`` only. Nothing reads a
global or per-process RNG, so a sample is the same in any process, DataLoader worker, DDP rank or
order of access; resuming a run at (epoch, index) replays it exactly.

Resizing uses Pillow's bilinear filter (what torchvision's ``Resize`` does on PIL images, so it
matches PIC's loader). DFNet's test script resizes with OpenCV's bilinear ``cv2.resize``, which has
no anti-aliasing when shrinking: downscaled inputs differ slightly from DFNet's (not bit-exact).
"""

from __future__ import annotations

import operator
import os
from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

__all__ = [
    "FOLDER_MASK_READING",
    "IMAGE_EXTENSIONS",
    "MASK_HOLE_COLOURS",
    "RECIPES",
    "InpaintingDataset",
    "find_images",
    "load_image",
    "load_mask",
    "mask_from_pil",
    "open_image",
    "pil_to_tensor",
    "sample_rng",
    "save_image",
    "save_mask",
]

PathLike = Union[str, "os.PathLike[str]"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# The colour that marks holes in a mask file: "white" (the default) or "black".
MASK_HOLE_COLOURS = ("white", "black")
RECIPES = ("pic", "dfnet")
# How each recipe reads a folder of mask files (pic.md §3.8, dfnet.md §3.3): PIC binarises and
# flips/rotates/crops them, DFNet keeps grey levels soft and only resizes.
FOLDER_MASK_READING = {"pic": {"binary": True, "augment": True}, "dfnet": {"binary": False, "augment": False}}

# Independent random streams of one sample: the mask source and the image transforms draw from
# different SeedSequences, so changing the mask spec never changes the crops and flips.
STREAM_MASK = 0
STREAM_IMAGE = 1

# PIC trains on a 266² resize randomly cropped to 256² (pic.md §3.8); other sizes keep the ratio.
PIC_LOAD_RATIO = 266 / 256
PIC_ROTATION_DEGREES = 3.0


# --------------------------------------------------------------------------------------------
# randomness
# --------------------------------------------------------------------------------------------


def _int_at_least(name: str, value, minimum: int) -> int:
    """``value`` as an int (anything with ``__index__``), checked to be >= ``minimum``."""
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return v


def _non_negative_int(name: str, value) -> int:
    return _int_at_least(name, value, 0)


def sample_rng(seed: int, epoch: int, index: int, stream: int = STREAM_MASK) -> np.random.Generator:
    """The NumPy generator of one sample: a pure function of its four non-negative int arguments.

    ``np.random.SeedSequence([seed, epoch, index, stream])`` hashes the tuple, so neighbouring
    indices or epochs give statistically independent streams. ``stream`` separates the draws of
    different consumers of the same sample (``STREAM_MASK`` = 0, ``STREAM_IMAGE`` = 1).
    """
    key = [
        _non_negative_int("seed", seed),
        _non_negative_int("epoch", epoch),
        _non_negative_int("index", index),
        _non_negative_int("stream", stream),
    ]
    return np.random.default_rng(np.random.SeedSequence(key))


# --------------------------------------------------------------------------------------------
# PIL <-> tensor
# --------------------------------------------------------------------------------------------

_SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


def open_image(path: PathLike, *, caller: str = "open_image") -> Image.Image:
    """Open and fully decode an image file with Pillow.

    Raises FileNotFoundError when ``path`` does not exist and ValueError (naming the file) when
    Pillow cannot decode it (not an image, truncated, unsupported format). 16-bit greyscale files
    (modes ``I``/``I;16*``) are scaled to 8-bit ``L`` by /257 so that later conversions keep their
    range (Pillow's own conversion would clip them at 255).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{caller}: no such file: {str(p)!r}")
    try:
        with Image.open(p) as img:
            img.load()  # decode now: a truncated file fails here, not later inside a transform
            if img.mode in _SIXTEEN_BIT_MODES:
                arr = np.asarray(img, dtype=np.float64)
                return Image.fromarray(np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8), mode="L")
            return img.copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"{caller}: cannot read {str(p)!r} as an image ({type(err).__name__}: {err})") from err


def _check_size(size, name: str = "size") -> Optional[int]:
    """None, or a positive int side length."""
    return None if size is None else _int_at_least(name, size, 1)


def _resize(img: Image.Image, size: int) -> Image.Image:
    """Resize to size x size with Pillow's bilinear filter; the aspect ratio is not kept (as both
    papers do). No-op when already that size."""
    if img.size == (size, size):
        return img
    return img.resize((size, size), Image.BILINEAR)


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """An 8-bit PIL image (any mode) → float32 (3, H, W) in [0, 1], RGB (alpha dropped)."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def check_hole_colour(holes: str, caller: str) -> str:
    """``holes`` if it is one of :data:`MASK_HOLE_COLOURS`, else ValueError naming ``caller``."""
    if holes not in MASK_HOLE_COLOURS:
        raise ValueError(f"{caller}: holes must be one of {MASK_HOLE_COLOURS} (the colour of the holes in the "
                         f"file), got {holes!r}")
    return holes


def known_level(holes: str) -> int:
    """The 8-bit value of a fully known pixel in a mask file whose holes are ``holes``."""
    return 0 if holes == "white" else 255


def mask_from_pil(img: Image.Image, *, holes: str = "white", binary: bool = False) -> torch.Tensor:
    """An 8-bit PIL mask image → float32 (1, H, W), 1 = known.

    Args:
        holes: the colour of the holes in the file. ``"white"``: 255 = hole, 0 = known (PIC's
            released masks and most tools); ``"black"``: 0 = hole, 255 = known (DFNet's).
        binary: False keeps grey levels as fractional "soft" values (DFNet's test reads the mask
            as greyscale and never binarises it, dfnet.md §3.3); colour files are converted with
            Pillow's ITU-R 601 luma. True applies PIC's rule (pic.md §3.8): a pixel is known iff
            it is exactly the known level (0 for white holes) in every channel, so any pixel
            touched by a hole is a hole. PIC tests each RGB channel separately; one channel needs
            one answer, so a pixel off the known level in any channel counts as a hole.
    """
    check_hole_colour(holes, "mask_from_pil")
    level = known_level(holes)
    if binary:
        arr = np.asarray(img.convert("RGB"))
        known = (arr == level).all(axis=2).astype(np.float32)
        return torch.from_numpy(known)[None]
    arr = np.asarray(img.convert("L"), dtype=np.float32)
    known = (255.0 - arr if level == 0 else arr) / 255.0
    return torch.from_numpy(np.ascontiguousarray(known))[None]


# --------------------------------------------------------------------------------------------
# public IO
# --------------------------------------------------------------------------------------------


def load_image(path: PathLike, size: Optional[int] = None) -> torch.Tensor:
    """Read an image file as float32 (3, H, W) in [0, 1], RGB.

    Args:
        path: any file Pillow can decode; every mode is converted to RGB (greyscale replicated,
            palette expanded, alpha dropped, 16-bit greyscale scaled to 8 bits).
        size: if given, resize to ``size x size`` (bilinear, aspect ratio not kept).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file cannot be decoded as an image (the message names it).
    """
    size = _check_size(size)
    img = open_image(path, caller="load_image").convert("RGB")
    if size is not None:
        img = _resize(img, size)
    return pil_to_tensor(img)


def load_mask(path: PathLike, size: Optional[int] = None, *, holes: str = "white",
              binary: bool = False) -> torch.Tensor:
    """Read a mask file as float32 (1, H, W), 1 = known, 0 = hole.

    Args:
        path: an image file (any mode); white = hole, black = known, grey = partly known, unless
            ``holes="black"``.
        size: if given, resize to ``size x size`` with the bilinear filter *before* the file is
            read as a mask. Soft masks keep the fractional values (as DFNet's test does); with
            ``binary`` the rule runs on the resized pixels, as PIC's loader does, so the bilinear
            fringe of a hole becomes hole too (holes grow by about a pixel).
        holes, binary: see :func:`mask_from_pil`.
    """
    check_hole_colour(holes, "load_mask")
    size = _check_size(size)
    img = open_image(path, caller="load_mask")
    img = img.convert("RGB" if binary else "L")
    if size is not None:
        img = _resize(img, size)
    return mask_from_pil(img, holes=holes, binary=binary)


def save_image(tensor: torch.Tensor, path: PathLike) -> None:
    """Write a (3, H, W) RGB or (1, H, W) greyscale tensor with values in [0, 1] as an 8-bit image.

    Values are clamped to [0, 1] and *rounded* to the nearest of the 256 levels
    (``round(255·x)``), so ``load_image(save_image(x))`` returns ``x`` exactly whenever ``255·x``
    is an integer. DFNet's test script truncates instead (``mul(255).byte()``, dfnet.md §3.3):
    our files can be one level brighter than DFNet's for the same tensor.

    The format follows the suffix (use ``.png``, lossless); a path without a suffix is written as
    PNG. Parent folders are created. Raises ValueError for other shapes or non-finite values.
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"save_image: tensor must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dim() != 3 or tensor.shape[0] not in (1, 3):
        raise ValueError(f"save_image: tensor must be (3, H, W) or (1, H, W), got shape {tuple(tensor.shape)}")
    x = tensor.detach().to("cpu", torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError("save_image: tensor has non-finite values (NaN or inf)")
    arr = torch.round(x.clamp(0.0, 1.0) * 255.0).to(torch.uint8).numpy()
    img = Image.fromarray(arr[0], mode="L") if arr.shape[0] == 1 else Image.fromarray(arr.transpose(1, 2, 0), "RGB")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    img.save(p, format=None if p.suffix else "PNG")


def save_mask(mask: torch.Tensor, path: PathLike, *, holes: str = "white") -> None:
    """Write a (1, H, W) mask tensor (1 = known) as a mask file that :func:`load_mask` reads back:
    holes ``"white"`` (255 = hole, the file convention) or ``"black"``. Soft values are kept as
    grey levels, rounded like :func:`save_image`."""
    check_hole_colour(holes, "save_mask")
    if not isinstance(mask, torch.Tensor) or mask.dim() != 3 or mask.shape[0] != 1:
        raise ValueError(f"save_mask: mask must be a (1, H, W) tensor, got {getattr(mask, 'shape', type(mask))}")
    save_image(1.0 - mask if holes == "white" else mask, path)


# --------------------------------------------------------------------------------------------
# dataset
# --------------------------------------------------------------------------------------------


def find_images(root: PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> List[Path]:
    """Every file under ``root`` (recursively) whose suffix, lower-cased, is in ``extensions``.

    Sorted by path relative to ``root`` (POSIX form), so the order and therefore the sample indices
    are the same on every machine. Raises FileNotFoundError when ``root`` is not a folder and when
    it holds no matching file (the message names the folder and the extensions).
    """
    r = Path(root)
    if not r.is_dir():
        raise FileNotFoundError(f"not a folder: {str(r)!r}")
    exts = tuple(e.lower() for e in extensions)
    found = [p for p in r.rglob("*") if p.suffix.lower() in exts and p.is_file()]
    if not found:
        raise FileNotFoundError(f"no files with extensions {list(exts)} under {str(r)!r} (searched recursively)")
    return sorted(found, key=lambda p: p.relative_to(r).as_posix())


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
        recipe: the training transforms (pic.md §3.8, dfnet.md §3.2):

            * ``"pic"``: resize to round(S·266/256) square (266 at S = 256, 532 at 512; Python's
              round, half to even: 66 at 64), aspect not kept, then a random S x S crop,
              random horizontal flip (p = 0.5), random rotation by U(−3°, 3°) about the centre
              with nearest-neighbour sampling and black corners (which end up in the ground
              truth, as in PIC). PIC's ColorJitter(0, 0, 0, 0) is a no-op and is left out. The
              angle bound is ``PIC_ROTATION_DEGREES`` (pic.md §3.8 reads ±3° at commit 034a758;
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
        # Imported here: masks.py reads files through this module's IO helpers.
        from .masks import MaskSource, make_mask_source

        self.size = _check_size(size)
        if self.size is None:
            raise ValueError("InpaintingDataset: size is required")
        if recipe not in RECIPES:
            raise ValueError(f"InpaintingDataset: recipe must be one of {RECIPES}, got {recipe!r}")
        self.root = Path(root)
        self.recipe = recipe
        self.train = bool(train)
        self.seed = _non_negative_int("seed", seed)
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
        self.epoch = _non_negative_int("epoch", epoch)

    def transform(self, img: Image.Image, index: int, epoch: int) -> torch.Tensor:
        """The recipe's transform of one PIL image → (3, S, S); random only through
        ``sample_rng(seed, epoch, index, STREAM_IMAGE)``."""
        s = self.size
        img = img.convert("RGB")
        if not self.train:
            return pil_to_tensor(_resize(img, s))
        rng = sample_rng(self.seed, epoch, index, STREAM_IMAGE)
        if self.recipe == "pic":
            img = _resize(img, int(round(s * PIC_LOAD_RATIO)))
            img = _random_crop(img, s, rng)
            if rng.random() < 0.5:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
            angle = float(rng.uniform(-PIC_ROTATION_DEGREES, PIC_ROTATION_DEGREES))
            img = img.rotate(angle, resample=Image.NEAREST, expand=False, fillcolor=(0, 0, 0))
        else:  # dfnet
            img = _resize(img, s)
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
