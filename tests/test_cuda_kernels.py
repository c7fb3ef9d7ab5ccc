"""The CUDA C++ backend (csrc/cuda/) against the reference, on a GPU.

Without a GPU, or with an extension built without CUDA kernels, the GPU tests skip with the
reason; the envelope tests at the bottom run everywhere. Shapes: PIC's attention (C = 128,
Cq = 32, N = 1024 and 4096) and the odd sizes of the CPU tests (N = 1, 7, 97, 1025, C not a power
of two); DFNet's six fusion levels (c = 4 .. 512, 2x .. 32x resize) at a 256² input.

Both ops are complete on CUDA (forward and backward, eval and training); see csrc/cuda/*.cu.
"""

from __future__ import annotations

import pytest
import torch

import inpaint_fast
import test_fusion_block as fb
import test_short_long_attention as sla
from conftest import assert_close_to_oracle
from inpaint_fast import reference
from inpaint_fast.backends import AUTO_PREFERENCE, registry

HAS_GPU = torch.cuda.is_available()


def _cuda_unavailable(op: str) -> str:
    if not HAS_GPU:
        return "no CUDA GPU in this session"
    return registry(op).why_not("cuda", torch.device("cuda"), torch.float32)


def _needs_cuda(op: str):
    reason = _cuda_unavailable(op)
    return pytest.mark.skipif(bool(reason), reason=reason or "available")


def _to_cuda(ts):
    return [t.cuda() if t is not None else None for t in ts]


# ---------------------------------------------------------------------------------------------
# short_long_attention
# ---------------------------------------------------------------------------------------------
# (B, Cq, C, Cp, H, W): the CPU test's odd sizes (N = 1, 7, 97, 1025 and PIC's channels at N = 64)
# plus PIC at 256² (N = 1024) and 512² (N = 4096); C = 96 / Cp = 40 exercise a 128-channel value
# chunk that straddles x and pre.
ATTN_SHAPES = sla.SHAPES + [
    (2, 32, 128, 128, 32, 32),
    (1, 32, 128, 128, 64, 64),
    (2, 16, 96, 40, 9, 13),
]
ATTN_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _attn_case(shape, dtype, with_pre):
    inputs = _to_cuda(sla.sample_inputs(shape, dtype, with_pre))
    grads = [g.cuda() for g in sla._upstream(inputs, dtype)]
    return inputs, grads


@_needs_cuda("short_long_attention")
@pytest.mark.parametrize("dtype", ATTN_DTYPES, ids=str)
@pytest.mark.parametrize("shape", ATTN_SHAPES, ids=lambda s: "B{}-Cq{}-C{}-Cp{}-{}x{}".format(*s))
@pytest.mark.parametrize("with_pre", [True, False], ids=["pre", "self"])
def test_attention_matches_reference(dtype, shape, with_pre):
    inputs, grads = _attn_case(shape, dtype, with_pre)
    fn = lambda *a: inpaint_fast.short_long_attention(*a, backend="cuda")  # noqa: E731
    ours, our_grads = sla._forward_backward(fn, inputs, grads)
    ref, ref_grads = sla._forward_backward(reference.short_long_attention, inputs, grads)
    inputs64 = [t.double() if t is not None else None for t in inputs]
    ref64, ref64_grads = sla._forward_backward(reference.short_long_attention, inputs64, [g.double() for g in grads])
    for name, a, b, c in zip(["y", "cf"], ours, ref, ref64):
        assert a.dtype == dtype and a.is_cuda
        assert_close_to_oracle(name, a, b, c, dtype)
    q64 = inputs64[0].reshape(shape[0], shape[1], -1)
    lse_magnitude = torch.logsumexp(q64.transpose(1, 2) @ q64, -1).abs().max().item()
    names = [n for n, t in zip(["q", "x", "gamma", "pre", "mask", "alpha"], inputs) if t is not None]
    live = [t for t in inputs if t is not None]
    for name, a, b, c, t in zip(names, our_grads, ref_grads, ref64_grads, live):
        assert a.dtype == t.dtype and a.shape == t.shape, f"grad {name}: {a.dtype} {tuple(a.shape)}"
        assert_close_to_oracle(f"grad_{name}", a, b, c, dtype, recompute_magnitude=lse_magnitude)


