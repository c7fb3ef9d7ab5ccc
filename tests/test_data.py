"""inpaint_fast.data: image/mask IO, PIC and DFNet mask generators, the seeded dataset.

Every file is made in tmp_path with Pillow; sizes are small so the whole file runs in seconds.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from inpaint_fast.data import (
    MASK_SPECS,
    InpaintingDataset,
    MaskFolder,
    center_mask,
    free_form_mask,
    irregular_mask,
    load_image,
    load_mask,
    make_mask_source,
    pic_mask,
    regular_mask,
    regular_mask_rectangles,
    sample_rng,
    save_image,
    save_mask,
)


def _rgb(path, arr):
    Image.fromarray(np.asarray(arr, dtype=np.uint8), "RGB").save(path)
    return path


def _grey(path, arr):
    Image.fromarray(np.asarray(arr, dtype=np.uint8), "L").save(path)
    return path


def _noise_images(folder, n, size=(40, 30), seed=0):
    """n random RGB PNGs (w x h = size) in folder; returns their paths in name order."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    return [_rgb(folder / f"img{i:02d}.png", rng.integers(0, 256, (size[1], size[0], 3))) for i in range(n)]


def _square_hole_files(folder, n=6, side=32):
    """n mask files (0 = known, 255 = hole), each with a different hole square."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        a = np.zeros((side, side), np.uint8)
        a[2 + i : 12 + 2 * i, 4 + 2 * i : 14 + 2 * i] = 255
        _grey(folder / f"m{i}.png", a)
    return folder


# --------------------------------------------------------------------------------------------
# IO
# --------------------------------------------------------------------------------------------


def test_load_image_modes_shapes_and_range(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (6, 9, 3)).astype(np.uint8)
    _rgb(tmp_path / "a.png", rgb)
    x = load_image(tmp_path / "a.png")
    assert x.dtype == torch.float32 and x.shape == (3, 6, 9)
    assert torch.equal(x, torch.from_numpy(rgb).permute(2, 0, 1).float() / 255)

    _grey(tmp_path / "g.png", np.full((5, 7), 51))  # greyscale → replicated over RGB
    g = load_image(tmp_path / "g.png")
    assert g.shape == (3, 5, 7) and torch.allclose(g, torch.full_like(g, 0.2))

    Image.new("RGBA", (4, 4), (255, 0, 0, 0)).save(tmp_path / "rgba.png")  # alpha is dropped
    assert load_image(tmp_path / "rgba.png")[:, 0, 0].tolist() == [1.0, 0.0, 0.0]

    Image.fromarray(np.full((3, 3), 65535, np.uint16)).save(tmp_path / "deep.png")  # 16-bit grey
    assert torch.equal(load_image(tmp_path / "deep.png"), torch.ones(3, 3, 3))

    r = load_image(tmp_path / "a.png", size=16)
    assert r.shape == (3, 16, 16) and r.min() >= 0 and r.max() <= 1


def test_save_load_round_trip_is_exact_and_rounds(tmp_path):
    levels = torch.randint(0, 256, (3, 5, 7)).float() / 255
    save_image(levels, tmp_path / "x.png")
    assert torch.equal(load_image(tmp_path / "x.png"), levels)

    grey = torch.randint(0, 256, (1, 4, 6)).float() / 255
    save_image(grey, tmp_path / "sub" / "m.png")  # parent folder created; white = known in this file
    assert torch.equal(load_mask(tmp_path / "sub" / "m.png", holes="black"), grey)
    save_mask(grey, tmp_path / "sub" / "holes_white.png")  # the file convention: white = hole
    assert np.array_equal(np.asarray(Image.open(tmp_path / "sub" / "holes_white.png")),
                          np.rint(255 - grey[0].numpy() * 255).astype(np.uint8))
    assert torch.allclose(load_mask(tmp_path / "sub" / "holes_white.png"), grey, atol=1e-6, rtol=0)

    # 100.6/255 → 101 (rounded; DFNet's truncation would give 100); out-of-range values clamp.
    save_image(torch.tensor([100.6 / 255, -0.5, 1.7]).view(1, 1, 3), tmp_path / "r.png")
    assert np.asarray(Image.open(tmp_path / "r.png")).tolist() == [[101, 0, 255]]

    with pytest.raises(ValueError, match="shape"):
        save_image(torch.zeros(2, 4, 4), tmp_path / "bad.png")
    with pytest.raises(ValueError, match="non-finite"):
        save_image(torch.full((1, 2, 2), float("nan")), tmp_path / "nan.png")


def test_mask_files_white_is_hole_unless_inverted(tmp_path):
    _grey(tmp_path / "m.png", [[0, 255, 128, 1]])
    soft = load_mask(tmp_path / "m.png")  # white = hole, black = known, grey kept soft
    assert soft.shape == (1, 1, 4) and soft.dtype == torch.float32
    assert torch.equal(soft, torch.tensor([[[1.0, 0.0, 127 / 255, 254 / 255]]])), soft
    binary = load_mask(tmp_path / "m.png", binary=True)  # PIC's rule: only exactly-black pixels are known
    assert torch.equal(binary, torch.tensor([[[1.0, 0.0, 0.0, 0.0]]])), binary

    # holes="black" (DFNet's released files): the mirror image, in both readings
    black = load_mask(tmp_path / "m.png", holes="black")
    assert torch.equal(black, torch.tensor([[[0.0, 1.0, 128 / 255, 1 / 255]]])), black
    black = load_mask(tmp_path / "m.png", holes="black", binary=True)
    assert torch.equal(black, torch.tensor([[[0.0, 1.0, 0.0, 0.0]]])), black

    # A colour file read binary: off the known level in any channel is a hole.
    _rgb(tmp_path / "c.png", [[[0, 0, 0], [0, 0, 1], [7, 0, 0]]])
    assert load_mask(tmp_path / "c.png", binary=True).flatten().tolist() == [1.0, 0.0, 0.0]
    _rgb(tmp_path / "ci.png", [[[255, 255, 255], [255, 255, 254], [0, 0, 0]]])
    assert load_mask(tmp_path / "ci.png", holes="black", binary=True).flatten().tolist() == [1.0, 0.0, 0.0]

    with pytest.raises(ValueError, match="holes"):
        load_mask(tmp_path / "m.png", holes="grey")
    with pytest.raises(TypeError):
        load_mask(tmp_path / "m.png", convention="pic")  # the old keyword is gone, not ignored


def test_mask_resize_soft_or_binary(tmp_path):
    a = np.zeros((10, 10), np.uint8)
    a[:, :5] = 255  # left half hole
    _grey(tmp_path / "half.png", a)
    m = load_mask(tmp_path / "half.png", size=7)
    assert m.shape == (1, 7, 7)
    inner = m[(m > 0) & (m < 1)]
    assert inner.numel() > 0, "a resized soft mask must keep fractional values (no binarisation)"
    assert m[0, :, 0].eq(0).all() and m[0, :, -1].eq(1).all()

    # binary: the bilinear fringe becomes hole; the inverted file reads the same.
    p = load_mask(tmp_path / "half.png", size=7, binary=True)
    assert set(p.unique().tolist()) <= {0.0, 1.0}
    assert (1 - p).sum() > (1 - m).sum(), ((1 - p).sum(), (1 - m).sum())  # holes grow
    _grey(tmp_path / "half_inverted.png", 255 - a)
    assert torch.equal(load_mask(tmp_path / "half_inverted.png", size=7, holes="black", binary=True), p)
    # (within one grey level: Pillow rounds the resized 127.5 up in both files)
    assert torch.allclose(load_mask(tmp_path / "half_inverted.png", size=7, holes="black"), m, atol=1.01 / 255, rtol=0)


def test_io_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_image(tmp_path / "nope.png")
    (tmp_path / "junk.png").write_bytes(b"this is not a png")
    with pytest.raises(ValueError, match="junk.png"):
        load_image(tmp_path / "junk.png")
    with pytest.raises(ValueError, match="junk.png"):
        load_mask(tmp_path / "junk.png")
    with pytest.raises(ValueError, match="size"):
        load_image(tmp_path / "junk.png", size=0)


# --------------------------------------------------------------------------------------------
# mask generators
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size, lo, hi", [(256, 64, 192), (32, 8, 24)])
def test_center_mask_exact_hole(size, lo, hi):
    m = center_mask(size)
    assert m.shape == (1, size, size) and m.dtype == torch.float32
    expected = torch.ones(1, size, size)
    expected[:, lo:hi, lo:hi] = 0
    assert torch.equal(m, expected)
    assert (m == 0).sum() == (size // 2) ** 2


def test_regular_mask_rectangles_inside_and_painted():
    size = 64
    counts = set()
    for seed in range(40):
        rects = regular_mask_rectangles(size, np.random.default_rng(seed))
        n = len(rects)
        counts.add(n)
        assert 1 <= n <= 5
        expected = torch.ones(1, size, size)
        for top, left, bottom, right in rects:
            assert 0 <= top < bottom <= size and 0 <= left < right <= size
            assert top <= int(size - size / (n + 1)) and left <= int(size - size / (n + 1))
            assert bottom - top >= int(size / (n + 7)) and right - left >= int(size / (n + 7))
            expected[:, top:bottom, left:right] = 0
        m = regular_mask(size, np.random.default_rng(seed))
        assert torch.equal(m, expected)  # the mask is exactly the union of those rectangles
    assert counts == {1, 2, 3, 4, 5}


def test_irregular_mask_has_holes_and_known_pixels():
    for seed in range(4):
        m = irregular_mask(128, np.random.default_rng(seed))
        assert m.shape == (1, 128, 128) and m.dtype == torch.float32
        assert set(m.unique().tolist()) == {0.0, 1.0}
        hole = 1 - m.mean().item()
        assert 0.02 < hole < 0.98
    with pytest.raises(ValueError, match="max_width"):
        irregular_mask(64, np.random.default_rng(0), max_width=3)


def test_pic_mask_is_regular_or_irregular_half_and_half():
    kinds = []
    for seed in range(12):
        rng = np.random.default_rng(seed)
        kind = int(rng.integers(0, 2))
        expected = (regular_mask if kind == 0 else irregular_mask)(64, rng)
        assert torch.equal(pic_mask(64, np.random.default_rng(seed)), expected)
        kinds.append(kind)
    assert set(kinds) == {0, 1}


@pytest.mark.parametrize("size", [64, 256])
def test_free_form_hole_ratio_in_window(size):
    for seed in range(5):
        m = free_form_mask(size, np.random.default_rng(seed))
        assert set(m.unique().tolist()) == {0.0, 1.0}
        assert 0.1 <= 1 - m.mean().item() < 0.2
    m = free_form_mask(size, np.random.default_rng(0), hole_range=(0.02, 0.06))
    assert 0.02 <= 1 - m.mean().item() < 0.06


def test_free_form_unreachable_window_fails_clearly():
    with pytest.raises(RuntimeError, match=r"after 5 attempts"):
        free_form_mask(64, np.random.default_rng(0), hole_range=(0.95, 1.0), max_attempts=5)
    with pytest.raises(ValueError, match="hole_range"):
        free_form_mask(64, np.random.default_rng(0), hole_range=(0.3, 0.2))
    m = free_form_mask(64, np.random.default_rng(0), hole_range=None)  # no window: first attempt
    assert 0 < 1 - m.mean().item() < 1


def test_mask_folder_binary_augmented_or_soft(tmp_path):
    folder = tmp_path / "white_holes"
    folder.mkdir()
    a = np.zeros((32, 32), np.uint8)
    a[10:22, 10:22] = 255  # black background, white centred hole
    _grey(folder / "m0.png", a)
    pic = MaskFolder(folder, binary=True, augment=True)  # PIC's reading
    for seed in range(6):  # flip and ±10° rotation (fill = known) keep the centre a hole, corners known
        m = pic(32, np.random.default_rng(seed))
        assert m.shape == (1, 32, 32) and set(m.unique().tolist()) == {0.0, 1.0}
        assert m[0, 12:20, 12:20].eq(0).all() and m[0, :8].eq(1).all() and m[0, 24:].eq(1).all()
        assert 100 <= (m == 0).sum() <= 200  # 144 hole pixels, give or take the rotation

    dfn = MaskFolder(folder)  # DFNet's reading: no augmentation, a plain resize of the file
    assert not dfn.augment and not dfn.binary
    assert torch.equal(dfn(16, np.random.default_rng(0)), load_mask(folder / "m0.png", 16))

    # The same masks from files that mark the known pixels white, read with holes="black"
    # (the rotation's corners are filled with that file's known level, white).
    inverted = tmp_path / "black_holes"
    inverted.mkdir()
    _grey(inverted / "m0.png", 255 - a)
    inv = MaskFolder(inverted, holes="black", binary=True, augment=True)
    for seed in range(6):
        assert torch.equal(inv(32, np.random.default_rng(seed)), pic(32, np.random.default_rng(seed))), seed


def test_mask_folder_hole_fraction_spots_inverted_files(tmp_path):
    folder = _square_hole_files(tmp_path / "masks", n=3)
    holes = [100 / 1024, 110 / 1024, 120 / 1024]  # 10x10, 11x10 and 12x10 holes on 32 x 32
    expected = sum(holes) / 3
    got = MaskFolder(folder).hole_fraction()
    assert abs(got - expected) < 1e-6, (got, expected)
    got = MaskFolder(folder, holes="black").hole_fraction()  # read the wrong way round: mostly hole
    assert abs(got - (1 - expected)) < 1e-6, (got, 1 - expected)
    assert abs(MaskFolder(folder).hole_fraction(files=1) - holes[0]) < 1e-6


# --------------------------------------------------------------------------------------------
# MaskSource: specs and reproducibility
# --------------------------------------------------------------------------------------------


def _all_specs(tmp_path):
    """(spec, how a folder is read) pairs: every generator, and a folder read both recipes' ways."""
    folder = str(_square_hole_files(tmp_path / "masks"))
    return [(name, {}) for name in MASK_SPECS] + [(folder, {}), (folder, {"binary": True, "augment": True})]


