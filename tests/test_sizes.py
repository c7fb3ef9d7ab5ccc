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
