"""fusion_block: DFNet's fusion block (learned alpha composite) as a custom op.

One file per op, in the same order everywhere: input checks → the compiled op's fake kernel and
autograd → the backend implementations → the public function.

The compiled op ``inpaint_fast::fusion_block_fwd/_bwd`` (schemas in inpaint_fast/ops/schemas.inc) returns the
BatchNorm statistics it normalised with; in training the public function folds them into the
running statistics exactly as ``nn.BatchNorm2d`` does (momentum, unbiased variance), so the op
itself mutates nothing, which keeps it simple for ``torch.compile`` and ``opcheck``.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import reference
from ..fusion_block_params import PARAM_NAMES, RUNNING_STATS, TRAINABLE, FusionBlockParams
from ._autocast import autocast_dtype
from ..dtypes import accumulate_dtype
from ._registration import register_backends
from ._validation import (
    check_same_device,
    check_same_dtype,
    check_shape,
    check_tensor,
    check_values,
)

__all__ = ["fusion_block"]

OP = "fusion_block"


# ---------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------
def _validate(feat, image, params, training, *, values: bool = True, saved_stats: bool = False) -> None:
    """Every check of a call; ``values=False`` leaves out the data checks (no device sync).
    ``saved_stats``: the running statistics' places hold the statistics a forward op returned (the
    backward op's inputs), which are in the statistics' dtype (float32 for half inputs)."""
    if not isinstance(params, FusionBlockParams):
        raise TypeError(f"{OP}: `params` must be a FusionBlockParams (by name, or FusionBlockParams.from_module), "
                        f"got {type(params).__name__}")
    check_tensor(OP, "feat", feat, 4, "(B, c, h, w)")
    B, c, h, w = feat.shape
    check_tensor(OP, "image", image, 4, "(B, 3, H, W)")
    check_shape(OP, "image", image, (B, 3, None, None), "(B, 3, H, W)", "the batch of `feat`, 3 colour channels")
    if min(h, w, image.shape[2], image.shape[3]) < 1 or c < 1:
        raise ValueError(f"{OP}: empty input: feat {tuple(feat.shape)}, image {tuple(image.shape)}")
    p = params._asdict()
    for name, t in p.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{OP}: `{name}` must be a tensor, got {type(t).__name__}")
    cm = p["conv1_weight"].shape[0] if p["conv1_weight"].dim() == 4 else -1
    a = p["conv3_weight"].shape[0] if p["conv3_weight"].dim() == 4 else -1
    expected = {
        "map_weight": ((3, c, 1, 1), "(3, c, 1, 1): 1x1 conv from the c feature channels to RGB"),
        "map_bias": ((3,), "(3,)"),
        "conv1_weight": ((cm, 6, 1, 1), "(Cm, 6, 1, 1): 1x1 conv of [resized image, raw]"),
        "conv1_bias": ((cm,), "(Cm,)"),
        "bn1_weight": ((cm,), "(Cm,)"), "bn1_bias": ((cm,), "(Cm,)"),
        "bn1_running_mean": ((cm,), "(Cm,)"), "bn1_running_var": ((cm,), "(Cm,)"),
        "conv2_weight": ((a, cm, 3, 3), "(A, Cm, 3, 3): 3x3 conv, A = c_alpha"),
        "conv2_bias": ((a,), "(A,)"),
        "bn2_weight": ((a,), "(A,)"), "bn2_bias": ((a,), "(A,)"),
        "bn2_running_mean": ((a,), "(A,)"), "bn2_running_var": ((a,), "(A,)"),
        "conv3_weight": ((a, a, 1, 1), "(A, A, 1, 1)"),
        "conv3_bias": ((a,), "(A,)"),
    }  # fmt: skip
    if cm < 1:
        raise ValueError(f"{OP}: `conv1_weight` must have shape (Cm, 6, 1, 1), got {tuple(p['conv1_weight'].shape)}")
    if a not in (1, 3):
        raise ValueError(
            f"{OP}: `conv3_weight` must have shape (A, A, 1, 1) with A = c_alpha in (1, 3), "
            f"got {tuple(p['conv3_weight'].shape)}"
        )
    for name, (shape, layout) in expected.items():
        check_shape(OP, name, p[name], shape, layout)
    same_dtype = {k: v for k, v in p.items() if not (saved_stats and k in RUNNING_STATS)}
    check_same_dtype(OP, "feat", feat, image=image, **same_dtype)
    check_same_device(OP, "feat", feat, image=image, **p)
    # In training the running statistics are only updated, never used: a check there would read
    # them (and synchronise) on every call, since each call changes them.
    if values:
        checked = {k: v for k, v in p.items() if not (training and "running" in k)}
        check_values(OP, finite=checked, nonnegative=("bn1_running_var", "bn2_running_var"))
    if training and B * h * w < 2:
        raise ValueError(
            f"{OP}: training-mode BatchNorm needs more than one value per channel, got feat of shape "
            f"{tuple(feat.shape)} (B*h*w = {B * h * w}); use eval mode or a larger input"
        )


def _check_fwd_args(feat, image, *rest) -> None:
    """The structural checks of a direct call of a kernel backend's forward op."""
    *params, training, _eps = rest
    _validate(feat, image, FusionBlockParams._make(params), training, values=False)