def test_mask_source_is_a_function_of_seed_epoch_index(tmp_path):
    for spec, reading in _all_specs(tmp_path):
        a = make_mask_source(spec, 64, seed=3, **reading)
        b = make_mask_source(spec, 64, seed=3, **reading)
        later = [b(i, e) for e in (1, 0) for i in (4, 0, 2)]  # another order, another object
        random.seed(1), np.random.seed(1), torch.manual_seed(1)  # global RNGs play no part
        first = a(2, 0)
        random.seed(2), np.random.seed(2), torch.manual_seed(2)
        assert first.shape == (1, 64, 64) and first.dtype == torch.float32, spec
        assert torch.equal(first, a(2, 0)) and torch.equal(first, later[5]), spec
        if spec == "center":
            continue
        masks = [a(i, 0) for i in range(8)] + [a(2, e) for e in (1, 2, 3)]
        distinct = {tuple(m.flatten().tolist()) for m in masks}
        if spec in MASK_SPECS:
            assert not torch.equal(a(0, 0), a(1, 0)), f"{spec}: index must change the mask"
            assert not torch.equal(a(2, 0), a(2, 1)), f"{spec}: epoch must change the mask"
            assert not torch.equal(a(2, 0), make_mask_source(spec, 64, seed=4)(2, 0)), spec
        assert len(distinct) > 2, f"{spec}: masks barely vary ({len(distinct)} distinct)"


