"""What fp32 attention at PyTorch's default matmul precision ("highest") costs in accuracy on a GPU.

There the Triton kernels multiply fp32 operands with ``input_precision="tf32x3"`` (3xTF32: each
operand split into a TF32 head and a TF32 tail, three tensor-core products, fp32 accumulation)
instead of FMA dots (``"ieee"``), which spill heavily at every useful tile on sm_90
(``make gpu-compile-check``). Neither the interpreter nor a CPU computes 3xTF32, so this file
emulates it bit for bit in the operand rounding (``cvt.rna.tf32.f32``: round to nearest, ties away,
10 explicit mantissa bits) and in the accumulator (fp32, rounded after every k = 8 step of the
MMA), puts that dot into the attention's formula (forward and, through autograd, backward), and
applies tests/conftest.py's fp32 policy — error against the fp64 oracle at most twice PyTorch's
own fp32 error plus one epsilon at the output's magnitude — at the GPU tests' shapes.

The control: the same formula with plain TF32 dots (what "high" selects) must *fail* that policy,
so the policy is tight enough to tell the two apart.

The kernels' other error sources (online softmax, exp2 with the scale folded in, P recomputed
from lse in the backward) do not depend on the dot precision; the interpreter tests check them
with exact dots. The GPU run measures the compiled kernels themselves (benchmarks/NOTES.md).
"""

from __future__ import annotations

import pytest
import torch

from conftest import assert_close_to_oracle

K_STEP = 8  # k of one TF32 MMA (m16n8k8 on sm_80, wgmma k = 8 on sm_90)


def tf32(x: torch.Tensor) -> torch.Tensor:
    """fp32 → TF32 (kept in fp32), as cvt.rna.tf32.f32: add half a TF32 ulp to the magnitude bits,
    clear the 13 low mantissa bits."""
    bits = x.contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32).reshape(x.shape)


