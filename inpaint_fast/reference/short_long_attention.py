"""Reference short+long-range attention (PIC's ``Auto_Attn`` core), in plain PyTorch.

This is the specification every fused backend is tested against (docs/short_long_attention.md#forward;
numerics: docs/short_long_attention.md#numerics). It materialises the N×N attention map, exactly as the
original does, so it is meant for parity tests, gradcheck and small inputs.

Math, with N = H·W positions flattened row-major:

    E  = scale · qᵀ q                       (B, N, N), symmetric; the original has no 1/√d
    A  = softmax(E, over keys j)            rows sum to 1; keys are never masked
    y  = gamma · (x Aᵀ) + x                 (B, C, H, W)
    cf = alpha · (1 − mask) · (pre Aᵀ) + mask · pre          (B, Cp, H, W), only with ``pre``
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

__all__ = ["short_long_attention", "attention_map"]


def attention_map(q: Tensor, scale: float = 1.0) -> Tensor:
    """The attention map A = softmax(scale · qᵀq) of shape (B, N, N), for visualisation.

    Args:
        q: (B, Cq, H, W) query (= key) features.
        scale: multiplier of the energies (1.0 in PIC).

    Returns:
        (B, N, N) tensor in q's dtype (computed in float32 at least); row i is the distribution
        of query position i over all key positions.
    """
    B, Cq = q.shape[:2]
    qf = q.reshape(B, Cq, -1)
    compute_dtype = torch.promote_types(q.dtype, torch.float32)
    energy = torch.bmm(qf.transpose(1, 2).to(compute_dtype), qf.to(compute_dtype)) * scale
    return torch.softmax(energy, dim=-1).to(q.dtype)


def short_long_attention(
    q: Tensor,
    x: Tensor,
    gamma: Tensor,
    pre: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    alpha: Optional[Tensor] = None,
    scale: float = 1.0,
) -> Tuple[Tensor, Optional[Tensor]]:
    """Reference forward of the short+long-range attention; differentiable with autograd.

    Args:
        q: (B, Cq, H, W) query and key features (PIC: ``query_conv(x)``).
        x: (B, C, H, W) decoder features: the value of the self term and its residual.
        gamma: one-element tensor, gate of the self term.
        pre: (B, Cp, H, W) encoder features, the value of the long-range term, or None.
        mask: (B, 1, H, W), 1 = visible, 0 = hole, fractional allowed; required with ``pre``.
        alpha: one-element tensor, gate of the long-range term; required with ``pre``.
        scale: multiplier of the energies qᵀq (1.0 in PIC).

    Returns:
        ``(y, cf)``: y (B, C, H, W); cf (B, Cp, H, W), or None when ``pre`` is None.
        Half-precision inputs are computed in float32 and returned in the input dtype.
    """
    B, C, H, W = x.shape
    N = H * W
    compute_dtype = torch.promote_types(x.dtype, torch.float32)
    attn = attention_map(q.to(compute_dtype), scale)  # (B, N, N)
    xf = x.reshape(B, C, N).to(compute_dtype)
    sa = torch.bmm(xf, attn.transpose(1, 2)).reshape(B, C, H, W)
    y = gamma.reshape(()).to(compute_dtype) * sa + x.to(compute_dtype)
    if pre is None:
        return y.to(x.dtype), None
    Cp = pre.shape[1]
    pf = pre.reshape(B, Cp, N).to(compute_dtype)
    ca = torch.bmm(pf, attn.transpose(1, 2)).reshape(B, Cp, H, W)
    m = mask.to(compute_dtype)
    cf = alpha.reshape(()).to(compute_dtype) * (1 - m) * ca + m * pre.to(compute_dtype)
    return y.to(x.dtype), cf.to(pre.dtype)
