"""short_long_attention: PIC's short+long-range attention as a custom op.

One file per op, in the same order everywhere: input checks → the compiled op's fake kernel and
autograd → the backend implementations → the public function.

The compiled op ``inpaint_fast::short_long_attention_fwd/_bwd`` (schemas in inpaint_fast/ops/schemas.inc,
kernels in csrc/cpu/ and csrc/cuda/) returns the un-gated attention outputs ``sa = x Aᵀ`` and
``ca = pre Aᵀ`` and the row log-sum-exp next to ``y`` and ``cf``: PIC starts ``gamma`` and
``alpha`` at 0, so the backward could not recover them from ``y`` and ``cf``; keeping them costs
O(N·C), while the N×N map is never stored.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import reference
from ._autocast import autocast_dtype
from ..dtypes import accumulate_dtype
from ._registration import register_backends
from ._validation import (
    check_same_device,
    check_same_dtype,
    check_scalar,
    check_shape,
    check_tensor,
    check_values,
)

__all__ = ["short_long_attention"]

OP = "short_long_attention"


# ---------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------
def _validate(q, x, gamma, pre, mask, alpha, scale, *, values: bool = True) -> None:
    """Every check of a call; ``values=False`` leaves out the data checks (no device sync)."""
    check_tensor(OP, "x", x, 4, "(B, C, H, W)")
    B, C, H, W = x.shape
    check_tensor(OP, "q", q, 4, "(B, Cq, H, W)")
    check_shape(OP, "q", q, (B, None, H, W), "(B, Cq, H, W)", "batch and spatial sizes of `x`")
    if q.shape[1] < 1 or C < 1 or H * W < 1:
        raise ValueError(f"{OP}: needs Cq >= 1, C >= 1 and H*W >= 1, got q {tuple(q.shape)}, x {tuple(x.shape)}")
    check_scalar(OP, "gamma", gamma)
    if not isinstance(scale, (int, float)):
        raise TypeError(f"{OP}: `scale` must be a Python float, got {type(scale).__name__}")
    if pre is None:
        if mask is not None:
            raise ValueError(f"{OP}: `mask` was given without `pre`; the mask only gates the long-range "
                             "term, which needs `pre` (B, Cp, H, W)")
        if alpha is not None:
            raise ValueError(f"{OP}: `alpha` was given without `pre`; it gates the long-range term, "
                             "which needs `pre` (B, Cp, H, W)")
    else:
        check_tensor(OP, "pre", pre, 4, "(B, Cp, H, W)")
        check_shape(OP, "pre", pre, (B, None, H, W), "(B, Cp, H, W)", "batch and spatial sizes of `x`")
        if pre.shape[1] < 1:
            raise ValueError(f"{OP}: `pre` needs at least one channel, got shape {tuple(pre.shape)}")
        if mask is None:
            raise ValueError(f"{OP}: `pre` was given without `mask`; pass mask (B, 1, H, W) with "
                             "1 = visible, 0 = hole")
        if alpha is None:
            raise ValueError(f"{OP}: `pre` was given without `alpha`; pass the one-element gate of the "
                             "long-range term (PIC's Auto_Attn.alpha)")
        check_tensor(OP, "mask", mask, 4, "(B, 1, H, W)")
        check_shape(OP, "mask", mask, (B, 1, H, W), "(B, 1, H, W)", "one channel, broadcast over `pre`'s")
        check_scalar(OP, "alpha", alpha)
    check_same_dtype(OP, "x", x, q=q, pre=pre)
    check_same_device(OP, "x", x, q=q, gamma=gamma, pre=pre, mask=mask, alpha=alpha)
    if values:
        check_values(OP, finite={"q": q, "gamma": gamma, "alpha": alpha}, unit_range={"mask": mask})


def _check_fwd_args(q, x, gamma, pre, mask, alpha, scale) -> None:
    """The structural checks of a direct call of a kernel backend's forward op."""
    _validate(q, x, gamma, pre, mask, alpha, scale, values=False)


