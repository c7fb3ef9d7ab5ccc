"""``inpaint-fast inpaint``: complete one image with PIC or DFNet.

The image is resized to the model's working size (PIC: a multiple of 32, default 256; DFNet: a
multiple of 256, default 512; a checkpoint written by ``inpaint-fast train`` supplies its training
size), completed, and the completion is resized back and composited into the holes at the image's
own resolution: ``out = image·mask + completion·(1 − mask)``. Known pixels are therefore the
input's pixels exactly (for a binary mask).

Checkpoints accepted:

* PIC: one written by ``inpaint-fast train --model pic`` (``--checkpoint``), or the official
  ``<iter>_net_E.pth`` + ``<iter>_net_G.pth`` (``--pic-E``, ``--pic-G``).
* DFNet: one written by ``inpaint-fast train --model dfnet``, or an official state dict
  (``model_places2.pth``, ``model_celeba.pth``). The official checkpoints were trained and run on
  **BGR** images (docs/dfnet.md#conventions): pass ``--bgr`` with them. The CelebA one works at 256 (``--size 256``).

Mask files: white (255) = hole, black (0) = known, grey = partly known, for both models; PIC
treats any pixel touched by a hole as a hole, DFNet blends grey as a soft value. ``--invert-mask``
reads files that mark the known pixels white (DFNet's released masks). A mask must have the
image's size; ``--resize-mask`` stretches one that has not. A mask that is mostly hole gets a
warning: it is more often an inverted file than a real request.

Every error a user's arguments or files cause is a
:class:`~inpaint_fast.training.errors.UsageError` naming the option. Sizes are checked before
anything is read or run: the network's rules (inpaint_fast/models/sizes.py) and the index and
launch limits of the kernels of the backend that will run (:func:`check_kernel_limits`: e.g. the
triton backend's PIC attention takes working sizes below 32768x32768, K samples at most 65535).
"""

from __future__ import annotations

import os
import sys
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F

from inpaint_fast.training.errors import MissingFileError, UsageError

__all__ = ["DEFAULT_SIZES", "check_kernel_limits", "inpaint_dfnet", "inpaint_pic", "load_model", "resolved_backend",
           "run_inpaint"]

DEFAULT_SIZES = {"pic": 256, "dfnet": 512}
CHECKPOINT_EXPECTED = {
    "pic": "pass a checkpoint written by inpaint-fast train --model pic, or PIC's official files with --pic-E/--pic-G",
    "dfnet": "pass a checkpoint written by inpaint-fast train --model dfnet, or DFNet's official state dict "
             "(model_places2.pth, model_celeba.pth)",
}


def _load_file(path: str, option: str, model: str) -> Any:
    from inpaint_fast.training.checkpoint import read_torch_file

    return read_torch_file(path, option, expected=CHECKPOINT_EXPECTED[model])


def _our_checkpoint(obj: Any) -> bool:
    from inpaint_fast.training.checkpoint import CHECKPOINT_FORMAT

    return isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT


def _mismatch(own: Mapping[str, torch.Tensor], given: Mapping[str, Any], unexpected: List[str]) -> str:
    """'' when ``given`` has every key of ``own`` with its shape and ``unexpected`` is empty, else a
    short account of what differs (counts and one example each)."""
    missing = [k for k in own if k not in given]
    wrong = [k for k in own if k in given and (not torch.is_tensor(given[k]) or given[k].shape != own[k].shape)]
    parts = [f"{len(keys)} {what} (e.g. {keys[0]!r})" for keys, what in
             ((missing, "missing key(s)"), (unexpected, "unexpected key(s)"), (wrong, "tensor(s) of another shape"))
             if keys]
    return ", ".join(parts)


def _load_weights(net: torch.nn.Module, state: Any, option: str, path: str, what: str) -> None:
    """``net.load_state_dict(state)``, or UsageError naming ``option`` when the file does not fit."""
    if not isinstance(state, Mapping):
        raise UsageError(f"{option}: {path} holds a {type(state).__name__}, not a {what} state dict")
    own = net.state_dict()
    problem = _mismatch(own, state, [k for k in state if k not in own])
    if problem:
        raise UsageError(f"{option}: {path} does not fit {what}: {problem}; is it a checkpoint of another model "
                         "or version?")
    net.load_state_dict(state)