@_needs_cuda("short_long_attention")
def test_attention_raw_op_outputs():
    """sa, ca and lse as the CPU kernel defines them: sa = x Aᵀ, ca = pre Aᵀ, lse = logsumexp_j E_ij."""
    q, x, gamma, pre, mask, alpha = _to_cuda(sla.sample_inputs((2, 8, 12, 20, 5, 7), torch.float32))
    y, cf, sa, ca, lse = torch.ops.inpaint_fast.short_long_attention_fwd(q, x, gamma, pre, mask, alpha, 0.5)
    B, Cq, H, W = q.shape
    qf = q.double().reshape(B, Cq, -1)
    energy = 0.5 * qf.transpose(1, 2) @ qf
    attn = energy.softmax(-1)
    torch.testing.assert_close(lse.double(), torch.logsumexp(energy, -1).reshape(B, H, W), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sa.double(), (x.double().reshape(B, 12, -1) @ attn.transpose(1, 2)).reshape(x.shape),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ca.double(), (pre.double().reshape(B, 20, -1) @ attn.transpose(1, 2)).reshape(pre.shape),
                               rtol=1e-5, atol=1e-5)
    assert lse.dtype == torch.float32 and lse.shape == (B, H, W)
    # Without pre the long-range outputs are (0,) tensors, as in the CPU kernel.
    _, cf0, _, ca0, _ = torch.ops.inpaint_fast.short_long_attention_fwd(q, x, gamma, None, None, None, 1.0)
    assert cf0.shape == (0,) and ca0.shape == (0,)


