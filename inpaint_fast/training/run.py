"""``inpaint-fast train``: from parsed command-line arguments to a finished run.

:func:`prepare` checks the arguments and builds the dataset, the model and its task (every user
error surfaces here, before any training, as FileNotFoundError or ValueError with a message that
names the option); :func:`train` then runs :class:`~inpaint_fast.training.loop.Trainer`.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch

from .checkpoint import CHECKPOINT_FORMAT, latest_checkpoint, load_checkpoint
from .distributed import DistInfo, init_distributed, shutdown_distributed
from .loop import TrainConfig, Trainer, TrainTask

__all__ = ["MODEL_DEFAULTS", "Prepared", "check_size", "fit", "prepare", "train"]

# The papers' recipes (pic.md §3.7-3.8, dfnet.md §3.2); every value can be overridden.
MODEL_DEFAULTS: Dict[str, Dict[str, Any]] = {
    "pic": {"size": 256, "batch": 8, "lr": 1e-4, "masks": "pic", "recipe": "pic"},
    "dfnet": {"size": 512, "batch": 6, "lr": 2e-4, "masks": "free_form", "recipe": "dfnet"},
}


@dataclass
class Prepared:
    """Everything a run needs; ``owns_group``: the process group was started by :func:`prepare`."""

    trainer: Trainer
    dataset: Any
    info: DistInfo
    owns_group: bool


def _fill_defaults(args: argparse.Namespace) -> None:
    defaults = MODEL_DEFAULTS[args.model]
    for key in ("size", "batch", "lr", "masks"):
        if getattr(args, key, None) is None:
            setattr(args, key, defaults[key])


def check_size(model: str, size: int, *, training: bool = True) -> None:
    """ValueError unless ``size`` suits ``model``: PIC multiples of 32 (≥ 96 in training, where the
    discriminators' last 3x3 conv needs 3 cells; ≥ 64 for inference), DFNet multiples of 256."""
    if model == "pic":
        low = 96 if training else 64
        if size % 32 or size < low:
            raise ValueError(f"--size: PIC needs a multiple of 32, at least {low}{' for training' if training else ''} "
                             f"(encoder and discriminators halve the image 5 times); got {size}")
    elif size % 256 or size < 256:
        raise ValueError(f"--size: DFNet needs a multiple of 256 (8 stride-2 levels); got {size}")


def _vgg_help() -> str:
    """How to make the VGG16 weights file (the DFNet module's own wording when it has one)."""
    try:
        from inpaint_fast.models.vgg import VGG16_FILE_HELP

        return VGG16_FILE_HELP
    except ImportError:
        return ("Save torchvision's ImageNet VGG16 state dict once, where torchvision is installed: "
                "torch.save(torchvision.models.vgg16(weights='IMAGENET1K_V1').state_dict(), 'vgg16.pth').")


def _recorded_args(args: argparse.Namespace) -> Dict[str, Any]:
    return {k: v for k, v in vars(args).items()
            if isinstance(v, (str, int, float, bool, type(None))) and not k.startswith("_")}


def _check_resume(args: argparse.Namespace) -> None:
    """Fail early (before building anything) when --resume names a missing or foreign checkpoint."""
    if not args.resume:
        return
    path = latest_checkpoint(args.out) if args.resume == "auto" else args.resume
    if path is None:
        return
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--resume: no checkpoint file at {path!r}")
    ckpt = load_checkpoint(path, mmap=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"--resume: {path} is not an inpaint-fast training checkpoint")
    if ckpt.get("task") != args.model:
        raise ValueError(f"--resume: {path} is a {ckpt.get('task')!r} checkpoint, but --model is {args.model!r}")


def build_task(args: argparse.Namespace, device: torch.device) -> TrainTask:
    """The model (seeded with ``args.seed``: identical on every rank) and its task, on ``device``."""
    from .tasks import DFNetTask, PICTask

    torch.manual_seed(args.seed)
    if args.model == "pic":
        from inpaint_fast.models.pic import PIC

        model = PIC().to(device)
        return PICTask(model, lr=args.lr, lr_d=args.lr_d, compile=args.compile)
    from inpaint_fast.models.dfnet import DFNet, DFNetLoss, load_vgg16_features

    loss = DFNetLoss(load_vgg16_features(args.vgg_weights), tv=args.tv).to(device)
    model = DFNet().to(device)
    return DFNetTask(model, loss, lr=args.lr, optimizer=args.optimizer, compile=args.compile)


def prepare(args: argparse.Namespace, info: Optional[DistInfo] = None) -> Prepared:
    """Validate ``args`` (from ``inpaint-fast train``) and build everything a run needs.

    ``info``: an already initialised process (tests, notebooks); None = :func:`init_distributed`
    from the torchrun environment and ``args.device``. Raises FileNotFoundError / ValueError /
    RuntimeError with a message naming the option at fault.
    """
    if args.model not in MODEL_DEFAULTS:
        raise ValueError(f"--model: expected one of {sorted(MODEL_DEFAULTS)}, got {args.model!r}")
    _fill_defaults(args)
    check_size(args.model, args.size)
    if args.batch < 1 or args.steps < 1:
        raise ValueError(f"--batch and --steps must be positive, got {args.batch} and {args.steps}")
    if args.model == "dfnet" and args.batch * (args.size // 256) ** 2 < 2:
        raise ValueError(f"--batch: DFNet's bottleneck is 1x1 at {args.size}x{args.size} and its BatchNorm "
                         "needs more than one value per channel, so use --batch 2 or more")
    if not os.path.isdir(args.data):
        raise FileNotFoundError(f"--data: {args.data!r} is not a folder "
                                "(expected a folder of images, searched recursively)")
    if args.model == "dfnet":
        if not args.vgg_weights:
            raise ValueError("--vgg-weights is required for --model dfnet (its perceptual and style losses use "
                             f"ImageNet VGG16 features). {_vgg_help()}")
        if not os.path.isfile(args.vgg_weights):
            raise FileNotFoundError(f"--vgg-weights: no file at {args.vgg_weights!r}. {_vgg_help()}")
    elif args.optimizer != "adam":
        raise ValueError("--optimizer adamw applies to --model dfnet only (PIC's recipe is Adam, betas (0, 0.999))")
    if args.backend:
        import inpaint_fast

        inpaint_fast.set_backend(args.backend)
    _check_resume(args)

    from inpaint_fast.data import InpaintingDataset

    dataset = InpaintingDataset(args.data, size=args.size, masks=args.masks,
                                recipe=MODEL_DEFAULTS[args.model]["recipe"], train=True, seed=args.seed)
    owns_group = info is None
    info = info or init_distributed(args.device)
    task = build_task(args, info.device)
    config = TrainConfig(
        out_dir=args.out, steps=args.steps, batch_size=args.batch, seed=args.seed, workers=args.workers,
        amp=args.amp, log_every=args.log_every, sample_every=args.sample_every, ckpt_every=args.ckpt_every,
        keep_checkpoints=args.keep_ckpts, resume=args.resume, progress=not args.no_progress,
        args=_recorded_args(args))
    trainer = Trainer(task, dataset, config, info)
    return Prepared(trainer=trainer, dataset=dataset, info=info, owns_group=owns_group)


def fit(prepared: Prepared) -> Trainer:
    """Run a prepared training to its last step (then leave the process group if we started it)."""
    trainer, info, cfg = prepared.trainer, prepared.info, prepared.trainer.config
    try:
        if info.is_main:
            a = cfg.args
            print(f"training {a.get('model')} on {len(prepared.dataset)} images at {a.get('size')}x{a.get('size')}, "
                  f"batch {cfg.batch_size} x {info.world_size} process(es) on {info.device}, {cfg.steps} steps "
                  f"({trainer.batches_per_epoch} per epoch) -> {cfg.out_dir}", file=sys.stderr, flush=True)
        trainer.fit()
    finally:
        if prepared.owns_group:
            shutdown_distributed(info)
    return trainer


def train(args: argparse.Namespace, info: Optional[DistInfo] = None) -> Trainer:
    """``fit(prepare(args, info))``; returns the finished :class:`Trainer`."""
    return fit(prepare(args, info))