def _load_pic_official(net: torch.nn.Module, E: str, G: str) -> None:
    """PIC's official ``<iter>_net_E.pth`` / ``<iter>_net_G.pth`` into ``net``, each checked first."""
    from inpaint_fast.models.pic_checkpoint import convert_pic_state_dict, load_pic_checkpoints

    for option, path, attr in (("--pic-E", E, "net_E"), ("--pic-G", G, "net_G")):
        state = _load_file(path, option, "pic")
        if not isinstance(state, Mapping):
            raise UsageError(f"{option}: {path} holds a {type(state).__name__}, not PIC's {attr} state dict")
        sub = getattr(net, attr)
        try:
            converted, _, unexpected = convert_pic_state_dict(sub, state, where=option)
        except ValueError as exc:  # two PIC names of one conv hold different tensors
            raise UsageError(f"{exc}; the file is damaged or not PIC's") from exc
        problem = _mismatch(sub.state_dict(), converted, unexpected)
        if problem:
            raise UsageError(f"{option}: {path} does not fit PIC's {attr}: {problem}; pass PIC's "
                             f"<iter>_{attr}.pth")
        load_pic_checkpoints(net, **{attr[len("net_"):]: state})


def load_model(model: str, *, checkpoint: Optional[str] = None, pic_E: Optional[str] = None,
               pic_G: Optional[str] = None, device: Any = "cpu") -> Tuple[torch.nn.Module, Dict[str, Any]]:
    """Build PIC or DFNet, load its weights, move to ``device``, set eval mode.

    Returns ``(network, training_args)``; ``training_args`` is the ``args`` dict recorded in one
    of our checkpoints ({} for official files). Raises UsageError (MissingFileError for a missing
    file) naming the option at fault: no checkpoint given, a checkpoint of the other model, an
    unreadable file, weights that do not fit.
    """
    args: Dict[str, Any] = {}
    if model == "pic":
        from inpaint_fast.models.pic import PIC

        net = PIC()
        if checkpoint:
            if pic_E or pic_G:
                raise UsageError("--checkpoint: give either --checkpoint or --pic-E/--pic-G, not both")
            ckpt = _load_file(checkpoint, "--checkpoint", "pic")
            if not _our_checkpoint(ckpt):
                raise UsageError(f"--checkpoint: {checkpoint} is not an inpaint-fast training checkpoint; for PIC's "
                                 "official files use --pic-E <iter>_net_E.pth --pic-G <iter>_net_G.pth")
            if ckpt.get("task") != "pic":
                raise UsageError(f"--checkpoint: {checkpoint} is a {ckpt.get('task')!r} checkpoint, "
                                 "but --model is 'pic'")
            _load_weights(net, ckpt["modules"]["model"], "--checkpoint", checkpoint, "PIC")
            args = dict(ckpt.get("args", {}))
        elif pic_E and pic_G:
            _load_pic_official(net, pic_E, pic_G)
        else:
            raise UsageError("--checkpoint: --model pic needs --checkpoint PATH (from inpaint-fast train) or both "
                             "--pic-E and --pic-G (PIC's official <iter>_net_E.pth and <iter>_net_G.pth)")
    elif model == "dfnet":
        from inpaint_fast.models.dfnet import DFNet

        if pic_E or pic_G:
            raise UsageError("--pic-E/--pic-G: they apply to --model pic only")
        if not checkpoint:
            raise UsageError("--checkpoint: --model dfnet needs --checkpoint PATH (from inpaint-fast train, or an "
                             "official DFNet state dict such as model_places2.pth)")
        net = DFNet()
        ckpt = _load_file(checkpoint, "--checkpoint", "dfnet")
        if _our_checkpoint(ckpt):
            if ckpt.get("task") != "dfnet":
                raise UsageError(f"--checkpoint: {checkpoint} is a {ckpt.get('task')!r} checkpoint, "
                                 "but --model is 'dfnet'")
            state = ckpt["modules"]["model"]
            args = dict(ckpt.get("args", {}))
        else:
            state = ckpt
            if not isinstance(state, dict) or not any(str(k).startswith("en_0.") for k in state):
                hint = " (it looks like a PIC file)" if isinstance(state, dict) and any(
                    str(k).startswith(("encoder", "generator", "net_")) or ".attn" in str(k) for k in state) else ""
                raise UsageError(f"--checkpoint: {checkpoint} is neither an inpaint-fast checkpoint nor a DFNet "
                                 f"state dict (no 'en_0.*' keys){hint}")
        _load_weights(net, state, "--checkpoint", checkpoint, "DFNet")
    else:
        raise UsageError(f"--model: expected 'pic' or 'dfnet', got {model!r}")
    return net.to(device).eval(), args


