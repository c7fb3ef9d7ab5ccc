"""The generic training loop: epochs of a (distributed) data loader, a task's step, progress,
metrics, sample grids, atomic checkpoints and exact resume.

What a model brings is a :class:`TrainTask` (see ``tasks.py`` for PIC and DFNet); everything
else lives in :class:`Trainer`. Output folder layout::

    OUT/metrics.jsonl                 one JSON object per logged step (rank 0)
    OUT/samples/step_<step>.png       sample grids (rank 0)
    OUT/checkpoints/step_<step>.pt    checkpoints (rank 0; atomic)

(:data:`RUN_OUTPUTS`; :func:`remove_run_outputs` clears them for a fresh run in the same folder.)

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

import json
import os
import random
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate

from .amp import Precision
from .checkpoint import (
    CHECKPOINT_FORMAT,
    atomic_save,
    capture_rng_state,
    checkpoint_path,
    latest_checkpoint,
    prune_checkpoints,
    read_torch_file,
    restore_rng_state,
)
from .distributed import DistInfo, all_gather_object, all_reduce_mean, barrier
from .errors import MissingFileError, UsageError
from .sampling import ResumableSampler
from .visuals import make_grid, save_png

__all__ = ["RUN_OUTPUTS", "TrainConfig", "TrainTask", "Trainer", "rank_seed", "remove_run_outputs"]

# What a run writes under its output folder (see the module docstring).
RUN_OUTPUTS = ("checkpoints", "samples", "metrics.jsonl")
RESUME_EXPECTED = "pass a checkpoint written by inpaint-fast train (OUT/checkpoints/step_*.pt), or --resume auto"


def rank_seed(seed: int, rank: int) -> int:
    """The seed of the global RNGs of ``rank`` during training (different per rank, so that e.g.
    PIC's latent samples differ between GPUs)."""
    return (int(seed) + 1_000_003 * int(rank)) % (2**63 - 1)


def remove_run_outputs(out_dir: str) -> List[str]:
    """Delete the :data:`RUN_OUTPUTS` of a previous run in ``out_dir`` (other files stay); returns
    the paths removed. Call it on one process only: two processes deleting one tree race."""
    removed = []
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

    def state_dict(self, rng_states: List[Dict[str, Any]]) -> Dict[str, Any]:
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
            "args": dict(self.config.args),
        }

    def save_checkpoint(self) -> Optional[str]:
        """Write ``OUT/checkpoints/step_<step>.pt`` (rank 0; every rank must call: RNGs are gathered)."""
        rng_states = all_gather_object(capture_rng_state(), self.info)
        if not self.info.is_main:
            return None
        path = checkpoint_path(self.config.out_dir, self.step)
        atomic_save(self.state_dict(rng_states), path)
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

    # -- logging --------------------------------------------------------------------------------

    def _metrics_path(self) -> str:
        return os.path.join(self.config.out_dir, "metrics.jsonl")

    def _trim_metrics(self) -> None:
        """On resume, drop logged rows past the checkpoint's step (they will be logged again); a
        resume that finds no checkpoint starts at step 0 and so drops every row."""
        path = self._metrics_path()
        if not (self.info.is_main and os.path.isfile(path)):
            return
        with open(path) as f:
            rows = [line for line in f if line.strip()]
        kept = [line for line in rows if json.loads(line).get("step", 0) <= self.step]
        if len(kept) != len(rows):
            with open(path, "w") as f:
                f.writelines(kept)

    def _log(self, row: Dict[str, Any]) -> None:
        self.history.append(row)
        with open(self._metrics_path(), "a") as f:
            f.write(json.dumps(row) + "\n")

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
        save_png(make_grid(columns), path)
        return path

    # -- the loop -------------------------------------------------------------------------------

    def fit(self) -> Dict[str, float]:
        """Train up to ``config.steps``; returns the last logged (rank-averaged) metrics."""
        cfg, info = self.config, self.info
        if info.is_main:
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
        if cfg.resume:  # also when "auto" found nothing: rows of a run that died before its first checkpoint
            self._trim_metrics()
        visual = self._visual_batch()
        self.task.train(True)
        last: Dict[str, float] = {}
        if self.step >= cfg.steps:
            return last

        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=self.step, desc=f"train {self.task.name}", unit="step",
                   dynamic_ncols=True, disable=not (info.is_main and cfg.progress), file=sys.stderr)
        sums: Dict[str, float] = {}
        count, t_last, io = 0, time.perf_counter(), 0.0  # io: seconds spent on grids/checkpoints
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
                        sums[k] = sums.get(k, 0.0) + float(v)
                    count += 1
                    bar.update(1)
                    final = self.step >= cfg.steps
                    if (cfg.log_every and self.step % cfg.log_every == 0) or final:
                        mean = all_reduce_mean({k: v / count for k, v in sums.items()}, info)
                        now = time.perf_counter()
                        rate = count * images_per_step / max(now - t_last - io, 1e-9)
                        last = mean
                        if info.is_main:
                            self._log({"step": self.step, "epoch": self.epoch, "images_per_s": rate, **mean})
                            bar.set_postfix({**{k: f"{v:.4g}" for k, v in list(mean.items())[:6]},
                                             "img/s": f"{rate:.1f}"}, refresh=False)
                        sums, count, t_last, io = {}, 0, now, 0.0
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
