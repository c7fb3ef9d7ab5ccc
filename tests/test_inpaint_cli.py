"""``inpaint-fast inpaint`` with PIC and DFNet checkpoints the test writes (random weights)."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from inpaint_fast import cli
from inpaint_fast.training.checkpoint import CHECKPOINT_FORMAT, atomic_save


pytestmark = pytest.mark.usefixtures("one_thread")


def _ours(task, model, path, **args):
    """A checkpoint in the format inpaint-fast train writes (only what inference reads)."""
    atomic_save({"format": CHECKPOINT_FORMAT, "task": task, "step": 0, "modules": {"model": model.state_dict()},
                 "args": {"model": task, **args}}, path)
    return str(path)


def _image_and_mask(tmp_path, h, w, *, inverted=False, name="mask.png"):
    """A random RGB image (h x w) and a mask file with a rectangular hole in rows/cols [h/4, h/2):
    white = hole, black = known, or the other way round when ``inverted`` (DFNet's released files)."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    known = np.ones((h, w), dtype=bool)
    known[h // 4:h // 2, w // 4:w // 2] = False
    mask = np.where(known, 255, 0) if inverted else np.where(known, 0, 255)
    Image.fromarray(image).save(tmp_path / "photo.png")
    Image.fromarray(mask.astype(np.uint8)).save(tmp_path / name)
    return str(tmp_path / "photo.png"), str(tmp_path / name), image, known


@pytest.fixture(scope="module")
def pic_checkpoint(tmp_path_factory):
    from inpaint_fast.models.pic import PIC

    torch.manual_seed(0)
    return _ours("pic", PIC(), tmp_path_factory.mktemp("pic") / "pic.pt", size=96)


def _read(path):
    return np.asarray(Image.open(path).convert("RGB"))


def test_pic_samples_keep_known_pixels(tmp_path, pic_checkpoint, capsys):
    img, mask, image, known = _image_and_mask(tmp_path, 70, 90)
    out = tmp_path / "out"
    rc = cli.main(["inpaint", "--model", "pic", "--checkpoint", pic_checkpoint, "--image", img, "--mask", mask,
                   "--out", str(out), "--samples", "3", "--device", "cpu", "--seed", "1"])
    assert rc == 0
    assert sorted(os.listdir(out)) == ["photo_out_0.png", "photo_out_1.png", "photo_out_2.png"]
    assert "photo_out_2.png" in capsys.readouterr().out
    outs = [_read(out / f"photo_out_{i}.png") for i in range(3)]
    for o in outs:
        assert o.shape == (70, 90, 3)  # back at the input's size (the model ran at 96², the checkpoint's size)
        assert np.array_equal(o[known], image[known])
        assert not np.array_equal(o[~known], image[~known])
    assert not np.array_equal(outs[0][~known], outs[1][~known])  # different latent samples
    # --deterministic: z = mean of the prior, so every sample is the same
    det = tmp_path / "det"
    assert cli.main(["inpaint", "--model", "pic", "--checkpoint", pic_checkpoint, "--image", img, "--mask", mask,
                     "--out", str(det), "--samples", "2", "--deterministic", "--device", "cpu"]) == 0
    assert np.array_equal(_read(det / "photo_out_0.png"), _read(det / "photo_out_1.png"))


def test_dfnet_result_raw_alpha(tmp_path):
    from inpaint_fast.models.dfnet import DFNet

    torch.manual_seed(0)
    net = DFNet()
    official = tmp_path / "model_celeba.pth"
    torch.save(net.state_dict(), official)  # an official-style plain state dict
    img, mask, image, known = _image_and_mask(tmp_path, 100, 120)
    out = tmp_path / "out"
    rc = cli.main(["inpaint", "--model", "dfnet", "--checkpoint", str(official), "--image", img, "--mask", mask,
                   "--out", str(out), "--size", "256", "--bgr", "--save-raw", "--device", "cpu"])
    assert rc == 0
    assert sorted(os.listdir(out)) == ["photo_alpha.png", "photo_raw.png", "photo_result.png"]
    result = _read(out / "photo_result.png")
    assert result.shape == (100, 120, 3) and np.array_equal(result[known], image[known])
    assert _read(out / "photo_alpha.png").shape == (100, 120, 3)
    # our own checkpoint format gives the same result (and its recorded size, 256)
    ours = _ours("dfnet", net, tmp_path / "ours.pt", size=256)
    out2 = tmp_path / "out2"
    assert cli.main(["inpaint", "--model", "dfnet", "--checkpoint", ours, "--image", img, "--mask", mask,
                     "--out", str(out2), "--bgr", "--device", "cpu"]) == 0
    assert np.array_equal(_read(out2 / "photo_result.png"), result)


@pytest.fixture(scope="module")
def dfnet_checkpoint(tmp_path_factory):
    from inpaint_fast.models.dfnet import DFNet

    torch.manual_seed(0)
    return _ours("dfnet", DFNet(), tmp_path_factory.mktemp("dfnet") / "dfnet.pt", size=256)


@pytest.mark.parametrize("model", ["pic", "dfnet"])
def test_one_mask_file_means_the_same_holes_for_both_models(tmp_path, model, pic_checkpoint, dfnet_checkpoint):
    """White = hole for PIC and DFNet alike; --invert-mask reads a white = known file identically."""
    img, mask, image, known = _image_and_mask(tmp_path, 64, 80)
    _, inverted, _, _ = _image_and_mask(tmp_path, 64, 80, inverted=True, name="inverted.png")
    checkpoint = pic_checkpoint if model == "pic" else dfnet_checkpoint
    name = "photo_out_0.png" if model == "pic" else "photo_result.png"
    base = ["inpaint", "--model", model, "--checkpoint", checkpoint, "--image", img, "--device", "cpu"]
    assert cli.main([*base, "--mask", mask, "--out", str(tmp_path / "a")]) == 0
    assert cli.main([*base, "--mask", inverted, "--invert-mask", "--out", str(tmp_path / "b")]) == 0
    a, b = _read(tmp_path / "a" / name), _read(tmp_path / "b" / name)
    assert np.array_equal(a[known], image[known])  # the black area is kept ...
    changed = (a != image).any(-1)
    assert changed[~known].mean() > 0.9, changed[~known].mean()  # ... the white rectangle is filled in
    assert np.array_equal(a, b)


def test_grey_mask_levels_soft_for_dfnet_binary_for_pic(tmp_path, pic_checkpoint, dfnet_checkpoint):
    """A grey mask pixel is partly known: DFNet blends it, PIC makes it a hole."""
    img, _, image, _ = _image_and_mask(tmp_path, 64, 64)
    grey = np.zeros((64, 64), np.uint8)
    grey[16:48, 16:48] = 128  # half hole
    Image.fromarray(grey).save(tmp_path / "grey.png")
    for model, checkpoint, name in (("pic", pic_checkpoint, "photo_out_0.png"),
                                    ("dfnet", dfnet_checkpoint, "photo_result.png")):
        out = tmp_path / model
        assert cli.main(["inpaint", "--model", model, "--checkpoint", checkpoint, "--image", img, "--mask",
                         str(tmp_path / "grey.png"), "--out", str(out), "--device", "cpu"]) == 0
        result = _read(out / name).astype(np.int32)
        if model == "pic":  # a hole: nothing of the input is kept there (beyond chance equality)
            kept = (result[16:48, 16:48] == image[16:48, 16:48]).all(-1).mean()
            assert kept < 0.1, kept
        else:  # out = image·m + completion·(1 − m), m = 127/255: solved for the completion, it must lie
            # in [0, 255] (± rounding); a binarised hole (m = 0) would give values outside it
            m = 127 / 255
            blend = result[16:48, 16:48]
            completion = (blend - m * image[16:48, 16:48]) / (1 - m)
            assert completion.min() > -3 and completion.max() < 258, (completion.min(), completion.max())
            assert not np.array_equal(blend, image[16:48, 16:48])  # and not kept as known (m = 1)


def test_mostly_hole_mask_warns_with_the_way_out(tmp_path, pic_checkpoint, capsys):
    img, mask, _, _ = _image_and_mask(tmp_path, 64, 64, inverted=True)  # a white = known file, read as holes
    out = tmp_path / "o"
    assert cli.main(["inpaint", "--model", "pic", "--checkpoint", pic_checkpoint, "--image", img, "--mask", mask,
                     "--out", str(out), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(lines) == 1, err
    hole = 1 - 1 / 16  # everything but the 16x16 rectangle
    assert "--mask" in lines[0] and mask in lines[0] and f"{hole:.0%}" in lines[0] and "--invert-mask" in lines[0], err
    # read the right way round: no warning
    assert cli.main(["inpaint", "--model", "pic", "--checkpoint", pic_checkpoint, "--image", img, "--mask", mask,
                     "--invert-mask", "--out", str(out), "--device", "cpu"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_mask_of_another_size_is_refused_unless_resize_mask(tmp_path, pic_checkpoint, capsys):
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "photo.png")
    hole = np.zeros((32, 50), np.uint8)  # h x w: a wide mask for a square image
    hole[8:24, 17:33] = 255  # a 16 x 16 square hole
    Image.fromarray(hole).save(tmp_path / "wide.png")
    base = ["inpaint", "--model", "pic", "--checkpoint", pic_checkpoint, "--image", str(tmp_path / "photo.png"),
            "--mask", str(tmp_path / "wide.png"), "--out", str(tmp_path / "o"), "--device", "cpu"]
    assert cli.main(base) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --mask:") and "\n" not in err, err
    assert "50x32" in err and "64x64" in err and "--resize-mask" in err, err
    assert not os.path.exists(tmp_path / "o")
    assert cli.main([*base, "--resize-mask"]) == 0
    out = _read(tmp_path / "o" / "photo_out_0.png")
    image = _read(tmp_path / "photo.png")
    assert out.shape == (64, 64, 3)
    known = np.ones((64, 64), bool)  # the stretched hole: rows 16..48, columns ~22..42 (and its fringe)
    known[14:50, 20:44] = False
    assert np.array_equal(out[known], image[known])


def test_inpaint_errors(tmp_path, pic_checkpoint, capsys):
    img, mask, _, _ = _image_and_mask(tmp_path, 64, 64)
    base = ["--image", img, "--mask", mask, "--out", str(tmp_path / "o"), "--device", "cpu"]
    assert cli.main(["inpaint", "--model", "dfnet", "--checkpoint", pic_checkpoint, *base]) == 2
    assert "is a 'pic' checkpoint, but --model is 'dfnet'" in capsys.readouterr().err
    assert cli.main(["inpaint", "--model", "pic", *base]) == 2
    assert "--pic-E" in capsys.readouterr().err
    assert cli.main(["inpaint", "--model", "pic", "--checkpoint", pic_checkpoint, "--size", "100", *base]) == 2
    assert "multiples of 32" in capsys.readouterr().err
    assert cli.main(["inpaint", "--model", "pic", "--checkpoint", str(tmp_path / "none.pt"), *base]) == 2
    assert "--checkpoint: no file" in capsys.readouterr().err
    assert cli.main(["inpaint", "--model", "pic", "--checkpoint", pic_checkpoint, "--image", str(tmp_path / "x.png"),
                     "--mask", mask, "--out", str(tmp_path / "o")]) == 2
    assert "--image: no file" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o")


def test_help_texts_state_the_mask_convention():
    parser = cli.build_parser()
    helps = {name: " ".join(parser._subparsers._group_actions[0].choices[name].format_help().split())
             for name in ("train", "inpaint")}
    for name, text in helps.items():
        assert "white (255) = hole, black (0) = known, grey = partly known" in text, name
        assert "--invert-mask" in text, name
    assert "--resize-mask" in helps["inpaint"] and "--mask-convention" not in helps["inpaint"]
    assert "--overwrite" in helps["train"] and "delete its checkpoints/, samples/ and metrics.jsonl" in helps["train"]


def test_kernel_limits_are_checked_before_anything_is_read(tmp_path, pic_checkpoint, monkeypatch, capsys):
    """The working size and the samples against the limits of the kernels that will run: with the
    triton backend (as on a GPU machine) PIC's attention takes H*W < 2^30 and 65535 images per call;
    the cpu backend has no such limit, so the same arguments get as far as reading --image."""
    from inpaint_fast import inpaint

    base = ["inpaint", "--model", "pic", "--checkpoint", pic_checkpoint, "--image", str(tmp_path / "none.png"),
            "--mask", str(tmp_path / "none.png"), "--out", str(tmp_path / "o"), "--device", "cpu"]
    assert cli.main([*base, "--size", "32768", "--backend", "cpu"]) == 2
    assert "--image: no file" in capsys.readouterr().err  # the cpu kernels take it: on to the files
    monkeypatch.setattr(inpaint, "resolved_backend", lambda *a, **k: "triton")
    assert cli.main([*base, "--size", "32768"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --size: PIC: the triton backend's attention") and "\n" not in err, err
    assert "below 2^30 = 1073741824 pixels (e.g. 32736x32736); got 32768x32768" in err, err
    assert cli.main([*base, "--samples", "65536"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --samples: PIC: the triton backend's attention launches the batch") and \
        "at most 65535 images per call; got 65536" in err and "\n" not in err, err
    assert not os.path.exists(tmp_path / "o")


def test_a_checkpoints_size_is_checked_against_the_kernel_limits(tmp_path, monkeypatch, capsys):
    """No --size: the size recorded in the checkpoint is the working size, checked before the network runs."""
    from inpaint_fast import inpaint
    from inpaint_fast.models.pic import PIC

    big = _ours("pic", PIC(), tmp_path / "big.pt", size=32768)
    img, mask, _, _ = _image_and_mask(tmp_path, 64, 64)
    monkeypatch.setattr(inpaint, "resolved_backend", lambda *a, **k: "triton")
    monkeypatch.setattr(inpaint, "inpaint_pic", lambda *a, **k: pytest.fail("the network ran"))
    assert cli.main(["inpaint", "--model", "pic", "--checkpoint", big, "--image", img, "--mask", mask,
                     "--out", str(tmp_path / "o"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --size: PIC: the triton backend's attention") and "got 32768x32768" in err, err