def _resize(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)


def _prepare(image: torch.Tensor, mask: torch.Tensor, size: int, *, binary_holes: bool
             ) -> Tuple[torch.Tensor, torch.Tensor]:
    x = _resize(image, (size, size)).clamp(0, 1)
    m = _resize(mask, (size, size)).clamp(0, 1)
    if binary_holes:  # PIC's convention: a pixel touched by a hole is a hole
        m = (m >= 1.0 - 1e-6).to(m.dtype)
    return x, m


@torch.no_grad()
def inpaint_pic(net, image: torch.Tensor, mask: torch.Tensor, *, size: int = 256, samples: int = 1,
                seed: int = 0, deterministic: bool = False) -> torch.Tensor:
    """K PIC completions of one image at its own resolution.

    Args:
        image: (1, 3, H, W) in [0, 1]; mask: (1, 1, H, W), 1 = known; any H, W.
        size: working size (multiple of 32). samples: K. seed: the latent draws' seed.
        deterministic: z = μ of the conditional prior (all K equal).
    Returns: (K, 3, H, W) in [0, 1], known pixels equal to ``image``.
    """
    x, m = _prepare(image, mask, size, binary_holes=True)
    generator = torch.Generator(device=x.device).manual_seed(seed)
    out = net.sample(x, m, samples, generator=generator, deterministic=deterministic)[0]  # (K, 3, S, S)
    up = _resize(out, tuple(image.shape[-2:])).clamp(0, 1)
    return image * mask + up * (1 - mask)


@torch.no_grad()
def inpaint_dfnet(net, image: torch.Tensor, mask: torch.Tensor, *, size: int = 512, bgr: bool = False
                  ) -> Dict[str, torch.Tensor]:
    """DFNet's completion of one image at its own resolution (docs/dfnet.md#inference).

    Args:
        image: (1, 3, H, W) RGB in [0, 1]; mask: (1, 1, H, W), 1 = known (soft values blend).
        size: working size (multiple of 256). bgr: feed the network BGR (the official checkpoints).
    Returns: {"result": composite, "raw": raw completion, "alpha": fusion alpha}, each (1, 3, H, W).
    """
    x, m = _prepare(image, mask, size, binary_holes=False)
    if bgr:
        x = x.flip(1)
    results, alphas, raws = net(x * m, m)
    y, raw = results[0], raws[0]
    if bgr:
        y, raw = y.flip(1), raw.flip(1)
    hw = tuple(image.shape[-2:])
    y = _resize(y, hw).clamp(0, 1)
    return {"result": image * mask + y * (1 - mask), "raw": _resize(raw, hw).clamp(0, 1),
            "alpha": _resize(alphas[0], hw).clamp(0, 1)}


def _read_image(path: str) -> torch.Tensor:
    """--image as (1, 3, H, W)."""
    from inpaint_fast.data import load_image

    if not os.path.isfile(path):
        raise MissingFileError(f"--image: no file at {path!r}")
    try:
        return load_image(path)[None]
    except ValueError as exc:  # Pillow cannot decode it
        raise UsageError(f"--image: {path!r} is not an image Pillow can read ({exc.__cause__ or exc})") from exc


