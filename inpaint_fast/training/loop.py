"""The generic training loop: epochs of a (distributed) data loader, a task's step, progress,
metrics, sample grids, atomic checkpoints and exact resume.

What a model brings is a :class:`TrainTask` (see ``tasks.py`` for PIC and DFNet); everything
else lives in :class:`Trainer`. Output folder layout::

    OUT/metrics.jsonl                 one JSON object per logged step (rank 0)
    OUT/samples/step_<step>.png       sample grids (rank 0)
    OUT/checkpoints/step_<step>.pt    checkpoints (rank 0; atomic)

(:data:`RUN_OUTPUTS`; :func:`remove_run_outputs` clears them for a fresh run in the same folder.)

Surviving a kill: a step's files are written in the order metrics row, sample grid, checkpoint,
each one complete or not at all (``files.atomic_write``; the metrics row is appended and
fsync'ed), so whenever a run dies, every row up to its last checkpoint is on disk. ``--resume
auto`` continues from that checkpoint, deletes the temporary files of writes the kill cut short,
and drops the rows past the checkpoint's step (``metrics_log.trim``), which the resumed run
logs again. A checkpoint also holds each rank's unlogged metric sums (the steps since the last
row), so the rows of a resumed run equal those of an uninterrupted one at any --log-every.
An OSError while writing under OUT (a full disk, a read-only file system) stops the run with an
:class:`~.errors.OutputError` that names the file and the last complete checkpoint.

Exact resume: the data order is a function of (seed, epoch) (:class:`ResumableSampler`), each
example's randomness a function of (seed, epoch, index) (the dataset's ``set_epoch``), and a
checkpoint stores the position in the epoch and every rank's RNG states. The DataLoader draws
its worker seed from its own generator, never from the global RNG. So N steps + resume + N steps
gives the same weights, bit for bit on CPU, as 2N steps — with the same world size, batch size,
seed and number of CPU threads (a different thread count changes the order of floating-point
reductions). On GPUs, non-deterministic kernels make resumed runs close rather than identical.
Multi-node runs must write OUT to a file system every node sees (``--resume auto`` looks there on
every rank).
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import re
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate

from . import metrics_log
from .amp import Precision
from .checkpoint import (
    CHECKPOINT_FORMAT,
    atomic_save,
    capture_rng_state,
    checkpoint_path,
    latest_checkpoint,
    prune_checkpoints,
    read_torch_file,
    remove_partial_checkpoints,
    restore_rng_state,
)
from .distributed import DistInfo, all_gather_object, all_reduce_mean, barrier
from .errors import MissingFileError, OutputError, UsageError
from .files import remove_partial_writes
from .sampling import ResumableSampler
from .visuals import make_grid, save_png

__all__ = ["RUN_OUTPUTS", "TrainConfig", "TrainTask", "Trainer", "rank_seed", "remove_run_outputs"]

# What a run writes under its output folder (see the module docstring).
RUN_OUTPUTS = ("checkpoints", "samples", metrics_log.FILE_NAME)
_SAMPLE_NAME = re.compile(r"^step_\d+\.png$")
# What to do about an OSError while writing under --out, by errno (the rest: fix its cause).
_WRITE_FIXES = {errno.ENOSPC: "free space on its disk", errno.EDQUOT: "free space within your disk quota",
                errno.EROFS: "make it writable", errno.EACCES: "make it writable", errno.EPERM: "make it writable"}
RESUME_EXPECTED = "pass a checkpoint written by inpaint-fast train (OUT/checkpoints/step_*.pt), or --resume auto"


def rank_seed(seed: int, rank: int) -> int:
    """The seed of the global RNGs of ``rank`` during training (different per rank, so that e.g.
    PIC's latent samples differ between GPUs)."""
    return (int(seed) + 1_000_003 * int(rank)) % (2**63 - 1)


def remove_run_outputs(out_dir: str) -> List[str]:
    """Delete the :data:`RUN_OUTPUTS` of a previous run in ``out_dir`` (other files stay; the
    temporary file of an interrupted metrics rewrite goes too); returns the paths removed. Call it
    on one process only: two processes deleting one tree race."""
    removed = metrics_log.remove_partial(out_dir)
    for name in RUN_OUTPUTS:
        path = os.path.join(out_dir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.unlink(path)
        else:
            continue
        removed.append(path)
    return removed


def output_error(exc: OSError, path: str, out_dir: str) -> OutputError:
    """The one-line error for ``exc``, raised while writing ``path`` of the run in ``out_dir``:
    the cause in words, the checkpoint that is intact, and how to go on."""
    reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
    try:
        latest = latest_checkpoint(out_dir)
    except OSError:  # the folder cannot even be listed: say nothing about what it holds
        kept = "its checkpoints could not be listed"
    else:
        kept = f"the last complete checkpoint, {latest}, is intact" if latest else "no checkpoint was written yet"
    fix = _WRITE_FIXES.get(exc.errno, f"fix the cause ({type(exc).__name__})")
    return OutputError(f"--out: {reason} while writing {path}; {kept}. To go on, {fix} (or copy the run to "
                       "another --out) and continue it with --resume auto")


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    random.seed(seed)


class TrainTask:
    """One model's training step. Subclasses set :attr:`name` and implement the methods below.

    The task owns its networks and optimizers, already on the training device. The trainer
    calls :meth:`setup` once before training (DDP wrapping, torch.compile), then
    :meth:`train_step` per batch.
    """

    name: str = "task"

    def modules(self) -> Dict[str, nn.Module]:
        """The networks to checkpoint, by name, *unwrapped* (no DDP / compile wrapper)."""
        raise NotImplementedError

    def optimizers(self) -> Dict[str, torch.optim.Optimizer]:
        """The optimizers to checkpoint, by name."""
        raise NotImplementedError

    def setup(self, info: DistInfo, example: Optional[Dict[str, Any]]) -> None:
        """Wrap networks for distributed training / compilation. ``example``: one training batch
        on the device when distributed (for probes), else None. Default: nothing."""

    def train_step(self, batch: Dict[str, Any], precision: Precision) -> Dict[str, float]:
        """One optimisation step on ``batch`` (tensors on the device); returns scalar metrics."""
        raise NotImplementedError

    def visualize(self, batch: Dict[str, Any]) -> List[torch.Tensor]:
        """Columns of a sample grid, each (B,3,H,W) in [0,1]; [] for none. Called on rank 0 only,
        in no_grad; must not call DDP-wrapped modules (they would wait for the other ranks)."""
        return []

    def train(self, flag: bool = True) -> None:
        for m in self.modules().values():
            m.train(flag)


@dataclass
class TrainConfig:
    """Settings of :class:`Trainer`.

    out_dir: output folder. steps: total optimisation steps (the run stops there).
    batch_size: per process. workers: DataLoader worker processes (0 = in the main process).
    amp: "off" | "fp16" | "bf16". log_every / sample_every / ckpt_every: in steps (0 = never;
    a checkpoint is always written at the last step). keep_checkpoints: newest kept (0 = all).
    resume: a checkpoint path, "auto" (latest under out_dir, fresh start if none), or None.
    num_visuals: examples in a sample grid. progress: tqdm bar on rank 0.
    args: recorded in every checkpoint (the command line's settings).
    """

    out_dir: str
    steps: int
    batch_size: int
    seed: int = 0
    workers: int = 0
    amp: str = "off"
    log_every: int = 10
    sample_every: int = 0
    ckpt_every: int = 0
    keep_checkpoints: int = 3
    resume: Optional[str] = None
    num_visuals: int = 4
    progress: bool = True
    args: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        for name in ("steps", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}: expected a positive integer, got {getattr(self, name)}")
        for name in ("workers", "log_every", "sample_every", "ckpt_every", "keep_checkpoints"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name}: expected >= 0, got {getattr(self, name)}")


def _to_device(batch: Dict[str, Any], device: torch.device) -> Dict[str, Any]:
    non_blocking = device.type == "cuda"
    return {k: (v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v) for k, v in batch.items()}


class Trainer:
    """Runs a :class:`TrainTask` over a dataset of dicts (``{"image", "mask", ...}``).

    Args:
        task: the model's step.
        dataset: a map-style dataset; if it has ``set_epoch(epoch)``, it is called at each epoch.
        config: :class:`TrainConfig`.
        info: the process's place in the job (:func:`init_distributed`); default single CPU process.
    """

    def __init__(self, task: TrainTask, dataset: Dataset, config: TrainConfig, info: Optional[DistInfo] = None):
        self.task = task
        self.dataset = dataset
        self.config = config
        self.info = info or DistInfo()
        self.precision = Precision(config.amp, self.info.device.type)
        self.step = 0
        self.epoch = 0
        self.position = 0  # batches of `epoch` already consumed
        self.history: List[Dict[str, Any]] = []  # logged rows (rank 0)
        # this rank's metric sums over the steps since the last logged row (checkpointed)
        self.window_sums: Dict[str, float] = {}
        self.window_count = 0
        self.sampler = ResumableSampler(dataset, num_replicas=self.info.world_size, rank=self.info.rank,
                                        shuffle=True, seed=config.seed, drop_last=True)
        self.batches_per_epoch = self.sampler.full_length() // config.batch_size
        if self.batches_per_epoch < 1:
            raise UsageError(
                f"--batch: {len(dataset)} example(s) give no full batch of {config.batch_size} per process "
                f"on {self.info.world_size} process(es); add images to --data or lower --batch")

    # -- data -----------------------------------------------------------------------------------

    def _set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        self.sampler.set_epoch(epoch)

    def _loader(self) -> DataLoader:
        generator = torch.Generator()  # worker seeds come from here, not from the global RNG
        generator.manual_seed(rank_seed(self.config.seed, self.info.rank) + self.epoch)
        return DataLoader(self.dataset, batch_size=self.config.batch_size, sampler=self.sampler,
                          num_workers=self.config.workers, drop_last=True, generator=generator,
                          pin_memory=self.info.device.type == "cuda")

    def _visual_batch(self) -> Optional[Dict[str, Any]]:
        n = min(self.config.num_visuals, len(self.dataset))
        if not self.info.is_main or self.config.sample_every <= 0 or n == 0:
            return None
        self._set_epoch(0)
        return _to_device(default_collate([self.dataset[i] for i in range(n)]), self.info.device)

    # -- checkpoints ----------------------------------------------------------------------------

    def state_dict(self, rng_states: List[Dict[str, Any]], windows: List[Dict[str, Any]]) -> Dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "task": self.task.name,
            "step": self.step,
            "epoch": self.epoch,
            "position": self.position,
            "batch_size": self.config.batch_size,
            "world_size": self.info.world_size,
            "seed": self.config.seed,
            "modules": {k: m.state_dict() for k, m in self.task.modules().items()},
            "optimizers": {k: o.state_dict() for k, o in self.task.optimizers().items()},
            "precision": self.precision.state_dict(),
            "rng": rng_states,
            "log_window": windows,
            "args": dict(self.config.args),
        }

    def save_checkpoint(self) -> Optional[str]:
        """Write ``OUT/checkpoints/step_<step>.pt`` (rank 0; every rank must call: RNG states and
        metric sums are gathered). Raises OutputError when it cannot be written."""
        window = {"sums": dict(self.window_sums), "count": self.window_count}
        gathered = all_gather_object((capture_rng_state(), window), self.info)
        if not self.info.is_main:
            return None
        path = checkpoint_path(self.config.out_dir, self.step)
        with self._writing(path):
            atomic_save(self.state_dict([g[0] for g in gathered], [g[1] for g in gathered]), path)
            prune_checkpoints(self.config.out_dir, self.config.keep_checkpoints)
        return path

    def _resolve_resume(self) -> Optional[str]:
        resume = self.config.resume
        if not resume:
            return None
        if resume == "auto":
            path = latest_checkpoint(self.config.out_dir)
            if path is None and self.info.is_main:
                print(f"resume auto: no checkpoint under {self.config.out_dir}, starting fresh", file=sys.stderr)
            return path
        if not os.path.isfile(resume):
            raise MissingFileError(f"--resume: no checkpoint file at {resume!r}; {RESUME_EXPECTED}")
        return resume

    def load_checkpoint(self, path: str) -> None:
        """Restore networks, optimizers, scaler, position and RNG states from ``path``."""
        ckpt = read_torch_file(path, "--resume", expected=RESUME_EXPECTED)
        if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
            raise UsageError(f"--resume: {path} is not an inpaint-fast training checkpoint; {RESUME_EXPECTED}")
        if ckpt.get("task") != self.task.name:
            raise UsageError(f"--resume: {path} is a {ckpt.get('task')!r} checkpoint, "
                             f"this run trains {self.task.name!r}; resume a checkpoint of the same model")
        modules = self.task.modules()
        if set(ckpt["modules"]) != set(modules):
            raise UsageError(f"--resume: {path} holds networks {sorted(ckpt['modules'])}, expected {sorted(modules)}; "
                             "resume a checkpoint of the same model")
        for name, module in modules.items():
            module.load_state_dict(ckpt["modules"][name])
        for name, opt in self.task.optimizers().items():
            opt.load_state_dict(ckpt["optimizers"][name])
        self.precision.load_state_dict(ckpt.get("precision", {}))
        self.step, self.epoch, self.position = int(ckpt["step"]), int(ckpt["epoch"]), int(ckpt["position"])
        exact = (ckpt.get("world_size") == self.info.world_size and ckpt.get("batch_size") == self.config.batch_size
                 and ckpt.get("seed") == self.config.seed)
        if exact:
            restore_rng_state(ckpt["rng"][self.info.rank])
            self._restore_window(ckpt.get("log_window"))
        else:
            if self.info.is_main:
                warnings.warn(
                    f"resuming {path} with a different world size, batch size or seed "
                    f"(checkpoint: {ckpt.get('world_size')}, {ckpt.get('batch_size')}, {ckpt.get('seed')}): "
                    "the run continues, but not bit-identically to an uninterrupted one", stacklevel=2)
            # the old position is in units of the old batches: restart the epoch boundary cleanly
            if ckpt.get("batch_size") != self.config.batch_size or ckpt.get("world_size") != self.info.world_size:
                self.epoch, self.position = self.epoch + (1 if self.position else 0), 0
            _seed_everything(rank_seed(self.config.seed + self.step, self.info.rank))
        if self.position >= self.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0

    def _restore_window(self, windows: Optional[List[Dict[str, Any]]]) -> None:
        """This rank's unlogged metric sums from a checkpoint (absent in checkpoints of earlier
        versions: the first row after the resume then averages fewer steps)."""
        if windows is None:
            return
        window = windows[self.info.rank]
        self.window_sums, self.window_count = dict(window["sums"]), int(window["count"])

    # -- files under OUT ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _writing(self, path: str) -> Iterator[None]:
        """Turn an OSError raised while writing ``path`` into an :class:`OutputError`."""
        try:
            yield
        except OSError as exc:
            if isinstance(exc, UsageError):  # MissingFileError is also an OSError; already worded
                raise
            raise output_error(exc, path, self.config.out_dir) from exc

    def _metrics_path(self) -> str:
        return metrics_log.metrics_path(self.config.out_dir)

    def _clean_up_interrupted_run(self) -> None:
        """On resume (rank 0): delete what the writes a kill cut short left, then drop the rows past
        the checkpoint's step (a resume that finds no checkpoint starts at step 0: every row)."""
        out = self.config.out_dir
        with self._writing(out):
            removed = (remove_partial_checkpoints(out) + metrics_log.remove_partial(out)
                       + remove_partial_writes(os.path.join(out, "samples"), _SAMPLE_NAME))
        if removed:
            print(f"resume: deleted {len(removed)} file(s) an interrupted write left: {', '.join(removed)}",
                  file=sys.stderr)
        path = self._metrics_path()
        with self._writing(path):
            trimmed = metrics_log.trim(path, self.step)
        if trimmed.dropped or trimmed.torn:
            torn = " and a half-written last line" if trimmed.torn else ""
            print(f"resume: {path}: dropped {trimmed.dropped} row(s) past step {self.step}{torn}; "
                  "the run logs those steps again", file=sys.stderr)

    def _log(self, row: Dict[str, Any]) -> None:
        self.history.append(row)
        path = self._metrics_path()
        with self._writing(path):
            metrics_log.append(path, row)

    def _write_samples(self, batch: Dict[str, Any]) -> Optional[str]:
        self.task.train(False)
        devices = [self.info.device.index] if self.info.device.type == "cuda" else []
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=devices):
                columns = self.task.visualize(batch)
        finally:
            self.task.train(True)
        if not columns:
            return None
        path = os.path.join(self.config.out_dir, "samples", f"step_{self.step:08d}.png")
        with self._writing(path):
            save_png(make_grid(columns), path)
        return path

    # -- the loop -------------------------------------------------------------------------------

    def fit(self) -> Dict[str, float]:
        """Train up to ``config.steps``; returns the last logged (rank-averaged) metrics."""
        cfg, info = self.config, self.info
        if info.is_main:
            with self._writing(cfg.out_dir):
                os.makedirs(cfg.out_dir, exist_ok=True)
        _seed_everything(rank_seed(cfg.seed, info.rank))
        example = None
        if info.distributed:  # one batch for the task's probes (PIC: which parameters never run)
            self._set_epoch(0)
            example = _to_device(next(iter(self._loader())), info.device)
        self.task.setup(info, example)
        del example
        resume = self._resolve_resume()
        if resume:
            self.load_checkpoint(resume)
            if info.is_main:
                print(f"resumed from {resume} at step {self.step} (epoch {self.epoch}, batch {self.position})",
                      file=sys.stderr)
        if cfg.resume and info.is_main:  # also when "auto" found nothing: a run that died before its first checkpoint
            self._clean_up_interrupted_run()
        visual = self._visual_batch()
        self.task.train(True)
        last: Dict[str, float] = {}
        if self.step >= cfg.steps:
            return last

        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=self.step, desc=f"train {self.task.name}", unit="step",
                   dynamic_ncols=True, disable=not (info.is_main and cfg.progress), file=sys.stderr)
        # timed: steps since t_last in this process (the window may hold steps from before a resume);
        # io: seconds spent on grids/checkpoints since t_last
        timed, t_last, io = 0, time.perf_counter(), 0.0
        images_per_step = cfg.batch_size * info.world_size
        try:
            while self.step < cfg.steps:
                self._set_epoch(self.epoch)
                self.sampler.set_start(self.position * cfg.batch_size)
                for batch in self._loader():
                    metrics = self.task.train_step(_to_device(batch, info.device), self.precision)
                    self.step += 1
                    self.position += 1
                    if self.position >= self.batches_per_epoch:
                        self.epoch, self.position = self.epoch + 1, 0
                    for k, v in metrics.items():
                        self.window_sums[k] = self.window_sums.get(k, 0.0) + float(v)
                    self.window_count += 1
                    timed += 1
                    bar.update(1)
                    final = self.step >= cfg.steps
                    if (cfg.log_every and self.step % cfg.log_every == 0) or final:
                        count = self.window_count
                        mean = all_reduce_mean({k: v / count for k, v in self.window_sums.items()}, info)
                        now = time.perf_counter()
                        rate = timed * images_per_step / max(now - t_last - io, 1e-9)
                        last = mean
                        if info.is_main:
                            self._log({"step": self.step, "epoch": self.epoch, "images_per_s": rate, **mean})
                            bar.set_postfix({**{k: f"{v:.4g}" for k, v in list(mean.items())[:6]},
                                             "img/s": f"{rate:.1f}"}, refresh=False)
                        self.window_sums, self.window_count = {}, 0
                        timed, t_last, io = 0, now, 0.0
                    t_io = time.perf_counter()
                    if visual is not None and cfg.sample_every and self.step % cfg.sample_every == 0:
                        self._write_samples(visual)
                    if (cfg.ckpt_every and self.step % cfg.ckpt_every == 0) or final:
                        self.save_checkpoint()
                    io += time.perf_counter() - t_io
                    if final or self.position == 0:
                        break  # leave the loader at an epoch boundary or at the end
        finally:
            bar.close()
        barrier(info)
        return last
