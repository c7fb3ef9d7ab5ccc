"""Spectral-normalised convolution with the behaviour of PIC's ``SpectralNorm`` wrapper.

PIC (shared/reference/pic.md §3.1) wraps every convolution except ``Auto_Attn.query_conv`` in
its own spectral norm, which differs from ``torch.nn.utils.spectral_norm`` in ways that change
the numbers a checkpoint produces:

* **one power iteration on every forward, in training and in eval alike** (``torch``'s variant
  stops updating in eval), so repeated calls are not idempotent;
* the 2-D view is ``W.view(out_channels, -1)`` and ``l2normalize(v) = v / (‖v‖ + 1e-12)``
  (``torch`` uses ``max(‖v‖, eps)``);
* ``σ = uᵀ W v`` carries gradient through ``W`` only; the ``u``/``v`` update does not;
* the effective weight is ``W / σ``.

Parameterisation (the state dict of :class:`SpectralNormConv2d`)::

    weight_bar  (C_out, C_in, kH, kW)   Parameter  the raw weight W (PIC's name, kept so that
                                                   checkpoints map one-to-one)
    bias        (C_out,)                Parameter
    weight_u    (C_out,)                buffer     left singular-vector estimate, unit norm
    weight_v    (C_in·kH·kW,)           buffer     right singular-vector estimate, unit norm

PIC stores ``weight_u``/``weight_v`` as ``requires_grad=False`` Parameters; here they are buffers,
so ``module.parameters()`` (and hence an optimiser) sees only what is trained, while the state-dict
names and shapes stay those of PIC (minus PIC's ``.module.`` level, see
:func:`inpaint_fast.nn.convert_auto_attn_state_dict`).
"""

from __future__ import annotations

from typing import Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SpectralNormConv2d", "l2normalize"]

# PIC's l2normalize epsilon: added to the norm, not clamped (a zero vector stays zero).
L2_EPS = 1e-12


def l2normalize(v: Tensor, eps: float = L2_EPS) -> Tensor:
    """PIC's ``v / (‖v‖ + eps)`` for a vector ``v`` of shape (n,)."""
    return v / (v.norm() + eps)


class SpectralNormConv2d(nn.Module):
    """``Conv2d`` whose effective weight is ``W / σ(W)``, σ estimated as PIC does.

    Args:
        in_channels: C_in.
        out_channels: C_out.
        kernel_size: kH = kW (int) or (kH, kW).
        padding: zero padding, as ``nn.Conv2d``'s (PIC: 1 for 3x3, 0 for 1x1).
        bias: whether the conv has a bias (PIC's always do).

    Initialisation is PyTorch's default ``nn.Conv2d`` init (uniform ±1/√fan_in for weight and
    bias), which is what PIC's spectral-normed convs keep (pic.md §3.1 "init caveat"); ``u`` and
    ``v`` start as normalised standard-normal vectors.

    Forward: x (B, C_in, H, W) → (B, C_out, H', W'). Each call, training or eval, first updates
    ``weight_u``/``weight_v`` in place by one power iteration (no gradient), then convolves with
    ``weight_bar / σ``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Union[int, Tuple[int, int]],
        padding: Union[int, Tuple[int, int]] = 0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        # Build a throw-away nn.Conv2d so the initial values are exactly PyTorch's default init.
        conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, bias=bias)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = conv.kernel_size
        self.padding = conv.padding
        self.weight_bar = nn.Parameter(conv.weight.detach().clone())
        self.bias = nn.Parameter(conv.bias.detach().clone()) if bias else None
        height = out_channels
        width = conv.weight[0].numel()
        w = self.weight_bar
        self.register_buffer("weight_u", l2normalize(w.new_empty(height).normal_(0, 1)))
        self.register_buffer("weight_v", l2normalize(w.new_empty(width).normal_(0, 1)))

    @torch.no_grad()
    def power_iteration(self) -> None:
        """One power iteration on ``W.view(C_out, -1)``, updating ``weight_u``/``weight_v`` in place.

        ``v ← l2normalize(Wᵀ u)``, then ``u ← l2normalize(W v)`` (the standard order, as in
        ``torch.nn.utils.spectral_norm``).
        """
        w = self.weight_bar.view(self.out_channels, -1)
        self.weight_v.copy_(l2normalize(torch.mv(w.t(), self.weight_u)))
        self.weight_u.copy_(l2normalize(torch.mv(w, self.weight_v)))

    def sigma(self) -> Tensor:
        """σ = uᵀ W v as a 0-dim tensor, differentiable w.r.t. ``weight_bar`` only (no update)."""
        w = self.weight_bar.view(self.out_channels, -1)
        # Clones: the graph must keep *this* call's u, v; the next forward updates the buffers in
        # place, which would otherwise break (or silently change) a pending backward.
        u = self.weight_u.clone()
        v = self.weight_v.clone()
        return torch.dot(u, torch.mv(w, v))

    def effective_weight(self) -> Tensor:
        """W / σ of shape (C_out, C_in, kH, kW), without updating u, v."""
        return self.weight_bar / self.sigma()

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C_in, H, W) → (B, C_out, H', W'); updates u, v once, then convolves with W/σ."""
        self.power_iteration()
        return F.conv2d(x, self.effective_weight(), self.bias, padding=self.padding)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"padding={self.padding}, bias={self.bias is not None}, power_iterations=1 (every forward)"
        )