def _check_bwd_args(grad_y, grad_cf, q, x, gamma, pre, mask, alpha, sa, ca, lse, scale) -> None:
    """The structural checks of a direct call of a kernel backend's backward op: the forward's
    inputs, and the gradients and saved tensors in the forward outputs' shapes and devices."""
    _validate(q, x, gamma, pre, mask, alpha, scale, values=False)
    B, C, H, W = x.shape
    cp = (B, pre.shape[1], H, W) if pre is not None else (0,)
    layout_cp = "(B, Cp, H, W)" if pre is not None else "(0,) without `pre`"
    for name, t, shape, layout in (("grad_y", grad_y, (B, C, H, W), "(B, C, H, W)"),
                                   ("sa", sa, (B, C, H, W), "(B, C, H, W)"),
                                   ("grad_cf", grad_cf, cp, layout_cp), ("ca", ca, cp, layout_cp),
                                   ("lse", lse, (B, H, W), "(B, H, W)")):  # fmt: skip
        check_tensor(OP, name, t, len(shape), layout)
        check_shape(OP, name, t, shape, layout)
    check_same_dtype(OP, "x", x, grad_y=grad_y, sa=sa)
    check_same_device(OP, "x", x, grad_y=grad_y, grad_cf=grad_cf, sa=sa, ca=ca, lse=lse)


# ---------------------------------------------------------------------------------------------
# The compiled op: fake kernels and autograd (the kernels are registered in C++)
# ---------------------------------------------------------------------------------------------


