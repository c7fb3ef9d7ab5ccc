"""User errors of ``inpaint-fast train`` and ``inpaint``: one ``error: --option: ...`` line, rc 2.

Every case goes through ``inpaint_fast.cli.main`` as a user would; none may print a traceback or
pass on torch's own advice. A bug (any other exception) must still propagate.
"""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from inpaint_fast import cli
from inpaint_fast.training.checkpoint import CHECKPOINT_FORMAT, atomic_save

pytestmark = pytest.mark.usefixtures("one_thread")


def _assert_one_line_error(rc, capsys, option, *fragments, absent=()):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, (rc, err)
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    assert lines[0].startswith(f"error: {option}"), lines[0]
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    for fragment in absent:
        assert fragment not in lines[0], (fragment, lines[0])
    return lines[0]


def _images(folder, n=2, size=32):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(os.path.join(folder, f"i{i}.png"))
    return str(folder)


def _junk(path, data=b"\x80\x02this is not a checkpoint"):
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


@pytest.fixture
def data(tmp_path):
    return _images(tmp_path / "data")


def _train(tmp_path, data, *extra, model="pic"):
    size = ["--size", "96"] if model == "pic" else ["--size", "256", "--batch", "2"]
    return cli.main(["train", "--model", model, "--data", data, "--out", str(tmp_path / "out"), *size,
                     "--device", "cpu", "--workers", "0", "--steps", "1", "--no-progress", *extra])


# ---------------------------------------------------------------------------------------------
# train


def test_train_backend_that_cannot_run_on_the_device(tmp_path, data, capsys):
    rc = _train(tmp_path, data, "--backend", "cuda")
    _assert_one_line_error(rc, capsys, "--backend:", "'cuda'", "cpu", "auto")
    rc = _train(tmp_path, data, "--backend", "fastest")
    _assert_one_line_error(rc, capsys, "--backend:", "'fastest'", "reference")


def test_train_unknown_device(tmp_path, data, capsys):
    rc = _train(tmp_path, data, "--device", "gpu")
    _assert_one_line_error(rc, capsys, "--device:", "expected cpu, cuda or cuda:K", "'gpu'", absent=("xpu", "mps"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_train_cuda_without_a_gpu(tmp_path, data, capsys):
    rc = _train(tmp_path, data, "--device", "cuda")
    _assert_one_line_error(rc, capsys, "--device:", "torch.cuda.is_available() is False", "--device cpu")


def test_train_corrupt_vgg_weights(tmp_path, data, capsys):
    vgg = _junk(tmp_path / "vgg16.pth")
    rc = _train(tmp_path, data, "--vgg-weights", vgg, model="dfnet")
    _assert_one_line_error(rc, capsys, "--vgg-weights:", vgg, "not a readable checkpoint", absent=("weights_only",))


def test_train_vgg_weights_of_another_network(tmp_path, data, capsys):
    vgg = str(tmp_path / "not_vgg.pth")
    torch.save({"conv.weight": torch.zeros(2, 2)}, vgg)
    rc = _train(tmp_path, data, "--vgg-weights", vgg, model="dfnet")
    _assert_one_line_error(rc, capsys, "--vgg-weights:", "lacks", "features.0.weight")


@pytest.mark.parametrize("content", [b"\x80\x02junk", b"", b"PK\x03\x04 a truncated zip"])
def test_train_corrupt_resume_file(tmp_path, data, capsys, content):
    path = _junk(tmp_path / "step.pt", content)
    rc = _train(tmp_path, data, "--resume", path)
    _assert_one_line_error(rc, capsys, "--resume:", path, "not a readable checkpoint",
                           absent=("mmap", "weights_only", "torch.save(step.pt"))


def test_train_resume_of_a_missing_file_or_another_model(tmp_path, data, capsys):
    rc = _train(tmp_path, data, "--resume", str(tmp_path / "nope.pt"))
    _assert_one_line_error(rc, capsys, "--resume:", "no file", "nope.pt")
    other = str(tmp_path / "dfnet.pt")
    atomic_save({"format": CHECKPOINT_FORMAT, "task": "dfnet", "step": 1}, other)
    rc = _train(tmp_path, data, "--resume", other)
    _assert_one_line_error(rc, capsys, "--resume:", "'dfnet' checkpoint", "--model is 'pic'")


def test_train_empty_masks_folder_is_not_reported_as_empty_data(tmp_path, data, capsys):
    (tmp_path / "masks").mkdir()
    rc = _train(tmp_path, data, "--masks", str(tmp_path / "masks"))
    masks_line = _assert_one_line_error(rc, capsys, "--masks:", "no mask images", str(tmp_path / "masks"))
    (tmp_path / "empty").mkdir()
    rc = cli.main(["train", "--model", "pic", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "out"),
                   "--size", "96", "--device", "cpu"])
    data_line = _assert_one_line_error(rc, capsys, "--data:", "no images", str(tmp_path / "empty"))
    assert masks_line.split(":", 2)[2] != data_line.split(":", 2)[2]


def test_train_masks_spec_errors(tmp_path, data, capsys):
    folder = tmp_path / "masks"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "m.png")
    rc = _train(tmp_path, data, "--masks", f"{folder}:dfnet")  # the retired per-folder convention
    _assert_one_line_error(rc, capsys, "--masks:", "suffix", "--invert-mask", "white = hole")
    rc = _train(tmp_path, data, "--masks", "freeform")
    _assert_one_line_error(rc, capsys, "--masks:", "'freeform'", "free_form")
    _junk(folder / "broken.png", b"not a png")
    rc = _train(tmp_path, data, "--masks", str(folder))
    _assert_one_line_error(rc, capsys, "--masks:", "broken.png")