def test_make_mask_source_errors(tmp_path):
    with pytest.raises(ValueError, match="free_form") as err:
        make_mask_source("freeform", 64)
    assert "'center'" in str(err.value) and "white = hole" in str(err.value)
    with pytest.raises(ValueError, match="unknown mask spec"):
        make_mask_source(str(tmp_path / "missing"), 64)
    folder = _square_hole_files(tmp_path / "masks", n=1)
    for suffix in (":pic", ":dfnet"):  # a retired convention suffix is refused with the way out, not dropped
        with pytest.raises(ValueError, match="suffix") as err:
            make_mask_source(f"{folder}{suffix}", 64)
        assert "holes='black'" in str(err.value) and "--invert-mask" in str(err.value)
    with pytest.raises(ValueError, match="holes"):
        make_mask_source(str(folder), 64, holes="inverted")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        make_mask_source(str(tmp_path / "empty"), 64)
    with pytest.raises(ValueError, match="epoch"):
        make_mask_source("regular", 64)(0, -1)
    with pytest.raises(ValueError, match="seed"):
        sample_rng(-1, 0, 0)


# --------------------------------------------------------------------------------------------
# dataset
# --------------------------------------------------------------------------------------------


def test_dataset_finds_images_recursively_sorted(tmp_path):
    _noise_images(tmp_path / "b", 2)
    _rgb(tmp_path / "a.JPG", np.zeros((8, 8, 3)))
    (tmp_path / "c").mkdir()
    _rgb(tmp_path / "c" / "d.bmp", np.zeros((8, 8, 3)))
    (tmp_path / "notes.txt").write_text("not an image")
    ds = InpaintingDataset(tmp_path, size=16, masks="center")
    rel = [p.relative_to(tmp_path).as_posix() for p in ds.paths]
    assert rel == ["a.JPG", "b/img00.png", "b/img01.png", "c/d.bmp"]
    item = ds[1]
    assert set(item) == {"image", "mask", "path"} and item["path"] == str(tmp_path / "b" / "img00.png")
    assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.float32
    assert 0 <= item["image"].min() and item["image"].max() <= 1
    assert torch.equal(item["mask"], center_mask(16))
    assert torch.equal(ds[-1]["image"], ds[3]["image"])
    with pytest.raises(IndexError):
        ds[4]


