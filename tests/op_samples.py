"""The inputs of both ops, for every test file, and the helpers that run an op on them.

One input builder per op, taking the device as the test chooses it (the backend under test is
the caller's): :func:`attention_sample_inputs` and :func:`fusion_sample_inputs`. Values are drawn
in float64 from torch's global generator (seeded per test by conftest) and then rounded to the
dtype and moved to the device, so a test sees the same numbers on every device. The GPU run
(tests/gpu_cases.py) builds its inputs here too, and tests/test_triton_aot.py checks that they
have the dtypes, shapes and strides of the kernel-cache builder's
(inpaint_fast/triton_kernels/gpu_run_shapes.py): a change here must keep them.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import pytest
import torch

from inpaint_fast import FusionBlockParams
from inpaint_fast.fusion_block_params import RUNNING_STATS, TRAINABLE

LAYOUTS = ("contiguous", "channels_last", "transposed")

# How a kernel backend's op called directly refuses a bad argument: the Triton ops run the public
# function's structural checks (one-line ValueErrors), the compiled ops check in C++.
DIRECT_CALL_ERRORS = {"cpu": RuntimeError, "cuda": RuntimeError, "triton": ValueError}


def kernel_op(op: str, backend: str, direction: str):
    """The custom op behind a kernel backend: ``<op>_fwd/_bwd`` for the compiled backends (one op,
    a kernel per dispatch key), ``triton_<op>_fwd/_bwd`` for Triton."""
    prefix = "triton_" if backend == "triton" else ""
    return getattr(torch.ops.inpaint_fast, f"{prefix}{op}_{direction}").default


def assert_direct_call_names(op: str, backend: str, direction: str, args, name: str) -> None:
    """A direct call of the backend's op with ``args`` fails, naming ``op`` and the argument ``name``."""
    with pytest.raises(DIRECT_CALL_ERRORS[backend]) as info:
        kernel_op(op, backend, direction)(*args)
    message = str(info.value)
    assert op in message and f"`{name}`" in message, message
    if backend == "triton":
        assert "\n" not in message, message


def laid_out(t: Optional[torch.Tensor], layout: str) -> Optional[torch.Tensor]:
    """``t`` (4-D; anything else is returned as it is) with the same values in ``layout``."""
    if t is None or t.dim() != 4:
        return t
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "transposed":  # H and W strides swapped: not contiguous in any memory format
        return t.transpose(2, 3).contiguous().transpose(2, 3)
    return t


# ---------------------------------------------------------------------------------------------
# short_long_attention
# ---------------------------------------------------------------------------------------------
ATTENTION_INPUTS = ("q", "x", "gamma", "pre", "mask", "alpha")


def attention_sample_inputs(shape, dtype=torch.float32, with_pre=True, layout="contiguous", requires_grad=False, *,
                            device="cpu", gate_dtype=None, gates=(0.7, -0.4)):
    """(q, x, gamma, pre, mask, alpha) for ``shape = (B, Cq, C, Cp, H, W)``: nonzero gates
    ``gates``, a fractional mask; without ``pre``, None for pre, mask and alpha. The gates are in
    ``gate_dtype``, by default float32 next to lower-precision features (as PIC's parameters are)."""
    B, Cq, C, Cp, H, W = shape
    if gate_dtype is None:
        gate_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    q = 0.5 * torch.randn(B, Cq, H, W, dtype=torch.float64)
    x = torch.randn(B, C, H, W, dtype=torch.float64)
    gamma = torch.tensor([gates[0]], dtype=gate_dtype)
    pre = mask = alpha = None
    if with_pre:
        pre, mask = torch.randn(B, Cp, H, W, dtype=torch.float64), torch.rand(B, 1, H, W, dtype=torch.float64)
        alpha = torch.tensor([gates[1]], dtype=gate_dtype)
    q, x, pre, mask = (None if t is None else laid_out(t.to(dtype), layout) for t in (q, x, pre, mask))
    return tuple(None if t is None else t.to(device).requires_grad_(requires_grad)
                 for t in (q, x, gamma, pre, mask, alpha))  # fmt: skip


def attention_upstream(inputs, dtype) -> List[torch.Tensor]:
    """Random gradients of y (and of cf, with ``pre``), drawn on the CPU, on the inputs' device."""
    _q, x, _gamma, pre, _mask, _alpha = inputs
    shapes = [x.shape] + ([pre.shape] if pre is not None else [])
    return [torch.randn(s, dtype=dtype).to(x.device) for s in shapes]


