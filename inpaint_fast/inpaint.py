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
  **BGR** images (dfnet.md §0): pass ``--bgr`` with them. The CelebA one works at 256 (``--size 256``).

Mask files: ``--mask-convention dfnet`` = white (255) known, black hole, soft values kept;
``pic`` = exactly black known, anything else hole (PIC's files: white holes on black).
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ["DEFAULT_SIZES", "inpaint_dfnet", "inpaint_pic", "load_model", "run_inpaint"]

DEFAULT_SIZES = {"pic": 256, "dfnet": 512}


def _load_file(path: str, what: str) -> Any:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what}: no file at {path!r}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise ValueError(f"{what}: could not read {path!r} as a PyTorch checkpoint ({exc})") from exc


def _our_checkpoint(obj: Any) -> bool:
    from inpaint_fast.training.checkpoint import CHECKPOINT_FORMAT

    return isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT


def load_model(model: str, *, checkpoint: Optional[str] = None, pic_E: Optional[str] = None,
               pic_G: Optional[str] = None, device: Any = "cpu") -> Tuple[torch.nn.Module, Dict[str, Any]]:
    """Build PIC or DFNet, load its weights, move to ``device``, set eval mode.

    Returns ``(network, training_args)``; ``training_args`` is the ``args`` dict recorded in one
    of our checkpoints ({} for official files). Raises FileNotFoundError / ValueError naming the
    option at fault: no checkpoint given, a checkpoint of the other model, an unreadable file.
    """
    args: Dict[str, Any] = {}
    if model == "pic":
        from inpaint_fast.models.pic import PIC, load_pic_checkpoints

        net = PIC()
        if checkpoint:
            if pic_E or pic_G:
                raise ValueError("give either --checkpoint or --pic-E/--pic-G, not both")
            ckpt = _load_file(checkpoint, "--checkpoint")
            if not _our_checkpoint(ckpt):
                raise ValueError(f"--checkpoint: {checkpoint} is not an inpaint-fast training checkpoint; for PIC's "
                                 "official files use --pic-E <iter>_net_E.pth --pic-G <iter>_net_G.pth")
            if ckpt.get("task") != "pic":
                raise ValueError(f"--checkpoint: {checkpoint} is a {ckpt.get('task')!r} checkpoint, "
                                 "but --model is 'pic'")
            net.load_state_dict(ckpt["modules"]["model"])
            args = dict(ckpt.get("args", {}))
        elif pic_E and pic_G:
            for option, path in (("--pic-E", pic_E), ("--pic-G", pic_G)):
                if not os.path.isfile(path):
                    raise FileNotFoundError(f"{option}: no file at {path!r}")
            load_pic_checkpoints(net, E=pic_E, G=pic_G)
        else:
            raise ValueError("--model pic needs --checkpoint PATH (from inpaint-fast train) or both --pic-E and "
                             "--pic-G (PIC's official <iter>_net_E.pth and <iter>_net_G.pth)")
    elif model == "dfnet":
        from inpaint_fast.models.dfnet import DFNet

        if pic_E or pic_G:
            raise ValueError("--pic-E/--pic-G apply to --model pic only")
        if not checkpoint:
            raise ValueError("--model dfnet needs --checkpoint PATH (from inpaint-fast train, or an official "
                             "DFNet state dict such as model_places2.pth)")
        net = DFNet()
        ckpt = _load_file(checkpoint, "--checkpoint")
        if _our_checkpoint(ckpt):
            if ckpt.get("task") != "dfnet":
                raise ValueError(f"--checkpoint: {checkpoint} is a {ckpt.get('task')!r} checkpoint, "
                                 "but --model is 'dfnet'")
            state = ckpt["modules"]["model"]
            args = dict(ckpt.get("args", {}))
        else:
            state = ckpt
            if not isinstance(state, dict) or not any(str(k).startswith("en_0.") for k in state):
                hint = " (it looks like a PIC file)" if isinstance(state, dict) and any(
                    str(k).startswith(("encoder", "generator", "net_")) or ".attn" in str(k) for k in state) else ""
                raise ValueError(f"--checkpoint: {checkpoint} is neither an inpaint-fast checkpoint nor a DFNet "
                                 f"state dict (no 'en_0.*' keys){hint}")
        net.load_state_dict(state)
    else:
        raise ValueError(f"--model: expected 'pic' or 'dfnet', got {model!r}")
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
    """DFNet's completion of one image at its own resolution (dfnet.md §3.3).

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


def _load_inputs(image_path: str, mask_path: str, convention: str) -> Tuple[torch.Tensor, torch.Tensor]:
    from inpaint_fast.data import load_image, load_mask

    for option, path in (("--image", image_path), ("--mask", mask_path)):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{option}: no file at {path!r}")
    image = load_image(image_path)[None]
    mask = load_mask(mask_path, convention=convention)[None]
    if mask.shape[-2:] != image.shape[-2:]:
        mask = _resize(mask, tuple(image.shape[-2:])).clamp(0, 1)
        if convention == "pic":
            mask = (mask >= 1.0 - 1e-6).to(mask.dtype)
    return image, mask


def run_inpaint(args) -> List[str]:
    """The ``inpaint-fast inpaint`` command on parsed arguments; returns the files written."""
    from inpaint_fast.data import save_image
    from inpaint_fast.training.run import check_size

    if args.backend:
        import inpaint_fast

        inpaint_fast.set_backend(args.backend)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda, but torch.cuda.is_available() is False")
    if args.model == "dfnet" and args.samples != 1:
        raise ValueError("--samples applies to --model pic only (DFNet is deterministic)")
    if args.samples < 1:
        raise ValueError(f"--samples: expected >= 1, got {args.samples}")
    convention = args.mask_convention or args.model
    image, mask = _load_inputs(args.image, args.mask, convention)
    net, train_args = load_model(args.model, checkpoint=args.checkpoint, pic_E=args.pic_E, pic_G=args.pic_G,
                                 device=device)
    size = args.size or int(train_args.get("size") or DEFAULT_SIZES[args.model])
    check_size(args.model, size, training=False)
    image, mask = image.to(device), mask.to(device)
    stem = os.path.splitext(os.path.basename(args.image))[0]
    os.makedirs(args.out, exist_ok=True)
    written = []
    if args.model == "pic":
        outs = inpaint_pic(net, image, mask, size=size, samples=args.samples, seed=args.seed,
                           deterministic=args.deterministic)
        for i, out in enumerate(outs):
            path = os.path.join(args.out, f"{stem}_out_{i}.png")
            save_image(out, path)
            written.append(path)
    else:
        outs = inpaint_dfnet(net, image, mask, size=size, bgr=args.bgr)
        names = ["result"] + (["raw", "alpha"] if args.save_raw else [])
        for name in names:
            path = os.path.join(args.out, f"{stem}_{name}.png")
            save_image(outs[name][0], path)
            written.append(path)
    return written