def test_dataset_errors(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "x.txt").write_text("x")
    with pytest.raises(FileNotFoundError) as err:
        InpaintingDataset(tmp_path / "empty", size=16)
    assert "empty" in str(err.value) and ".jpg" in str(err.value) and ".png" in str(err.value)
    _noise_images(tmp_path / "ok", 1)
    with pytest.raises(ValueError, match="recipe"):
        InpaintingDataset(tmp_path / "ok", size=16, recipe="lama")
    with pytest.raises(ValueError, match="unknown mask spec"):
        InpaintingDataset(tmp_path / "ok", size=16, masks="nothing")


def test_dataset_pic_recipe_crop_flip_rotation(tmp_path):
    # 66 x 66 position-coded image: R = 3·x, G = 3·y. At S = 64 PIC resizes to round(64·266/256)
    # = 66 (a no-op here), so the crop offset and the flip are visible in the pixel values.
    ys, xs = np.mgrid[0:66, 0:66]
    (tmp_path / "pos").mkdir()
    _rgb(tmp_path / "pos" / "p.png", np.stack([3 * xs, 3 * ys, np.zeros_like(xs)], -1))
    ds = InpaintingDataset(tmp_path / "pos", size=64, masks="center", recipe="pic", seed=7)
    flips, centres = set(), set()
    for epoch in range(12):
        ds.set_epoch(epoch)
        img = ds[0]["image"]
        assert img.shape == (3, 64, 64)
        again = ds[0]["image"]
        assert torch.equal(img, again)  # same (seed, epoch, index) → same sample
        r = torch.round(img[0] * 255 / 3)
        g = torch.round(img[1] * 255 / 3)
        cx = r[32, 32].item()  # column in the source of the centre pixel: 32 + left (0..2), ±1 rotation
        cy = g[32, 32].item()
        assert 31 <= cx <= 35 and 31 <= cy <= 35, (epoch, cx, cy)
        flips.add(bool(r[32, 40] < r[32, 24]))  # flipped: R decreases left to right
        centres.add((cx, cy))
    assert flips == {True, False}
    assert len(centres) > 2  # the crop offset (and rotation) vary with the epoch

    # Rotation: nearest sampling (every pixel is a source pixel or black) and black corners. A
    # 33 x 33 noise image: round(32·266/256) = 33, so the resize is a no-op and a blend shows.
    noise = np.random.default_rng(3).integers(1, 256, (33, 33, 3)).astype(np.uint8)
    (tmp_path / "noise").mkdir()
    _rgb(tmp_path / "noise" / "n.png", noise)
    source = {tuple(v) for v in noise.reshape(-1, 3).tolist()} | {(0, 0, 0)}
    ds = InpaintingDataset(tmp_path / "noise", size=32, masks="center", recipe="pic")
    black_corners = 0
    for epoch in range(8):
        ds.set_epoch(epoch)
        px = torch.round(ds[0]["image"] * 255).to(torch.uint8)
        assert {tuple(v) for v in px.reshape(3, -1).T.tolist()} <= source, "rotation must not blend"
        is_black = (px == 0).all(0)
        assert not is_black[8:24, 8:24].any()  # ±3° only blackens the borders
        black_corners += int(is_black[0, 0] or is_black[31, 31])
    assert black_corners >= 1