def _check_bwd_args(grad_out, grad_alpha, grad_raw, feat, image, *rest) -> None:
    """The structural checks of a direct call of a kernel backend's backward op: the forward's
    inputs (with the statistics it normalised with in the running statistics' places), and each
    output gradient in its output's shape, dtype and device."""
    *params, training, _eps = rest
    params = FusionBlockParams._make(params)
    _validate(feat, image, params, training, values=False, saved_stats=True)
    B, _, h, w = feat.shape
    a = params.conv3_weight.shape[0]
    for name, t, shape, layout in (("grad_out", grad_out, (B, 3, h, w), "(B, 3, h, w)"),
                                   ("grad_alpha", grad_alpha, (B, a, h, w), "(B, A, h, w)"),
                                   ("grad_raw", grad_raw, (B, 3, h, w), "(B, 3, h, w)")):  # fmt: skip
        check_tensor(OP, name, t, 4, layout)
        check_shape(OP, name, t, shape, layout, "the forward's output")
    check_same_dtype(OP, "feat", feat, grad_out=grad_out, grad_alpha=grad_alpha, grad_raw=grad_raw)
    check_same_device(OP, "feat", feat, grad_out=grad_out, grad_alpha=grad_alpha, grad_raw=grad_raw)


# ---------------------------------------------------------------------------------------------
# The compiled op: fake kernels and autograd (the kernels are registered in C++)
# ---------------------------------------------------------------------------------------------


def _register_fake_and_autograd(fwd_name: str, bwd_name: str) -> None:
    """Fake kernels and the autograd formula of one forward/backward op pair.

    Every backend's ops share one schema (inpaint_fast/ops/schemas.inc), so they share these registrations too.
    """
    bwd_op = getattr(torch.ops.inpaint_fast, bwd_name).default

    # The ops take the 16 parameters flat, in FusionBlockParams' order, between the inputs and
    # (training, eps); each function below names them by bundling them back.
    @torch.library.register_fake(f"inpaint_fast::{fwd_name}")
    def _fwd_fake(feat, image, *rest):
        params = FusionBlockParams._make(rest[:-2])
        B, _, h, w = feat.shape
        cm, a = params.conv1_weight.shape[0], params.conv3_weight.shape[0]
        stat = accumulate_dtype(feat.dtype)
        return (
            feat.new_empty((B, 3, h, w)),
            feat.new_empty((B, a, h, w)),
            feat.new_empty((B, 3, h, w)),
            feat.new_empty((cm,), dtype=stat),
            feat.new_empty((cm,), dtype=stat),
            feat.new_empty((a,), dtype=stat),
            feat.new_empty((a,), dtype=stat),
        )

    @torch.library.register_fake(f"inpaint_fast::{bwd_name}")
    def _bwd_fake(grad_out, grad_alpha, grad_raw, feat, image, *rest):
        params = FusionBlockParams._make(rest[:-2])
        B, _, h, w = feat.shape
        grad_params = tuple(getattr(params, k).new_empty(getattr(params, k).shape) for k in TRAINABLE)
        return (feat.new_empty(feat.shape), feat.new_empty((B, 3, h, w))) + grad_params

    def _setup_context(ctx, inputs, output):
        feat, image, *params, training, eps = inputs
        _out, _alpha, _raw, *stats = output
        # Saved: feat, image and the bundle the backward op takes, which holds the statistics the
        # forward normalised with in the running statistics' places.
        normalised_with = FusionBlockParams._make(params)._replace(**dict(zip(RUNNING_STATS, stats)))
        ctx.save_for_backward(feat, image, *normalised_with)
        ctx.training, ctx.eps = training, eps
        ctx.mark_non_differentiable(*stats)

    def _backward(ctx, grad_out, grad_alpha, grad_raw, *_grad_stats):
        feat, image, *saved = ctx.saved_tensors
        params = FusionBlockParams._make(saved)
        B, _, h, w = feat.shape
        shapes = ((B, 3, h, w), (B, params.conv3_weight.shape[0], h, w), (B, 3, h, w))
        grads = [feat.new_zeros(s) if g is None else g.contiguous()
                 for g, s in zip((grad_out, grad_alpha, grad_raw), shapes)]  # fmt: skip
        grad_feat, grad_image_resized, *grad_params = bwd_op(*grads, feat, image, *params, ctx.training, ctx.eps)
        grad_image = None
        if ctx.needs_input_grad[1]:
            grad_image = torch.ops.aten.upsample_bilinear2d_backward.default(
                grad_image_resized, list(feat.shape[2:]), list(image.shape), False, None, None
            )
        by_name = dict(zip(TRAINABLE, grad_params))  # the running statistics get none
        return (grad_feat, grad_image, *(by_name.get(k) for k in PARAM_NAMES), None, None)

    torch.library.register_autograd(f"inpaint_fast::{fwd_name}", _backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------------------------
# Backend implementations
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def _update_running_stats(running_mean, running_var, batch_mean, batch_var, count, momentum) -> None:
    """nn.BatchNorm2d's update: r ← (1 − m)·r + m·batch, with the unbiased batch variance."""
    unbiased = batch_var * (count / (count - 1))
    running_mean.mul_(1 - momentum).add_(batch_mean.to(running_mean.dtype), alpha=momentum)
    running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)