@_needs_cuda("short_long_attention")
@pytest.mark.parametrize("layout", ["channels_last", "transposed"])
def test_attention_layouts(layout):
    shape = (2, 3, 6, 5, 4, 7)
    base = _to_cuda(sla.sample_inputs(shape, torch.float32))
    laid = [sla._layout(t, layout) if t is not None and t.dim() == 4 else t for t in base]
    grads = [g.cuda() for g in sla._upstream(base, torch.float32)]
    fn = lambda *a: inpaint_fast.short_long_attention(*a, backend="cuda")  # noqa: E731
    outs, in_grads = sla._forward_backward(fn, laid, grads)
    ref_outs, ref_grads = sla._forward_backward(fn, base, grads)
    for a, b in zip(outs + in_grads, ref_outs + ref_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # same kernel, same order: bitwise


@_needs_cuda("short_long_attention")
@pytest.mark.parametrize("with_pre", [True, False], ids=["pre", "self"])
@pytest.mark.parametrize("requires_grad", [True, False])
def test_attention_opcheck(with_pre, requires_grad):
    inputs = _to_cuda(sla.sample_inputs((2, 3, 5, 4, 3, 4), torch.float32, with_pre))
    inputs = [t.requires_grad_(requires_grad) if t is not None else None for t in inputs]
    torch.library.opcheck(torch.ops.inpaint_fast.short_long_attention_fwd.default, (*inputs, 1.0))


@_needs_cuda("short_long_attention")
def test_attention_opcheck_backward_op():
    q, x, gamma, pre, mask, alpha = _to_cuda(sla.sample_inputs((2, 3, 5, 4, 3, 4), torch.float32))
    y, cf, sa, ca, lse = torch.ops.inpaint_fast.short_long_attention_fwd(q, x, gamma, pre, mask, alpha, 0.5)
    args = (torch.randn_like(y), torch.randn_like(cf), q, x, gamma, pre, mask, alpha, sa, ca, lse, 0.5)
    torch.library.opcheck(torch.ops.inpaint_fast.short_long_attention_bwd.default, args)


@_needs_cuda("short_long_attention")
def test_attention_deterministic():
    """No atomics: two runs give bitwise equal outputs and gradients."""
    inputs, grads = _attn_case((2, 32, 128, 128, 16, 16), torch.float32, True)
    fn = lambda *a: inpaint_fast.short_long_attention(*a, backend="cuda")  # noqa: E731
    first = sla._forward_backward(fn, inputs, grads)
    second = sla._forward_backward(fn, inputs, grads)
    for a, b in zip(first[0] + first[1], second[0] + second[1]):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------
# fusion_block
# ---------------------------------------------------------------------------------------------
# DFNet's six levels at a 256² input (B, c, h, w, H, W, A): fuse_0 (identity resize, c = 4) up to
# fuse_5 (c = 512, 32x down), plus the CPU test's odd sizes.
FUSION_SHAPES = [
    (2, 4, 256, 256, 256, 256, 3),
    (2, 64, 128, 128, 256, 256, 3),
    (2, 128, 64, 64, 256, 256, 3),
    (2, 256, 32, 32, 256, 256, 3),
    (2, 512, 16, 16, 256, 256, 3),
    (2, 512, 8, 8, 256, 256, 3),
] + fb.SHAPES
FUSION_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _fusion_forward(backend, feat, image, params, training):
    """Outputs and the updated running statistics, without autograd."""
    params = {k: v.clone() for k, v in params.items()}
    with torch.no_grad():
        outs = inpaint_fast.fusion_block(feat, image, *[params[k] for k in fb.PARAM_NAMES], training, backend=backend)
    return list(outs), [params[k] for k in sorted(fb.BUFFERS)]


@_needs_cuda("fusion_block")
@pytest.mark.parametrize("dtype", FUSION_DTYPES, ids=str)
@pytest.mark.parametrize("shape", FUSION_SHAPES, ids=lambda s: "B{}-c{}-{}x{}-from{}x{}-A{}".format(*s))
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_fusion_forward_matches_reference(dtype, shape, training):
    feat, image, params = fb.sample_inputs(shape, dtype, device="cuda")
    ours, our_stats = _fusion_forward("cuda", feat, image, params, training)
    ref, ref_stats = _fusion_forward("reference", feat, image, params, training)
    p64 = {k: v.double() for k, v in params.items()}
    ref64, ref64_stats = _fusion_forward("reference", feat.double(), image.double(), p64, training)
    for label, a, b, c in zip(["out", "alpha", "raw"], ours, ref, ref64):
        assert a.dtype == dtype and a.is_cuda, label
        assert_close_to_oracle(label, a, b, c, dtype)
    # Running statistics after the update (training) or unchanged (eval); BN sums over M pixels.
    M = shape[0] * shape[2] * shape[3]
    for label, a, b, c in zip(sorted(fb.BUFFERS), our_stats, ref_stats, ref64_stats):
        assert_close_to_oracle(label, a, b, c, dtype, summed_terms=M)


@_needs_cuda("fusion_block")
def test_fusion_raw_op_statistics():
    """The op returns the statistics it normalised with: running stats in eval (fresh copies), the
    biased batch statistics in training, float32 for half-precision inputs."""
    feat, image, params = fb.sample_inputs((2, 12, 7, 9, 10, 14, 3), torch.bfloat16, device="cuda")
    args = [params[k] for k in fb.PARAM_NAMES]
    outs = torch.ops.inpaint_fast.fusion_block_fwd(feat, image, *args, False, 1e-5)
    for got, name in zip(outs[3:], ["bn1_running_mean", "bn1_running_var", "bn2_running_mean", "bn2_running_var"]):
        assert got.dtype == torch.float32
        assert got.data_ptr() != params[name].data_ptr()
        torch.testing.assert_close(got, params[name].float())
    outs = torch.ops.inpaint_fast.fusion_block_fwd(feat, image, *args, True, 1e-5)
    assert all(t.dtype == torch.float32 for t in outs[3:])
    assert (outs[4] >= 0).all() and (outs[6] >= 0).all()


@_needs_cuda("fusion_block")
@pytest.mark.parametrize("dtype", FUSION_DTYPES, ids=str)
@pytest.mark.parametrize("shape", FUSION_SHAPES, ids=lambda s: "B{}-c{}-{}x{}-from{}x{}-A{}".format(*s))
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_fusion_backward_matches_reference(dtype, shape, training):
    """Forward and every gradient (feat, image, the 12 trainable parameters), as the CPU test."""
    feat, image, params = fb.sample_inputs(shape, dtype, device="cuda")
    grads = [g.cuda() for g in fb._grads(feat.cpu(), shape[-1], dtype)]
    fn = lambda *a: inpaint_fast.fusion_block(*a, backend="cuda")  # noqa: E731
    ours = fb._run(fn, feat, image, params, training, grads)
    ref = fb._run(reference.fusion_block, feat, image, params, training, grads)
    p64 = {k: v.double() for k, v in params.items()}
    ref64 = fb._run(reference.fusion_block, feat.double(), image.double(), p64, training, [g.double() for g in grads])
    labels = ["out", "alpha", "raw", "grad_feat", "grad_image"]
    labels += [f"grad_{k}" for k in fb.PARAM_NAMES if k not in fb.BUFFERS] + sorted(fb.BUFFERS)
    param_grads = [c for label, c in zip(labels, sum(ref64, [])) if label.startswith("grad_") and "image" not in
                   label and "feat" not in label]
    param_scale = max(t.abs().max().item() for t in param_grads)
    M = shape[0] * shape[2] * shape[3]
    for label, a, b, c in zip(labels, sum(ours, []), sum(ref, []), sum(ref64, [])):
        assert a.dtype == dtype and a.is_cuda, label
        is_param = any(c is t for t in param_grads)
        assert_close_to_oracle(label, a, b, c, dtype, scale=param_scale if is_param else 0.0,
                               summed_terms=M if is_param else 1)


@_needs_cuda("fusion_block")
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_fusion_opcheck(training):
    feat, image, params = fb.sample_inputs((2, 5, 6, 7, 12, 14, 3), torch.float32, device="cuda")
    feat.requires_grad_(True)
    args = (feat, image, *[params[k] for k in fb.PARAM_NAMES], training, 1e-5)
    torch.library.opcheck(torch.ops.inpaint_fast.fusion_block_fwd.default, args)


@_needs_cuda("fusion_block")
def test_fusion_opcheck_backward_op():
    feat, image, params = fb.sample_inputs((2, 5, 6, 7, 12, 14, 3), torch.float32, device="cuda")
    plist = [params[k] for k in fb.PARAM_NAMES]
    outs = torch.ops.inpaint_fast.fusion_block_fwd(feat, image, *plist, True, 1e-5)
    stats = list(outs[3:])
    saved = plist[:6] + stats[:2] + plist[8:12] + stats[2:] + plist[14:]
    args = (torch.randn_like(outs[0]), torch.randn_like(outs[1]), torch.randn_like(outs[2]), feat, image, *saved,
            True, 1e-5)
    torch.library.opcheck(torch.ops.inpaint_fast.fusion_block_bwd.default, args)


# ---------------------------------------------------------------------------------------------
# Envelope facts that hold on every machine
# ---------------------------------------------------------------------------------------------
def test_cuda_backend_is_not_in_auto():
    """`auto` picks only measured winners; no CUDA-backend measurement exists yet."""
    assert all("cuda" not in prefs for prefs in AUTO_PREFERENCE.values())


@pytest.mark.parametrize("op", ["short_long_attention", "fusion_block"])
def test_cuda_backend_states_why_it_cannot_serve(op):
    """On CPU tensors (or without CUDA kernels) the cuda backend refuses with a reason."""
    reason = registry(op).why_not("cuda", torch.device("cpu"), torch.float32)
    assert reason and "cuda" in reason, reason
