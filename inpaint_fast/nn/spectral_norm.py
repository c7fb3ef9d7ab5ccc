"""Spectral-normalised convolution with the behaviour of PIC's ``SpectralNorm`` wrapper.

PIC (docs/pic.md#spectral-norm) wraps every convolution except ``Auto_Attn.query_conv`` in
its own spectral norm, which differs from ``torch.nn.utils.spectral_norm`` in ways that change
the numbers a checkpoint produces:

* **one power iteration on every forward, in training and in eval alike** (``torch``'s variant
  stops updating in eval), so repeated calls are not idempotent;
* the 2-D view is ``W.view(out_channels, -1)`` and ``l2normalize(v) = v / (‖v‖ + 1e-12)``
  (``torch`` uses ``max(‖v‖, eps)``);
* ``σ = uᵀ W v`` carries gradient through ``W`` only; the ``u``/``v`` update does not;
* the effective weight is ``W / σ``.

PIC applies the same wrapper to ``ConvTranspose2d`` (its decoder blocks). The wrapper always takes
``W.view(W.shape[0], -1)``, and a transposed conv's weight is ``(C_in, C_out, kH, kW)``, so there
the 2-D view has **C_in rows** (``torch.nn.utils.spectral_norm`` uses ``dim=1`` = C_out for
transposed convs instead). :class:`SpectralNormConvTranspose2d` reproduces PIC's choice.

Parameterisation (the state dict of both classes)::

    weight_bar  W, PyTorch's weight shape  Parameter  the raw weight (PIC's name, kept so that
                                                     checkpoints map one-to-one):
                                                     (C_out, C_in, kH, kW) for Conv2d,
                                                     (C_in, C_out, kH, kW) for ConvTranspose2d
    bias        (C_out,)                   Parameter
    weight_u    (W.shape[0],)              buffer     left singular-vector estimate, unit norm
    weight_v    (W[0].numel(),)            buffer     right singular-vector estimate, unit norm

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

__all__ = ["SpectralNormConv2d", "SpectralNormConvTranspose2d", "l2normalize"]

# PIC's l2normalize epsilon: added to the norm, not clamped (a zero vector stays zero).
L2_EPS = 1e-12


def l2normalize(v: Tensor, eps: float = L2_EPS) -> Tensor:
    """PIC's ``v / (‖v‖ + eps)`` for a vector ``v`` of shape (n,)."""
    return v / (v.norm() + eps)


