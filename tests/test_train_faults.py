"""Training survives faults: killed at chosen points, a full disk, a read-only --out.

Kills are deterministic: tests/_train_faults_driver.py runs a toy training in a child process
(forkserver: forked from a clean process that has imported torch once) that SIGKILLs itself at
one chosen point — inside a step, half-way through a checkpoint, a metrics line or a sample grid,
just after a checkpoint's rename or a metrics line. The test then resumes with ``--resume auto``
and compares everything on disk with an uninterrupted run: the final checkpoint (weights,
optimiser and RNG states, everything), every metrics row but the throughput, the sample grids,
and that no file is half-written. One case runs ``inpaint-fast train`` (PIC) in a child and
SIGKILLs it from outside at a moment it does not choose. A full disk is /dev/full or a patched
write, a read-only folder a patched os.access / os.replace (tests may run as root, whom chmod
does not stop).
"""

import errno
import json
import multiprocessing
import os
import random
import shutil
import signal
import time

import pytest
import torch

import _train_faults_driver as driver
from inpaint_fast.training import files, metrics_log
from inpaint_fast.training.checkpoint import (CHECKPOINT_FORMAT, atomic_save, checkpoint_path, list_checkpoints,
                                              load_checkpoint)
from inpaint_fast.training.errors import OutputError, UsageError

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------
# reading a run folder


def _checkpoint_steps(out):
    return [step for step, _ in list_checkpoints(out)]


def _partial_files(out):
    return sorted(os.path.join(root, name) for root, _, names in os.walk(out)
                  for name in names if name.startswith(".") and name.endswith(".tmp"))


def _rows(out):
    """(complete rows, whether the last line is half-written) of OUT/metrics.jsonl."""
    path = metrics_log.metrics_path(out)
    if not os.path.exists(path):
        return [], False
    rows, torn = metrics_log.read(path)
    return [row for _, row in rows], torn


def _without_rate(rows):
    return [{k: v for k, v in row.items() if k != "images_per_s"} for row in rows]


def _assert_every_file_complete(out, *, killed=False):
    """Every file under OUT is one the run writes, and reads back whole. ``killed``: just after a
    kill, when the hidden temporary files of cut-short writes and a torn last metrics line (which
    the resume removes) are allowed; every file under its final name must still be whole."""
    from PIL import Image

    for root, _, names in os.walk(out):
        for name in names:
            path = os.path.join(root, name)
            if killed and name.startswith(".") and name.endswith(".tmp"):
                continue
            if killed and name == metrics_log.FILE_NAME:
                _rows(out)  # every line but a torn last one parses
            elif name.endswith(".pt"):
                assert load_checkpoint(path)["format"] == CHECKPOINT_FORMAT, path
            elif name.endswith(".png"):
                with Image.open(path) as image:
                    image.load()  # decodes every byte: a truncated PNG raises
            elif name == metrics_log.FILE_NAME:
                assert _rows(out)[1] is False, f"{path} ends in a half-written line"
            else:
                raise AssertionError(f"unexpected file {path}")


def _flatten(obj, prefix=""):
    if isinstance(obj, dict):
        return {k: v for key, value in obj.items() for k, v in _flatten(value, f"{prefix}/{key}").items()}
    if isinstance(obj, (list, tuple)):
        return {k: v for i, value in enumerate(obj) for k, v in _flatten(value, f"{prefix}/{i}").items()}
    return {prefix: obj}


def _state_differences(a, b):
    """Keys of two checkpoints whose values differ (tensors: the max abs difference); [] if equal."""
    fa, fb = _flatten(a), _flatten(b)
    if fa.keys() != fb.keys():
        return [f"keys: only in one {sorted(fa.keys() ^ fb.keys())[:5]}"]
    out = []
    for key in fa:
        x, y = fa[key], fb[key]
        if torch.is_tensor(x):
            if not (torch.is_tensor(y) and x.shape == y.shape and torch.equal(x, y)):
                gap = (x.double() - y.double()).abs().max().item() if torch.is_tensor(y) and x.shape == y.shape else "?"
                out.append(f"{key}: max |diff| {gap}")
        elif x != y:
            out.append(f"{key}: {x!r} != {y!r}")
    return out