def _read_mask(path: str, *, holes: str, binary: bool) -> torch.Tensor:
    """--mask as (1, 1, h, w), 1 = known."""
    from inpaint_fast.data import load_mask

    if not os.path.isfile(path):
        raise MissingFileError(f"--mask: no file at {path!r}")
    try:
        return load_mask(path, holes=holes, binary=binary)[None]
    except ValueError as exc:  # Pillow cannot decode it
        raise UsageError(f"--mask: {path!r} is not an image Pillow can read ({exc.__cause__ or exc})") from exc


def _fit_mask(mask: torch.Tensor, image: torch.Tensor, *, resize: bool, binary: bool, mask_path: str,
              image_path: str) -> torch.Tensor:
    """The mask at the image's size: as it is, stretched with ``resize`` (re-binarised for PIC:
    the bilinear fringe of a hole becomes hole), or UsageError. A silent stretch would move and
    reshape the holes whenever the aspect ratios differ."""
    (h, w), (mh, mw) = image.shape[-2:], mask.shape[-2:]
    if (mh, mw) == (h, w):
        return mask
    if not resize:
        raise UsageError(f"--mask: {mask_path} is {mw}x{mh} (width x height) but --image {image_path} is {w}x{h}; "
                         "give a mask of the image's size, or pass --resize-mask to stretch it to the image")
    mask = _resize(mask, (h, w)).clamp(0, 1)
    return (mask >= 1.0 - 1e-6).to(mask.dtype) if binary else mask


def _warn_if_mostly_hole(mask: torch.Tensor, path: str, inverted: bool) -> None:
    from inpaint_fast.training.run import hole_fraction_warning

    line = hole_fraction_warning("--mask", f"{path} is", 1.0 - mask.mean().item(), inverted)
    if line:
        print(line, file=sys.stderr)


