"""Every snippet of the README, as written.

* Python blocks run one by one, each in a fresh namespace, as a reader pastes them: a block that
  leans on an import or a name from another block fails here.
* Shell blocks: ``make`` targets must exist (``make -n``); every ``inpaint-fast`` or ``torchrun ...
  -m inpaint_fast.cli`` line is taken verbatim (``~`` and all) and run in a scratch folder that
  holds the files it names, made here: ``inpaint`` lines run to the end, ``train`` lines through
  every check and the construction of the run (``training.run.prepare``), not the 100,000 steps.
"""

from __future__ import annotations

import os
import pathlib
import re
import shlex
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from inpaint_fast import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TEXT = README.read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", TEXT, re.S)
SHELL_BLOCKS = re.findall(r"```bash\n(.*?)```", TEXT, re.S)

pytestmark = pytest.mark.usefixtures("one_thread")


def _shell_commands():
    """Each command of the shell blocks: continuation lines joined, comments dropped."""
    commands = []
    for block in SHELL_BLOCKS:
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(words)
    return commands


COMMANDS = _shell_commands()


def _block(marker: str) -> str:
    found = [b for b in PYTHON_BLOCKS if marker in b]
    assert len(found) == 1, f"the README should have one Python block containing {marker!r}, found {len(found)}"
    return found[0]


def _run(block: str) -> dict:
    namespace: dict = {"__name__": "__readme__"}
    exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - our own documentation
    return namespace


def test_every_python_block_is_checked():
    assert len(PYTHON_BLOCKS) == 5, "a README Python block was added or removed: check it in this file"


def test_short_long_attention_block():
    ns = _run(_block("inpaint_fast.short_long_attention(q, x, gamma, pre, mask, alpha)"))
    assert ns["y"].shape == (2, 128, 64, 64) and ns["cf"].shape == (2, 128, 64, 64)
    # gamma = alpha = 0: y = x and cf = mask·pre exactly, as the block's comment says.
    assert torch.equal(ns["y"], ns["x"])
    torch.testing.assert_close(ns["cf"], ns["mask"] * ns["pre"], rtol=0, atol=0)


def test_fusion_block_block():
    ns = _run(_block("inpaint_fast.fusion_block("))
    for name in ("out", "alpha", "raw"):
        assert ns[name].shape == (2, 3, 128, 128), name
        assert torch.isfinite(ns[name]).all(), name


def test_modules_block():
    ns = _run(_block("ShortLongAttention(128)"))
    assert ns["out"].shape == (1, 3, 256, 256) and ns["attention"] is None
    assert ns["fuse"].c_alpha == 3 and ns["alpha"].shape == (1, 3, 256, 256)


def test_networks_block():
    ns = _run(_block("PIC().eval()"))
    image, mask = ns["image"], ns["mask"]
    known = mask.expand_as(image) == 1
    assert ns["samples"].shape == (2, 3, 3, 256, 256)
    assert ns["completion"].shape == (2, 3, 256, 256)
    assert torch.equal(ns["completion"][known], image[known])
    assert torch.equal(ns["samples"][:, 0][known], image[known])


def test_choosing_a_backend_block():
    import inpaint_fast

    try:
        ns = _run(_block("inpaint_fast.set_backend("))
    finally:
        inpaint_fast.set_backend("auto")
    assert ns["y"].shape == (1, 32, 16, 16)
    assert ns["inpaint_fast"].get_backend() == "auto"


# ---------------------------------------------------------------------------------------------
# Shell blocks
# ---------------------------------------------------------------------------------------------
def test_every_shell_command_is_checked():
    programs = [words[0] for words in COMMANDS]
    assert set(programs) <= {"make", "inpaint-fast", "torchrun"}, programs
    assert programs.count("make") == 2 and len(COMMANDS) == 6, [" ".join(c) for c in COMMANDS]