def _assert_same_run(expected, out):
    """``out`` holds what the uninterrupted run in ``expected`` holds (throughput aside)."""
    assert _partial_files(out) == []
    _assert_every_file_complete(out)
    assert _checkpoint_steps(out) == _checkpoint_steps(expected), (_checkpoint_steps(out), _checkpoint_steps(expected))
    final = _checkpoint_steps(expected)[-1]
    a = load_checkpoint(checkpoint_path(expected, final))
    b = load_checkpoint(checkpoint_path(out, final))
    a["args"] = b["args"] = None  # the Python API records no command line; nothing else may differ
    differences = _state_differences(a, b)
    assert not differences, differences[:10]
    rows_a, rows_b = _without_rate(_rows(expected)[0]), _without_rate(_rows(out)[0])
    assert rows_b == rows_a, f"\nresumed:       {rows_b}\nuninterrupted: {rows_a}"
    samples_a, samples_b = (sorted(os.listdir(os.path.join(d, "samples"))) for d in (expected, out))
    assert samples_b == samples_a
    for name in samples_a:
        grids = [open(os.path.join(d, "samples", name), "rb").read() for d in (expected, out)]
        assert grids[0] == grids[1], name


# ---------------------------------------------------------------------------------------------
# the runs


def _child(target, *args):
    """A child process forked from a server that has already imported torch, the driver and the
    command line (starting each child from scratch would cost seconds of imports)."""
    ctx = multiprocessing.get_context("forkserver")
    # read at the server's first start only; torch.optim imports torch._dynamo at the first
    # optimiser, which every child would otherwise import again
    ctx.set_forkserver_preload(["_train_faults_driver", "PIL.PngImagePlugin", "torch._dynamo", "inpaint_fast.cli",
                                "inpaint_fast.training.run", "inpaint_fast.models.pic"])
    child = ctx.Process(target=target, args=args)
    child.start()
    return child


def _kill_at(out, fault, timeout=120):
    """Run the toy training into ``out`` in a child process that SIGKILLs itself at ``fault``."""
    child = _child(driver.main, [out, fault])
    child.join(timeout)
    hung = child.exitcode is None
    if hung:
        child.kill()
        child.join()
    assert not hung, f"{fault}: still running after {timeout} s"
    assert child.exitcode == -signal.SIGKILL, f"{fault}: exit code {child.exitcode}, expected death by SIGKILL"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("faults") / "uninterrupted")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        driver.run_toy(out, resume=None)
    finally:
        torch.set_num_threads(threads)
    assert _checkpoint_steps(out) == [6, 8] and [r["step"] for r in _rows(out)[0]] == [2, 4, 6, 8]
    return out


def _resume(out, capsys):
    """``--resume auto`` in this process; returns its stderr."""
    capsys.readouterr()
    driver.run_toy(out)
    return capsys.readouterr().err


# (fault, checkpoints left, rows left, half-written line, temp files left, step the resume starts at)
# with checkpoints every 3 steps, a row every 2, a sample grid every 4 (see the driver)
KILLS = [
    ("step:3", [], [2], False, 0, 0),                   # mid-step, before any checkpoint
    ("step:5", [3], [2, 4], False, 0, 3),               # mid-step, after one (inside a log window)
    ("ckpt-write:6", [3], [2, 4, 6], False, 1, 3),      # half-way through a checkpoint's bytes
    ("ckpt-renamed:6", [3, 6], [2, 4, 6], False, 0, 6),  # after the rename, before what follows it
    ("metrics-torn:4", [3], [2], True, 0, 3),           # half-way through a metrics line
    ("metrics-written:6", [3], [2, 4, 6], False, 0, 3),  # after a metrics line, before its checkpoint
    ("sample-write:4", [3], [2, 4], False, 1, 3),       # half-way through a sample grid
]


