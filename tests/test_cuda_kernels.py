"""The CUDA C++ backend (csrc/cuda/) against the reference, on a GPU.

The parity tests are the GPU run's (tests/gpu_cases.py: cases, poisoning, bitwise reruns,
reporting; ``benchmarks/gpu_session.sh`` selects them with ``-k gpu_run``): PIC's attention at
N = 1024, 4096 and 16384, odd N = 1, 97, 1025, channel counts that are not PIC's; DFNet's six
fusion levels at 256² with c_alpha = 3 and 1, odd sizes; fp32 at both matmul precisions, fp16
and bf16. Without a GPU (or with an extension built without CUDA kernels) they skip with the
reason, unless INPAINT_FAST_GPU_TESTS=require makes that a failure or =dry runs them on the CPU
with the ``cpu`` backend in place of ``cuda``. The envelope tests at the bottom run everywhere.
"""

from __future__ import annotations

import pytest
import torch

import gpu_cases as gc
import inpaint_fast
from inpaint_fast.backends import AUTO_PREFERENCE, registry
from inpaint_fast.fusion_block_params import RUNNING_STATS
from op_samples import (
    attention_forward_backward,
    attention_sample_inputs,
    attention_upstream,
    fusion_sample_inputs,
    laid_out,
)

ATTN = gc.gpu_test("short_long_attention", "cuda")
FUSION = gc.gpu_test("fusion_block", "cuda")


# ---------------------------------------------------------------------------------------------
# short_long_attention
# ---------------------------------------------------------------------------------------------
@ATTN
@pytest.mark.parametrize("case", gc.attn_cases(), ids=gc.attn_id)
def test_gpu_run_attention(case):
    gc.attention_parity("cuda", case)


@ATTN
def test_gpu_run_attention_raw_op_outputs():
    """sa, ca and lse as the CPU kernel defines them: sa = x Aᵀ, ca = pre Aᵀ, lse = logsumexp_j E_ij."""
    gc.require("short_long_attention", "cuda")
    q, x, gamma, pre, mask, alpha = attention_sample_inputs((2, 8, 12, 20, 5, 7), torch.float32, device=gc.DEVICE)
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


@ATTN
@pytest.mark.parametrize("layout", ["channels_last", "transposed"])
def test_gpu_run_attention_layouts_bitwise(layout):
    """The same kernel on a strided copy of the inputs gives the contiguous result bit for bit."""
    name = gc.require("short_long_attention", "cuda")
    shape = (2, 3, 6, 5, 4, 7)
    base = attention_sample_inputs(shape, torch.float32, device=gc.DEVICE)
    laid = [laid_out(t, layout) for t in base]
    grads = attention_upstream(base, torch.float32)
    fn = lambda *a: inpaint_fast.short_long_attention(*a, backend=name)  # noqa: E731
    outs, in_grads = attention_forward_backward(fn, laid, grads)
    ref_outs, ref_grads = attention_forward_backward(fn, base, grads)
    for a, b in zip(outs + in_grads, ref_outs + ref_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@ATTN
def test_gpu_run_attention_opcheck():
    gc.attention_opcheck("cuda")


@ATTN
def test_gpu_run_attention_compile_fullgraph():
    gc.attention_compile("cuda")


# ---------------------------------------------------------------------------------------------
# fusion_block
# ---------------------------------------------------------------------------------------------
@FUSION
@pytest.mark.parametrize("case", gc.fusion_cases(), ids=gc.fusion_id)
def test_gpu_run_fusion(case):
    gc.fusion_parity("cuda", case)


@FUSION
def test_gpu_run_fusion_raw_op_statistics():
    """The op returns the statistics it normalised with: running stats in eval (fresh copies), the
    biased batch statistics in training, float32 for half-precision inputs."""
    gc.require("fusion_block", "cuda")
    dtype = torch.float32 if gc.DRY else torch.bfloat16
    feat, image, params = fusion_sample_inputs((2, 12, 7, 9, 10, 14, 3), dtype, device=gc.DEVICE)
    outs = torch.ops.inpaint_fast.fusion_block_fwd(feat, image, *params, False, 1e-5)
    for got, name in zip(outs[3:], RUNNING_STATS):
        assert got.dtype == torch.float32
        assert got.data_ptr() != getattr(params, name).data_ptr()
        torch.testing.assert_close(got, getattr(params, name).float())
    outs = torch.ops.inpaint_fast.fusion_block_fwd(feat, image, *params, True, 1e-5)
    assert all(t.dtype == torch.float32 for t in outs[3:])
    assert (outs[4] >= 0).all() and (outs[6] >= 0).all()


@FUSION
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_gpu_run_fusion_opcheck(training):
    gc.fusion_opcheck("cuda", training)


@FUSION
def test_gpu_run_fusion_compile_fullgraph():
    gc.fusion_compile("cuda")


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