@pytest.mark.parametrize("words", [c for c in COMMANDS if c[0] == "make"], ids=" ".join)
def test_make_targets_exist(words):
    done = subprocess.run(["make", "-n", *words[1:]], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def _cli_argv(words):
    """The ``inpaint-fast`` arguments of a command line (``torchrun ... -m inpaint_fast.cli ARGS``)."""
    if words[0] == "inpaint-fast":
        return words[1:]
    assert words[0] == "torchrun" and "-m" in words, words
    i = words.index("-m")
    assert words[i + 1] == "inpaint_fast.cli", words
    return words[i + 2:]


def _images(folder: pathlib.Path, n: int, size: int = 40) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)).save(folder / f"{i}.png")


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """A home and working folder with the inputs the README's commands name (data, weights, image, mask)."""
    from inpaint_fast.models.dfnet import VGG16Features

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    _images(tmp_path / "celeba_hq" / "train", 8)
    _images(tmp_path / "places2", 6)
    torch.manual_seed(0)
    torch.save(VGG16Features().state_dict(), tmp_path / "vgg16-397923af.pth")  # torchvision's key names
    photo = np.random.default_rng(1).integers(0, 256, (100, 120, 3), dtype=np.uint8)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    holes = np.zeros((100, 120), dtype=np.uint8)
    holes[30:60, 40:80] = 255  # white = hole
    Image.fromarray(holes).save(tmp_path / "holes.png")
    return tmp_path


@pytest.mark.parametrize("words", [c for c in COMMANDS if c[0] != "make" and _cli_argv(c)[0] == "inpaint"],
                         ids=lambda c: " ".join(_cli_argv(c)[:3]))
def test_inpaint_commands_run(words, scratch, capsys):
    from inpaint_fast.models.dfnet import DFNet
    from inpaint_fast.models.pic import PIC
    from inpaint_fast.training.checkpoint import CHECKPOINT_FORMAT, atomic_save

    # The checkpoints the lines name: one as the README's train line would leave it (its recorded
    # working size kept small, so PIC's ten samples take seconds), and DFNet's official layout.
    ckpt = scratch / "runs" / "pic512" / "checkpoints" / "step_00100000.pt"
    ckpt.parent.mkdir(parents=True)
    atomic_save({"format": CHECKPOINT_FORMAT, "task": "pic", "step": 100_000, "modules": {"model": PIC().state_dict()},
                 "args": {"model": "pic", "size": 64}}, str(ckpt))
    torch.save(DFNet().state_dict(), scratch / "model_places2.pth")
    argv = _cli_argv(words)
    assert cli.main(argv) == 0, capsys.readouterr().err
    written = capsys.readouterr().out.split()
    assert written and all(os.path.isfile(p) for p in written), written
    holes = np.asarray(Image.open(scratch / "holes.png")) == 255
    photo = np.asarray(Image.open(scratch / "photo.png").convert("RGB"))
    for path in written:
        out = np.asarray(Image.open(path).convert("RGB"))
        assert out.shape == photo.shape, path
        if "_raw" not in path and "_alpha" not in path:  # composites keep every known pixel
            assert np.array_equal(out[~holes], photo[~holes]), path


@pytest.mark.parametrize("words", [c for c in COMMANDS if c[0] != "make" and _cli_argv(c)[0] == "train"],
                         ids=lambda c: " ".join(_cli_argv(c)[:3]))
def test_train_commands_prepare(words, scratch):
    from inpaint_fast.training.distributed import shutdown_distributed
    from inpaint_fast.training.run import prepare

    argv = [os.path.expanduser(w) for w in _cli_argv(words)]  # the shell's ~ expansion
    args = cli.build_parser().parse_args(argv)
    prepared = prepare(args)
    try:
        assert len(prepared.dataset) > 0
        assert prepared.trainer.config.out_dir == args.out and prepared.trainer.config.steps == 100_000
    finally:
        if prepared.owns_group:
            shutdown_distributed(prepared.info)