@pytest.mark.parametrize("fault,ckpts,rows,torn,partial,resumed_at", KILLS, ids=[k[0] for k in KILLS])
def test_killed_run_resumes_as_if_uninterrupted(uninterrupted, tmp_path, capsys, fault, ckpts, rows, torn, partial,
                                                resumed_at):
    out = str(tmp_path / "out")
    _kill_at(out, fault)
    left = (_checkpoint_steps(out), [r["step"] for r in _rows(out)[0]], _rows(out)[1], len(_partial_files(out)))
    assert left == (ckpts, rows, torn, partial), f"after the kill: {left}"
    _assert_every_file_complete(out, killed=True)

    err = _resume(out, capsys)
    start = f"at step {resumed_at} " if resumed_at else "no checkpoint under"
    assert start in err, err
    if partial:
        assert f"deleted {partial} file(s) an interrupted write left" in err, err
    dropped = len([s for s in rows if s > resumed_at])
    if dropped or torn:
        assert f"dropped {dropped} row(s) past step {resumed_at}" in err, err
    _assert_same_run(uninterrupted, out)


def test_killed_again_while_resuming(uninterrupted, tmp_path, capsys):
    """A second kill inside the resume's own metrics rewrite leaves the log as it was."""
    out = str(tmp_path / "out")
    _kill_at(out, "metrics-written:6")
    before = open(metrics_log.metrics_path(out)).read()
    _kill_at(out, "trim-write:0")
    assert open(metrics_log.metrics_path(out)).read() == before
    assert [os.path.basename(p).split(".")[1] for p in _partial_files(out)] == ["metrics"]
    err = _resume(out, capsys)
    assert "deleted 1 file(s)" in err and "dropped 2 row(s) past step 3" in err, err
    _assert_same_run(uninterrupted, out)


def test_the_log_window_in_the_checkpoint_is_what_makes_the_rows_equal(uninterrupted, tmp_path, capsys):
    """Control for the cases above: a checkpoint without the unlogged sums (as earlier versions
    wrote) resumes fine, but its first row then averages fewer steps than the uninterrupted one."""
    out = str(tmp_path / "out")
    driver.run_toy(out, resume=None, steps=5)  # checkpoints 3 and 5; rows 2, 4, 5
    os.unlink(checkpoint_path(out, 5))
    ck = load_checkpoint(checkpoint_path(out, 3))
    assert ck["log_window"][0]["count"] == 1  # step 3, not yet logged
    del ck["log_window"]
    atomic_save(ck, checkpoint_path(out, 3))
    _resume(out, capsys)
    got, want = _without_rate(_rows(out)[0]), _without_rate(_rows(uninterrupted)[0])
    assert [r["step"] for r in got] == [2, 4, 6, 8]
    assert got[1]["loss"] != want[1]["loss"] and got[2:] == want[2:], (got, want)
    assert not _state_differences(load_checkpoint(checkpoint_path(out, 8))["modules"],
                                  load_checkpoint(checkpoint_path(uninterrupted, 8))["modules"])


# ---------------------------------------------------------------------------------------------
# inpaint-fast train itself, killed from outside


PIC = ["--model", "pic", "--size", "96", "--batch", "1", "--steps", "3", "--ckpt-every", "1", "--keep-ckpts", "0",
       "--log-every", "1", "--sample-every", "0", "--workers", "0", "--device", "cpu", "--masks", "center",
       "--no-progress"]


def _write_images(folder, n, size):
    import numpy as np
    from PIL import Image

    os.makedirs(folder)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(os.path.join(folder, f"{i}.png"))
    return str(folder)


def _train(argv):
    from inpaint_fast import cli

    with torch.random.fork_rng():
        return cli.main(["train", *argv])


