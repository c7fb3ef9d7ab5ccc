"""The Triton kernels of short_long_attention, called directly through their launchers.

Forward against the reference; backward against ``torch.autograd.grad`` through the reference
(sa/ca/lse come from the Triton forward, as the op's autograd passes them); an fp64 gradcheck of the
kernels' own backward. Without a GPU the kernels run through the Triton interpreter (selected
below, before the kernel module is imported), in float64/float32 (and float16, whose dots it runs
correctly) on small odd shapes; the bfloat16, TF32 and large-shape checks need a GPU.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    # The interpreter is chosen when a kernel is decorated, i.e. when the module is first imported.
    os.environ.setdefault("TRITON_INTERPRET", "1")

triton = pytest.importorskip("triton")

from inpaint_fast import reference  # noqa: E402
from inpaint_fast.triton_kernels import interpreter_mode  # noqa: E402
from inpaint_fast.triton_kernels import short_long_attention as kernels  # noqa: E402
from op_samples import attention_sample_inputs, laid_out  # noqa: E402

INTERPRET = interpreter_mode()
if INTERPRET:
    from triton.runtime.interpreter import InterpretedFunction

    if not isinstance(triton.language.zeros, InterpretedFunction):
        # triton's own @jit helpers (tl.zeros, ...) were decorated when triton was first imported.
        raise RuntimeError(
            "TRITON_INTERPRET=1 was set after triton had been imported; the interpreter then fails with "
            "\"Cannot call @triton.jit'd outside of the scope of a kernel\". Set it in the environment or at "
            "the top of tests/conftest.py, before anything imports inpaint_fast or triton."
        )

ON_GPU = torch.cuda.is_available() and not INTERPRET
DEVICE = "cuda" if ON_GPU else "cpu"
needs_gpu = pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU (the interpreter cannot compute bf16/TF32)")

# (B, Cq, C, Cp, H, W): N = 1, 7, 33, 97, 250 (tails of the 32-wide interpreter tiles), C and Cp
# not powers of two, Cq from 1 to 32.
SHAPES = [
    (1, 3, 12, 20, 1, 1),
    (2, 3, 12, 20, 1, 7),
    (1, 8, 20, 12, 3, 11),
    (2, 1, 12, 5, 97, 1),
    (1, 32, 20, 12, 10, 25),
]
SHAPE_IDS = ["B{}-Cq{}-C{}-Cp{}-{}x{}".format(*s) for s in SHAPES]


def upstream(x, pre, dtype):
    gy = torch.randn(x.shape, dtype=torch.float64).to(dtype).to(DEVICE)
    gcf = torch.randn(pre.shape, dtype=torch.float64).to(dtype).to(DEVICE) if pre is not None else None
    return gy, gcf


def oracle(inputs, gy, gcf, scale):
    """fp64 reference: outputs (y, cf, sa, ca, lse) and gradients of every input, via autograd."""
    live = [None if t is None else t.detach().double().requires_grad_(True) for t in inputs]
    q, x, gamma, pre, mask, alpha = live
    y, cf = reference.short_long_attention(q, x, gamma, pre, mask, alpha, scale=scale)
    B, Cq = q.shape[:2]
    qf = q.detach().reshape(B, Cq, -1)
    energy = scale * torch.bmm(qf.transpose(1, 2), qf)
    attn = torch.softmax(energy, -1)

    def attend(v):
        return torch.bmm(v.detach().reshape(B, v.shape[1], -1), attn.transpose(1, 2)).reshape(v.shape)

    sa = attend(x)
    ca = None if pre is None else attend(pre)
    lse = torch.logsumexp(energy, -1).reshape(B, *q.shape[2:])
    outs, grads = [y], [gy.double()]
    if pre is not None:
        outs.append(cf)
        grads.append(gcf.double())
    req = [t for t in live if t is not None]
    in_grads = torch.autograd.grad(outs, req, grads)
    it = iter(in_grads)
    grad_list = [None if t is None else next(it) for t in live]
    return (y.detach(), None if cf is None else cf.detach(), sa, ca, lse), grad_list


def assert_close(name, got, want, dtype, rel=None):
    """fp64: 1e-10 relative to the magnitude; fp32: ~1e-5 (the kernels accumulate in fp32)."""
    assert tuple(got.shape) == tuple(want.shape), f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    if rel is None:
        rel = 1e-10 if dtype == torch.float64 else 2e-5
    rel = max(rel, 4 * torch.finfo(got.dtype).eps)  # a result stored in a narrower dtype is rounded
    want = want.double().cpu()
    magnitude = max(1.0, want.abs().max().item()) if want.numel() else 1.0
    err = (got.double().cpu() - want).abs().max().item() if want.numel() else 0.0
    assert err <= rel * magnitude, f"{name}: max error {err:.3e} > {rel * magnitude:.3e} ({dtype})"


def run_and_check(inputs, dtype, scale=1.0, rel=None, grad_layout="contiguous"):
    q, x, gamma, pre, mask, alpha = inputs
    gy, gcf = upstream(x, pre, dtype)
    (y_r, cf_r, sa_r, ca_r, lse_r), grads_r = oracle(inputs, gy, gcf, scale)

    y, cf, sa, ca, lse = kernels.short_long_attention_fwd(q, x, gamma, pre, mask, alpha, scale)
    for t in (y, cf, sa, ca, lse):
        assert t.is_contiguous()
    assert y.dtype == sa.dtype == x.dtype
    assert lse.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert_close("y", y, y_r, dtype, rel)
    assert_close("sa", sa, sa_r, dtype, rel)
    assert_close("lse", lse, lse_r, dtype, rel)
    if pre is None:
        assert cf.shape == (0,) and ca.shape == (0,)
    else:
        assert_close("cf", cf, cf_r, dtype, rel)
        assert_close("ca", ca, ca_r, dtype, rel)

    gy_in = laid_out(gy, grad_layout)
    gcf_in = laid_out(gcf, grad_layout) if pre is not None else torch.empty(0, dtype=dtype, device=DEVICE)
    got = kernels.short_long_attention_bwd(gy_in, gcf_in, q, x, gamma, pre, mask, alpha, sa, ca, lse, scale)
    names = ["q", "x", "gamma", "pre", "mask", "alpha"]
    for name, g, t, r in zip(names, got, inputs, grads_r):
        if t is None:
            assert g.shape == (0,), f"grad_{name} must be empty without pre"
            continue
        assert g.dtype == t.dtype, f"grad_{name}: dtype {g.dtype} != {t.dtype}"
        assert g.is_contiguous()
        assert_close(f"grad_{name}", g, r, dtype, rel)
    return got


# ---- parity with the reference ---------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("with_pre", [True, False], ids=["pre", "self"])
def test_matches_reference(dtype, shape, with_pre):
    inputs = attention_sample_inputs(shape, dtype, with_pre, device=DEVICE)
    run_and_check(inputs, dtype, scale=1.0 if shape[1] != 8 else 0.37)


@pytest.mark.parametrize("layout", ["channels_last", "transposed"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_layouts(layout, dtype):
    """channels_last and non-contiguous inputs and upstream gradients are read through strides."""
    inputs = attention_sample_inputs((2, 8, 12, 20, 5, 7), dtype, layout=layout, device=DEVICE)
    run_and_check(inputs, dtype, grad_layout=layout)


def test_mixed_layouts_and_gate_dtypes():
    """Each tensor with its own layout; gates in another dtype (grads keep it); a float32 mask."""
    q, x, gamma, pre, mask, alpha = attention_sample_inputs((2, 3, 12, 20, 6, 5), torch.float64, device=DEVICE,
                                                            gate_dtype=torch.float32, gates=(0.375, -0.625))
    q = laid_out(q, "channels_last")
    x = laid_out(x, "transposed")
    mask = mask.to(torch.float32)
    inputs = (q, x, gamma, pre, mask, alpha)
    got = run_and_check(inputs, torch.float64)
    assert got[2].dtype == torch.float32 and got[5].dtype == torch.float32 and got[4].dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_value_channels_in_several_chunks(monkeypatch, dtype):
    """Channels wider than one chunk: chunked forward, chunk loop in dP, separate dK launch.
    Cp > C also leaves the x stream empty in the later chunks."""
    monkeypatch.setattr(kernels, "MAX_BLOCK_V", 16)
    run_and_check(attention_sample_inputs((2, 8, 20, 40, 5, 9), dtype, device=DEVICE), dtype, scale=0.5)
    run_and_check(attention_sample_inputs((1, 3, 36, 5, 3, 7), dtype, with_pre=False, device=DEVICE), dtype)


def test_wide_head_dim():
    """Cq = 128, the widest head dimension."""
    inputs = attention_sample_inputs((1, 128, 12, 20, 3, 5), torch.float64, device=DEVICE)
    run_and_check(inputs, torch.float64, scale=0.125)


def test_zero_gates():
    """PIC initialises gamma = alpha = 0: y == x exactly, and the gate gradients are still right."""
    inputs = attention_sample_inputs((2, 3, 12, 20, 3, 5), torch.float64, gates=(0.0, 0.0), device=DEVICE)
    got = run_and_check(inputs, torch.float64)
    y = kernels.short_long_attention_fwd(*inputs, 1.0)[0]
    assert torch.equal(y, inputs[1])
    assert got[2].abs().item() > 0 and got[5].abs().item() > 0


def test_backward_is_deterministic():
    q, x, gamma, pre, mask, alpha = attention_sample_inputs((2, 8, 12, 20, 7, 9), torch.float32, device=DEVICE)
    y, cf, sa, ca, lse = kernels.short_long_attention_fwd(q, x, gamma, pre, mask, alpha, 1.0)
    gy, gcf = upstream(x, pre, torch.float32)
    first = kernels.short_long_attention_bwd(gy, gcf, q, x, gamma, pre, mask, alpha, sa, ca, lse, 1.0)
    second = kernels.short_long_attention_bwd(gy, gcf, q, x, gamma, pre, mask, alpha, sa, ca, lse, 1.0)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


# ---- gradcheck of the kernels' own backward --------------------------------------------------
class _TritonShortLongAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, x, gamma, pre, mask, alpha, scale):
        y, cf, sa, ca, lse = kernels.short_long_attention_fwd(q, x, gamma, pre, mask, alpha, scale)
        ctx.save_for_backward(q, x, gamma, pre, mask, alpha, sa, ca, lse)
        ctx.scale = scale
        return y, cf

    @staticmethod
    def backward(ctx, grad_y, grad_cf):
        q, x, gamma, pre, mask, alpha, sa, ca, lse = ctx.saved_tensors
        if pre is None:
            grad_cf = torch.empty(0, dtype=x.dtype, device=x.device)
        grads = kernels.short_long_attention_bwd(grad_y.contiguous(), grad_cf.contiguous(), q, x, gamma, pre,
                                                 mask, alpha, sa, ca, lse, ctx.scale)
        if pre is None:
            grads = grads[:3] + (None, None, None)
        return (*grads, None)


@pytest.mark.parametrize("with_pre", [True, False], ids=["pre", "self"])
def test_gradcheck_fp64(with_pre):
    inputs = attention_sample_inputs((2, 2, 3, 2, 2, 3), torch.float64, with_pre, device=DEVICE)
    inputs = tuple(None if t is None else t.detach().requires_grad_(True) for t in inputs)

    def fn(*args):
        y, cf = _TritonShortLongAttention.apply(*args, 0.8)
        return (y, cf) if with_pre else y

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-6)


# ---- half precision (bf16 and the large shape on a GPU only) and TF32 -----------------------
HALF_SHAPES = [(2, 3, 12, 20, 1, 7), (1, 8, 20, 12, 10, 25), (2, 32, 128, 128, 16, 16)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("shape", HALF_SHAPES, ids=["B{}-Cq{}-C{}-Cp{}-{}x{}".format(*s) for s in HALF_SHAPES])
@pytest.mark.parametrize("with_pre", [True, False], ids=["pre", "self"])
def test_half_precision(dtype, shape, with_pre):
    """fp16 operands / fp32 accumulation. The interpreter runs fp16 dots correctly (only the two small
    shapes, to stay fast); its bf16 arithmetic is wrong, so bf16 needs a GPU."""
    if not ON_GPU and (dtype == torch.bfloat16 or shape[2] > 64):
        pytest.skip("needs a CUDA GPU (bf16 / a large shape under the interpreter)")
    inputs = attention_sample_inputs(shape, dtype, with_pre, gate_dtype=torch.float32, device=DEVICE)
    run_and_check(inputs, dtype, rel=1e-2 if dtype == torch.float16 else 6e-2)


# ---- the GPU run (benchmarks/gpu_session.sh): the public op, cases in tests/gpu_cases.py --------
# fp32 at both matmul precisions, fp16, bf16 at PIC's shapes and odd N, poisoned outputs, bitwise
# reruns, opcheck and torch.compile; on the CPU only with INPAINT_FAST_GPU_TESTS=dry.
import gpu_cases as gc  # noqa: E402

GPU_RUN = gc.gpu_test("short_long_attention", "triton")


@GPU_RUN
@pytest.mark.parametrize("case", gc.attn_cases(), ids=gc.attn_id)
def test_gpu_run_attention(case):
    gc.attention_parity("triton", case)


@GPU_RUN
def test_gpu_run_attention_opcheck():
    gc.attention_opcheck("triton")


@GPU_RUN
def test_gpu_run_attention_compile_fullgraph():
    gc.attention_compile("triton")
