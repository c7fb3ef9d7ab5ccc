"""``inpaint-fast train``: from parsed command-line arguments to a finished run.

:func:`prepare` checks the arguments and builds the dataset, the model and its task; every user
error surfaces there, before any training, as a :class:`~inpaint_fast.training.errors.UsageError`
whose message names the option and says what to do. :func:`fit` then runs
:class:`~inpaint_fast.training.loop.Trainer`.

Under torchrun every process runs :func:`prepare`. The checks that can fail read the same
arguments and files on every rank, so all ranks fail together; the one that writes (``--overwrite``
clearing the previous run) happens on rank 0 while the others wait for it.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch

from .amp import slow_amp_reason
from .checkpoint import CHECKPOINT_FORMAT, UNREADABLE, latest_checkpoint, list_checkpoints, read_torch_file
from .distributed import (DistInfo, barrier, broadcast_object, init_distributed, parse_device,
                          shutdown_distributed)
from .errors import MissingFileError, OutputError, UsageError
from .loop import RESUME_EXPECTED, RUN_OUTPUTS, TrainConfig, Trainer, TrainTask, remove_run_outputs

__all__ = ["MODEL_DEFAULTS", "MODEL_OPS", "Prepared", "check_backend", "check_out_dir", "check_out_writable",
           "check_size", "clear_previous_run", "fit", "hole_fraction_warning", "prepare", "train"]

# The papers' recipes (docs/pic.md#optimisation, docs/pic.md#data-and-masks,
# docs/dfnet.md#training-recipe); every value can be overridden.
MODEL_DEFAULTS: Dict[str, Dict[str, Any]] = {
    "pic": {"size": 256, "batch": 8, "lr": 1e-4, "masks": "pic", "recipe": "pic"},
    "dfnet": {"size": 512, "batch": 6, "lr": 2e-4, "masks": "free_form", "recipe": "dfnet"},
}
# The inpaint_fast op each network runs (and so the op a --backend must serve).
MODEL_OPS = {"pic": "short_long_attention", "dfnet": "fusion_block"}
_AMP_DTYPES = {"off": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# A mask whose hole covers more than this fraction is more likely inverted than meant.
MOSTLY_HOLE = 0.5
MASK_FILES_CHECKED = 8


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
    """UsageError unless the model takes ``size`` x ``size`` images (inpaint_fast/models/sizes.py:
    PIC multiples of 32, at least 64, and 96 in training; DFNet multiples of 256)."""
    from inpaint_fast.models.sizes import dfnet_size_problem, pic_size_problem

    if model == "pic":
        problem = pic_size_problem(size, size, training=training)
    else:
        problem = dfnet_size_problem(size, size)
    if problem:
        raise UsageError(f"--size: {'PIC' if model == 'pic' else 'DFNet'}: {problem}")


def check_backend(name: str, model: str, device: torch.device, dtype: torch.dtype = torch.float32) -> None:
    """UsageError unless backend ``name`` can run ``model``'s op on ``device`` in ``dtype``.

    Checked up front because the op would otherwise raise BackendError at the first forward,
    deep inside training (or after the model was loaded, for inference).
    """
    import inpaint_fast
    from inpaint_fast.backends import BACKENDS, registry

    if name not in BACKENDS:
        raise UsageError(f"--backend: unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")
    if name == "auto":
        return
    op = MODEL_OPS[model]
    reason = registry(op).why_not(name, device, dtype)
    if reason:
        usable = inpaint_fast.available_backends(device, dtype, op=op)
        raise UsageError(f"--backend: {reason} ({model} runs {op} on {device.type} in "
                         f"{str(dtype).replace('torch.', '')}); use one of auto, {', '.join(usable)}")


def hole_fraction_warning(option: str, what: str, fraction: float, inverted: bool) -> Optional[str]:
    """The one-line warning for a mask that is mostly hole (``fraction`` > :data:`MOSTLY_HOLE`), or None.

    ``what`` names the file(s) and how the fraction was measured; ``inverted``: --invert-mask given.
    """
    if fraction <= MOSTLY_HOLE:
        return None
    if inverted:
        read, fix = "black = hole, white = known, as --invert-mask asks", "drop --invert-mask"
    else:
        read, fix = "white = hole, black = known", "pass --invert-mask"
    return (f"warning: {option}: {what} {fraction:.0%} hole ({read}); if the file marks the known pixels "
            f"the other way, {fix}")


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


def _check_numbers(args: argparse.Namespace) -> None:
    """UsageError for a count or rate out of range (the trainer's own checks do not name options)."""
    for option, value, low in (("--batch", args.batch, 1), ("--steps", args.steps, 1), ("--workers", args.workers, 0),
                               ("--seed", args.seed, 0), ("--log-every", args.log_every, 0),
                               ("--sample-every", args.sample_every, 0), ("--ckpt-every", args.ckpt_every, 0),
                               ("--keep-ckpts", args.keep_ckpts, 0)):
        if value < low:
            raise UsageError(f"{option}: expected {low} or more, got {value}")
    for option, value in (("--lr", args.lr), ("--lr-d", args.lr_d)):
        if value is not None and not value > 0:
            raise UsageError(f"{option}: expected a positive learning rate, got {value}")


def _nearest_existing(path: str) -> str:
    """``path``, or its closest ancestor that exists (the folder a new ``path`` is created in)."""
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def check_out_writable(out: str) -> None:
    """OutputError unless this process can create files in ``out`` (or create ``out``), so that a
    read-only or foreign folder fails before the model is built rather than at the first write.

    ``os.access`` asks the kernel, read-only file systems included; for root it allows any folder
    on a writable file system, as the kernel would. Read-only, so every rank may call it.
    """
    folder = _nearest_existing(out)
    if not os.path.isdir(folder):
        raise UsageError(f"--out: cannot create {out!r}: {folder!r} is a file; pick another --out")
    if os.access(folder, os.W_OK | os.X_OK):
        return
    where = "" if folder == os.path.abspath(out) else f" (it would be created in {folder!r})"
    if hasattr(os, "statvfs") and os.statvfs(folder).f_flag & os.ST_RDONLY:
        cause = f"{folder!r} is on a read-only file system"
    else:
        cause = f"this user may not create files in {folder!r}"
    raise OutputError(f"--out: {out!r} is not writable{where}: {cause}; make it writable or pick another --out "
                      "(nothing was written)")


def check_out_dir(out: str, *, resume: Optional[str], overwrite: bool) -> None:
    """UsageError unless a run may write to ``out``: it must be a writable folder, or not exist yet
    in a writable one, and an existing one must be empty unless ``resume`` (continue the run there)
    or ``overwrite`` (start again: :func:`clear_previous_run`). Read-only, so every rank may call it."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--out: {out!r} is a file; --out names the run's folder (metrics, samples, checkpoints)")
    check_out_writable(out)
    if resume and overwrite:
        raise UsageError("--overwrite: cannot be combined with --resume (--resume continues the run in --out, "
                         "--overwrite deletes it); pick one")
    if resume or overwrite or not os.path.isdir(out):
        return
    entries = sorted(os.listdir(out))
    if entries:
        shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
        raise UsageError(f"--out: {out!r} is not empty ({shown}); pass --resume auto to continue the run in it, "
                         f"--overwrite to delete its {', '.join(RUN_OUTPUTS)} and start again, or a new --out")


def clear_previous_run(out: str, info: DistInfo) -> None:
    """``--overwrite``: rank 0 deletes the previous run's outputs; every rank returns (or raises the
    same UsageError) only once rank 0 is done, so no rank races the deletion or writes before it."""
    problem = None
    if info.is_main:
        try:
            removed = remove_run_outputs(out)
        except OSError as exc:
            problem = (f"--overwrite: could not delete the previous run in {out!r} ({type(exc).__name__}: {exc}); "
                       "delete it by hand or pick another --out")
        else:
            if removed:
                print(f"--overwrite: deleted {', '.join(removed)}", file=sys.stderr)
    problem = broadcast_object(problem, info)
    if problem:
        raise UsageError(problem)


def _check_resume(args: argparse.Namespace) -> None:
    """Fail early (before building anything) when --resume names a missing, unreadable or foreign
    checkpoint, or one that --out's later checkpoints would be mixed with."""
    if not args.resume:
        return
    path = latest_checkpoint(args.out) if args.resume == "auto" else args.resume
    if path is None:
        return
    # --resume auto trusts every step_*.pt it finds (they are written atomically); one that is still
    # damaged (a disk error, a copy cut short) is reported, not skipped for an older one
    expected = ("delete it to continue from the checkpoint before it, or pass --resume PATH"
                if args.resume == "auto" else RESUME_EXPECTED)
    ckpt = read_torch_file(path, "--resume", expected=expected, mmap=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UsageError(f"--resume: {path} is not an inpaint-fast training checkpoint; {RESUME_EXPECTED}")
    if ckpt.get("task") != args.model:
        raise UsageError(f"--resume: {path} is a {ckpt.get('task')!r} checkpoint, but --model is {args.model!r}")
    later = [step for step, _ in list_checkpoints(args.out) if step > int(ckpt.get("step", 0))]
    if later:
        raise UsageError(f"--resume: {os.path.join(args.out, 'checkpoints')} already holds step {later[-1]}, past "
                         f"step {ckpt.get('step')} of {path}, so the two runs would mix there; continue the latest "
                         "with --resume auto, delete the later checkpoints to go back, or resume into a new --out")


def _mask_source(args: argparse.Namespace):
    """The --masks source at the training size, its files read the model's way (PIC binarises)."""
    from inpaint_fast.data import FOLDER_MASK_READING, IMAGE_EXTENSIONS, MASK_SPECS, make_mask_source

    spec = args.masks
    if spec not in MASK_SPECS and not os.path.isdir(spec):
        hint = (" (a folder takes no ':pic'/':dfnet' suffix: every mask file reads white = hole, black = known; "
                "--invert-mask reads white = known)") if spec.endswith((":pic", ":dfnet")) else ""
        raise UsageError(f"--masks: {spec!r} is neither a mask type ({', '.join(MASK_SPECS)}) nor a folder{hint}")
    try:
        return make_mask_source(spec, args.size, seed=args.seed, holes="black" if args.invert_mask else "white",
                                **FOLDER_MASK_READING[MODEL_DEFAULTS[args.model]["recipe"]])
    except FileNotFoundError as exc:  # a folder without image files
        raise MissingFileError(f"--masks: no mask images ({' '.join(IMAGE_EXTENSIONS)}) under {spec!r} (searched "
                               "recursively); add mask files (white = hole) or pick a mask type") from exc


def _mask_folder_hole_fraction(source) -> Optional[float]:
    """The mean hole fraction of the first few files of a mask folder; None for generated masks."""
    from inpaint_fast.data import MaskFolder

    folder = source.generator
    if not isinstance(folder, MaskFolder):
        return None
    try:
        return folder.hole_fraction(MASK_FILES_CHECKED)
    except ValueError as exc:  # a file Pillow cannot decode (the message names it)
        raise UsageError(f"--masks: {exc}; remove or replace that file") from exc


def _dataset(args: argparse.Namespace, masks):
    from inpaint_fast.data import IMAGE_EXTENSIONS, InpaintingDataset

    try:
        return InpaintingDataset(args.data, size=args.size, masks=masks, recipe=MODEL_DEFAULTS[args.model]["recipe"],
                                 train=True, seed=args.seed)
    except FileNotFoundError as exc:  # the folder holds no image files
        raise MissingFileError(f"--data: no images ({' '.join(IMAGE_EXTENSIONS)}) under {args.data!r} (searched "
                               "recursively); point --data at a folder of training images") from exc


def _check_args(args: argparse.Namespace) -> None:
    """Every check that needs no process group; the same result on every rank."""
    if args.model not in MODEL_DEFAULTS:
        raise UsageError(f"--model: expected one of {sorted(MODEL_DEFAULTS)}, got {args.model!r}")
    _fill_defaults(args)
    check_size(args.model, args.size)
    _check_numbers(args)
    if args.model == "dfnet" and args.batch * (args.size // 256) ** 2 < 2:
        raise UsageError(f"--batch: DFNet's bottleneck is 1x1 at {args.size}x{args.size} and its BatchNorm "
                         "needs more than one value per channel, so use --batch 2 or more")
    if not os.path.isdir(args.data):
        raise MissingFileError(f"--data: {args.data!r} is not a folder "
                               "(expected a folder of images, searched recursively)")
    if args.model == "dfnet":
        if not args.vgg_weights:
            raise UsageError("--vgg-weights: required for --model dfnet (its perceptual and style losses use "
                             f"ImageNet VGG16 features). {_vgg_help()}")
        if not os.path.isfile(args.vgg_weights):
            raise MissingFileError(f"--vgg-weights: no file at {args.vgg_weights!r}. {_vgg_help()}")
    elif args.optimizer != "adam":
        raise UsageError("--optimizer: adamw applies to --model dfnet only (PIC's recipe is Adam, betas (0, 0.999)); "
                         "leave --optimizer out")
    check_out_dir(args.out, resume=args.resume, overwrite=args.overwrite)
    if args.backend:
        check_backend(args.backend, args.model, parse_device(args.device),
                      _AMP_DTYPES[args.amp] if args.model == "pic" else torch.float32)
    _check_resume(args)


def _vgg_features(path: str):
    """DFNet's VGG16 from --vgg-weights; UsageError naming the option for a file that does not fit."""
    from inpaint_fast.models.dfnet import load_vgg16_features

    try:
        return load_vgg16_features(path)
    except ValueError as exc:
        if exc.__cause__ is not None:  # torch.load failed; its message would advise weights_only=False
            raise UsageError(f"--vgg-weights: {path!r} is not a readable checkpoint ({UNREADABLE}). "
                             f"{_vgg_help()}") from exc
        raise UsageError(f"--vgg-weights: {str(exc).removeprefix('load_vgg16_features: ')}") from exc


def build_task(args: argparse.Namespace, device: torch.device) -> TrainTask:
    """The model (seeded with ``args.seed``: identical on every rank) and its task, on ``device``."""
    from .tasks import DFNetTask, PICTask

    torch.manual_seed(args.seed)
    if args.model == "pic":
        from inpaint_fast.models.pic import PIC

        model = PIC().to(device)
        return PICTask(model, lr=args.lr, lr_d=args.lr_d, compile=args.compile)
    from inpaint_fast.models.dfnet import DFNet, DFNetLoss

    loss = DFNetLoss(_vgg_features(args.vgg_weights), tv=args.tv).to(device)
    model = DFNet().to(device)
    return DFNetTask(model, loss, lr=args.lr, optimizer=args.optimizer, compile=args.compile)


def _warn_slow_or_suspicious(args: argparse.Namespace, device: torch.device, mask_hole: Optional[float]) -> None:
    """One stderr line per setting that runs but is probably not what was meant (rank 0 only)."""
    reason = slow_amp_reason(args.amp, device.type)
    if reason:
        print(f"warning: --amp {args.amp}: {reason}", file=sys.stderr)
    if mask_hole is not None:
        files = f"the first {MASK_FILES_CHECKED} files of {args.masks!r} are on average"
        line = hole_fraction_warning("--masks", files, mask_hole, args.invert_mask)
        if line:
            print(line, file=sys.stderr)


def prepare(args: argparse.Namespace, info: Optional[DistInfo] = None) -> Prepared:
    """Validate ``args`` (from ``inpaint-fast train``) and build everything a run needs.

    ``info``: an already initialised process (tests, notebooks); None = :func:`init_distributed`
    from the torchrun environment and ``args.device``. Raises
    :class:`~inpaint_fast.training.errors.UsageError` (a ValueError; MissingFileError, also a
    FileNotFoundError, for a missing file) with a message naming the option at fault.
    """
    _check_args(args)
    masks = _mask_source(args)
    mask_hole = _mask_folder_hole_fraction(masks)
    dataset = _dataset(args, masks)
    owns_group = info is None
    info = info or init_distributed(args.device)
    try:
        if args.backend:
            import inpaint_fast

            inpaint_fast.set_backend(args.backend)
        if info.is_main:
            _warn_slow_or_suspicious(args, info.device, mask_hole)
        task = build_task(args, info.device)
        config = TrainConfig(
            out_dir=args.out, steps=args.steps, batch_size=args.batch, seed=args.seed, workers=args.workers,
            amp=args.amp, log_every=args.log_every, sample_every=args.sample_every, ckpt_every=args.ckpt_every,
            keep_checkpoints=args.keep_ckpts, resume=args.resume, progress=not args.no_progress,
            args=_recorded_args(args))
        trainer = Trainer(task, dataset, config, info)
        if args.overwrite:  # last: nothing is deleted for a run that would fail to start
            clear_previous_run(args.out, info)
        barrier(info)  # every rank has checked --out before rank 0 writes to it
    except BaseException:
        if owns_group:
            shutdown_distributed(info)
        raise
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