def test_inpaint_fast_train_killed_at_a_random_moment(tmp_path, capsys):
    """SIGKILL from outside, at a moment after the first checkpoint that the run does not choose
    (a random delay on top of the time it takes to notice the file), then --resume auto."""
    data = _write_images(tmp_path / "data", 4, 96)
    expected, out = str(tmp_path / "uninterrupted"), str(tmp_path / "out")
    assert _train([*PIC, "--data", data, "--out", expected]) == 0
    log = str(tmp_path / "killed.log")
    child = _child(driver.train_cli, [*PIC, "--data", data, "--out", out], log)
    first, deadline = checkpoint_path(out, 1), time.monotonic() + 120
    while not os.path.exists(first) and child.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    if not os.path.exists(first):
        child.kill()
        pytest.fail(f"no {first} after {time.monotonic() - deadline + 120:.0f} s: {open(log).read()[-2000:]}")
    delay = random.uniform(0.0, 0.3)
    time.sleep(delay)
    child.kill()  # SIGKILL
    child.join()
    assert child.exitcode == -signal.SIGKILL, \
        f"exit code {child.exitcode} (delay {delay:.2f} s): {open(log).read()[-2000:]}"
    # steps 2 and 3 and their checkpoints were still to come: the kill fell anywhere in them
    left = (_checkpoint_steps(out), [r["step"] for r in _rows(out)[0]], _partial_files(out))
    _assert_every_file_complete(out, killed=True)
    capsys.readouterr()
    assert _train([*PIC, "--data", data, "--out", out, "--resume", "auto"]) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert f"at step {left[0][-1]} " in err, (left, err)
    assert _partial_files(out) == []
    a, b = (load_checkpoint(checkpoint_path(d, 3)) for d in (expected, out))
    a["args"]["resume"] = b["args"]["resume"] = a["args"]["out"] = b["args"]["out"] = None
    differences = _state_differences(a, b)
    assert not differences, (f"killed {delay:.2f} s after step 1's checkpoint appeared, leaving {left}",
                             differences[:10])
    assert _without_rate(_rows(out)[0]) == _without_rate(_rows(expected)[0])
    assert [r["step"] for r in _rows(out)[0]] == [1, 2, 3]


# ---------------------------------------------------------------------------------------------
# a full disk


def _enospc(path):
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)


