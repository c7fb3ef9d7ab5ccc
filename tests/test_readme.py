"""The README's Python examples run as written (in order, sharing one namespace)."""

from __future__ import annotations

import pathlib
import re

import torch

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 4, "the README lost its usage examples"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - our own documentation
    assert namespace["cf"].shape == (2, 128, 64, 64)
    assert namespace["y"].shape == (1, 32, 16, 16)
    assert namespace["out"].shape == (1, 3, 256, 256)
    assert torch.isfinite(namespace["raw"]).all()
    assert namespace["inpaint_fast"].get_backend() == "auto"
    image, mask = namespace["image"], namespace["mask"]
    assert namespace["samples"].shape == (2, 3, 3, 256, 256)
    assert namespace["completion"].shape == (2, 3, 256, 256)
    known = mask.expand_as(image) == 1
    assert torch.equal(namespace["completion"][known], image[known])
    assert torch.equal(namespace["samples"][:, 0][known], image[known])