def test_dataset_dfnet_recipe_and_test_mode(tmp_path):
    paths = _noise_images(tmp_path / "imgs", 1, size=(30, 20))
    plain = load_image(paths[0], size=24)
    ds = InpaintingDataset(tmp_path / "imgs", size=24, masks="free_form", recipe="dfnet")
    seen = set()
    for epoch in range(10):
        ds.set_epoch(epoch)
        img = ds[0]["image"]
        if torch.equal(img, plain):
            seen.add("plain")
        else:
            assert torch.equal(img, plain.flip(-1)), "dfnet recipe = resize + optional horizontal flip"
            seen.add("flipped")
    assert seen == {"plain", "flipped"}

    test = InpaintingDataset(tmp_path / "imgs", size=24, masks="regular", recipe="pic", train=False)
    first = test[0]
    test.set_epoch(5)
    second = test[0]
    assert torch.equal(first["image"], plain)  # test transform: resize only
    assert torch.equal(second["image"], plain) and torch.equal(first["mask"], second["mask"])


def test_dataset_epoch_changes_masks_and_seed_matters(tmp_path):
    _noise_images(tmp_path, 2)
    ds = InpaintingDataset(tmp_path, size=32, masks="regular", recipe="dfnet", seed=1)
    m0 = ds[0]["mask"]
    ds.set_epoch(1)
    assert not torch.equal(ds[0]["mask"], m0)
    ds.set_epoch(0)
    assert torch.equal(ds[0]["mask"], m0)
    other = InpaintingDataset(tmp_path, size=32, masks="regular", recipe="dfnet", seed=2)
    assert not torch.equal(other[0]["mask"], m0)