def _op_runner(fwd_name: str):
    """The forward of a kernel backend: calls its op, then folds the batch stats into the running ones."""

    def run(feat, image, params, training, momentum, eps):
        out, alpha, raw, bn1_mean, bn1_var, bn2_mean, bn2_var = getattr(torch.ops.inpaint_fast, fwd_name).default(
            feat, image, *params, bool(training), float(eps)
        )
        if training:
            count = feat.shape[0] * feat.shape[2] * feat.shape[3]
            _update_running_stats(params.bn1_running_mean, params.bn1_running_var, bn1_mean, bn1_var, count, momentum)
            _update_running_stats(params.bn2_running_mean, params.bn2_running_var, bn2_mean, bn2_var, count, momentum)
        return out, alpha, raw

    return run


def _run_reference(feat, image, params, training, momentum, eps):
    return reference.fusion_block(feat, image, params, training=training, momentum=momentum, eps=eps)


_registry = register_backends(OP, _run_reference, _op_runner, _register_fake_and_autograd,
                              check_fwd_args=_check_fwd_args, check_bwd_args=_check_bwd_args)


# ---------------------------------------------------------------------------------------------
# Public function
# ---------------------------------------------------------------------------------------------
def fusion_block(
    feat: Tensor,
    image: Tensor,
    params: FusionBlockParams,
    *,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    backend: Optional[str] = None,
) -> Tuple[Tensor, Tensor, Tensor]:
    """DFNet's fusion block, fused: raw RGB completion, learned alpha, and their blend.

        X_k = bilinear_resize(image → h×w, align_corners=False)
        R   = sigmoid(conv1x1(feat));   α = sigmoid(conv1x1(lrelu(BN2(conv3x3(lrelu(BN1(conv1x1([X_k, R]))))))))
        Y   = α · R + (1 − α) · X_k

    Args:
        feat: (B, c, h, w) decoder feature F_k.
        image: (B, 3, H, W) image with holes, full resolution (any H, W; resized inside).
        params: the block's 16 weights and BatchNorm tensors, a :class:`FusionBlockParams` (its
            fields give the shapes and DFNet's layers); ``FusionBlockParams.from_module(block)``
            takes them from an ``inpaint_fast.nn.FusionBlock`` or DFNet's module.
        training: BatchNorm with batch statistics, updating ``params``' running statistics in
            place (as ``F.batch_norm`` does); eval uses the running statistics.
        momentum, eps: BatchNorm's (PyTorch defaults 0.1 and 1e-5).
        backend: ``"auto"``, ``"reference"``, ``"cpu"``, ``"triton"``, ``"cuda"``, or None for the default.

    Returns:
        ``(out, alpha, raw)``: Y (B, 3, h, w), α (B, A, h, w), R (B, 3, h, w), in feat's dtype.

    Gradients flow to feat, image and every weight and BN affine parameter. All tensors share
    one dtype and device; inside ``torch.autocast`` the block runs in the parameters' dtype
    (fp32, like ``batch_norm``): ``feat`` and ``image`` are cast up first.
    """
    if (isinstance(feat, Tensor) and isinstance(image, Tensor) and isinstance(params, FusionBlockParams)
            and isinstance(params.map_weight, Tensor) and autocast_dtype(feat.device.type) is not None):
        # fp32 policy (ops/_autocast.py): feat and image go to the parameters' dtype; checks run inside
        dtype = params.map_weight.dtype
        with torch.autocast(feat.device.type, enabled=False):
            return fusion_block(feat.to(dtype), image.to(dtype), params, training=training, momentum=momentum,
                                eps=eps, backend=backend)
    _validate(feat, image, params, training)
    impl = _registry.resolve(backend, feat.device, feat.dtype)
    return impl.run(feat, image, params, training, momentum, eps)