def _mma_accumulate(a: torch.Tensor, b: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
    """acc + a @ b with fp32 rounding after every K_STEP-deep block (the products of TF32 values
    are exact in fp32; each MMA adds its block's sum into the fp32 accumulator)."""
    for k0 in range(0, a.shape[-1], K_STEP):
        part = a[..., k0 : k0 + K_STEP].double() @ b[..., k0 : k0 + K_STEP, :].double()
        acc = (acc.double() + part).float()
    return acc


def dot_tf32x3(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Triton's tf32x3 dot of fp32 a (…, M, K) and b (…, K, N): small·big + big·small, then big·big,
    into one fp32 accumulator."""
    a_big, b_big = tf32(a), tf32(b)
    a_small, b_small = tf32(a - a_big), tf32(b - b_big)
    acc = torch.zeros(a.shape[:-1] + b.shape[-1:], dtype=torch.float32)
    acc = _mma_accumulate(a_small, b_big, acc)
    acc = _mma_accumulate(a_big, b_small, acc)
    return _mma_accumulate(a_big, b_big, acc)


def dot_tf32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    acc = torch.zeros(a.shape[:-1] + b.shape[-1:], dtype=torch.float32)
    return _mma_accumulate(tf32(a), tf32(b), acc)


def _dot_function(dot):
    class Dot(torch.autograd.Function):
        """a @ b whose forward and backward products all use ``dot`` (the kernels' backward dots
        run at the same precision as the forward's)."""

        @staticmethod
        def forward(ctx, a, b):
            ctx.save_for_backward(a, b)
            return dot(a, b)

        @staticmethod
        def backward(ctx, g):
            a, b = ctx.saved_tensors
            return dot(g, b.transpose(-1, -2)), dot(a.transpose(-1, -2), g)

    return Dot.apply


def attention(q, x, gamma, pre, mask, alpha, matmul):
    """PIC's short+long attention (inpaint_fast.reference's formula) with every product through
    ``matmul``: E = qᵀq, A = softmax(E), sa = x Aᵀ, ca = pre Aᵀ."""
    B, Cq, H, W = q.shape
    qf = q.reshape(B, Cq, -1)
    attn = torch.softmax(matmul(qf.transpose(1, 2), qf), -1)
    sa = matmul(x.reshape(B, x.shape[1], -1), attn.transpose(1, 2)).reshape(x.shape)
    ca = matmul(pre.reshape(B, pre.shape[1], -1), attn.transpose(1, 2)).reshape(pre.shape)
    y = gamma.reshape(()) * sa + x
    cf = alpha.reshape(()) * (1 - mask) * ca + mask * pre
    return y, cf


def _inputs(shape, seed):
    g = torch.Generator().manual_seed(seed)
    B, Cq, C, Cp, H, W = shape
    q = (Cq**-0.25) * torch.randn(B, Cq, H, W, generator=g, dtype=torch.float64)
    x = torch.randn(B, C, H, W, generator=g, dtype=torch.float64)
    pre = torch.randn(B, Cp, H, W, generator=g, dtype=torch.float64)
    mask = torch.rand(B, 1, H, W, generator=g, dtype=torch.float64)
    gamma, alpha = torch.tensor([0.7], dtype=torch.float64), torch.tensor([-0.4], dtype=torch.float64)
    gy = torch.randn(B, C, H, W, generator=g, dtype=torch.float64)
    gcf = torch.randn(B, Cp, H, W, generator=g, dtype=torch.float64)
    return [q, x, gamma, pre, mask, alpha], [gy, gcf]


def _run(inputs, grads, dtype, matmul):
    live = [t.to(dtype).requires_grad_(True) for t in inputs]
    outs = attention(*live, matmul=matmul)
    in_grads = torch.autograd.grad(outs, live, [g.to(dtype) for g in grads])
    return [o.detach() for o in outs] + list(in_grads)


NAMES = ["y", "cf", "grad_q", "grad_x", "grad_gamma", "grad_pre", "grad_mask", "grad_alpha"]
# The GPU tests' fp32 shapes (inpaint_fast/triton_kernels/gpu_run_shapes.py) at B = 2: N = 1024, and an odd N = 1025.
SHAPES = [(2, 32, 128, 128, 32, 32), (1, 32, 128, 128, 25, 41)]


def _errors(shape, seed, matmul):
    inputs, grads = _inputs(shape, seed)
    ours = _run(inputs, grads, torch.float32, _dot_function(matmul))
    ref32 = _run(inputs, grads, torch.float32, torch.matmul)
    ref64 = _run(inputs, grads, torch.float64, torch.matmul)
    q64 = inputs[0].reshape(shape[0], shape[1], -1)
    lse = torch.logsumexp(q64.transpose(1, 2) @ q64, -1).abs().max().item()
    return ours, ref32, ref64, lse


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-Cq{}-C{}-Cp{}-{}x{}".format(*s))
def test_tf32x3_meets_the_fp32_policy(shape):
    ours, ref32, ref64, lse = _errors(shape, 0, dot_tf32x3)
    for i, (name, a, b, c) in enumerate(zip(NAMES, ours, ref32, ref64)):
        # as tests/test_short_long_attention.py: gradients get the recompute allowance
        assert_close_to_oracle(name, a, b, c, torch.float32, recompute_magnitude=lse if i >= 2 else 0.0)


def test_plain_tf32_fails_the_fp32_policy():
    """The control: TF32's 10-bit operands are ~1000x coarser than fp32, far outside the policy."""
    shape = SHAPES[0]
    ours, ref32, ref64, lse = _errors(shape, 0, dot_tf32)
    failed = []
    for i, (name, a, b, c) in enumerate(zip(NAMES, ours, ref32, ref64)):
        try:
            assert_close_to_oracle(name, a, b, c, torch.float32, recompute_magnitude=lse if i >= 2 else 0.0)
        except AssertionError:
            failed.append(name)
    assert {"y", "cf"} <= set(failed), f"plain TF32 passed the fp32 policy for {set(NAMES) - set(failed)}"


def test_tf32_rounding_matches_the_hardware_rule():
    """cvt.rna: nearest, ties away from zero, 10 explicit mantissa bits; exact TF32 values stay."""
    one_ulp = 2.0**-10
    x = torch.tensor([1.0, 1.0 + one_ulp, 1.0 + one_ulp / 2, -(1.0 + one_ulp / 2), 1.0 + one_ulp / 4, 3.0e-3])
    got = tf32(x)
    assert got[0] == 1.0 and got[1] == 1.0 + one_ulp
    assert got[2] == 1.0 + one_ulp and got[3] == -(1.0 + one_ulp)  # ties away from zero
    assert got[4] == 1.0
    assert abs(got[5].item() - 3.0e-3) <= 3.0e-3 * 2.0**-11
