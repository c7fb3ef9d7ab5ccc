"""fusion_block: DFNet's fusion block (learned alpha composite) as a custom op.

One file per op, in the same order everywhere: input checks → the compiled op's fake kernel and
autograd → the backend implementations → the public function.

The compiled op ``inpaint_fast::fusion_block_fwd/_bwd`` (schemas in csrc/ops.cpp) returns the
BatchNorm statistics it normalised with; in training the public function folds them into the
running statistics exactly as ``nn.BatchNorm2d`` does (momentum, unbiased variance), so the op
itself mutates nothing, which keeps it simple for ``torch.compile`` and ``opcheck``.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import reference
from ._autocast import autocast_dtype
from ._registration import register_backends, stat_dtype
from ._validation import (
    check_same_device,
    check_same_dtype,
    check_shape,
    check_tensor,
    check_values,
)

__all__ = ["PARAM_NAMES", "RUNNING_STATS", "TRAINABLE", "fusion_block"]

OP = "fusion_block"

# The block's 16 parameters and buffers in the op's order (csrc/ops.cpp), its four BatchNorm running
# statistics (updated in training, read in eval) and the 12 trainable ones (the backward's order).
PARAM_NAMES = (
    "map_weight", "map_bias", "conv1_weight", "conv1_bias", "bn1_weight", "bn1_bias",
    "bn1_running_mean", "bn1_running_var", "conv2_weight", "conv2_bias", "bn2_weight", "bn2_bias",
    "bn2_running_mean", "bn2_running_var", "conv3_weight", "conv3_bias",
)  # fmt: skip
RUNNING_STATS = ("bn1_running_mean", "bn1_running_var", "bn2_running_mean", "bn2_running_var")
TRAINABLE = tuple(k for k in PARAM_NAMES if k not in RUNNING_STATS)


# ---------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------
def _validate(feat, image, params, training) -> None:
    check_tensor(OP, "feat", feat, 4, "(B, c, h, w)")
    B, c, h, w = feat.shape
    check_tensor(OP, "image", image, 4, "(B, 3, H, W)")
    check_shape(OP, "image", image, (B, 3, None, None), "(B, 3, H, W)", "the batch of `feat`, 3 colour channels")
    if min(h, w, image.shape[2], image.shape[3]) < 1 or c < 1:
        raise ValueError(f"{OP}: empty input: feat {tuple(feat.shape)}, image {tuple(image.shape)}")
    p = dict(zip(PARAM_NAMES, params))
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
    check_same_dtype(OP, "feat", feat, image=image, **p)
    check_same_device(OP, "feat", feat, image=image, **p)
    # In training the running statistics are only updated, never used: a check there would read
    # them (and synchronise) on every call, since each call changes them.
    checked = {k: v for k, v in p.items() if not (training and "running" in k)}
    check_values(OP, finite=checked, nonnegative=("bn1_running_var", "bn2_running_var"))
    if training and B * h * w < 2:
        raise ValueError(
            f"{OP}: training-mode BatchNorm needs more than one value per channel, got feat of shape "
            f"{tuple(feat.shape)} (B*h*w = {B * h * w}); use eval mode or a larger input"
        )


# ---------------------------------------------------------------------------------------------
# The compiled op: fake kernels and autograd (the kernels are registered in C++)
# ---------------------------------------------------------------------------------------------


def _register_fake_and_autograd(fwd_name: str, bwd_name: str) -> None:
    """Fake kernels and the autograd formula of one forward/backward op pair.

    Every backend's ops share one schema (csrc/ops.cpp), so they share these registrations too.
    """
    bwd_op = getattr(torch.ops.inpaint_fast, bwd_name).default

    @torch.library.register_fake(f"inpaint_fast::{fwd_name}")
    def _fwd_fake(feat, image, map_weight, map_bias, conv1_weight, conv1_bias, bn1_weight, bn1_bias,
                  bn1_running_mean, bn1_running_var, conv2_weight, conv2_bias, bn2_weight, bn2_bias,
                  bn2_running_mean, bn2_running_var, conv3_weight, conv3_bias, training, eps):  # fmt: skip
        B, _, h, w = feat.shape
        cm, a = conv1_weight.shape[0], conv3_weight.shape[0]
        stat = stat_dtype(feat.dtype)
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
    def _bwd_fake(grad_out, grad_alpha, grad_raw, feat, image, map_weight, map_bias, conv1_weight,
                  conv1_bias, bn1_weight, bn1_bias, bn1_mean, bn1_var, conv2_weight, conv2_bias,
                  bn2_weight, bn2_bias, bn2_mean, bn2_var, conv3_weight, conv3_bias, training, eps):  # fmt: skip
        B, _, h, w = feat.shape
        like = (map_weight, map_bias, conv1_weight, conv1_bias, bn1_weight, bn1_bias, conv2_weight,
                conv2_bias, bn2_weight, bn2_bias, conv3_weight, conv3_bias)  # fmt: skip
        return (feat.new_empty(feat.shape), feat.new_empty((B, 3, h, w))) + tuple(t.new_empty(t.shape) for t in like)

    def _setup_context(ctx, inputs, output):
        (feat, image, map_weight, map_bias, conv1_weight, conv1_bias, bn1_weight, bn1_bias, _rm1, _rv1,
         conv2_weight, conv2_bias, bn2_weight, bn2_bias, _rm2, _rv2, conv3_weight, conv3_bias, training, eps) = inputs  # fmt: skip
        _out, _alpha, _raw, bn1_mean, bn1_var, bn2_mean, bn2_var = output
        ctx.save_for_backward(feat, image, map_weight, map_bias, conv1_weight, conv1_bias, bn1_weight, bn1_bias,
                              bn1_mean, bn1_var, conv2_weight, conv2_bias, bn2_weight, bn2_bias, bn2_mean,
                              bn2_var, conv3_weight, conv3_bias)  # fmt: skip
        ctx.training, ctx.eps = training, eps
        ctx.mark_non_differentiable(bn1_mean, bn1_var, bn2_mean, bn2_var)

    def _backward(ctx, grad_out, grad_alpha, grad_raw, *_grad_stats):
        saved = ctx.saved_tensors
        feat, image = saved[0], saved[1]
        grads = [grad_out, grad_alpha, grad_raw]
        shapes = [(feat.shape[0], 3) + feat.shape[2:], (feat.shape[0], saved[16].shape[0]) + feat.shape[2:]]
        shapes.append(shapes[0])
        grads = [feat.new_zeros(s) if g is None else g.contiguous() for g, s in zip(grads, shapes)]
        (grad_feat, grad_image_resized, g_map_w, g_map_b, g_c1_w, g_c1_b, g_bn1_w, g_bn1_b, g_c2_w, g_c2_b,
         g_bn2_w, g_bn2_b, g_c3_w, g_c3_b) = bwd_op(
            *grads, *saved, ctx.training, ctx.eps)  # fmt: skip
        grad_image = None
        if ctx.needs_input_grad[1]:
            grad_image = torch.ops.aten.upsample_bilinear2d_backward.default(
                grad_image_resized, list(feat.shape[2:]), list(image.shape), False, None, None
            )
        return (grad_feat, grad_image, g_map_w, g_map_b, g_c1_w, g_c1_b, g_bn1_w, g_bn1_b, None, None,
                g_c2_w, g_c2_b, g_bn2_w, g_bn2_b, None, None, g_c3_w, g_c3_b, None, None)  # fmt: skip

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
            p = dict(zip(PARAM_NAMES, params))
            _update_running_stats(p["bn1_running_mean"], p["bn1_running_var"], bn1_mean, bn1_var, count, momentum)
            _update_running_stats(p["bn2_running_mean"], p["bn2_running_var"], bn2_mean, bn2_var, count, momentum)
        return out, alpha, raw

    return run


def _run_reference(feat, image, params, training, momentum, eps):
    return reference.fusion_block(feat, image, *params, training=training, momentum=momentum, eps=eps)


_registry = register_backends(OP, _run_reference, _op_runner, _register_fake_and_autograd)


# ---------------------------------------------------------------------------------------------
# Public function
# ---------------------------------------------------------------------------------------------
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
    *,
    backend: Optional[str] = None,
) -> Tuple[Tensor, Tensor, Tensor]:
    """DFNet's fusion block, fused: raw RGB completion, learned alpha, and their blend.

        X_k = bilinear_resize(image → h×w, align_corners=False)
        R   = sigmoid(conv1x1(feat));   α = sigmoid(conv1x1(lrelu(BN2(conv3x3(lrelu(BN1(conv1x1([X_k, R]))))))))
        Y   = α · R + (1 − α) · X_k

    Args:
        feat: (B, c, h, w) decoder feature F_k.
        image: (B, 3, H, W) image with holes, full resolution (any H, W; resized inside).
        map_weight, map_bias: (3, c, 1, 1), (3,) — DFNet's ``map2img.0.conv``.
        conv1_weight, conv1_bias: (Cm, 6, 1, 1), (Cm,) — ``blend.blend.0.conv`` (Cm = 32 in DFNet).
        bn1_weight, bn1_bias, bn1_running_mean, bn1_running_var: (Cm,) — ``blend.blend.1``.
        conv2_weight, conv2_bias: (A, Cm, 3, 3), (A,) — ``blend.blend.3.conv``, A = c_alpha ∈ {1, 3}.
        bn2_weight, bn2_bias, bn2_running_mean, bn2_running_var: (A,) — ``blend.blend.4``.
        conv3_weight, conv3_bias: (A, A, 1, 1), (A,) — ``blend.blend.6.conv``.
        training: BatchNorm with batch statistics, updating the running stats in place (as
            ``F.batch_norm`` does); eval uses the running statistics.
        momentum, eps: BatchNorm's (PyTorch defaults 0.1 and 1e-5).
        backend: ``"auto"``, ``"reference"``, ``"cpu"``, ``"triton"``, ``"cuda"``, or None for the default.

    Returns:
        ``(out, alpha, raw)``: Y (B, 3, h, w), α (B, A, h, w), R (B, 3, h, w), in feat's dtype.

    Gradients flow to feat, image and every weight and BN affine parameter. All tensors share
    one dtype and device; inside ``torch.autocast`` the block runs in the parameters' dtype
    (fp32, like ``batch_norm``): ``feat`` and ``image`` are cast up first.
    """
    params = (map_weight, map_bias, conv1_weight, conv1_bias, bn1_weight, bn1_bias, bn1_running_mean,
              bn1_running_var, conv2_weight, conv2_bias, bn2_weight, bn2_bias, bn2_running_mean,
              bn2_running_var, conv3_weight, conv3_bias)  # fmt: skip
    if isinstance(feat, Tensor) and isinstance(image, Tensor) and isinstance(map_weight, Tensor) and (
        autocast_dtype(feat.device.type) is not None
    ):  # fp32 policy (ops/_autocast.py): feat and image go to the parameters' dtype; checks run inside
        with torch.autocast(feat.device.type, enabled=False):
            return fusion_block(feat.to(map_weight.dtype), image.to(map_weight.dtype), *params, training,
                                momentum, eps, backend=backend)
    _validate(feat, image, params, training)
    impl = _registry.resolve(backend, feat.device, feat.dtype)
    return impl.run(feat, image, params, training, momentum, eps)