@pytest.mark.parametrize("option,value", [("--workers", "-1"), ("--batch", "0"), ("--steps", "0"),
                                          ("--keep-ckpts", "-2"), ("--lr", "0"), ("--seed", "-1")])
def test_train_numbers_out_of_range(tmp_path, data, capsys, option, value):
    rc = _train(tmp_path, data, option, value)
    _assert_one_line_error(rc, capsys, f"{option}:", value)


def test_train_no_full_batch(tmp_path, data, capsys):
    rc = _train(tmp_path, data, "--batch", "3")  # 2 images
    _assert_one_line_error(rc, capsys, "--batch:", "no full batch", "--data")


def test_train_out_is_a_file_or_a_used_folder(tmp_path, data, capsys):
    out = tmp_path / "out"
    out.write_text("a file")
    rc = _train(tmp_path, data)
    _assert_one_line_error(rc, capsys, "--out:", "is a file")
    out.unlink()
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 4}\n')
    rc = _train(tmp_path, data)
    _assert_one_line_error(rc, capsys, "--out:", "not empty", "metrics.jsonl", "--resume auto", "--overwrite")
    rc = _train(tmp_path, data, "--overwrite", "--resume", "auto")
    _assert_one_line_error(rc, capsys, "--overwrite:", "--resume")
    assert (out / "metrics.jsonl").exists()  # nothing deleted by a refused run


def test_train_resume_path_behind_later_checkpoints(tmp_path, data, capsys):
    for step in (2, 4):
        atomic_save({"format": CHECKPOINT_FORMAT, "task": "pic", "step": step},
                    str(tmp_path / "out" / "checkpoints" / f"step_{step:08d}.pt"))
    rc = _train(tmp_path, data, "--resume", str(tmp_path / "out" / "checkpoints" / "step_00000002.pt"))
    _assert_one_line_error(rc, capsys, "--resume:", "step 4", "--resume auto")


def test_train_malformed_command_line_is_one_line(tmp_path, data, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--model", "pic", "--data", data])
    _assert_one_line_error(exit_.value.code, capsys, "the following arguments are required: --out")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--model", "pic", "--data", data, "--out", "o", "--amp", "bf17"])
    _assert_one_line_error(exit_.value.code, capsys, "argument --amp", "bf17")


def test_train_bug_keeps_its_traceback(tmp_path, data, monkeypatch):
    """Only UsageError becomes a one-line message: an error inside the code must propagate."""
    from inpaint_fast.training import run

    def broken(args, device):
        raise ValueError("a bug in build_task")

    monkeypatch.setattr(run, "build_task", broken)
    with pytest.raises(ValueError, match="a bug in build_task"):
        _train(tmp_path, data)


# ---------------------------------------------------------------------------------------------
# inpaint


@pytest.fixture(scope="module")
def pic_checkpoint(tmp_path_factory):
    from inpaint_fast.models.pic import PIC

    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("pic") / "pic.pt")
    atomic_save({"format": CHECKPOINT_FORMAT, "task": "pic", "step": 0, "modules": {"model": PIC().state_dict()},
                 "args": {"model": "pic", "size": 96}}, path)
    return path


