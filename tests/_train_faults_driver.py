"""A toy training run (``--resume auto``) that SIGKILLs itself at one chosen point, for
tests/test_train_faults.py:

    python tests/_train_faults_driver.py OUT FAULT

FAULT is ``none`` (run to the end) or ``<where>:<step>``; the process kills itself with SIGKILL —
no clean-up, no atexit, no buffered writes flushed, as ``kill -9`` would — at that point of that
step:

    step:S             inside step S's train_step, after the optimiser updated the weights
    ckpt-write:S       inside torch.save of step S's checkpoint, half its bytes in the temp file
    ckpt-renamed:S     just after step S's checkpoint was renamed into place (before the folder
                       fsync, the pruning and everything after)
    metrics-torn:S     inside the metrics append of step S, half the line written
    metrics-written:S  just after step S's metrics line was appended (before its grid and checkpoint)
    sample-write:S     inside the PNG encoder of step S's sample grid, half its bytes written
    trim-write:0       inside the resume's metrics rewrite: temp file complete, not yet renamed

Faults are installed by patching the functions the trainer calls (torch.save, os.replace,
metrics_log.append, PIL's Image.save, the task's train_step); nothing in the product reads them.
``run_toy`` is also what the tests call in-process for the uninterrupted and resumed runs;
``train_cli`` runs ``inpaint-fast train``'s entry point, for a child the test kills from outside.
"""

import io
import json
import os
import signal
import sys

import torch

from _train_toy import ToyDataset, ToyTask
from inpaint_fast.training import TrainConfig, Trainer, metrics_log
from inpaint_fast.training.checkpoint import checkpoint_path

# 22 images in batches of 4: 5 steps an epoch. Checkpoints at 3, 6 (and the last step) are off the
# log interval, so a resume restarts inside a log window; keep 2 exercises pruning.
STEPS = 8
TOY = dict(steps=STEPS, batch_size=4, log_every=2, sample_every=4, ckpt_every=3, keep_checkpoints=2)
IMAGES = 22


def toy_trainer(out: str, resume, steps: int = STEPS) -> Trainer:
    torch.manual_seed(0)  # the initial weights
    cfg = TrainConfig(out_dir=out, resume=resume, progress=False, **{**TOY, "steps": steps})
    return Trainer(ToyTask(dropout=0.1), ToyDataset(n=IMAGES), cfg)


def run_toy(out: str, resume="auto", steps: int = STEPS) -> Trainer:
    trainer = toy_trainer(out, resume, steps)
    trainer.fit()
    return trainer


def _die() -> None:
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _write_half_and_die(f, data: bytes) -> None:
    """A write cut off half-way: the first half of ``data`` reaches the disk, then SIGKILL."""
    f.write(data[: max(1, len(data) // 2)])
    f.flush()
    os.fsync(f.fileno())
    _die()


def install(fault: str, trainer: Trainer) -> None:
    """Patch the one function where ``fault`` strikes (see the module docstring)."""
    where, step = fault.split(":")
    step = int(step)
    out = trainer.config.out_dir

    if where == "step":
        train_step = trainer.task.train_step

        def dying_step(batch, precision):
            result = train_step(batch, precision)
            if trainer.step + 1 == step:  # the loop counts the step only after train_step returns
                _die()
            return result

        trainer.task.train_step = dying_step
    elif where == "ckpt-write":
        save = torch.save

        def dying_save(obj, f, *args, **kwargs):
            if trainer.step != step:
                return save(obj, f, *args, **kwargs)
            buffer = io.BytesIO()
            save(obj, buffer, *args, **kwargs)
            _write_half_and_die(f, buffer.getvalue())

        torch.save = dying_save
    elif where in ("ckpt-renamed", "trim-write"):
        replace = os.replace
        target = checkpoint_path(out, step) if where == "ckpt-renamed" else metrics_log.metrics_path(out)

        def dying_replace(src, dst, *args, **kwargs):
            if os.path.abspath(dst) != os.path.abspath(target):
                return replace(src, dst, *args, **kwargs)
            if where == "ckpt-renamed":
                replace(src, dst, *args, **kwargs)
            _die()

        os.replace = dying_replace
    elif where in ("metrics-torn", "metrics-written"):
        append = metrics_log.append

        def dying_append(path, row):
            if row["step"] != step:
                return append(path, row)
            if where == "metrics-written":
                append(path, row)
            else:
                with open(path, "ab") as f:
                    _write_half_and_die(f, (json.dumps(row) + "\n").encode())
            _die()

        metrics_log.append = dying_append
    elif where == "sample-write":
        from PIL import Image

        save_image = Image.Image.save

        def dying_image_save(image, fp, *args, **kwargs):
            if trainer.step != step:
                return save_image(image, fp, *args, **kwargs)
            buffer = io.BytesIO()
            save_image(image, buffer, *args, **kwargs)
            _write_half_and_die(fp, buffer.getvalue())

        Image.Image.save = dying_image_save
    else:
        raise SystemExit(f"unknown fault {fault!r}")


def train_cli(argv, log_path) -> None:
    """``inpaint-fast train ARGV`` (the console script's ``main``), stderr into ``log_path``."""
    from inpaint_fast import cli

    with open(log_path, "w") as log:
        os.dup2(log.fileno(), 2)
    torch.set_num_threads(1)
    sys.exit(cli.main(["train", *argv]))


def main(argv) -> int:
    out, fault = argv
    torch.set_num_threads(1)  # as in the tests' in-process runs: bit-identity needs the same reductions
    trainer = toy_trainer(out, "auto")
    if fault != "none":
        install(fault, trainer)
    trainer.fit()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
