"""VGG16's first three blocks (pool1, pool2, pool3), frozen, for DFNet's perceptual and style loss.

DFNet's loss (docs/dfnet.md#loss) uses torchvision's ImageNet ``vgg16`` on raw [0, 1]
input (no mean/std normalisation) and takes the outputs of its first three **max-pool** layers.
:class:`VGG16Features` holds exactly the layers that needs, ``features[0:17]`` of torchvision's
layout, under torchvision's indices, so a torchvision state dict loads key for key::

    index  0  2     5  7     10 12 14      (convs 3x3, pad 1, each followed by a ReLU)
    index  4  9  16                        (max-pool 2x2, stride 2)
    pool1 = features[0:5]   (B, 64, H/2, W/2)
    pool2 = features[5:10]  (B, 128, H/4, W/4)
    pool3 = features[10:17] (B, 256, H/8, W/8)

Nothing here downloads: :func:`load_vgg16_features` reads a file the user provides.
"""

from __future__ import annotations

import os
from typing import List, Mapping, Tuple

import torch
from torch import Tensor, nn

__all__ = ["VGG16_FILE_HELP", "VGG16Features", "load_vgg16_features"]

# (in, out) channels of the convs of torchvision's vgg16 ("D") up to pool3, with "M" = max-pool.
_VGG16_UP_TO_POOL3 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M")
# End (exclusive) of each returned slice of `features`: pool1, pool2, pool3.
_POOL_ENDS = (5, 10, 17)

VGG16_FILE_HELP = (
    "Expected torchvision's VGG16 ImageNet weights saved with torch.save as a plain state dict "
    "(torchvision's file is vgg16-397923af.pth) whose keys read 'features.<i>.weight' / "
    "'features.<i>.bias' (e.g. features.0.weight of shape (64, 3, 3, 3)); 'classifier.*' keys and "
    "features beyond index 16 may be present and are ignored. To obtain it on a machine with "
    "internet access: download https://download.pytorch.org/models/vgg16-397923af.pth, or run "
    "python -c \"import torch, torchvision; torch.save(torchvision.models.vgg16(weights='IMAGENET1K_V1')"
    ".state_dict(), 'vgg16-397923af.pth')\", then copy the file here. inpaint_fast never downloads it."
)


def _build_features() -> nn.Sequential:
    """torchvision's ``vgg16().features[0:17]``: same modules at the same indices."""
    layers: List[nn.Module] = []
    c_in = 3
    for item in _VGG16_UP_TO_POOL3:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(c_in, int(item), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            c_in = int(item)
    return nn.Sequential(*layers)


class VGG16Features(nn.Module):
    """Frozen VGG16 up to pool3, returning the three max-pool outputs.

    Weights start at PyTorch's default init (useful only in tests); load real ones with
    :func:`load_vgg16_features`. Every parameter has ``requires_grad=False`` and the module stays
    in eval mode even when a parent calls ``.train()`` (it has no BN/dropout, so this only keeps
    ``.training`` honest). Gradients still flow through it to its input, as DFNet's loss needs.

    Forward:
        x: (B, 3, H, W), DFNet feeds [0, 1] RGB/BGR values with no normalisation. H, W ≥ 8 for a
           non-empty pool3 (odd sizes floor, as nn.MaxPool2d does).

    Returns:
        ``(pool1, pool2, pool3)``: (B, 64, H/2, W/2), (B, 128, H/4, W/4), (B, 256, H/8, W/8).
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = _build_features()
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "VGG16Features":
        # Frozen feature extractor: ignore the requested mode.
        return super().train(False)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != 3:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"VGG16Features: x must be (B, 3, H, W), got {got}")
        outs = []
        start = 0
        for end in _POOL_ENDS:
            x = self.features[start:end](x)
            outs.append(x)
            start = end
        return outs[0], outs[1], outs[2]


def _read_state_dict(path: "str | os.PathLike") -> Mapping[str, Tensor]:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_vgg16_features: no file at {path!r}. {VGG16_FILE_HELP}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types; name the file and the format
        raise ValueError(f"load_vgg16_features: could not read {path!r} as a tensor state dict ({exc}). "
                         f"{VGG16_FILE_HELP}") from exc
    if not isinstance(state, Mapping):
        raise ValueError(f"load_vgg16_features: {path!r} holds a {type(state).__name__}, not a state dict. "
                         f"{VGG16_FILE_HELP}")
    return state


def _describe(value: object) -> str:
    return str(tuple(value.shape)) if isinstance(value, Tensor) else f"a {type(value).__name__}"


def load_vgg16_features(path: "str | os.PathLike") -> VGG16Features:
    """Build a :class:`VGG16Features` from torchvision's VGG16 state dict saved at ``path``.

    Args:
        path: a ``torch.save``'d torchvision vgg16 state dict (keys ``features.<i>.weight``/``bias``;
            other keys are ignored). See :data:`VGG16_FILE_HELP`.

    Returns:
        The frozen module in eval mode, on the CPU (move it with ``.to(device)``).

    Raises:
        FileNotFoundError: no file at ``path`` (the message says which file is expected and how to
            obtain it).
        ValueError: the file is not a state dict, or lacks a needed key, or a key has the wrong shape.
    """
    state = _read_state_dict(path)
    model = VGG16Features()
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise ValueError(f"load_vgg16_features: {os.fspath(path)!r} lacks {len(missing)} needed key(s): "
                         f"{', '.join(missing)}. {VGG16_FILE_HELP}")
    wrong = [f"{k}: {_describe(state[k])}, expected {tuple(v.shape)}"
             for k, v in own.items() if not isinstance(state[k], Tensor) or state[k].shape != v.shape]
    if wrong:
        raise ValueError(f"load_vgg16_features: {os.fspath(path)!r} has mis-shaped key(s): {'; '.join(wrong)}. "
                         "Is this VGG16 (not VGG16-BN or VGG19)? " + VGG16_FILE_HELP)
    model.load_state_dict({k: state[k].float() for k in own}, strict=True)
    return model
