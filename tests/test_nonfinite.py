"""Non-finite values and degenerate inputs: the policy of inpaint_fast/ops/_validation.py, held
for every backend that runs here.

* NaN or ±Inf in a feature input (``x``, ``pre``; ``feat``, ``image``) propagates: every output and
  gradient element the reference makes non-finite is non-finite in every backend (none hides one),
  and elements finite in both agree. A fused backend may make a few more elements non-finite.
* Non-finite ``q``, gates, fusion-block weights or BN statistics, and a negative running
  variance, are ValueErrors naming the argument (eager mode; INPAINT_FAST_CHECK_VALUES=0 skips).
* All-hole and all-known masks, and a zero running variance, are ordinary inputs.
"""

from __future__ import annotations

import pytest
import torch

import inpaint_fast
from conftest import CPU_BACKENDS, assert_close_to_oracle
from inpaint_fast.fusion_block_params import PARAM_NAMES, RUNNING_STATS, TRAINABLE
from op_samples import ATTENTION_INPUTS, FUSION_RESULTS, fusion_params_clone
from op_samples import attention_sample_inputs as attention_inputs
from op_samples import fusion_sample_inputs as fusion_inputs

ATTENTION_SHAPE = (2, 3, 5, 4, 4, 5)  # (B, Cq, C, Cp, H, W)
FUSION_SHAPE = (2, 5, 6, 7, 12, 14, 3)  # (B, c, h, w, H, W, A)
BAD = [float("nan"), float("inf"), -float("inf")]
BAD_IDS = ["nan", "+inf", "-inf"]


def _attention(backend, inputs):
    """Outputs and every gradient of a sum of the outputs (None where an input has none)."""
    leaves = [t.detach().clone().requires_grad_(True) if t is not None else None for t in inputs]
    y, cf = inpaint_fast.short_long_attention(*leaves, backend=backend)
    (y.sum() + (cf.sum() if cf is not None else 0)).backward()
    return [y.detach(), None if cf is None else cf.detach()] + [t.grad if t is not None else None for t in leaves]


def _fusion(backend, feat, image, params, training):
    feat = feat.detach().clone().requires_grad_(True)
    image = image.detach().clone().requires_grad_(True)
    p = fusion_params_clone(params, leaves=True)
    outs = inpaint_fast.fusion_block(feat, image, p, training=training, backend=backend)
    sum(o.sum() for o in outs).backward()
    return list(outs) + [feat.grad, image.grad] + [getattr(p, k).grad for k in TRAINABLE] + [
        getattr(p, k).detach() for k in RUNNING_STATS]


# How far (in pixels, any channel of the same image) a fused backend's extra non-finite elements may
# lie from the reference's: the fusion block's backward reads a 3x3 window of a 3x3 window.
SPREAD = 2


def _near(bad: torch.Tensor, radius: int) -> torch.Tensor:
    """(B, C, H, W) bool: within ``radius`` pixels of a True of ``bad`` in the same image."""
    any_channel = bad.any(dim=1, keepdim=True).to(torch.float64)
    grown = torch.nn.functional.max_pool2d(any_channel, 2 * radius + 1, stride=1, padding=radius) > 0
    return grown.expand_as(bad)


def _assert_propagates_like_reference(got, ref, names):
    for name, g, r in zip(names, got, ref):
        if r is None:
            assert g is None, name
            continue
        hidden = ~torch.isfinite(r) & torch.isfinite(g)
        assert not hidden.any(), f"{name}: {int(hidden.sum())} element(s) non-finite in the reference are finite here"
        extra = torch.isfinite(r) & ~torch.isfinite(g)
        if extra.any():
            assert r.dim() == 4, f"{name}: {int(extra.sum())} extra non-finite element(s) in a non-spatial result"
            far = extra & ~_near(~torch.isfinite(r), SPREAD)
            assert not far.any(), f"{name}: {int(far.sum())} extra non-finite element(s) beyond {SPREAD} pixels"
        both = torch.isfinite(r) & torch.isfinite(g)
        torch.testing.assert_close(g[both], r[both], rtol=1e-9, atol=1e-9, msg=lambda m: f"{name}: {m}")


ATTENTION_NAMES = ["y", "cf", *(f"grad_{k}" for k in ATTENTION_INPUTS)]