def _onto_a_full_disk(monkeypatch, name):
    """The temp file of ``name`` is opened on /dev/full: the kernel's own ENOSPC, at the first flush."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    create = files._create
    monkeypatch.setattr(files, "_create", lambda path: (
        os.open("/dev/full", os.O_WRONLY) if f".{name}." in os.path.basename(path) else create(path)))
    return create


def test_full_disk_in_inpaint_fast_train_is_one_line_and_keeps_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    data = _write_images(tmp_path / "data", 4, 96)
    out = str(tmp_path / "out")
    _onto_a_full_disk(monkeypatch, "step_00000002.pt")
    assert _train([*PIC, "--steps", "2", "--data", data, "--out", out]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    kept = checkpoint_path(out, 1)
    assert len(lines) == 1 and lines[0].startswith("error: --out: no space left on device while writing "), err
    assert checkpoint_path(out, 2) in lines[0] and f"the last complete checkpoint, {kept}, is intact" in lines[0]
    assert "free space" in lines[0] and "--resume auto" in lines[0], lines[0]
    assert _checkpoint_steps(out) == [1] and _partial_files(out) == []
    ck = load_checkpoint(kept)
    assert ck["step"] == 1 and all(torch.isfinite(v).all() for v in ck["modules"]["model"].values()
                                   if v.is_floating_point())
    assert [r["step"] for r in _rows(out)[0]] == [1, 2]  # step 2's row came before its checkpoint


def test_full_disk_while_checkpointing_leaves_a_resumable_run(uninterrupted, tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "out")
    create = _onto_a_full_disk(monkeypatch, "step_00000006.pt")
    with pytest.raises(OutputError, match="^--out: no space left on device while writing .*step_00000006.pt; "
                                          "the last complete checkpoint, .*step_00000003.pt, is intact"):
        driver.run_toy(out)
    assert _checkpoint_steps(out) == [3] and _partial_files(out) == []
    monkeypatch.setattr(files, "_create", create)  # space freed: the suggested command finishes the run
    assert "dropped 2 row(s) past step 3" in _resume(out, capsys)
    _assert_same_run(uninterrupted, out)


def test_full_disk_while_logging_leaves_a_resumable_run(uninterrupted, tmp_path, capsys, monkeypatch):
    """ENOSPC half-way through a metrics line: an OutputError, and --resume auto drops the torn line."""
    out = str(tmp_path / "out")
    append = metrics_log.append

    def short_write(path, row):
        if row["step"] != 4:
            return append(path, row)
        with open(path, "a") as f:
            f.write(json.dumps(row)[:10])
        raise _enospc(path)

    monkeypatch.setattr(metrics_log, "append", short_write)
    with pytest.raises(OutputError, match="^--out: no space left on device while writing .*metrics.jsonl; "
                                          "the last complete checkpoint, .*step_00000003.pt, is intact"):
        driver.run_toy(out)
    assert _rows(out)[1] is True and _checkpoint_steps(out) == [3]
    monkeypatch.setattr(metrics_log, "append", append)
    assert "dropped 0 row(s) past step 3 and a half-written last line" in _resume(out, capsys)
    _assert_same_run(uninterrupted, out)


# ---------------------------------------------------------------------------------------------
# a read-only --out


def _as_an_ordinary_user(monkeypatch, folder):
    """chmod 0555 on ``folder``; for root, whom it does not stop, os.access is made to answer for
    ``folder`` as the kernel answers any other user."""
    os.chmod(folder, 0o555)
    if os.access(folder, os.W_OK):
        access = os.access
        denied = os.path.abspath(folder)
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: (
            False if os.path.abspath(p) == denied and mode & os.W_OK else access(p, mode, **kw)))


def test_read_only_out_is_refused_before_the_model_is_built(tmp_path, capsys, monkeypatch):
    from inpaint_fast.training import run

    data = _write_images(tmp_path / "data", 1, 96)
    out = str(tmp_path / "out")
    atomic_save({"format": CHECKPOINT_FORMAT, "task": "pic", "step": 4}, checkpoint_path(out, 4))
    before = open(checkpoint_path(out, 4), "rb").read()
    monkeypatch.setattr(run, "build_task", lambda *a: pytest.fail("built the model for an unwritable --out"))
    _as_an_ordinary_user(monkeypatch, out)
    try:
        assert _train([*PIC, "--data", data, "--out", out, "--resume", "auto"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"error: --out: {out!r} is not writable: "
                                                       f"this user may not create files in {out!r}; "
                                                       "make it writable or pick another --out"), err
        # a new --out in a read-only folder, and a read-only file system
        assert _train([*PIC, "--data", data, "--out", os.path.join(out, "new")]) == 2
        assert f"(it would be created in {out!r})" in capsys.readouterr().err
        statvfs = os.statvfs
        monkeypatch.setattr(os, "statvfs", lambda p: type("R", (), {"f_flag": statvfs(p).f_flag | os.ST_RDONLY})())
        assert _train([*PIC, "--data", data, "--out", out, "--resume", "auto"]) == 2
        assert f"{out!r} is on a read-only file system" in capsys.readouterr().err
    finally:
        os.chmod(out, 0o755)
    assert open(checkpoint_path(out, 4), "rb").read() == before and _partial_files(out) == []


def test_out_that_turns_read_only_mid_run(uninterrupted, tmp_path, capsys, monkeypatch):
    """PermissionError from the checkpoint's rename (as from a folder made read-only, or a network
    mount that checks at write time): an OutputError; step 3's checkpoint intact; no temp file."""
    out = str(tmp_path / "out")
    replace, target = os.replace, checkpoint_path(out, 6)

    def refused(src, dst, *a, **kw):
        if os.path.abspath(dst) == target:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), dst)
        return replace(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", refused)
    with pytest.raises(OutputError) as caught:
        driver.run_toy(out)
    message = str(caught.value)
    assert message.startswith(f"--out: permission denied while writing {target}; the last complete checkpoint, "
                              f"{checkpoint_path(out, 3)}, is intact. To go on, make it writable"), message
    assert _checkpoint_steps(out) == [3] and _partial_files(out) == []
    assert load_checkpoint(checkpoint_path(out, 3))["step"] == 3
    monkeypatch.setattr(os, "replace", replace)
    _resume(out, capsys)
    _assert_same_run(uninterrupted, out)


def test_damaged_latest_checkpoint_with_resume_auto_says_what_to_do(tmp_path, capsys):
    """A step_*.pt that is not whole (a copy cut short, a disk error) is reported, not skipped."""
    data = _write_images(tmp_path / "data", 1, 96)
    out = str(tmp_path / "out")
    atomic_save({"format": CHECKPOINT_FORMAT, "task": "pic", "step": 2, "w": torch.ones(100)}, checkpoint_path(out, 2))
    shutil.copy(checkpoint_path(out, 2), checkpoint_path(out, 4))
    with open(checkpoint_path(out, 4), "r+b") as f:
        f.truncate(os.path.getsize(checkpoint_path(out, 4)) // 2)
    assert _train([*PIC, "--data", data, "--out", out, "--resume", "auto"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --resume: {checkpoint_path(out, 4)!r} is not a readable checkpoint") and \
        err.rstrip().endswith("delete it to continue from the checkpoint before it, or pass --resume PATH"), err


# ---------------------------------------------------------------------------------------------
# permissions and the metrics log's own rules


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640)], ids=["umask022", "umask027"])
def test_run_files_get_the_umask_permissions(tmp_path, umask, mode):
    out = str(tmp_path / "out")
    previous = os.umask(umask)
    try:
        driver.run_toy(out, resume=None, steps=4)
        metrics_log.trim(metrics_log.metrics_path(out), 2)  # the resume's rewrite, too
    finally:
        os.umask(previous)
    written = [checkpoint_path(out, 3), checkpoint_path(out, 4), metrics_log.metrics_path(out),
               os.path.join(out, "samples", "step_00000004.png")]
    modes = {os.path.relpath(p, out): oct(os.stat(p).st_mode & 0o777) for p in written}
    assert set(modes.values()) == {oct(mode)}, modes


def test_metrics_trim_drops_rows_past_the_step_and_a_torn_line(tmp_path):
    path = str(tmp_path / "metrics.jsonl")
    rows = "".join(json.dumps({"step": s, "loss": s / 10}) + "\n" for s in (1, 2, 3))
    with open(path, "w") as f:
        f.write(rows + '{"step": 4, "lo')
    assert metrics_log.trim(path, 2) == metrics_log.Trimmed(kept=2, dropped=1, torn=True)
    assert [json.loads(line)["step"] for line in open(path)] == [1, 2]
    inode = os.stat(path).st_ino
    assert metrics_log.trim(path, 2) == metrics_log.Trimmed(kept=2, dropped=0, torn=False)
    assert os.stat(path).st_ino == inode  # nothing to change: not rewritten

    with open(path, "a") as f:  # a complete last row that lost only its newline is kept, and given one
        f.write(json.dumps({"step": 3}))
    assert metrics_log.trim(path, 3) == metrics_log.Trimmed(kept=3, dropped=0, torn=False)
    assert open(path).read().endswith('{"step": 3}\n')

    with open(path, "w") as f:
        f.write(rows.replace('{"step": 2', '{"stp": 2'))
    with pytest.raises(UsageError, match=r"^--resume: line 2 of .*metrics.jsonl is not a metrics row"):
        metrics_log.trim(path, 3)
