"""The training machinery (inpaint_fast.training) and ``inpaint-fast train``.

The trainer is tested on a toy task (tests/_train_toy.py) independently of PIC and DFNet; then
the two real tasks run a few steps on a tiny synthetic image folder.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from _train_toy import ToyDataset, ToyTask
from inpaint_fast.training import TrainConfig, Trainer
from inpaint_fast.training import checkpoint as ckpt_mod
from inpaint_fast.training.checkpoint import (
    atomic_save,
    capture_rng_state,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    restore_rng_state,
)
from inpaint_fast.training.sampling import ResumableSampler

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))


pytestmark = pytest.mark.usefixtures("one_thread")


def _toy_run(out, steps, *, resume=None, workers=0, ckpt_every=0, seed=0, dropout=0.1, **kw):
    torch.manual_seed(seed)  # the model's initial weights
    task = ToyTask(dropout=dropout)
    cfg = TrainConfig(out_dir=str(out), steps=steps, batch_size=4, seed=seed, workers=workers, log_every=1,
                      ckpt_every=ckpt_every, resume=resume, progress=False, **kw)
    trainer = Trainer(task, ToyDataset(n=22), cfg)  # 22 images, batch 4 -> 5 batches an epoch
    trainer.fit()
    return trainer


# ---------------------------------------------------------------------------------------------
# building blocks


def test_sampler_partitions_and_resumes():
    data = list(range(10))
    ranks = [ResumableSampler(data, num_replicas=2, rank=r, seed=3) for r in (0, 1)]
    for s in ranks:
        s.set_epoch(1)
    shares = [list(s) for s in ranks]
    assert len(shares[0]) == len(shares[1]) == 5 and sorted(shares[0] + shares[1]) == data
    ranks[0].set_start(3)
    assert list(ranks[0]) == shares[0][3:] and len(ranks[0]) == 2
    ranks[0].set_epoch(2)
    ranks[0].set_start(0)
    assert list(ranks[0]) != shares[0]  # a new epoch, a new order
    with pytest.raises(ValueError, match="start"):
        ranks[0].set_start(6)


def test_rng_state_roundtrip_through_a_checkpoint(tmp_path):
    import random

    import numpy as np

    state = capture_rng_state()
    expected = (torch.rand(3), np.random.rand(2), random.random())
    path = str(tmp_path / "rng.pt")
    atomic_save({"rng": state}, path)
    restore_rng_state(load_checkpoint(path)["rng"])  # weights_only load
    got = (torch.rand(3), np.random.rand(2), random.random())
    assert torch.equal(expected[0], got[0]) and (expected[1] == got[1]).all() and expected[2] == got[2]


def test_atomic_save_leaves_no_partial_file(tmp_path, monkeypatch):
    folder = tmp_path / "checkpoints"
    good = str(folder / "step_00000001.pt")
    atomic_save({"w": torch.ones(3)}, good)

    def exploding_save(obj, f, *a, **k):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.torch, "save", exploding_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"w": torch.zeros(3)}, str(folder / "step_00000002.pt"))
    with pytest.raises(OSError):
        atomic_save({"w": torch.zeros(3)}, good)  # overwriting: the old file must survive
    assert sorted(os.listdir(folder)) == ["step_00000001.pt"]  # no temp files, no partial step 2
    assert torch.equal(load_checkpoint(good)["w"], torch.ones(3))
    assert latest_checkpoint(str(tmp_path)) == good


# ---------------------------------------------------------------------------------------------
# the loop on the toy task


def test_toy_loss_falls_and_writes_outputs(tmp_path):
    trainer = _toy_run(tmp_path, 30, ckpt_every=10, sample_every=10, keep_checkpoints=2)
    losses = [row["loss"] for row in trainer.history]
    assert len(losses) == 30 and [row["step"] for row in trainer.history] == list(range(1, 31))
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in rows] == list(range(1, 31)) and all(r["images_per_s"] > 0 for r in rows)
    assert [s for s, _ in list_checkpoints(str(tmp_path))] == [20, 30]  # keep_checkpoints=2 pruned 10
    samples = sorted(os.listdir(tmp_path / "samples"))
    assert samples == ["step_00000010.png", "step_00000020.png", "step_00000030.png"]
    from PIL import Image

    grid = Image.open(tmp_path / "samples" / samples[0])
    assert grid.size == (3 * (4 + 2) + 2, 4 * (4 + 2) + 2)  # 3 columns x 4 rows of 4x4 tiles, pad 2
    ck = load_checkpoint(latest_checkpoint(str(tmp_path)))
    assert ck["step"] == 30 and ck["epoch"] == 6 and ck["position"] == 0 and ck["task"] == "toy"
    assert torch.equal(ck["modules"]["net"]["0.weight"], trainer.task.net[0].weight)


@pytest.mark.parametrize("first,workers", [(7, 0), (5, 0), (3, 2)])  # mid-epoch, epoch boundary, workers
def test_resume_is_bit_identical(tmp_path, first, workers):
    total = 12
    straight = _toy_run(tmp_path / "straight", total, workers=workers)
    _toy_run(tmp_path / "split", first, workers=workers)
    ck = load_checkpoint(latest_checkpoint(str(tmp_path / "split")))
    assert (ck["step"], ck["epoch"], ck["position"]) == (first, first // 5, first % 5)
    resumed = _toy_run(tmp_path / "split", total, resume="auto", workers=workers)
    assert resumed.step == total
    for a, b in zip(straight.task.net.state_dict().values(), resumed.task.net.state_dict().values()):
        assert torch.equal(a, b)
    sa, sb = straight.task.opt.state_dict()["state"], resumed.task.opt.state_dict()["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    # the metrics log of the resumed run reads like the uninterrupted one
    rows = [json.loads(line) for line in open(tmp_path / "split" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == list(range(1, total + 1))
    assert [r["loss"] for r in rows] == [r["loss"] for r in straight.history]


def test_resume_without_rng_restore_differs(tmp_path):
    """The control for the test above: the dropout RNG matters, so the equality is not vacuous."""
    straight = _toy_run(tmp_path / "a", 8)
    _toy_run(tmp_path / "b", 4)
    path = latest_checkpoint(str(tmp_path / "b"))
    ck = load_checkpoint(path)
    ck["rng"][0]["torch"] = torch.manual_seed(123).get_state()
    atomic_save(ck, path)
    resumed = _toy_run(tmp_path / "b", 8, resume=path)
    assert not torch.equal(straight.task.net[0].weight, resumed.task.net[0].weight)


def test_resume_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="--resume"):
        _toy_run(tmp_path, 2, resume=str(tmp_path / "nope.pt"))
    trainer = _toy_run(tmp_path / "a", 1)
    path = latest_checkpoint(str(tmp_path / "a"))
    ck = load_checkpoint(path)
    ck["task"] = "pic"
    atomic_save(ck, path)
    with pytest.raises(ValueError, match="'pic' checkpoint"):
        _toy_run(tmp_path / "a", 2, resume="auto")
    assert trainer.step == 1
    fresh = _toy_run(tmp_path / "fresh", 2, resume="auto")  # auto with nothing to resume: a fresh start
    assert [r["step"] for r in fresh.history] == [1, 2]
    with pytest.raises(ValueError, match="no full batch"):
        Trainer(ToyTask(), ToyDataset(n=3), TrainConfig(out_dir=str(tmp_path), steps=1, batch_size=4))


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_autocast_runs(tmp_path, amp):
    trainer = _toy_run(tmp_path, 3, amp=amp)
    assert trainer.step == 3 and all(torch.isfinite(p).all() for p in trainer.task.net.parameters())
    ck = load_checkpoint(latest_checkpoint(str(tmp_path)))
    assert ck["precision"]["mode"] == amp and (ck["precision"]["scaler"] is not None) == (amp == "fp16")


def _torchrun(args, timeout=120):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([HERE, REPO]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           os.path.join(HERE, "_train_toy.py"), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


# ---------------------------------------------------------------------------------------------
# inpaint-fast train with PIC and DFNet on tiny synthetic folders


def _write_images(folder, n, size, seed=0):
    """n smooth colour gradients with a little noise, as PNGs."""
    import numpy as np
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        c, d = rng.random((3, 1, 1)), rng.random((3, 1, 1))
        img = (c * xx + d * yy) / 2 + 0.25 + 0.05 * rng.standard_normal((3, size, size))
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0)).save(
            os.path.join(folder, f"im{i}.png"))
    return str(folder)


PIC_ARGS = ["--size", "96", "--batch", "2", "--workers", "0", "--device", "cpu", "--masks", "center",
            "--log-every", "1", "--no-progress"]


def _train(argv):
    from inpaint_fast import cli

    return cli.main(["train", *argv])


@pytest.fixture(scope="module")
def pic_run(tmp_path_factory):
    """12 PIC steps at 96² (8 images, batch 2: 4 steps an epoch), a checkpoint every 3 steps."""
    root = tmp_path_factory.mktemp("pic")
    data = _write_images(root / "data", 8, 96)
    out = str(root / "out")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the resumed run: bit-identity needs the same reduction order
    try:
        with torch.random.fork_rng():
            rc = _train(["--model", "pic", "--data", data, "--out", out, "--steps", "12", "--ckpt-every", "3",
                         "--keep-ckpts", "0", "--sample-every", "6", *PIC_ARGS])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    return data, out


def test_pic_train_loss_falls_and_writes_outputs(pic_run):
    data, out = pic_run
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert [r["step"] for r in rows] == list(range(1, 13))
    for key in ("loss_kl_rec", "loss_kl_g", "loss_app_rec", "loss_app_g", "loss_ad_g", "loss_ad_rec",
                "loss_img_d", "loss_img_d_rec", "loss_g", "loss_d", "images_per_s"):
        assert all(key in r and r[key] == r[key] for r in rows), key  # present, not NaN
    app = [r["loss_app_rec"] for r in rows]  # 20 x the 4-scale L1 of the reconstructive path
    assert sum(app[-3:]) / 3 < 0.9 * sum(app[:3]) / 3, app
    assert sorted(os.listdir(os.path.join(out, "samples"))) == ["step_00000006.png", "step_00000012.png"]
    from PIL import Image

    grid = Image.open(os.path.join(out, "samples", "step_00000012.png"))
    assert grid.size == (5 * 98 + 2, 4 * 98 + 2)  # masked | 3 samples | truth, 4 examples of 96²
    assert [s for s, _ in list_checkpoints(out)] == [3, 6, 9, 12]
    ck = load_checkpoint(latest_checkpoint(out))
    assert ck["task"] == "pic" and ck["step"] == 12 and set(ck["optimizers"]) == {"G", "D"}
    assert ck["args"]["model"] == "pic" and ck["args"]["size"] == 96
    assert ck["optimizers"]["G"]["param_groups"][0]["betas"] == (0.0, 0.999)
    assert ck["optimizers"]["D"]["param_groups"][0]["lr"] == 1e-4


def test_pic_resume_mid_epoch_matches_the_uninterrupted_run(pic_run, tmp_path):
    data, out = pic_run
    resumed = str(tmp_path / "resumed")
    os.makedirs(os.path.join(resumed, "checkpoints"))
    src = os.path.join(out, "checkpoints", "step_00000006.pt")  # epoch 1, batch 2 of 4
    with open(src, "rb") as f, open(os.path.join(resumed, "checkpoints", "step_00000006.pt"), "wb") as g:
        g.write(f.read())
    with torch.random.fork_rng():
        assert _train(["--model", "pic", "--data", data, "--out", resumed, "--steps", "9", "--resume", "auto",
                       "--ckpt-every", "0", "--sample-every", "0", *PIC_ARGS]) == 0
    a = load_checkpoint(os.path.join(out, "checkpoints", "step_00000009.pt"))
    b = load_checkpoint(latest_checkpoint(resumed))
    assert (b["step"], b["epoch"], b["position"]) == (9, 2, 1)
    ma, mb = a["modules"]["model"], b["modules"]["model"]
    assert ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma)  # weights and SN vectors
    for name in ("G", "D"):
        sa, sb = a["optimizers"][name]["state"], b["optimizers"][name]["state"]
        assert all(torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"]) for i in sa)
    rows_a = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))][6:9]
    rows_b = [json.loads(line) for line in open(os.path.join(resumed, "metrics.jsonl"))]
    drop = ("images_per_s",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in rows_b] == \
           [{k: v for k, v in r.items() if k not in drop} for r in rows_a]


def test_pic_checkpoint_feeds_inpaint(pic_run, tmp_path):
    """The trained checkpoint drives ``inpaint-fast inpaint`` (its recorded size, 96, is used)."""
    import numpy as np
    from PIL import Image

    from inpaint_fast import cli

    data, out = pic_run
    image = np.asarray(Image.open(os.path.join(data, "im0.png")))
    hole = np.zeros((96, 96), np.uint8)
    hole[30:60, 20:70] = 255  # PIC's convention: white = hole
    Image.fromarray(hole).save(tmp_path / "hole.png")
    assert cli.main(["inpaint", "--model", "pic", "--checkpoint", latest_checkpoint(out), "--image",
                     os.path.join(data, "im0.png"), "--mask", str(tmp_path / "hole.png"), "--out", str(tmp_path),
                     "--samples", "2", "--device", "cpu"]) == 0
    result = np.asarray(Image.open(tmp_path / "im0_out_1.png"))
    known = hole == 0
    assert result.shape == image.shape and np.array_equal(result[known], image[known])


def test_train_argument_errors(tmp_path, capsys):
    data = _write_images(tmp_path / "data", 2, 32)
    out = str(tmp_path / "out")
    assert _train(["--model", "pic", "--data", str(tmp_path / "missing"), "--out", out]) == 2
    assert "--data" in capsys.readouterr().err
    assert _train(["--model", "pic", "--data", data, "--out", out, "--size", "100"]) == 2
    assert "multiples of 32" in capsys.readouterr().err
    assert _train(["--model", "dfnet", "--data", data, "--out", out, "--size", "384"]) == 2
    assert "multiples of 256" in capsys.readouterr().err
    assert _train(["--model", "dfnet", "--data", data, "--out", out, "--size", "256", "--batch", "1"]) == 2
    assert "--batch 2 or more" in capsys.readouterr().err
    assert _train(["--model", "dfnet", "--data", data, "--out", out, "--size", "256"]) == 2
    assert "--vgg-weights: required for --model dfnet" in capsys.readouterr().err
    assert _train(["--model", "dfnet", "--data", data, "--out", out, "--size", "256",
                   "--vgg-weights", str(tmp_path / "vgg.pth")]) == 2
    assert "--vgg-weights: no file" in capsys.readouterr().err
    assert _train(["--model", "pic", "--data", str(tmp_path / "out"), "--out", out, "--size", "96"]) == 2
    # a checkpoint of the other model
    atomic_save({"format": ckpt_mod.CHECKPOINT_FORMAT, "task": "dfnet"},
                os.path.join(out, "checkpoints", "step_00000001.pt"))
    assert _train(["--model", "pic", "--data", data, "--out", out, "--size", "96", "--resume", "auto"]) == 2
    assert "'dfnet' checkpoint" in capsys.readouterr().err


def _stale_run(out, steps=(4, 6)):
    """The outputs of an earlier run in ``out``: checkpoints, a metrics log and a sample grid."""
    for step in steps:
        atomic_save({"format": ckpt_mod.CHECKPOINT_FORMAT, "task": "pic", "step": step},
                    os.path.join(out, "checkpoints", f"step_{step:08d}.pt"))
    with open(os.path.join(out, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps({"step": s, "loss_g": 1.0}) + "\n" for s in steps)
    os.makedirs(os.path.join(out, "samples"))
    with open(os.path.join(out, "samples", f"step_{steps[-1]:08d}.png"), "wb") as f:
        f.write(b"old grid")


def test_ddp_two_processes_toy_and_pic(tmp_path):
    """One torchrun launch, 2 Gloo processes on the CPU: the toy task, then 2 PIC steps through the
    command line's code path, with --overwrite into the folder of an earlier run (rank 0 deletes it,
    rank 1 waits). Both must end with identical weights on both ranks."""
    data = _write_images(tmp_path / "data", 4, 96)
    _stale_run(str(tmp_path / "pic"))
    _torchrun([str(tmp_path / "toy"), str(tmp_path / "pic"), data], timeout=300)

    toy = tmp_path / "toy"
    r0, r1 = (torch.load(toy / f"rank{r}.pt") for r in (0, 1))
    torch.manual_seed(0)
    init = ToyTask(dropout=0.0).net.state_dict()
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    assert not torch.equal(r0["0.weight"], init["0.weight"])  # it did train
    ck = load_checkpoint(latest_checkpoint(str(toy)))
    assert ck["world_size"] == 2 and len(ck["rng"]) == 2 and ck["step"] == 4
    assert not torch.equal(ck["rng"][0]["torch"], ck["rng"][1]["torch"])  # per-rank RNG streams

    pic = tmp_path / "pic"
    r0, r1 = (torch.load(pic / f"rank{r}.pt") for r in (0, 1))
    assert r0.keys() == r1.keys() and all(torch.equal(r0[k], r1[k]) for k in r0)
    from inpaint_fast.models.pic import PIC

    torch.manual_seed(0)
    init = PIC().state_dict()
    changed = {k.split(".")[0] for k in r0 if r0[k].is_floating_point() and not torch.equal(r0[k], init[k])}
    assert changed == {"net_E", "net_G", "net_D", "net_D_rec"}  # all four networks were trained
    # the never-run parts of the discriminators' attention (inner ResBlock, alpha) were left out of
    # DDP and keep their initial values; the parts that run were trained
    for d in ("net_D", "net_D_rec"):
        idle = [k for k in r0 if k.startswith(f"{d}.attn2.model.") and not k.endswith(("_u", "_v"))]
        assert len(idle) == 6 and all(torch.equal(r0[k], init[k]) for k in idle + [f"{d}.attn2.alpha"])
        assert not torch.equal(r0[f"{d}.attn2.gamma"], init[f"{d}.attn2.gamma"])
    ck = load_checkpoint(latest_checkpoint(str(pic)))
    assert ck["world_size"] == 2 and ck["step"] == 2 and len(ck["rng"]) == 2
    assert os.listdir(pic / "samples") == ["step_00000002.png"]  # rank 0 wrote the grids; the old one is gone
    assert [s for s, _ in list_checkpoints(str(pic))] == [2]  # the earlier run's steps 4 and 6 are gone
    assert [json.loads(line)["step"] for line in open(pic / "metrics.jsonl")] == [2]  # logged at the last step only


# ---------------------------------------------------------------------------------------------
# one run per output folder


def test_train_refuses_a_used_out_and_overwrite_replaces_the_run(tmp_path, capsys):
    data = _write_images(tmp_path / "data", 4, 96)
    out = str(tmp_path / "out")
    _stale_run(out)
    with open(os.path.join(out, "notes.txt"), "w") as f:
        f.write("not ours")
    argv = ["--model", "pic", "--data", data, "--out", out, "--steps", "2", "--ckpt-every", "1",
            "--sample-every", "2", *PIC_ARGS]
    assert _train(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out:") and "--overwrite" in err and "--resume auto" in err, err
    assert [s for s, _ in list_checkpoints(out)] == [4, 6]  # nothing touched

    with torch.random.fork_rng():
        assert _train([*argv, "--overwrite"]) == 0
    assert "--overwrite: deleted" in capsys.readouterr().err
    assert [s for s, _ in list_checkpoints(out)] == [1, 2]  # not 1, 2, 4, 6
    steps = [json.loads(line)["step"] for line in open(os.path.join(out, "metrics.jsonl"))]
    assert steps == [1, 2], steps  # not 4, 6, 1, 2
    assert os.listdir(os.path.join(out, "samples")) == ["step_00000002.png"]
    assert open(os.path.join(out, "notes.txt")).read() == "not ours"  # only the run's own outputs go
    assert load_checkpoint(latest_checkpoint(out))["step"] == 2  # --resume auto would continue this run


def test_clear_previous_run_deletes_on_rank_0_only_and_before_the_others_go_on(tmp_path, monkeypatch):
    from inpaint_fast.training import run
    from inpaint_fast.training.distributed import DistInfo
    from inpaint_fast.training.errors import UsageError

    out = str(tmp_path / "out")
    seen = []

    def broadcast(obj, info):  # stands for torch.distributed's broadcast from rank 0
        seen.append((info.rank, os.path.exists(os.path.join(out, "metrics.jsonl"))))
        return obj if info.is_main else None

    monkeypatch.setattr(run, "broadcast_object", broadcast)
    _stale_run(out)
    run.clear_previous_run(out, DistInfo(rank=1, world_size=2))
    assert [s for s, _ in list_checkpoints(out)] == [4, 6] and os.path.exists(os.path.join(out, "metrics.jsonl"))
    run.clear_previous_run(out, DistInfo(rank=0, world_size=2))
    assert sorted(os.listdir(out)) == []
    assert seen == [(1, True), (0, False)]  # rank 0 had deleted everything when it released the others

    # rank 0's failure reaches every rank as the same error
    monkeypatch.setattr(run, "broadcast_object", lambda obj, info: "--overwrite: could not delete")
    with pytest.raises(UsageError, match="--overwrite: could not delete"):
        run.clear_previous_run(out, DistInfo(rank=1, world_size=2))


def test_resume_auto_without_a_checkpoint_drops_a_dead_runs_metrics(tmp_path):
    with open(tmp_path / "metrics.jsonl", "w") as f:  # a run that died before its first checkpoint
        f.writelines(json.dumps({"step": s, "loss": 9.0}) + "\n" for s in (1, 2, 3))
    fresh = _toy_run(tmp_path, 2, resume="auto")
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2] and [r["loss"] for r in rows] == [r["loss"] for r in fresh.history]


# ---------------------------------------------------------------------------------------------
# warnings and defaults


def _prepare(argv):
    from inpaint_fast.cli import build_parser
    from inpaint_fast.training.run import prepare

    return prepare(build_parser().parse_args(["train", *argv]))


def test_bf16_on_a_cpu_without_bf16_instructions_warns(tmp_path, monkeypatch, capsys):
    from inpaint_fast.training import amp

    data = _write_images(tmp_path / "data", 2, 32)
    argv = ["--model", "pic", "--data", data, "--out", str(tmp_path / "out"), "--amp", "bf16", *PIC_ARGS]
    monkeypatch.setattr(amp, "cpu_has_native_bf16", lambda: False)
    _prepare(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("warning: --amp bf16:") and "slower than fp32" in lines[0], err
    assert "avx512_bf16" in lines[0] and "--amp off" in lines[0]
    for native in (True, None):  # native bf16, or a machine we cannot tell about: no warning
        monkeypatch.setattr(amp, "cpu_has_native_bf16", lambda: native)
        _prepare(argv)
        assert "warning" not in capsys.readouterr().err, native
    monkeypatch.setattr(amp, "cpu_has_native_bf16", lambda: False)
    _prepare([a if a != "bf16" else "fp16" for a in argv])
    assert "warning" not in capsys.readouterr().err  # fp16 on CPU is another matter; not this warning


def test_cpu_has_native_bf16_reads_the_flags(tmp_path):
    from inpaint_fast.training.amp import cpu_has_native_bf16

    x86 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n\nprocessor\t: 1\nflags\t\t: fpu avx512f\n"
    (tmp_path / "plain").write_text(x86)
    (tmp_path / "bf16").write_text(x86.replace("avx512bw", "avx512bw avx512_bf16"))
    (tmp_path / "amx").write_text(x86.replace("avx2", "avx2 amx_bf16 amx_tile"))
    (tmp_path / "arm").write_text("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n")
    got = {name: cpu_has_native_bf16(str(tmp_path / name)) for name in ("plain", "bf16", "amx", "arm", "missing")}
    assert got == {"plain": False, "bf16": True, "amx": True, "arm": True, "missing": None}, got


def test_default_workers_fit_the_machine(monkeypatch):
    from inpaint_fast import cli

    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    for cpus, expected in ((1, 0), (2, 1), (4, 3), (5, 4), (64, 4)):
        monkeypatch.setattr(cli, "_usable_cpus", lambda cpus=cpus: cpus)
        assert cli.default_workers() == expected, (cpus, cli.default_workers(), expected)
    monkeypatch.setattr(cli, "_usable_cpus", lambda: 16)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")  # torchrun: 8 processes share the 16 CPUs
    assert cli.default_workers() == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    args = cli.build_parser().parse_args(["train", "--model", "pic", "--data", "d", "--out", "o"])
    assert args.workers == 4
    monkeypatch.setattr(cli, "_usable_cpus", lambda: 2)
    parser = cli.build_parser()
    assert parser.parse_args(["train", "--model", "pic", "--data", "d", "--out", "o"]).workers == 1
    help_text = parser._subparsers._group_actions[0].choices["train"].format_help()
    assert "min(4, CPUs per process - 1)" in " ".join(help_text.split()), help_text


def test_usable_cpus_follows_the_affinity_mask(monkeypatch):
    from inpaint_fast import cli

    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no os.sched_getaffinity on this platform")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3})
    assert cli._usable_cpus() == 2


def test_mask_folder_that_is_mostly_hole_warns(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    data = _write_images(tmp_path / "data", 2, 32)
    masks = tmp_path / "masks"
    masks.mkdir()
    for i in range(3):  # DFNet-style files: white = known, a small black hole
        a = np.full((32, 32), 255, np.uint8)
        a[4:12, 4 + i:12 + i] = 0
        Image.fromarray(a).save(masks / f"m{i}.png")
    argv = ["--model", "pic", "--data", data, "--out", str(tmp_path / "out"), *PIC_ARGS, "--masks", str(masks)]
    prepared = _prepare(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("warning: --masks:"), err
    assert str(masks) in lines[0] and "94%" in lines[0] and "--invert-mask" in lines[0], lines[0]  # 1 - 64/1024
    assert (1 - prepared.dataset[0]["mask"].mean().item()) > 0.9
    prepared = _prepare([*argv, "--invert-mask"])
    assert "warning" not in capsys.readouterr().err
    hole = 1 - prepared.dataset[0]["mask"].mean().item()
    assert 0.02 < hole < 0.2, hole  # read the right way round: a small hole (PIC's augmentation moves it)


def test_dfnet_train_one_step(tmp_path):
    from inpaint_fast.models.vgg import VGG16Features

    data = _write_images(tmp_path / "data", 2, 256)
    vgg = str(tmp_path / "vgg16.pth")
    torch.manual_seed(0)
    torch.save(VGG16Features().state_dict(), vgg)  # random weights, torchvision key format
    out = str(tmp_path / "out")
    with torch.random.fork_rng():
        rc = _train(["--model", "dfnet", "--data", data, "--out", out, "--size", "256", "--batch", "2", "--steps", "1",
                     "--workers", "0", "--device", "cpu", "--vgg-weights", vgg, "--tv", "intended", "--sample-every",
                     "1", "--no-progress"])
    assert rc == 0
    (row,) = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    for key in ("loss", "reconstruction_loss", "perceptual_loss", "style_loss", "total_variation_loss"):
        assert row[key] == row[key] and row[key] >= 0
    assert abs(row["loss"] - (6 * row["reconstruction_loss"] + 0.1 * row["perceptual_loss"] + 240 * row["style_loss"]
                              + 0.1 * row["total_variation_loss"])) < 1e-4 * row["loss"]
    ck = load_checkpoint(latest_checkpoint(out))
    assert ck["task"] == "dfnet" and ck["step"] == 1 and ck["args"]["tv"] == "intended"
    assert ck["optimizers"]["opt"]["param_groups"][0]["lr"] == 2e-4
    from PIL import Image

    assert Image.open(os.path.join(out, "samples", "step_00000001.png")).size == (4 * 258 + 2, 2 * 258 + 2)
