"""Reference fusion block (DFNet), in plain PyTorch.

The specification every fused backend is tested against (docs/fusion_block.md):

    X_k = bilinear_resize(image → h×w, align_corners=False)                  (B, 3, h, w)
    R   = sigmoid(conv1x1_{c→3}(F))                                            raw completion
    α   = sigmoid(conv1x1_{A→A}(lrelu0.2(BN2(conv3x3_{Cm→A}(lrelu0.2(BN1(conv1x1_{6→Cm}([X_k, R]))))))))
    Y   = α · R + (1 − α) · X_k
    return (Y, α, R)

BatchNorm is PyTorch's: batch statistics (biased variance) in training, with the running stats
updated in place (unbiased variance, ``momentum``), running statistics in eval.
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..fusion_block_params import FusionBlockParams

__all__ = ["fusion_block", "resize_like"]

LEAKY_SLOPE = 0.2


def resize_like(image: Tensor, size: Tuple[int, int]) -> Tensor:
    """DFNet's ``resize_like``: bilinear, align_corners=False, no antialias."""
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False)


def fusion_block(
    feat: Tensor,
    image: Tensor,
    params: FusionBlockParams,
    *,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Reference forward of the fusion block; differentiable with autograd.

    Args:
        feat: (B, c, h, w) decoder feature F_k.
        image: (B, 3, H, W) image with holes at full resolution.
        params: the block's weights and BatchNorm tensors (:class:`inpaint_fast.FusionBlockParams`:
            DFNet's ``map2img.0.conv`` and ``blend.blend.{0,1,3,4,6}``, Cm = 32, A = c_alpha).
        training: batch statistics (and running-stat updates, in place) if True.
        momentum, eps: BatchNorm's.

    Returns:
        ``(out, alpha, raw)``: Y (B, 3, h, w), α (B, A, h, w), R (B, 3, h, w).
    """
    p = params
    x_k = resize_like(image, feat.shape[-2:])
    raw = torch.sigmoid(F.conv2d(feat, p.map_weight, p.map_bias))
    z = torch.cat([x_k, raw], dim=1)
    h = F.conv2d(z, p.conv1_weight, p.conv1_bias)
    h = F.batch_norm(h, p.bn1_running_mean, p.bn1_running_var, p.bn1_weight, p.bn1_bias, training, momentum, eps)
    h = F.leaky_relu(h, LEAKY_SLOPE)
    h = F.conv2d(h, p.conv2_weight, p.conv2_bias, padding=1)
    h = F.batch_norm(h, p.bn2_running_mean, p.bn2_running_var, p.bn2_weight, p.bn2_bias, training, momentum, eps)
    h = F.leaky_relu(h, LEAKY_SLOPE)
    alpha = torch.sigmoid(F.conv2d(h, p.conv3_weight, p.conv3_bias))
    out = alpha * raw + (1 - alpha) * x_k
    return out, alpha, raw