@pytest.fixture
def photo(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(tmp_path / "photo.png")
    hole = np.zeros((40, 48), np.uint8)
    hole[10:20, 12:24] = 255
    Image.fromarray(hole).save(tmp_path / "mask.png")
    return str(tmp_path / "photo.png"), str(tmp_path / "mask.png")


def _inpaint(tmp_path, photo, *extra, checkpoint=None, model="pic", out=None):
    image, mask = photo
    ckpt = ["--checkpoint", checkpoint] if checkpoint else []
    return cli.main(["inpaint", "--model", model, *ckpt, "--image", image, "--mask", mask,
                     "--out", out or str(tmp_path / "o"), "--device", "cpu", *extra])


def test_inpaint_out_is_an_existing_file(tmp_path, photo, pic_checkpoint, capsys):
    out = tmp_path / "existing_file.png"
    out.write_bytes(b"x")
    rc = _inpaint(tmp_path, photo, checkpoint=pic_checkpoint, out=str(out))
    _assert_one_line_error(rc, capsys, "--out:", "existing_file.png", "is a file")


@pytest.mark.parametrize("model", ["pic", "dfnet"])
def test_inpaint_corrupt_checkpoint(tmp_path, photo, capsys, model):
    path = _junk(tmp_path / "model.pt")
    rc = _inpaint(tmp_path, photo, checkpoint=path, model=model)
    _assert_one_line_error(rc, capsys, "--checkpoint:", path, "not a readable checkpoint", absent=("weights_only",))
    os.makedirs(tmp_path / "not_a_file.pt")
    rc = _inpaint(tmp_path, photo, checkpoint=str(tmp_path / "not_a_file.pt"), model=model)
    _assert_one_line_error(rc, capsys, "--checkpoint:", "no file")


def test_inpaint_pickled_object_is_refused_without_weights_only_advice(tmp_path, photo, capsys):
    path = str(tmp_path / "module.pt")
    torch.save(torch.nn.Linear(2, 2), path)  # a whole pickled module: torch would suggest weights_only=False
    rc = _inpaint(tmp_path, photo, checkpoint=path, model="dfnet")
    _assert_one_line_error(rc, capsys, "--checkpoint:", "not a readable checkpoint", absent=("weights_only",))


def test_inpaint_weights_that_do_not_fit(tmp_path, photo, capsys):
    from inpaint_fast.models.dfnet import DFNet

    state = DFNet().state_dict()
    key = next(k for k in state if k.startswith("en_0.") and state[k].dim() == 4)
    state[key] = torch.zeros(1, 1, 1, 1)
    path = str(tmp_path / "bad_dfnet.pth")
    torch.save(state, path)
    rc = _inpaint(tmp_path, photo, checkpoint=path, model="dfnet", out=str(tmp_path / "d"))
    _assert_one_line_error(rc, capsys, "--checkpoint:", "does not fit DFNet", "1 tensor(s) of another shape", key)


def test_inpaint_corrupt_official_pic_files(tmp_path, photo, capsys):
    E, G = _junk(tmp_path / "1_net_E.pth"), _junk(tmp_path / "1_net_G.pth")
    rc = _inpaint(tmp_path, photo, "--pic-E", E, "--pic-G", G)
    _assert_one_line_error(rc, capsys, "--pic-E:", "not a readable checkpoint", absent=("weights_only",))
    torch.save({"something.else": torch.zeros(1)}, E)
    rc = _inpaint(tmp_path, photo, "--pic-E", E, "--pic-G", G)
    _assert_one_line_error(rc, capsys, "--pic-E:", "does not fit PIC's net_E", "missing key(s)")


def test_inpaint_device_and_backend(tmp_path, photo, pic_checkpoint, capsys):
    rc = _inpaint(tmp_path, photo, "--device", "gpu", checkpoint=pic_checkpoint)
    _assert_one_line_error(rc, capsys, "--device:", "expected cpu, cuda or cuda:K")
    rc = _inpaint(tmp_path, photo, "--device", "cpu:1", checkpoint=pic_checkpoint)
    _assert_one_line_error(rc, capsys, "--device:", "'cpu:1'")
    rc = _inpaint(tmp_path, photo, "--backend", "cuda", checkpoint=pic_checkpoint)
    _assert_one_line_error(rc, capsys, "--backend:", "'cuda'")


def test_inpaint_unreadable_image_or_mask(tmp_path, photo, pic_checkpoint, capsys):
    image, mask = photo
    junk = _junk(tmp_path / "junk.png", b"not a png")
    rc = _inpaint(tmp_path, (junk, mask), checkpoint=pic_checkpoint)
    _assert_one_line_error(rc, capsys, "--image:", "junk.png")
    rc = _inpaint(tmp_path, (image, junk), checkpoint=pic_checkpoint)
    _assert_one_line_error(rc, capsys, "--mask:", "junk.png")
    rc = _inpaint(tmp_path, (image, str(tmp_path / "none.png")), checkpoint=pic_checkpoint)
    _assert_one_line_error(rc, capsys, "--mask:", "no file")


def test_inpaint_retired_mask_convention_option(tmp_path, photo, pic_checkpoint, capsys):
    rc = _inpaint(tmp_path, photo, "--mask-convention", "dfnet", checkpoint=pic_checkpoint)
    _assert_one_line_error(rc, capsys, "--mask-convention:", "white = hole", "--invert-mask")
    assert not os.path.exists(tmp_path / "o")


def test_malformed_command_line_is_one_line(tmp_path, photo, capsys):
    with pytest.raises(SystemExit) as exit_:
        _inpaint(tmp_path, photo, "--no-such-option")
    _assert_one_line_error(exit_.value.code, capsys, "unrecognized arguments: --no-such-option")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["inpaint", "--model", "lama", "--image", "x", "--mask", "y", "--out", "z"])
    _assert_one_line_error(exit_.value.code, capsys, "argument --model", "'lama'")
