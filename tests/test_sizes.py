"""inpaint_fast/models/sizes.py: the one rule per network that models, training and inference share."""

from __future__ import annotations

import pytest

from inpaint_fast.models.sizes import dfnet_size_problem, pic_discriminator_minimum, pic_size_problem


@pytest.mark.parametrize("h,w,training,ok", [
    (64, 64, False, True), (32, 64, False, True), (32, 32, False, False),  # one 32x32 cell
    (64, 64, True, False), (96, 96, True, True), (96, 128, True, True),
    (100, 128, False, False), (0, 64, False, False), (1024, 2048, True, True),
])  # fmt: skip
def test_pic_sizes(h, w, training, ok):
    problem = pic_size_problem(h, w, training=training)
    assert (problem == "") == ok, problem
    if not ok:
        assert f"got {h}x{w}" in problem


def test_pic_discriminator_minimum_follows_the_depth():
    assert pic_discriminator_minimum() == 96 and pic_discriminator_minimum(4) == 48
    assert pic_size_problem(48, 48, layers=4, training=True) == ""
    assert "at least 48" in pic_size_problem(32, 48, layers=4, training=True)


@pytest.mark.parametrize("h,w,ok", [(256, 256, True), (256, 512, True), (512, 384, False), (128, 256, False)])
def test_dfnet_sizes(h, w, ok):
    problem = dfnet_size_problem(h, w)
    assert (problem == "") == ok, problem
    if not ok:
        assert f"got {h}x{w}" in problem and "Pad or resize" in problem


# --- the fused kernels' index and launch limits, per backend ------------------------------------

from inpaint_fast.models.sizes import dfnet_kernel_problem, pic_kernel_problem  # noqa: E402


@pytest.mark.parametrize("h,w,batch,backend,needle", [
    (32736, 32736, 1, "triton", ""),  # H*W just below 2^30: 128 channels x H*W/64 positions < 2^31
    (32768, 32768, 1, "triton", "below 2^30 = 1073741824 pixels"),
    (16384, 65536, 1, "triton", "got 16384x65536"),  # H*W = 2^30 exactly: already over
    (32768, 32768, 1, "cuda", ""), (32768, 32768, 1, "cpu", ""), (32768, 32768, 1, "reference", ""),
    (262144, 262144, 1, "cuda", "at most 1073741823; got 262144x262144"),
    (256, 256, 65535, "triton", ""), (256, 256, 65536, "triton", "at most 65535 images per call; got 65536"),
    (256, 256, 65536, "cuda", "got 65536"), (256, 256, 65536, "cpu", ""),
    (32768, 32768, 1, None, "triton backend"), (32768, 32768, 1, "auto", "triton backend"),  # not resolved: all
])  # fmt: skip
def test_pic_kernel_limits(h, w, batch, backend, needle):
    problem = pic_kernel_problem(h, w, batch, backend)
    assert (problem == "") == (needle == ""), problem
    assert needle in problem


@pytest.mark.parametrize("h,w,batch,backend,needle", [
    (11520, 11520, 1, "triton", ""),  # 16 H W (level 1: 64 channels at input/2) < 2^31
    (11776, 11776, 1, "triton", "level 1's features (64 channels at input/2) span 2218786816 >= 2^31"),
    (11776, 11776, 1, "cpu", ""), (11776, 11776, 1, "cuda", ""),
    (11520, 11520, 63, "triton", ""), (11520, 11520, 64, "triton", "the batch can be at most 63; got 64"),
    (524032, 256, 1, "cuda", ""), (524288, 256, 1, "cuda", "the height can be at most 524280"),
    (512, 512, 65536, "cuda", "at most 65535 blocks; got a batch of 65536"), (512, 512, 65536, "cpu", ""),
])  # fmt: skip
def test_dfnet_kernel_limits(h, w, batch, backend, needle):
    problem = dfnet_kernel_problem(h, w, batch, backend)
    assert (problem == "") == (needle == ""), problem
    assert needle in problem


@pytest.fixture
def triton_runs(monkeypatch):
    """The commands' checks see the triton backend as the one that will run (as on a GPU machine)."""
    from inpaint_fast import inpaint

    monkeypatch.setattr(inpaint, "resolved_backend", lambda *a, **k: "triton")


@pytest.mark.usefixtures("triton_runs")
@pytest.mark.parametrize("argv,message", [
    (["--model", "pic", "--size", "32768"],
     "error: --size: PIC: the triton backend's attention addresses the 128 channels x (H/8)(W/8) positions of one "
     "image with 32-bit offsets, so height x width must be below 2^30"),
    (["--model", "pic", "--batch", "40000"],
     "error: --batch: PIC (2 x --batch images in one call): the triton backend's attention launches the batch on a "
     "CUDA grid axis of at most 65535 blocks, so at most 65535 images per call; got 80000"),
    (["--model", "dfnet", "--size", "11776"],
     "error: --size: DFNet: the triton backend's fusion blocks address each image with 32-bit offsets"),
    (["--model", "dfnet", "--size", "11520", "--batch", "64"],
     "error: --batch: DFNet: the triton backend's fusion blocks address their partial sums"),
])  # fmt: skip
def test_train_checks_the_kernel_limits_before_reading_anything(tmp_path, capsys, argv, message):
    from inpaint_fast import cli

    missing = tmp_path / "no-data"  # never read: the limits come first
    assert cli.main(["train", *argv, "--data", str(missing), "--out", str(tmp_path / "o"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and "\n" not in err, err
    assert not (tmp_path / "o").exists()
