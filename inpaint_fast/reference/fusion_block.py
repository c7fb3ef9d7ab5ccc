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

__all__ = ["fusion_block", "resize_like"]

LEAKY_SLOPE = 0.2


def resize_like(image: Tensor, size: Tuple[int, int]) -> Tensor:
    """DFNet's ``resize_like``: bilinear, align_corners=False, no antialias."""
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False)


def fusion_block(
    feat: Tensor,
    image: Tensor,
    map_weight: Tensor,
    map_bias: Tensor,
    conv1_weight: Tensor,
    conv1_bias: Tensor,
    bn1_weight: Tensor,
    bn1_bias: Tensor,
    bn1_running_mean: Tensor,
    bn1_running_var: Tensor,
    conv2_weight: Tensor,
    conv2_bias: Tensor,
    bn2_weight: Tensor,
    bn2_bias: Tensor,
    bn2_running_mean: Tensor,
    bn2_running_var: Tensor,
    conv3_weight: Tensor,
    conv3_bias: Tensor,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Reference forward of the fusion block; differentiable with autograd.

    Args:
        feat: (B, c, h, w) decoder feature F_k.
        image: (B, 3, H, W) image with holes at full resolution.
        map_weight, map_bias: (3, c, 1, 1), (3,) — ``map2img.0.conv``.
        conv1_weight, conv1_bias: (Cm, 6, 1, 1), (Cm,) — ``blend.blend.0.conv`` (Cm = 32).
        bn1_*: (Cm,) — ``blend.blend.1`` (weight, bias, running_mean, running_var).
        conv2_weight, conv2_bias: (A, Cm, 3, 3), (A,) — ``blend.blend.3.conv`` (A = c_alpha).
        bn2_*: (A,) — ``blend.blend.4``.
        conv3_weight, conv3_bias: (A, A, 1, 1), (A,) — ``blend.blend.6.conv``.
        training: batch statistics (and running-stat updates, in place) if True.
        momentum, eps: BatchNorm's.

    Returns:
        ``(out, alpha, raw)``: Y (B, 3, h, w), α (B, A, h, w), R (B, 3, h, w).
    """
    x_k = resize_like(image, feat.shape[-2:])
    raw = torch.sigmoid(F.conv2d(feat, map_weight, map_bias))
    z = torch.cat([x_k, raw], dim=1)
    h = F.conv2d(z, conv1_weight, conv1_bias)
    h = F.batch_norm(h, bn1_running_mean, bn1_running_var, bn1_weight, bn1_bias, training, momentum, eps)
    h = F.leaky_relu(h, LEAKY_SLOPE)
    h = F.conv2d(h, conv2_weight, conv2_bias, padding=1)
    h = F.batch_norm(h, bn2_running_mean, bn2_running_var, bn2_weight, bn2_bias, training, momentum, eps)
    h = F.leaky_relu(h, LEAKY_SLOPE)
    alpha = torch.sigmoid(F.conv2d(h, conv3_weight, conv3_bias))
    out = alpha * raw + (1 - alpha) * x_k
    return out, alpha, raw