# ---------------------------------------------------------------------------------------------
# Feature inputs: propagation
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", BAD, ids=BAD_IDS)
@pytest.mark.parametrize("where", ["x", "pre"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_attention_propagates_nonfinite_features(backend, where, bad):
    inputs = list(attention_inputs(ATTENTION_SHAPE, torch.float64))
    index = {"x": 1, "pre": 3}[where]
    inputs[index] = inputs[index].clone()
    inputs[index][1, 2, 3, 1] = bad  # one element of the second image
    ref = _attention("reference", inputs)
    assert not torch.isfinite(ref[0] if where == "x" else ref[1]).all()  # the case is not vacuous
    _assert_propagates_like_reference(_attention(backend, inputs), ref, ATTENTION_NAMES)


@pytest.mark.parametrize("bad", BAD, ids=BAD_IDS)
@pytest.mark.parametrize("where", ["feat", "image"])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_fusion_block_propagates_nonfinite_features(backend, training, where, bad):
    feat, image, params = fusion_inputs(FUSION_SHAPE, torch.float64)
    tensors = {"feat": feat.clone(), "image": image.clone()}
    tensors[where][1, 0, 3, 4] = bad
    ref = _fusion("reference", tensors["feat"], tensors["image"], params, training)
    # ±Inf in feat saturates its pixel's sigmoid (finite R); NaN anywhere, or Inf in the image, reach the outputs.
    if not (where == "feat" and bad != bad * 0 and bad == bad):
        assert not torch.isfinite(ref[0]).all()
    got = _fusion(backend, tensors["feat"], tensors["image"], params, training)
    _assert_propagates_like_reference(got, ref, FUSION_RESULTS)


# ---------------------------------------------------------------------------------------------
# Inputs that shape the computation: refused
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", BAD, ids=BAD_IDS)
@pytest.mark.parametrize("where", ["q", "gamma", "alpha"])
@pytest.mark.parametrize("backend", ["reference"] + CPU_BACKENDS)
def test_attention_refuses_nonfinite_energies_and_gates(backend, where, bad):
    inputs = list(attention_inputs(ATTENTION_SHAPE, torch.float64))
    index = {"q": 0, "gamma": 2, "alpha": 5}[where]
    inputs[index] = inputs[index].clone()
    inputs[index].view(-1)[-1] = bad
    with pytest.raises(ValueError, match=rf"short_long_attention: `{where}` has 1 non-finite value\(s\)"):
        inpaint_fast.short_long_attention(*inputs, backend=backend)


@pytest.mark.parametrize("name", PARAM_NAMES)
@pytest.mark.parametrize("backend", ["reference"] + CPU_BACKENDS)
def test_fusion_block_refuses_nonfinite_parameters(backend, name):
    feat, image, params = fusion_inputs(FUSION_SHAPE, torch.float64)
    bad = getattr(params, name).clone()
    bad.view(-1)[0] = float("inf")
    params = params._replace(**{name: bad})
    # Running statistics are read only in eval; in training they are only written.
    for training in ([False, True] if name not in RUNNING_STATS else [False]):
        with pytest.raises(ValueError, match=rf"fusion_block: `{name}` has 1 non-finite value\(s\)"):
            inpaint_fast.fusion_block(feat, image, params, training=training, backend=backend)


@pytest.mark.parametrize("backend", ["reference"] + CPU_BACKENDS)
def test_fusion_block_refuses_a_negative_running_variance_and_takes_zero(backend):
    feat, image, params = fusion_inputs(FUSION_SHAPE, torch.float64)
    var = params.bn2_running_var.clone()
    var[1] = -0.5
    with pytest.raises(ValueError, match=r"`bn2_running_var` has negative values \(min -0.5\)"):
        inpaint_fast.fusion_block(feat, image, params._replace(bn2_running_var=var), backend=backend)
    zero = params._replace(bn1_running_var=torch.zeros_like(params.bn1_running_var))
    out, alpha, raw = inpaint_fast.fusion_block(feat, image, zero, backend=backend)
    assert torch.isfinite(out).all() and torch.isfinite(alpha).all()


def test_a_parameter_changed_after_a_check_is_checked_again():
    """Parameters that passed are not read again until they change: in place (version counter) or
    through ``.data =`` (a new storage)."""
    feat, image, params = fusion_inputs(FUSION_SHAPE, torch.float64)
    weight = torch.nn.Parameter(params.conv3_weight.clone())
    params = params._replace(conv3_weight=weight)
    inpaint_fast.fusion_block(feat, image, params)
    with torch.no_grad():
        weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="`conv3_weight` has 1 non-finite"):
        inpaint_fast.fusion_block(feat, image, params)
    with torch.no_grad():
        weight[0, 0] = 1.0
    inpaint_fast.fusion_block(feat, image, params)
    bad = weight.detach().clone()
    bad[1, 1] = float("inf")
    weight.data = bad
    with pytest.raises(ValueError, match="`conv3_weight` has 1 non-finite"):
        inpaint_fast.fusion_block(feat, image, params)


def test_value_checks_can_be_switched_off(monkeypatch):
    inputs = list(attention_inputs(ATTENTION_SHAPE, torch.float64))
    inputs[0] = inputs[0].clone()
    inputs[0][0, 0, 0, 0] = float("inf")
    monkeypatch.setenv("INPAINT_FAST_CHECK_VALUES", "0")
    y, _ = inpaint_fast.short_long_attention(*inputs, backend="reference")
    assert not torch.isfinite(y).all()  # unchecked, the undefined softmax shows


# ---------------------------------------------------------------------------------------------
# Degenerate but valid
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fill", [0.0, 1.0], ids=["all-hole", "all-known"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_attention_all_hole_and_all_known_masks(backend, fill):
    inputs = list(attention_inputs(ATTENTION_SHAPE, torch.float64))
    inputs[4] = torch.full_like(inputs[4], fill)
    ref = _attention("reference", inputs)
    got = _attention(backend, inputs)
    for name, g, r in zip(ATTENTION_NAMES, got, ref):
        assert_close_to_oracle(name, g, r, r, torch.float64)
    if fill == 1.0:  # every position known: cf is pre itself, bit for bit
        assert torch.equal(got[1], inputs[3])
