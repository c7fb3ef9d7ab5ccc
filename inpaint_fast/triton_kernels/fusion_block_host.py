"""Host-side preparation for the Triton fusion block: the small torch computations on the
block's parameters and statistics that the launchers of fusion_block.py run around the kernels.

BatchNorm1 is folded into conv1 for the 3×3 taps, the weights are packed in the layouts the
kernels read, and the per-tile statistics rows the kernels write are combined into batch
statistics. All of it works on tensors of at most a few thousand elements, so the folding and
the combination run in float64 and only their results are rounded to the compute dtype.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor


def combine_stats(part: Tensor, k: int, kp: int, stat_dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
    """Per-tile rows (count, mean[kp], M2[kp]) → batch mean and biased variance of the first k
    channels (Chan's formula, fp64)."""
    part = part.double()
    cnt = part[:, :1]
    mean = part[:, 1 : 1 + k]
    m2 = part[:, 1 + kp : 1 + kp + k]
    n = cnt.sum()
    mu = (cnt * mean).sum(0) / n
    var = (m2.sum(0) + (cnt * (mean - mu) ** 2).sum(0)) / n
    return mu.to(stat_dtype), var.to(stat_dtype)


def invstd(var: Tensor, eps: float, ct: torch.dtype) -> Tensor:
    """1 / sqrt(var + eps) in the compute dtype, contiguous."""
    return (1.0 / torch.sqrt(var.to(ct) + eps)).contiguous()


def pack_w1(w1t: Tensor, bias: Tensor) -> Tensor:
    """[W1ᵀ (6, Cm); bias (1, Cm)], twice: (14, Cm). The 3×3 taps read the copy t % 2."""
    return torch.cat([w1t, bias[None]], dim=0).repeat(2, 1).contiguous()


def fold_bn1(w1: Tensor, b1: Tensor, g1: Tensor, be1: Tensor, mean1: Tensor, is1: Tensor, ct: torch.dtype) -> Tensor:
    """conv1 with BN1 folded in, for the 3×3 taps: y1 = W1f·[Xk, R] + b1f = γ·(W1·in + b1 − μ)·invstd + β.
    Returned packed (pack_w1), in the compute dtype."""
    d = torch.float64
    scale = g1.to(d) * is1.to(d)
    w1f = w1.reshape(-1, 6).to(d) * scale[:, None]
    return pack_w1(w1f.t().to(ct), ((b1.to(d) - mean1.to(d)) * scale + be1.to(d)).to(ct))


def w2_taps(w2: Tensor, ct: torch.dtype) -> Tensor:
    """W2 (A, Cm, 3, 3) as (A, 9, Cm), contiguous, in the compute dtype: Cm contiguous per tap."""
    return w2.reshape(w2.shape[0], w2.shape[1], 9).permute(0, 2, 1).to(ct).contiguous()