def test_dataset_reads_a_mask_folder_the_recipe_way(tmp_path):
    _noise_images(tmp_path / "imgs", 2)
    folder = _square_hole_files(tmp_path / "masks", n=2, side=32)
    inverted = tmp_path / "inverted"
    inverted.mkdir()
    for f in sorted(folder.iterdir()):
        _grey(inverted / f.name, 255 - np.asarray(Image.open(f)))
    for recipe, reading in (("pic", {"binary": True, "augment": True}), ("dfnet", {"binary": False, "augment": False})):
        ds = InpaintingDataset(tmp_path / "imgs", size=32, masks=str(folder), recipe=recipe, seed=4)
        source = make_mask_source(str(folder), 32, seed=4, **reading)
        flipped = InpaintingDataset(tmp_path / "imgs", size=32, masks=str(inverted), recipe=recipe, seed=4,
                                    mask_holes="black")
        for i in range(2):
            assert torch.equal(ds[i]["mask"], source(i, 0)), (recipe, i)
            assert torch.equal(flipped[i]["mask"], ds[i]["mask"]), (recipe, i)
        hole = 1 - ds[0]["mask"].mean().item()
        assert 0.05 < hole < 0.3, (recipe, hole)  # white squares are the holes


def test_dataloader_workers_give_identical_batches(tmp_path):
    _noise_images(tmp_path, 6)
    ds = InpaintingDataset(tmp_path, size=32, masks="pic", recipe="pic", seed=5)
    ds.set_epoch(2)

    def batches(workers):
        loader = torch.utils.data.DataLoader(ds, batch_size=3, shuffle=False, num_workers=workers)
        return list(loader)

    serial, parallel = batches(0), batches(2)
    assert len(serial) == len(parallel) == 2
    for a, b in zip(serial, parallel):
        assert a["image"].shape == (3, 3, 32, 32) and a["mask"].shape == (3, 1, 32, 32)
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
        assert a["path"] == b["path"]
