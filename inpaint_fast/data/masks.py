"""Mask generators of PIC and DFNet, mask folders, and the seeded per-sample ``MaskSource``.

Every generator is a pure function ``g(size, rng) -> Tensor``: ``size`` is the side S of a square
mask, ``rng`` a ``numpy.random.Generator``, and the result a float32 (1, S, S) tensor with
1 = known and 0 = hole. The same generator state gives the same mask; nothing touches Python's,
NumPy's or torch's global RNG.

* :func:`center_mask`      PIC type 0: the hole is rows and columns [S/4, 3S/4).
* :func:`regular_mask`     PIC type 1: 1 to 5 random rectangles (:func:`regular_mask_rectangles`).
* :func:`irregular_mask`   PIC type 2: 16 to 64 random lines, discs and elliptic arcs.
* :func:`pic_mask`         PIC's training default (``mask_type = [1, 2]``): regular or irregular,
                           50/50 per sample.
* :func:`free_form_mask`   DFNet (DeepCodebase re-release) free-form brush strokes, with a
                           hole-ratio acceptance window.
* :class:`MaskFolder`      mask image files (white = hole), one picked per sample, binarised
                           and augmented as PIC does, or soft and resized as DFNet does.

:func:`make_mask_source` turns a spec string into a :class:`MaskSource`, whose
``source(index, epoch)`` seeds the generator from ``(seed, epoch, index)`` alone — the same call
returns the same mask in any process, order, DataLoader worker or DDP rank.

Drawing uses Pillow's ImageDraw where the originals use OpenCV (PIC's ``cv2.line/circle/ellipse``,
DCB's ``cv2.line``). The shapes follow the same random recipe but are not pixel-identical: Pillow
rasterises wide lines as polygons (we add round caps and joins with discs, which OpenCV's thick
lines have natively), samples elliptic arcs at 1° steps, and draws without anti-aliasing, like
OpenCV's default LINE_8; edge pixels of a stroke can differ by one.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image, ImageDraw

from .files import (
    IMAGE_EXTENSIONS,
    STREAM_MASK,
    check_hole_colour,
    check_side,
    find_images,
    known_level,
    load_mask,
    mask_from_pil,
    non_negative_int,
    open_image,
    resize_square,
    sample_rng,
)

__all__ = [
    "MASK_SPECS",
    "MaskFolder",
    "MaskSource",
    "center_mask",
    "free_form_mask",
    "irregular_mask",
    "make_mask_source",
    "pic_mask",
    "regular_mask",
    "regular_mask_rectangles",
]

MaskGenerator = Callable[[int, np.random.Generator], torch.Tensor]


def _size(size) -> int:
    s = check_side(size)
    if s is None:
        raise ValueError("size must be a positive int, got None")
    return s


def _holes_to_mask(holes: np.ndarray) -> torch.Tensor:
    """A boolean/0-255 (S, S) array of hole pixels → float32 (1, S, S), 1 = known."""
    return torch.from_numpy(np.ascontiguousarray(holes == 0, dtype=np.float32))[None]


def _draw_stroke(draw: ImageDraw.ImageDraw, points: Sequence[Tuple[float, float]], width: int) -> None:
    """A polyline of the given pixel width with round caps and round joins (a disc of diameter
    ``width`` on every vertex), drawn in 255."""
    r = (width - 1) / 2.0
    if len(points) > 1:
        draw.line(list(points), fill=255, width=width)
    for x, y in points:
        draw.ellipse((x - r, y - r, x + r, y + r), fill=255)


# --------------------------------------------------------------------------------------------
# PIC (docs/pic.md#data-and-masks; util/task.py of the original)
# --------------------------------------------------------------------------------------------


def center_mask(size: int, rng: Optional[np.random.Generator] = None) -> torch.Tensor:
    """PIC's centre hole: rows and columns ``int(S/4) .. int(3S/4) - 1`` are holes (64..191 at
    S = 256, 8..23 at S = 32). Deterministic; ``rng`` is accepted for a uniform signature and
    unused. Returns float32 (1, S, S), 1 = known."""
    s = _size(size)
    mask = torch.ones(1, s, s)
    lo, hi = int(s / 4), int(s * 3 / 4)
    mask[:, lo:hi, lo:hi] = 0
    return mask


def regular_mask_rectangles(size: int, rng: np.random.Generator) -> List[Tuple[int, int, int, int]]:
    """The rectangles of one PIC random-regular mask: a list of ``(top, left, bottom, right)``
    (bottom/right exclusive), 1 to 5 of them.

    With n rectangles, for each one and each axis independently (integers, bounds inclusive, as
    PIC's ``random.randint``): the start ``x`` is drawn from ``[0, int(S − S/(n+1))]`` and the
    extent from ``[int(S/(n+7)), S − x]``. The upper bounds never cross: ``S − x ≥ S/(n+1) >
    S/(n+7)``, and ``x + extent ≤ S``, so every rectangle lies inside the image and is at least
    ``int(S/(n+7))`` pixels on each side. (The ``min`` below only guards tiny S.)
    """
    s = _size(size)
    n = int(rng.integers(1, 6))
    lim = int(s - s / (n + 1))
    lo_extent = int(s / (n + 7))
    rects = []
    for _ in range(n):
        top = int(rng.integers(0, lim + 1))
        left = int(rng.integers(0, lim + 1))
        h = int(rng.integers(min(lo_extent, s - top), s - top + 1))
        w = int(rng.integers(min(lo_extent, s - left), s - left + 1))
        rects.append((top, left, min(top + h, s), min(left + w, s)))
    return rects


def regular_mask(size: int, rng: np.random.Generator) -> torch.Tensor:
    """PIC's random regular mask: the union of :func:`regular_mask_rectangles` is the hole.
    Returns float32 (1, S, S), 1 = known."""
    s = _size(size)
    mask = torch.ones(1, s, s)
    for top, left, bottom, right in regular_mask_rectangles(s, rng):
        mask[:, top:bottom, left:right] = 0
    return mask


def irregular_mask(size: int, rng: np.random.Generator, *, max_width: int = 20) -> torch.Tensor:
    """PIC's random irregular mask: 16 to 64 strokes on an empty canvas; drawn pixels are holes.

    Per stroke, ``p ~ U[0, 1)``:

    * ``p < 0.6``: a straight line between two points with coordinates in ``[1, S]``, thickness
      ``[4, max_width]`` px, round caps;
    * ``0.6 <= p < 0.8``: a filled disc, centre in ``[1, S]``, radius ``[4, max_width]`` px;
    * ``p >= 0.8``: an elliptic arc, centre in ``[1, S]``, semi-axes in ``[1, S]`` (so the
      ellipse may be up to twice the image), rotation, start and end angles in ``[3, 180]``
      degrees (drawn from the smaller to the larger, as OpenCV does), thickness ``[4, max_width]``.

    All integers are drawn with inclusive bounds like PIC's ``randint``. Thicknesses are absolute
    pixels, as in PIC (tuned for S = 256; PIC refuses S < 64, we do not, but small masks are mostly
    hole). Drawn with Pillow, not OpenCV: see the module docstring for the rasterisation
    differences. Returns float32 (1, S, S), 1 = known.
    """
    s = _size(size)
    if max_width < 4:
        raise ValueError(f"irregular_mask: max_width must be >= 4, got {max_width}")
    canvas = Image.new("L", (s, s), 0)
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(16, 65))):
        p = rng.random()
        if p < 0.6:
            x1, x2, y1, y2 = (int(v) for v in rng.integers(1, s + 1, size=4))
            _draw_stroke(draw, [(x1, y1), (x2, y2)], int(rng.integers(4, max_width + 1)))
        elif p < 0.8:
            x, y = (int(v) for v in rng.integers(1, s + 1, size=2))
            r = int(rng.integers(4, max_width + 1))
            draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
        else:
            cx, cy, ax, ay = (int(v) for v in rng.integers(1, s + 1, size=4))
            rot, a0, a1 = (int(v) for v in rng.integers(3, 181, size=3))
            thickness = int(rng.integers(4, max_width + 1))
            start, end = min(a0, a1), max(a0, a1)
            c, sn = math.cos(math.radians(rot)), math.sin(math.radians(rot))
            pts = []
            for t_deg in range(start, end + 1):
                t = math.radians(t_deg)
                ex, ey = ax * math.cos(t), ay * math.sin(t)
                pts.append((cx + ex * c - ey * sn, cy + ex * sn + ey * c))
            _draw_stroke(draw, pts, thickness)
    return _holes_to_mask(np.asarray(canvas))


def pic_mask(size: int, rng: np.random.Generator) -> torch.Tensor:
    """PIC's training mix (``mask_type = [1, 2]``): :func:`regular_mask` or :func:`irregular_mask`
    with probability 1/2 each, chosen per sample from ``rng``."""
    return regular_mask(size, rng) if rng.integers(0, 2) == 0 else irregular_mask(size, rng)


# --------------------------------------------------------------------------------------------
# DFNet (docs/dfnet.md#masks-and-data; DeepCodebase's utils/mask.py)
# --------------------------------------------------------------------------------------------


def _free_form_holes(
    s: int,
    rng: np.random.Generator,
    vertices: Tuple[int, int],
    polylines: Tuple[int, int],
    segment: Tuple[float, float],
    brush: float,
    start_area: float,
) -> np.ndarray:
    # At least 2 px: a 1-px brush (S < 75) leaves strokes so thin that DCB's default window is
    # reached by < 1 % of attempts; with 2 px about half the attempts land in it down to S = 32.
    width = max(2, int(round(brush * s)))
    canvas = Image.new("L", (s, s), 0)
    draw = ImageDraw.Draw(canvas)
    n_vertex = int(rng.integers(vertices[0], vertices[1] + 1))
    n_lines = int(rng.integers(polylines[0], polylines[1] + 1))
    lo_start, hi_start = start_area / 2, 1 - start_area / 2
    for _ in range(n_lines):
        angle = 0.0
        x, y = rng.uniform(lo_start, hi_start, size=2)
        pts = [(int(x * s), int(y * s))]
        for j in range(n_vertex // n_lines):
            # A turn of up to ±135° from the reversed heading, mirrored on every other vertex:
            # strokes wander and fold back on themselves instead of running straight.
            angle = math.pi - angle + rng.uniform(-0.75 * math.pi, 0.75 * math.pi)
            if j % 2 == 0:
                angle = 2 * math.pi - angle
            length = rng.uniform(segment[0], segment[1])
            x = float(np.clip(x + length * math.cos(angle), 0.0, 1.0))
            y = float(np.clip(y + length * math.sin(angle), 0.0, 1.0))
            pts.append((int(x * s), int(y * s)))
        _draw_stroke(draw, pts, width)
    return np.asarray(canvas)


def free_form_mask(
    size: int,
    rng: np.random.Generator,
    *,
    hole_range: Optional[Tuple[float, float]] = (0.1, 0.2),
    max_attempts: int = 1000,
    vertices: Tuple[int, int] = (10, 40),
    polylines: Tuple[int, int] = (1, 5),
    segment: Tuple[float, float] = (0.1, 0.3),
    brush: float = 0.02,
    start_area: float = 0.5,
) -> torch.Tensor:
    """DFNet-style free-form brush strokes (DeepCodebase's ``utils/mask.py``, docs/dfnet.md#masks-and-data).

    One attempt: ``V ~ [vertices]`` segments in total, split over ``L ~ [polylines]`` polylines
    (``V // L`` segments each, integers inclusive). Each polyline starts at a uniform point of the
    central ``start_area`` fraction of the image (coordinates in [0.25, 0.75] of the side by
    default) and takes segments of length ``U(segment)`` x side, turning by up to ±135° each time;
    points are clipped to the image. The brush is ``max(2, round(brush · S))`` px wide (2 % of the
    side: 5 px at 256, 10 at 512, as DCB's ``int(0.02 · S)``; never under 2 px), with round joins
    and caps (discs on the vertices). The stroke recipe is DCB's; the rasteriser is Pillow's.

    Args:
        size: side S.
        rng: the generator; consumed across attempts.
        hole_range: ``(lo, hi)``: keep an attempt only if its hole fraction is in ``[lo, hi)``
            (DCB keeps [0.1, 0.2)); ``None`` accepts the first attempt.
        max_attempts: attempts before giving up with RuntimeError. With the default window about
            20 % of attempts are kept at S = 256 and 512, 35 % at 128, 55 % at 64 (measured), so
            1000 failures in a row does not happen in practice; a window the strokes cannot
            reach fails after ~0.3 s with a message giving the fractions seen.

    Returns float32 (1, S, S), 1 = known, binary.
    """
    s = _size(size)
    if hole_range is not None:
        lo, hi = (float(v) for v in hole_range)
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"free_form_mask: hole_range must satisfy 0 <= lo < hi <= 1, got {hole_range}")
    if max_attempts < 1:
        raise ValueError(f"free_form_mask: max_attempts must be >= 1, got {max_attempts}")
    ratios = []
    for _ in range(max_attempts):
        holes = _free_form_holes(s, rng, vertices, polylines, segment, brush, start_area)
        ratio = float(np.count_nonzero(holes)) / holes.size
        if hole_range is None or lo <= ratio < hi:
            return _holes_to_mask(holes)
        ratios.append(ratio)
    raise RuntimeError(
        f"free_form_mask: no mask with hole fraction in [{lo}, {hi}) after {max_attempts} attempts at "
        f"size {s} (fractions seen: {min(ratios):.3f} .. {max(ratios):.3f}); widen hole_range or raise max_attempts"
    )


# --------------------------------------------------------------------------------------------
# mask files
# --------------------------------------------------------------------------------------------

PIC_MASK_ROTATION_DEGREES = 10.0


class MaskFolder:
    """Mask image files under ``root`` (recursive, sorted, ``IMAGE_EXTENSIONS``), used as a
    generator: ``folder(size, rng)`` picks a file uniformly with ``rng`` and returns it as a
    float32 (1, S, S) mask, 1 = known.

    Args:
        root: the folder.
        holes: the colour of the holes in the files: ``"white"`` (255 = hole, 0 = known, the
            default) or ``"black"``; see :func:`~inpaint_fast.data.mask_from_pil`.
        binary: PIC's rule, any pixel touched by a hole is a hole (True), or grey levels kept as
            soft values (False, DFNet).
        augment: PIC's augmentation of external masks (docs/pic.md#data-and-masks): random horizontal flip
            (p = 0.5), rotation by U(−10°, 10°) with nearest sampling (the uncovered corners are
            filled with the known value), centre crop to a square of the short side, bilinear
            resize to S; then ``binary``'s rule. False: a plain bilinear resize of the whole file
            to S x S, as DFNet's test. :data:`~inpaint_fast.data.FOLDER_MASK_READING` lists what
            each recipe uses.
    """

    def __init__(self, root: Union[str, "os.PathLike[str]"], *, holes: str = "white", binary: bool = False,
                 augment: bool = False) -> None:
        self.root = Path(root)
        self.holes = check_hole_colour(holes, "MaskFolder")
        self.binary = bool(binary)
        self.augment = bool(augment)
        self.paths = find_images(self.root, IMAGE_EXTENSIONS)

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, file_index: int, size: int, rng: Optional[np.random.Generator] = None) -> torch.Tensor:
        """File ``file_index`` as a (1, S, S) mask; ``rng`` drives the augmentation (required when
        ``augment`` is on)."""
        s = _size(size)
        img = open_image(self.paths[file_index], caller="MaskFolder")
        img = img.convert("RGB" if self.binary else "L")
        if self.augment:
            if rng is None:
                raise ValueError("MaskFolder.load: rng is required when augment is on")
            if rng.random() < 0.5:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
            angle = float(rng.uniform(-PIC_MASK_ROTATION_DEGREES, PIC_MASK_ROTATION_DEGREES))
            known = known_level(self.holes)
            fill = (known,) * 3 if img.mode == "RGB" else known
            img = img.rotate(angle, resample=Image.NEAREST, expand=False, fillcolor=fill)
            w, h = img.size
            side = min(w, h)
            top, left = int(round((h - side) / 2.0)), int(round((w - side) / 2.0))
            img = img.crop((left, top, left + side, top + side))
        return mask_from_pil(resize_square(img, s), holes=self.holes, binary=self.binary)

    def hole_fraction(self, files: int = 8) -> float:
        """The mean hole fraction of the first ``files`` files, each read at its own size without
        augmentation: a value near 1 usually means the files mark the other colour as hole."""
        paths = self.paths[:max(1, files)]
        return sum(1.0 - load_mask(p, holes=self.holes, binary=self.binary).mean().item() for p in paths) / len(paths)

    def __call__(self, size: int, rng: np.random.Generator) -> torch.Tensor:
        return self.load(int(rng.integers(0, len(self.paths))), size, rng)

    def __repr__(self) -> str:
        return (
            f"MaskFolder({str(self.root)!r}, files={len(self)}, holes={self.holes!r}, binary={self.binary}, "
            f"augment={self.augment})"
        )


# --------------------------------------------------------------------------------------------
# MaskSource and specs
# --------------------------------------------------------------------------------------------

MASK_SPECS = {
    "center": center_mask,
    "regular": regular_mask,
    "irregular": irregular_mask,
    "pic": pic_mask,
    "free_form": free_form_mask,
}


class MaskSource:
    """Seeded masks per sample: ``source(index, epoch=0)`` → float32 (1, S, S), 1 = known.

    The generator runs on ``sample_rng(seed, epoch, index)`` =
    ``default_rng(SeedSequence([seed, epoch, index, 0]))``: a function of the three numbers only,
    so training resumes exactly and every DDP rank or DataLoader worker agrees on sample i.

    Args:
        generator: ``g(size, rng) -> (1, S, S)`` (any function of this module, a
            :class:`MaskFolder`, or your own; it must be picklable for spawned workers).
        size: side S.
        seed: non-negative int.
        name: shown by ``repr``.
    """

    def __init__(self, generator: MaskGenerator, size: int, *, seed: int = 0, name: Optional[str] = None):
        if not callable(generator):
            raise TypeError(
                f"MaskSource: generator must be callable (size, rng) -> mask, got {type(generator).__name__}"
            )
        self.generator = generator
        self.size = _size(size)
        self.seed = non_negative_int("seed", seed)
        self.name = name or getattr(generator, "__name__", type(generator).__name__)

    def __call__(self, index: int, epoch: int = 0) -> torch.Tensor:
        mask = self.generator(self.size, sample_rng(self.seed, epoch, index, STREAM_MASK))
        if tuple(mask.shape) != (1, self.size, self.size):
            raise RuntimeError(
                f"MaskSource {self.name}: generator returned shape {tuple(mask.shape)}, "
                f"expected (1, {self.size}, {self.size})"
            )
        return mask.to(torch.float32)

    def __repr__(self) -> str:
        return f"MaskSource({self.name}, size={self.size}, seed={self.seed})"


# Folder-spec suffixes of older command lines (a per-folder file convention): refused with a pointer
# to holes= / --invert-mask rather than taken as part of a path that does not exist.
_RETIRED_SUFFIXES = (":pic", ":dfnet")


def _accepted_specs() -> str:
    names = ", ".join(repr(k) for k in MASK_SPECS)
    return f"{names}, or a folder of mask images (white = hole, black = known)"


def make_mask_source(spec, size: int, *, seed: int = 0, holes: str = "white", binary: bool = False,
                     augment: bool = False) -> MaskSource:
    """Build the :class:`MaskSource` a spec names.

    Args:
        spec: ``"center"``, ``"regular"``, ``"irregular"``, ``"pic"`` (regular or irregular 50/50),
            ``"free_form"`` (DFNet strokes, hole fraction in [0.1, 0.2)), or the path of a folder
            of mask images (a :class:`MaskFolder`: white = hole, black = known, grey = partly
            known). Names win over folders: write ``./center`` for a folder called ``center``.
            A callable ``g(size, rng)`` is wrapped as is.
        size: side S of the masks.
        seed: non-negative int.
        holes, binary, augment: how a folder's files are read (see :class:`MaskFolder`; ignored
            for the generators).

    Raises ValueError for an unknown spec (listing the accepted ones) and FileNotFoundError for a
    mask folder without image files.
    """
    if isinstance(spec, MaskSource):
        raise TypeError("make_mask_source: spec is already a MaskSource")
    if callable(spec):
        return MaskSource(spec, size, seed=seed)
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if not isinstance(spec, str):
        raise TypeError(f"make_mask_source: spec must be a str, path or callable, got {type(spec).__name__}")
    if spec in MASK_SPECS:
        return MaskSource(MASK_SPECS[spec], size, seed=seed, name=spec)
    if spec and Path(spec).is_dir():
        folder = MaskFolder(spec, holes=holes, binary=binary, augment=augment)
        return MaskSource(folder, size, seed=seed, name=f"folder:{spec}")
    if spec.endswith(_RETIRED_SUFFIXES):
        raise ValueError(
            f"make_mask_source: {spec!r} is not a folder; a mask folder takes no ':pic'/':dfnet' suffix any more: "
            "every mask file reads white = hole, black = known (holes='black' for files that mark known pixels "
            "white; on the command line --invert-mask)"
        )
    raise ValueError(
        f"make_mask_source: unknown mask spec {spec!r} (neither a known name nor an existing folder); "
        f"accepted: {_accepted_specs()}"
    )