def _register_fake_and_autograd(fwd_name: str, bwd_name: str) -> None:
    """Fake kernels and the autograd formula of one forward/backward op pair.

    Every backend's ops share one schema (inpaint_fast/ops/schemas.inc), so they share these registrations too.
    """
    bwd_op = getattr(torch.ops.inpaint_fast, bwd_name).default

    @torch.library.register_fake(f"inpaint_fast::{fwd_name}")
    def _fwd_fake(q, x, gamma, pre, mask, alpha, scale):
        B, C, H, W = x.shape
        y = x.new_empty((B, C, H, W))
        sa = x.new_empty((B, C, H, W))
        if pre is None:
            cf, ca = x.new_empty((0,)), x.new_empty((0,))
        else:
            cf = pre.new_empty((B, pre.shape[1], H, W))
            ca = pre.new_empty((B, pre.shape[1], H, W))
        lse = x.new_empty((B, H, W), dtype=accumulate_dtype(x.dtype))
        return y, cf, sa, ca, lse

    @torch.library.register_fake(f"inpaint_fast::{bwd_name}")
    def _bwd_fake(grad_y, grad_cf, q, x, gamma, pre, mask, alpha, sa, ca, lse, scale):
        empty = x.new_empty((0,))
        grad_q = q.new_empty(q.shape)
        grad_x = x.new_empty(x.shape)
        grad_gamma = gamma.new_empty(gamma.shape)
        if pre is None:
            return grad_q, grad_x, grad_gamma, empty, empty, empty
        return (grad_q, grad_x, grad_gamma, pre.new_empty(pre.shape), mask.new_empty(mask.shape),
                alpha.new_empty(alpha.shape))

    def _setup_context(ctx, inputs, output):
        q, x, gamma, pre, mask, alpha, scale = inputs
        _y, _cf, sa, ca, lse = output
        ctx.save_for_backward(q, x, gamma, pre, mask, alpha, sa, ca, lse)
        ctx.scale = scale
        ctx.mark_non_differentiable(sa, ca, lse)

    def _backward(ctx, grad_y, grad_cf, _grad_sa, _grad_ca, _grad_lse):
        q, x, gamma, pre, mask, alpha, sa, ca, lse = ctx.saved_tensors
        if grad_y is None:
            grad_y = torch.zeros_like(x)
        if grad_cf is None:
            grad_cf = torch.zeros_like(ca)
        grad_q, grad_x, grad_gamma, grad_pre, grad_mask, grad_alpha = bwd_op(
            grad_y.contiguous(), grad_cf.contiguous(), q, x, gamma, pre, mask, alpha, sa, ca, lse, ctx.scale
        )
        if pre is None:
            grad_pre = grad_mask = grad_alpha = None
        return grad_q, grad_x, grad_gamma, grad_pre, grad_mask, grad_alpha, None

    torch.library.register_autograd(f"inpaint_fast::{fwd_name}", _backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------------------------
# Backend implementations
# ---------------------------------------------------------------------------------------------
def _op_runner(fwd_name: str):
    """The forward of a kernel backend: calls its op and drops the tensors saved for backward."""

    def run(q, x, gamma, pre, mask, alpha, scale):
        if mask is not None:
            mask = mask.to(x.dtype)  # the kernels read one dtype; the mask's grad flows back through .to
        y, cf, _sa, _ca, _lse = getattr(torch.ops.inpaint_fast, fwd_name).default(
            q, x, gamma, pre, mask, alpha, float(scale)
        )
        return y, (cf if pre is not None else None)

    return run


_registry = register_backends(OP, reference.short_long_attention, _op_runner, _register_fake_and_autograd,
                              check_fwd_args=_check_fwd_args, check_bwd_args=_check_bwd_args)


# ---------------------------------------------------------------------------------------------
# Public function
# ---------------------------------------------------------------------------------------------
def short_long_attention(
    q: Tensor,
    x: Tensor,
    gamma: Tensor,
    pre: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    alpha: Optional[Tensor] = None,
    *,
    scale: float = 1.0,
    backend: Optional[str] = None,
) -> Tuple[Tensor, Optional[Tensor]]:
    """Short+long-range attention of Pluralistic Image Completion, fused (N×N never stored).

    With N = H·W positions, ``A = softmax(scale · qᵀq)`` over keys (keys are never masked):

        y  = gamma · (x Aᵀ) + x
        cf = alpha · (1 − mask) · (pre Aᵀ) + mask · pre          (only when ``pre`` is given)

    Args:
        q: (B, Cq, H, W) query, also used as the key (PIC: ``query_conv(x)``, Cq = C/4).
        x: (B, C, H, W) decoder features: value of the self term and its residual.
        gamma: one-element tensor (shape () or (1,)), gate of the self term.
        pre: (B, Cp, H, W) encoder features, value of the long-range term; or None.
        mask: (B, 1, H, W) in [0, 1], 1 = visible, 0 = hole; required iff ``pre`` is given.
        alpha: one-element tensor, gate of the long-range term; required iff ``pre`` is given.
        scale: multiplier of the energies qᵀq (PIC uses 1.0: no 1/√d).
        backend: ``"auto"``, ``"reference"``, ``"cpu"``, ``"triton"``, ``"cuda"``, or None for the
            default (:func:`inpaint_fast.set_backend`, ``INPAINT_FAST_BACKEND``).

    Returns:
        ``(y, cf)``: y (B, C, H, W) in x's dtype; cf (B, Cp, H, W) in pre's dtype, or None.

    Gradients flow to q, x, gamma, pre, mask and alpha. ``q``, ``x`` and ``pre`` share one dtype
    and device; non-contiguous and channels_last inputs are accepted (outputs are contiguous).
    Inside ``torch.autocast`` every input is first cast to the autocast dtype (fp16/bf16; fp32
    accumulation inside), so mixed-dtype inputs from autocast regions are fine.
    """
    compute = autocast_dtype(x.device.type) if isinstance(x, Tensor) else None
    if compute is not None:  # lower-precision policy (ops/_autocast.py); checks run inside the call
        cast = lambda t: t.to(compute) if isinstance(t, Tensor) else t  # noqa: E731
        with torch.autocast(x.device.type, enabled=False):
            return short_long_attention(cast(q), cast(x), cast(gamma), cast(pre), cast(mask), cast(alpha),
                                        scale=scale, backend=backend)
    _validate(q, x, gamma, pre, mask, alpha, scale)
    impl = _registry.resolve(backend, x.device, x.dtype)
    return impl.run(q, x, gamma, pre, mask, alpha, scale)