class _SpectralNormBase(nn.Module):
    """What both spectral-normed convs share: ``weight_bar``/``bias``/``weight_u``/``weight_v``,
    PIC's power iteration on ``W.view(W.shape[0], -1)`` and σ. Subclasses only say which conv
    they are (:meth:`_conv`)."""

    def _init_from(self, conv: nn.Module) -> None:
        """Take ``conv``'s default-initialised weight and bias, then draw u, v (in that RNG order)."""
        self.weight_bar = nn.Parameter(conv.weight.detach().clone())
        self.bias = nn.Parameter(conv.bias.detach().clone()) if conv.bias is not None else None
        w = self.weight_bar
        height = w.shape[0]  # PIC's choice for every conv type: dim 0 of PyTorch's weight layout
        width = w[0].numel()
        self.register_buffer("weight_u", l2normalize(w.new_empty(height).normal_(0, 1)))
        self.register_buffer("weight_v", l2normalize(w.new_empty(width).normal_(0, 1)))

    def _matrix(self) -> Tensor:
        return self.weight_bar.view(self.weight_bar.shape[0], -1)

    @torch.no_grad()
    def power_iteration(self) -> None:
        """One power iteration on ``W.view(W.shape[0], -1)``, updating ``weight_u``/``weight_v`` in place.

        ``v ← l2normalize(Wᵀ u)``, then ``u ← l2normalize(W v)`` (the standard order, as in
        ``torch.nn.utils.spectral_norm``).
        """
        w = self._matrix()
        self.weight_v.copy_(l2normalize(torch.mv(w.t(), self.weight_u)))
        self.weight_u.copy_(l2normalize(torch.mv(w, self.weight_v)))

    def sigma(self) -> Tensor:
        """σ = uᵀ W v as a 0-dim tensor, differentiable w.r.t. ``weight_bar`` only (no update)."""
        w = self._matrix()
        # Clones: the graph must keep *this* call's u, v; the next forward updates the buffers in
        # place, which would otherwise break (or silently change) a pending backward.
        u = self.weight_u.clone()
        v = self.weight_v.clone()
        return torch.dot(u, torch.mv(w, v))

    def effective_weight(self) -> Tensor:
        """W / σ in ``weight_bar``'s shape, without updating u, v."""
        return self.weight_bar / self.sigma()

    def _conv(self, x: Tensor, weight: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C_in, H, W) → (B, C_out, H', W'); updates u, v once, then convolves with W/σ."""
        self.power_iteration()
        return self._conv(x, self.effective_weight())


class SpectralNormConv2d(_SpectralNormBase):
    """``Conv2d`` whose effective weight is ``W / σ(W)``, σ estimated as PIC does.

    Args:
        in_channels: C_in.
        out_channels: C_out.
        kernel_size: kH = kW (int) or (kH, kW).
        padding: zero padding, as ``nn.Conv2d``'s (PIC: 1 for 3x3, 0 for 1x1).
        bias: whether the conv has a bias (PIC's always do).

    Initialisation is PyTorch's default ``nn.Conv2d`` init (uniform ±1/√fan_in for weight and
    bias), which is what PIC's spectral-normed convs keep (docs/pic.md#spectral-norm, "Initialisation"); ``u`` and
    ``v`` start as normalised standard-normal vectors. The 2-D view is (C_out, C_in·kH·kW).

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
        self._init_from(conv)

    def _conv(self, x: Tensor, weight: Tensor) -> Tensor:
        return F.conv2d(x, weight, self.bias, padding=self.padding)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"padding={self.padding}, bias={self.bias is not None}, power_iterations=1 (every forward)"
        )


class SpectralNormConvTranspose2d(_SpectralNormBase):
    """``ConvTranspose2d`` with PIC's spectral norm: σ of the (C_in, C_out·kH·kW) view.

    Args:
        in_channels: C_in.
        out_channels: C_out.
        kernel_size: kH = kW (int) or (kH, kW).
        stride, padding, output_padding: as ``nn.ConvTranspose2d``'s (PIC's decoder: 2, 1, 1, which
            maps H → 2H for a 3x3 kernel).
        bias: whether the conv has a bias (PIC's always do).

    ``weight_bar`` is (C_in, C_out, kH, kW), PyTorch's transposed-conv layout, and PIC's wrapper
    views it as ``W.view(C_in, -1)`` (docs/pic.md#spectral-norm), so ``weight_u`` has C_in entries and
    ``weight_v`` C_out·kH·kW. That is the transpose of what ``torch.nn.utils.spectral_norm``
    (``dim=1``) estimates; both matrices have the same largest singular value, but one power
    iteration from the stored u/v gives a different σ, so the choice matters for checkpoints.
    Initial values: PyTorch's default ``nn.ConvTranspose2d`` init, as PIC keeps.

    Forward: x (B, C_in, H, W) → (B, C_out, (H−1)·s − 2p + kH + output_padding, ...), one power
    iteration per call in training and eval.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Union[int, Tuple[int, int]],
        stride: Union[int, Tuple[int, int]] = 1,
        padding: Union[int, Tuple[int, int]] = 0,
        output_padding: Union[int, Tuple[int, int]] = 0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        conv = nn.ConvTranspose2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding,
            output_padding=output_padding, bias=bias,
        )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = conv.kernel_size
        self.stride = conv.stride
        self.padding = conv.padding
        self.output_padding = conv.output_padding
        self._init_from(conv)

    def _conv(self, x: Tensor, weight: Tensor) -> Tensor:
        return F.conv_transpose2d(
            x, weight, self.bias, stride=self.stride, padding=self.padding, output_padding=self.output_padding
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, output_padding={self.output_padding}, bias={self.bias is not None}, "
            f"power_iterations=1 (every forward)"
        )
