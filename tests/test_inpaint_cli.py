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


def _image_and_mask(tmp_path, h, w, *, convention):
    """A random RGB image (h x w) and a mask file with a rectangular hole in rows/cols [h/4, h/2)."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    known = np.ones((h, w), dtype=bool)
    known[h // 4:h // 2, w // 4:w // 2] = False
    if convention == "dfnet":  # white = known
        mask = np.where(known, 255, 0).astype(np.uint8)
    else:  # pic: black = known, white = hole
        mask = np.where(known, 0, 255).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "photo.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    return str(tmp_path / "photo.png"), str(tmp_path / "mask.png"), image, known


@pytest.fixture(scope="module")
def pic_checkpoint(tmp_path_factory):
    from inpaint_fast.models.pic import PIC

    torch.manual_seed(0)
    return _ours("pic", PIC(), tmp_path_factory.mktemp("pic") / "pic.pt", size=96)


def _read(path):
    return np.asarray(Image.open(path).convert("RGB"))


def test_pic_samples_keep_known_pixels(tmp_path, pic_checkpoint, capsys):
    img, mask, image, known = _image_and_mask(tmp_path, 70, 90, convention="pic")
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
    img, mask, image, known = _image_and_mask(tmp_path, 100, 120, convention="dfnet")
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


def test_inpaint_errors(tmp_path, pic_checkpoint, capsys):
    img, mask, _, _ = _image_and_mask(tmp_path, 64, 64, convention="dfnet")
    base = ["--image", img, "--mask", mask, "--out", str(tmp_path / "o"), "--device", "cpu"]
    assert cli.main(["inpaint", "--model", "dfnet", "--checkpoint", pic_checkpoint, *base]) == 2
    assert "is a 'pic' checkpoint, but --model is 'dfnet'" in capsys.readouterr().err
    assert cli.main(["inpaint", "--model", "pic", *base]) == 2
    assert "--pic-E" in capsys.readouterr().err
    assert cli.main(["inpaint", "--model", "pic", "--checkpoint", pic_checkpoint, "--size", "100", *base]) == 2
    assert "multiple of 32" in capsys.readouterr().err
    assert cli.main(["inpaint", "--model", "pic", "--checkpoint", str(tmp_path / "none.pt"), *base]) == 2
    assert "--checkpoint: no file" in capsys.readouterr().err
    assert cli.main(["inpaint", "--model", "pic", "--checkpoint", pic_checkpoint, "--image", str(tmp_path / "x.png"),
                     "--mask", mask, "--out", str(tmp_path / "o")]) == 2
    assert "--image: no file" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o")
