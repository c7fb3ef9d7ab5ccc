"""Image and mask files, and the per-sample random generator: what the datasets and the mask
generators both read through (inpaint_fast/data/images.py, inpaint_fast/data/masks.py).

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
    "IMAGE_EXTENSIONS",
    "MASK_HOLE_COLOURS",
    "STREAM_IMAGE",
    "STREAM_MASK",
    "check_hole_colour",
    "check_side",
    "find_images",
    "int_at_least",
    "known_level",
    "load_image",
    "load_mask",
    "mask_from_pil",
    "non_negative_int",
    "open_image",
    "pil_to_tensor",
    "resize_square",
    "sample_rng",
    "save_image",
    "save_mask",
]

PathLike = Union[str, "os.PathLike[str]"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# The colour that marks holes in a mask file: "white" (the default) or "black".
MASK_HOLE_COLOURS = ("white", "black")

# Independent random streams of one sample: the mask source and the image transforms draw from
# different SeedSequences, so changing the mask spec never changes the crops and flips.
STREAM_MASK = 0
STREAM_IMAGE = 1



# --------------------------------------------------------------------------------------------
# randomness
# --------------------------------------------------------------------------------------------


def int_at_least(name: str, value, minimum: int) -> int:
    """``value`` as an int (anything with ``__index__``), checked to be >= ``minimum``."""
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return v


def non_negative_int(name: str, value) -> int:
    return int_at_least(name, value, 0)


def sample_rng(seed: int, epoch: int, index: int, stream: int = STREAM_MASK) -> np.random.Generator:
    """The NumPy generator of one sample: a pure function of its four non-negative int arguments.

    ``np.random.SeedSequence([seed, epoch, index, stream])`` hashes the tuple, so neighbouring
    indices or epochs give statistically independent streams. ``stream`` separates the draws of
    different consumers of the same sample (``STREAM_MASK`` = 0, ``STREAM_IMAGE`` = 1).
    """
    key = [
        non_negative_int("seed", seed),
        non_negative_int("epoch", epoch),
        non_negative_int("index", index),
        non_negative_int("stream", stream),
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


def check_side(size, name: str = "size") -> Optional[int]:
    """None, or a positive int side length."""
    return None if size is None else int_at_least(name, size, 1)


def resize_square(img: Image.Image, size: int) -> Image.Image:
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
            as greyscale and never binarises it, docs/dfnet.md#inference); colour files are converted with
            Pillow's ITU-R 601 luma. True applies PIC's rule (docs/pic.md#data-and-masks): a pixel is known iff
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
    size = check_side(size)
    img = open_image(path, caller="load_image").convert("RGB")
    if size is not None:
        img = resize_square(img, size)
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
    size = check_side(size)
    img = open_image(path, caller="load_mask")
    img = img.convert("RGB" if binary else "L")
    if size is not None:
        img = resize_square(img, size)
    return mask_from_pil(img, holes=holes, binary=binary)


def save_image(tensor: torch.Tensor, path: PathLike) -> None:
    """Write a (3, H, W) RGB or (1, H, W) greyscale tensor with values in [0, 1] as an 8-bit image.

    Values are clamped to [0, 1] and *rounded* to the nearest of the 256 levels
    (``round(255·x)``), so ``load_image(save_image(x))`` returns ``x`` exactly whenever ``255·x``
    is an integer. DFNet's test script truncates instead (``mul(255).byte()``;
    docs/dfnet.md#where-this-implementation-differs-from-dfnet):
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