def _check_out(out: str) -> None:
    """UsageError when --out names a file (checked before any reading or loading)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--out: {out!r} is a file; --out names a folder for the outputs "
                         "(<stem>_out_<i>.png, <stem>_result.png): give a new or existing folder")


def _make_out(out: str) -> None:
    """Create --out (and its parents); UsageError when that is impossible."""
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as exc:  # a parent is a file, no permission, ...
        raise UsageError(f"--out: cannot create the folder {out!r} ({exc.strerror or exc}); give another --out") \
            from exc


def resolved_backend(model: str, device: torch.device, backend: Optional[str],
                     dtype: torch.dtype = torch.float32) -> Optional[str]:
    """The backend whose kernels will run ``model``'s op (``backend``, None = the default, "auto"
    resolved for ``device`` and ``dtype``), or None when the request cannot be served (its error
    comes from :func:`~inpaint_fast.training.run.check_backend` or the op itself)."""
    import inpaint_fast  # noqa: F401 - registers the ops' backends
    from inpaint_fast.backends import BackendError, registry
    from inpaint_fast.training.run import MODEL_OPS

    try:
        return registry(MODEL_OPS[model]).resolve(backend, device, dtype).backend
    except BackendError:
        return None


def check_kernel_limits(model: str, size: Optional[int], device: torch.device, backend: Optional[str], *,
                        batch: int = 1, batch_option: str = "--samples", per_call: int = 1,
                        dtype: torch.dtype = torch.float32) -> None:
    """UsageError, naming the option, when the fused kernels that will run ``model``
    (:func:`resolved_backend`) cannot take ``size`` x ``size`` images (``--size``; None: not
    checked) or ``batch`` x ``per_call`` of them in one call (``batch_option``; PIC's generator
    decodes 2 x --batch images per training step, K samples per image in inference).

    The limits are the kernels' index and launch limits (inpaint_fast/models/sizes.py); checked
    before any network runs, where they would otherwise be an error deep inside the first forward
    (or, where a kernel does not check, a wrong result).
    """
    from inpaint_fast.models.sizes import dfnet_kernel_problem, pic_kernel_problem

    name = resolved_backend(model, device, backend, dtype)
    problem_of = pic_kernel_problem if model == "pic" else dfnet_kernel_problem
    label = "PIC" if model == "pic" else "DFNet"
    if size is not None:
        problem = problem_of(size, size, 1, name)
        if problem:
            raise UsageError(f"--size: {label}: {problem}")
    calls = batch * per_call
    problem = problem_of(size or DEFAULT_SIZES[model], size or DEFAULT_SIZES[model], calls, name)
    if problem:
        how = f" ({per_call} x {batch_option} images in one call)" if per_call > 1 else ""
        raise UsageError(f"{batch_option}: {label}{how}: {problem}")


def _check_options(args) -> torch.device:
    """The device; UsageError for an option that is wrong before any file is read."""
    from inpaint_fast.training.distributed import parse_device
    from inpaint_fast.training.run import check_backend, check_size

    if args.mask_convention is not None:
        raise UsageError("--mask-convention: removed; every mask file now reads white = hole, black = known for "
                         "both models; drop it, and pass --invert-mask for files that mark the known pixels white")
    device = parse_device(args.device)
    if args.backend:
        check_backend(args.backend, args.model, device)
    if args.model == "dfnet" and args.samples != 1:
        raise UsageError("--samples: applies to --model pic only (DFNet is deterministic); leave it out")
    if args.samples < 1:
        raise UsageError(f"--samples: expected 1 or more, got {args.samples}")
    if args.size is not None:
        check_size(args.model, args.size, training=False)
    check_kernel_limits(args.model, args.size, device, args.backend, batch=args.samples)
    _check_out(args.out)
    return device


def _inputs(args) -> Tuple[torch.Tensor, torch.Tensor]:
    """(image (1, 3, H, W), mask (1, 1, H, W), 1 = known) from --image and --mask."""
    binary = args.model == "pic"  # PIC's rule: any pixel touched by a hole is a hole
    image = _read_image(args.image)
    mask = _read_mask(args.mask, holes="black" if args.invert_mask else "white", binary=binary)
    mask = _fit_mask(mask, image, resize=args.resize_mask, binary=binary, mask_path=args.mask, image_path=args.image)
    _warn_if_mostly_hole(mask, args.mask, args.invert_mask)
    return image, mask


def _write(outs: Dict[str, torch.Tensor], folder: str, stem: str) -> List[str]:
    """Save each (3, H, W) output as ``folder/<stem>_<name>.png``; returns the paths."""
    from inpaint_fast.data import save_image

    written = []
    for name, out in outs.items():
        path = os.path.join(folder, f"{stem}_{name}.png")
        save_image(out, path)
        written.append(path)
    return written


def run_inpaint(args) -> List[str]:
    """The ``inpaint-fast inpaint`` command on parsed arguments; returns the files written."""
    from inpaint_fast.training.run import check_size

    device = _check_options(args)
    if args.backend:
        import inpaint_fast

        inpaint_fast.set_backend(args.backend)
    image, mask = _inputs(args)
    net, train_args = load_model(args.model, checkpoint=args.checkpoint, pic_E=args.pic_E, pic_G=args.pic_G,
                                 device=device)
    size = args.size or int(train_args.get("size") or DEFAULT_SIZES[args.model])
    check_size(args.model, size, training=False)
    check_kernel_limits(args.model, size, device, args.backend, batch=args.samples)  # a checkpoint's size too
    image, mask = image.to(device), mask.to(device)
    _make_out(args.out)
    stem = os.path.splitext(os.path.basename(args.image))[0]
    if args.model == "pic":
        outs = inpaint_pic(net, image, mask, size=size, samples=args.samples, seed=args.seed,
                           deterministic=args.deterministic)
        return _write({f"out_{i}": out for i, out in enumerate(outs)}, args.out, stem)
    outs = inpaint_dfnet(net, image, mask, size=size, bgr=args.bgr)
    names = ["result"] + (["raw", "alpha"] if args.save_raw else [])
    return _write({name: outs[name][0] for name in names}, args.out, stem)
