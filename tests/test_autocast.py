"""Autocast policy of the ops (inpaint_fast/ops/_autocast.py).

Inside ``torch.autocast`` the attention computes in the autocast dtype (lower precision, like
SDPA) and the fusion block in its parameters' dtype (fp32, like batch_norm). The checks are exact:
an autocast call must give bit for bit what the same backend gives on inputs cast by hand, so a
policy that casts the wrong inputs, forgets one, or leaves autocast on inside the op fails.
"""

from __future__ import annotations

import pytest
import torch

import inpaint_fast
from conftest import CPU_BACKENDS
from inpaint_fast.fusion_block_params import RUNNING_STATS
from op_samples import attention_sample_inputs as attention_inputs
from op_samples import fusion_params_clone
from op_samples import fusion_sample_inputs as fusion_inputs

BACKENDS = ["reference"] + [b for b in CPU_BACKENDS if b != "triton"]  # the interpreter has no bf16


def _grads(outputs, inputs):
    loss = sum((o.float() * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in outputs)
    return torch.autograd.grad(loss, inputs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_runs_in_the_autocast_dtype(backend):
    """Mixed fp32/bf16 inputs from an autocast region: every input is cast to bf16 first."""
    q, x, gamma, pre, mask, alpha = attention_inputs((2, 3, 5, 4, 3, 5), torch.float32)
    q_bf16 = q.to(torch.bfloat16)  # what a conv inside autocast hands over
    leaves = [t.clone().requires_grad_(True) for t in (x, gamma, pre, mask, alpha)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, cf = inpaint_fast.short_long_attention(q_bf16, *leaves[:2], *leaves[2:], backend=backend)
    assert y.dtype == cf.dtype == torch.bfloat16
    by_hand = [t.detach().to(torch.bfloat16).requires_grad_(True) for t in (x, gamma, pre, mask, alpha)]
    y_ref, cf_ref = inpaint_fast.short_long_attention(q_bf16, *by_hand[:2], *by_hand[2:], backend=backend)
    assert torch.equal(y, y_ref) and torch.equal(cf, cf_ref)
    # Gradients come back through the casts in the leaves' own dtype (fp32), with the same values.
    got = _grads([y, cf], leaves)
    want = _grads([y_ref, cf_ref], by_hand)
    for name, g, w in zip(("x", "gamma", "pre", "mask", "alpha"), got, want):
        assert g.dtype == torch.float32, name
        assert torch.equal(g, w.float()), name


def test_attention_outside_autocast_keeps_the_dtype_rules():
    """Without autocast, mixed dtypes are still an error naming the arguments (no silent casting)."""
    q, x, gamma, _, _, _ = attention_inputs((1, 2, 3, 3, 2, 2), torch.float32)
    with pytest.raises((TypeError, ValueError), match="q"):
        inpaint_fast.short_long_attention(q.to(torch.bfloat16), x, gamma)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_fusion_block_runs_in_fp32_under_autocast(backend, training):
    """bf16 features from an autocast region: the block casts them up and runs in fp32 exactly."""
    feat, image, params = fusion_inputs((2, 5, 6, 7, 12, 14, 3), torch.float32)
    params_autocast = fusion_params_clone(params)  # running stats are updated in place
    feat_bf16 = feat.to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = inpaint_fast.fusion_block(feat_bf16, image, params_autocast, training=training, backend=backend)
    want = inpaint_fast.fusion_block(feat_bf16.float(), image, params, training=training, backend=backend)
    for name, got, ref in zip(("out", "alpha", "raw"), out, want):
        assert got.dtype == torch.float32, name
        assert torch.equal(got, ref), name
    for name in RUNNING_STATS:
        assert torch.equal(getattr(params_autocast, name), getattr(params, name)), name


def test_attention_compiles_fullgraph_under_autocast():
    torch._dynamo.reset()
    q, x, gamma, pre, mask, alpha = attention_inputs((1, 2, 4, 3, 3, 3), torch.float32)
    backend = BACKENDS[-1]

    def step(q, x, gamma, pre, mask, alpha):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, cf = inpaint_fast.short_long_attention(q, x, gamma, pre, mask, alpha, backend=backend)
        return y, cf

    eager = step(q, x, gamma, pre, mask, alpha)
    compiled = torch.compile(step, fullgraph=True)(q, x, gamma, pre, mask, alpha)
    for e, c in zip(eager, compiled):
        assert c.dtype == torch.bfloat16
        assert torch.equal(c, e)