def attention_forward_backward(fn, inputs, grads):
    """Outputs and input gradients of ``fn(q, x, gamma, pre, mask, alpha)`` for upstream ``grads``."""
    inputs = [t.detach().clone().requires_grad_(True) if t is not None else None for t in inputs]
    y, cf = fn(*inputs)
    outs = [y] + ([cf] if cf is not None else [])
    live = [t for t in inputs if t is not None]
    in_grads = torch.autograd.grad(outs, live, grads[: len(outs)])
    return [o.detach() for o in outs], list(in_grads)


# ---------------------------------------------------------------------------------------------
# fusion_block
# ---------------------------------------------------------------------------------------------
# What fusion_run returns, flattened: outputs, input gradients, the running statistics after the call.
FUSION_RESULTS = ("out", "alpha", "raw", "grad_feat", "grad_image", *(f"grad_{k}" for k in TRAINABLE),
                  *RUNNING_STATS)  # fmt: skip


def fusion_sample_inputs(shape, dtype=torch.float32, layout="contiguous", cm=32, *,
                         device="cpu") -> Tuple[torch.Tensor, torch.Tensor, FusionBlockParams]:
    """(feat, image, params) for ``shape = (B, c, h, w, H, W, A)`` with non-trivial BatchNorm
    statistics and affine parameters. ``cm``: the blend's middle channels (32 in DFNet)."""
    B, c, h, w, H, W, A = shape
    g = lambda *s: torch.randn(*s, dtype=torch.float64)  # noqa: E731
    feat = g(B, c, h, w)
    image = torch.rand(B, 3, H, W, dtype=torch.float64)
    params = FusionBlockParams(
        map_weight=g(3, c, 1, 1) * 0.5, map_bias=g(3) * 0.1,
        conv1_weight=g(cm, 6, 1, 1) * 0.4, conv1_bias=g(cm) * 0.1,
        bn1_weight=1 + 0.2 * g(cm), bn1_bias=0.1 * g(cm),
        bn1_running_mean=0.1 * g(cm), bn1_running_var=1 + 0.5 * torch.rand(cm, dtype=torch.float64),
        conv2_weight=g(A, cm, 3, 3) * 0.1, conv2_bias=g(A) * 0.1,
        bn2_weight=1 + 0.2 * g(A), bn2_bias=0.1 * g(A),
        bn2_running_mean=0.1 * g(A), bn2_running_var=1 + 0.5 * torch.rand(A, dtype=torch.float64),
        conv3_weight=g(A, A, 1, 1), conv3_bias=g(A) * 0.1,
    )  # fmt: skip
    # .to keeps a dense layout's strides
    feat, image = (laid_out(t, layout).to(device=device, dtype=dtype) for t in (feat, image))
    return feat, image, fusion_params_to(params, device=device, dtype=dtype)


def fusion_params_to(params: FusionBlockParams, *args, **kwargs) -> FusionBlockParams:
    """``params`` with each tensor passed through ``Tensor.to(*args, **kwargs)``."""
    return FusionBlockParams._make(t.to(*args, **kwargs) for t in params)


def fusion_params_clone(params: FusionBlockParams, leaves: bool = False) -> FusionBlockParams:
    """Fresh copies of ``params`` (an op call in training updates the running statistics in
    place); ``leaves``: the trainable ones are autograd leaves."""
    return FusionBlockParams(**{k: t.detach().clone().requires_grad_(leaves and k in TRAINABLE)
                                for k, t in params._asdict().items()})  # fmt: skip


def fusion_saved_params(params: FusionBlockParams, stats: Sequence[torch.Tensor]) -> FusionBlockParams:
    """What the backward op takes: ``params`` with the statistics the forward op returned (the
    ones it normalised with) in the running statistics' places."""
    return params._replace(**dict(zip(RUNNING_STATS, stats)))


def fusion_upstream(feat, c_alpha, dtype) -> List[torch.Tensor]:
    """Random gradients of (out, alpha, raw), drawn on the CPU, on feat's device."""
    B, _, h, w = feat.shape
    return [torch.randn(B, n, h, w, dtype=dtype).to(feat.device) for n in (3, c_alpha, 3)]


def fusion_run(fn, feat, image, params, training, grads: Sequence[torch.Tensor], image_grad=True):
    """Outputs, gradients (feat, image, trainable params) and updated running stats of
    ``fn(feat, image, params, training=training)`` on fresh copies of the inputs."""
    feat = feat.detach().clone().requires_grad_(True)
    image = image.detach().clone().requires_grad_(image_grad)
    params = fusion_params_clone(params, leaves=True)
    outs = fn(feat, image, params, training=training)
    wrt = [feat] + ([image] if image_grad else []) + [getattr(params, k) for k in TRAINABLE]
    in_grads = torch.autograd.grad(outs, wrt, grads)
    stats = [getattr(params, k).detach() for k in RUNNING_STATS]
    return [o.detach() for o in outs], list(in_grads), stats
