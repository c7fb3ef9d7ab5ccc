"""FusionBlock (DFNet's fusion block drop-in).

The "original" here is a plain ``nn.Sequential`` re-statement of DFNet's block
(docs/fusion_block.md): real Conv2d/BatchNorm2d/LeakyReLU/Sigmoid layers under DFNet's
names. Our module must share its state-dict keys (strict load both ways) and match it in
training and eval, forward, backward and running statistics, on every backend that runs here.
"""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import inpaint_fast
from inpaint_fast.nn import FusionBlock

OP = "fusion_block"
FP64_BACKENDS = inpaint_fast.available_backends("cpu", torch.float64, op=OP)
PARITY_CASES = [(b, torch.float64) for b in FP64_BACKENDS] + [
    (b, torch.float32) for b in inpaint_fast.available_backends("cpu", torch.float32, op=OP) if b not in FP64_BACKENDS
]
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-4, atol=1e-5)}


# ---------------------------------------------------------------------------------------------
# The original, re-stated from docs/fusion_block.md#forward
# ---------------------------------------------------------------------------------------------
class _DFNetConv(nn.Module):  # Conv2dSame with symmetric padding: the conv sits at `.conv`
    def __init__(self, cin, cout, k):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=k // 2)

    def forward(self, x):
        return self.conv(x)


class _DFNetBlend(nn.Module):
    def __init__(self, c_alpha):
        super().__init__()
        self.blend = nn.Sequential(
            _DFNetConv(6, 32, 1), nn.BatchNorm2d(32), nn.LeakyReLU(0.2),
            _DFNetConv(32, c_alpha, 3), nn.BatchNorm2d(c_alpha), nn.LeakyReLU(0.2),
            _DFNetConv(c_alpha, c_alpha, 1), nn.Sigmoid(),
        )

    def forward(self, z):
        return self.blend(z)


class _DFNetFusion(nn.Module):  # DFNet's FusionBlock: its constructor defaults and forward order
    def __init__(self, c_feat, c_alpha=1):
        super().__init__()
        self.map2img = nn.Sequential(_DFNetConv(c_feat, 3, 1), nn.Sigmoid())
        self.blend = _DFNetBlend(c_alpha)

    def forward(self, img_miss, feat_de):
        x_k = F.interpolate(img_miss, size=feat_de.shape[-2:], mode="bilinear", align_corners=False)
        raw = self.map2img(feat_de)
        alpha = self.blend(torch.cat([x_k, raw], dim=1))
        return alpha * raw + (1 - alpha) * x_k, alpha, raw


def _randomised(module):
    """Non-default BN affine parameters and running statistics, so eval mode is not trivial."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.3)
                m.running_mean.normal_(0, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(7)
    return module


def _pair(c=5, c_alpha=3, backend=None, dtype=torch.float64):
    dfnet = _randomised(_DFNetFusion(c, c_alpha)).to(dtype)
    ours = FusionBlock(c, c_alpha, backend=backend).to(dtype)
    ours.load_state_dict(dfnet.state_dict(), strict=True)
    return dfnet, ours


def _inputs(B=3, c=5, h=6, w=4, scale=2, dtype=torch.float64):
    feat = torch.randn(B, c, h, w, dtype=dtype, requires_grad=True)
    image = torch.rand(B, 3, h * scale, w * scale, dtype=dtype)
    return image, feat  # DFNet's argument order: the image with holes first


def _loss(outputs, grads):
    return sum((o * g).sum() for o, g in zip(outputs, grads))


# ---------------------------------------------------------------------------------------------
# Layout
# ---------------------------------------------------------------------------------------------
DFNET_KEYS = {"map2img.0.conv.weight", "map2img.0.conv.bias"} | {
    f"blend.blend.{i}.conv.{k}" for i in (0, 3, 6) for k in ("weight", "bias")
} | {
    f"blend.blend.{i}.{k}" for i in (1, 4)
    for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
}


def test_state_dict_keys_and_shapes():
    sd = FusionBlock(64, 3).state_dict()
    assert set(sd) == DFNET_KEYS
    assert sd["map2img.0.conv.weight"].shape == (3, 64, 1, 1)
    assert sd["blend.blend.0.conv.weight"].shape == (32, 6, 1, 1)
    assert sd["blend.blend.3.conv.weight"].shape == (3, 32, 3, 3)
    assert sd["blend.blend.6.conv.weight"].shape == (3, 3, 1, 1)
    assert sd["blend.blend.4.running_var"].shape == (3,)
    assert isinstance(FusionBlock(4).blend.blend[1], nn.BatchNorm2d)


@pytest.mark.parametrize("c,count", [(4, 1188), (64, 1368), (128, 1560), (256, 1944), (512, 2712)])
def test_parameter_count_matches_dfnet(c, count):  # the released network's blocks, c_alpha = 3
    assert sum(p.numel() for p in FusionBlock(c, 3).parameters()) == count


def test_signature_matches_dfnets_fusion_block():
    """Constructor defaults and forward argument order as DFNet's FusionBlock, so the module
    drops into DFNet's own code unchanged (only the keyword-only ``backend`` is ours)."""
    ours_init = inspect.signature(FusionBlock.__init__).parameters
    theirs_init = inspect.signature(_DFNetFusion.__init__).parameters
    positional = [n for n, p in ours_init.items() if p.kind is not p.KEYWORD_ONLY]
    assert positional == list(theirs_init)
    assert {n: ours_init[n].default for n in positional} == {n: p.default for n, p in theirs_init.items()}
    assert list(inspect.signature(FusionBlock.forward).parameters) == list(
        inspect.signature(_DFNetFusion.forward).parameters)
    assert FusionBlock(8).c_alpha == 1
    # Positional use, as DFNet's code calls it: image first. Swapped arguments fail on shape.
    dfnet, ours = _pair(c=5, c_alpha=1)
    image, feat = _inputs()
    for e, g in zip(dfnet.eval()(image, feat), ours.eval()(image, feat)):
        torch.testing.assert_close(g, e, **TOL[torch.float64])
    with pytest.raises(ValueError, match="image"):
        ours(feat, image)


def test_params_from_module_are_the_modules_own_tensors():
    """FusionBlockParams.from_module reads DFNet's layout, so DFNet's own module works as ours
    does; the bundle holds the module's tensors (not copies), by their state-dict names."""
    dfnet, ours = _pair()
    for module in (dfnet, ours):
        params = inpaint_fast.FusionBlockParams.from_module(module)
        state = module.state_dict(keep_vars=True)
        assert params.map_weight is state["map2img.0.conv.weight"]
        assert params.conv2_bias is state["blend.blend.3.conv.bias"]
        assert params.bn2_running_var is state["blend.blend.4.running_var"]
        assert len({id(t) for t in params}) == 16 and {id(t) for t in params} <= {id(t) for t in state.values()}
    image, feat = _inputs()
    dfnet.eval()
    want = dfnet(image, feat)
    got = inpaint_fast.fusion_block(feat, image, inpaint_fast.FusionBlockParams.from_module(dfnet))
    for g, e in zip(got, want):
        torch.testing.assert_close(g, e, **TOL[torch.float64])


@pytest.mark.parametrize("c_alpha", [0, 2, 4])
def test_bad_c_alpha_is_a_clear_error(c_alpha):
    with pytest.raises(ValueError, match=r"c_alpha must be 1 or 3, got"):
        FusionBlock(8, c_alpha)


def test_strict_load_both_ways_and_round_trip(tmp_path):
    dfnet, ours = _pair()
    back = _DFNetFusion(5, 3)
    back.to(torch.float64).load_state_dict(ours.state_dict(), strict=True)
    torch.save(ours.state_dict(), tmp_path / "fuse.pt")
    again = FusionBlock(5, 3).double()
    again.load_state_dict(torch.load(tmp_path / "fuse.pt"), strict=True)
    for k, v in dfnet.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k
    image, feat = _inputs()
    torch.testing.assert_close(again.eval()(image, feat), ours.eval()(image, feat), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# Parity with the original
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("c_alpha", [3, 1])
@pytest.mark.parametrize("backend,dtype", PARITY_CASES)
def test_matches_dfnet_eval(backend, dtype, c_alpha):
    dfnet, ours = _pair(c_alpha=c_alpha, backend=backend, dtype=dtype)
    dfnet.eval()
    ours.eval()
    image, feat = _inputs(dtype=dtype)
    feat2 = feat.detach().clone().requires_grad_()
    expected, got = dfnet(image, feat), ours(image, feat2)
    assert got[1].shape == (3, c_alpha, 6, 4)
    for name, e, g in zip(("out", "alpha", "raw"), expected, got):
        torch.testing.assert_close(g, e, **TOL[dtype], msg=lambda m: f"{name}: {m}")
    grads = [torch.randn_like(t) for t in expected]
    _loss(expected, grads).backward()
    _loss(got, grads).backward()
    torch.testing.assert_close(feat2.grad, feat.grad, **TOL[dtype])
    ref = dict(dfnet.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, ref[name].grad, **TOL[dtype], msg=lambda m: f"{name}: {m}")
    for name, b in ours.named_buffers():  # eval never touches the running statistics
        assert torch.equal(b, dfnet.state_dict()[name]), name


@pytest.mark.parametrize("momentum", [0.1, 0.3, None])
@pytest.mark.parametrize("backend,dtype", PARITY_CASES)
def test_training_steps_match_dfnet(backend, dtype, momentum):
    """A few SGD steps in training mode: outputs, gradients, parameters and BN buffers
    (running_mean, running_var, num_batches_tracked) stay equal to nn.BatchNorm2d's."""
    dfnet, ours = _pair(backend=backend, dtype=dtype)
    for m in list(dfnet.modules()) + list(ours.modules()):
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = momentum
    opt_d = torch.optim.SGD(dfnet.parameters(), lr=0.05)
    opt_o = torch.optim.SGD(ours.parameters(), lr=0.05)
    tol = TOL[dtype]
    initial_mean = ours.blend.blend[1].running_mean.clone()
    for step in range(3):
        image, feat = _inputs(dtype=dtype)
        feat2 = feat.detach().clone().requires_grad_()
        expected, got = dfnet(image, feat), ours(image, feat2)
        for e, g in zip(expected, got):
            torch.testing.assert_close(g, e, **tol)
        grads = [torch.randn_like(t) for t in expected]
        opt_d.zero_grad()
        opt_o.zero_grad()
        _loss(expected, grads).backward()
        _loss(got, grads).backward()
        torch.testing.assert_close(feat2.grad, feat.grad, **tol)
        opt_d.step()
        opt_o.step()
        ref = dfnet.state_dict()
        for name, t in ours.state_dict().items():
            torch.testing.assert_close(t, ref[name], **tol, msg=lambda m: f"{name} after step {step}: {m}")
    assert ours.blend.blend[1].num_batches_tracked.item() == 7 + 3
    assert ours.blend.blend[4].num_batches_tracked.item() == 7 + 3
    # The running statistics did move, and eval mode then agrees too.
    assert not torch.allclose(ours.blend.blend[1].running_mean, initial_mean)
    dfnet.eval()
    ours.eval()
    image, feat = _inputs(dtype=dtype)
    for e, g in zip(dfnet(image, feat), ours(image, feat)):
        torch.testing.assert_close(g, e, **tol)


def test_eval_leaves_bn_buffers_alone():
    _, ours = _pair()
    ours.eval()
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    ours(*_inputs())
    for k, v in ours.state_dict().items():
        assert torch.equal(v, before[k]), k


# ---------------------------------------------------------------------------------------------
# Properties of docs/fusion_block.md#properties-the-tests-check
# ---------------------------------------------------------------------------------------------
def _forced_alpha(ours, value):
    """Make α ≡ 0 or ≡ 1 exactly: zero the last conv's weight, bias ±1e4 (sigmoid saturates)."""
    conv3 = ours.blend.blend[6].conv
    with torch.no_grad():
        conv3.weight.zero_()
        conv3.bias.fill_(1e4 if value == 1 else -1e4)


@pytest.mark.parametrize("backend", FP64_BACKENDS)
@pytest.mark.parametrize("training", [False, True])
def test_fact2_alpha_zero_gives_resized_image(backend, training):
    _, ours = _pair(backend=backend)
    _forced_alpha(ours, 0)
    ours.train(training)
    image, feat = _inputs(scale=4)
    out, alpha, raw = ours(image, feat)
    assert torch.count_nonzero(alpha) == 0
    x_k = F.interpolate(image, size=(6, 4), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, x_k, rtol=0, atol=1e-15)
    assert not torch.allclose(raw, x_k)


@pytest.mark.parametrize("backend", FP64_BACKENDS)
def test_fact2_alpha_one_gives_raw(backend):
    _, ours = _pair(backend=backend)
    _forced_alpha(ours, 1)
    ours.eval()
    image, feat = _inputs()
    out, alpha, raw = ours(image, feat)
    assert torch.equal(alpha, torch.ones_like(alpha))
    torch.testing.assert_close(out, raw, rtol=0, atol=1e-15)
    torch.testing.assert_close(raw, torch.sigmoid(F.conv2d(feat, *_map_params(ours))), rtol=1e-12, atol=1e-14)


def _map_params(ours):
    conv = ours.map2img[0].conv
    return conv.weight, conv.bias


@pytest.mark.parametrize("backend", FP64_BACKENDS)
def test_fact3_full_resolution_uses_the_image_itself(backend):
    _, ours = _pair(backend=backend)
    ours.eval()
    image, feat = _inputs(scale=1)  # k = 0: feature at the image's resolution, resize is identity
    out, alpha, raw = ours(image, feat)
    torch.testing.assert_close(out, alpha * raw + (1 - alpha) * image, rtol=1e-12, atol=1e-14)
    # Y is a convex combination of R and X_k, so it lies between them.
    lo, hi = torch.minimum(raw, image), torch.maximum(raw, image)
    assert bool(((out >= lo - 1e-12) & (out <= hi + 1e-12)).all())


def test_bn_eps_mismatch_is_reported():
    ours = FusionBlock(5).double()
    ours.blend.blend[4].eps = 1e-3
    with pytest.raises(ValueError, match="eps"):
        ours(*_inputs())
    assert ours.blend.blend[1].num_batches_tracked.item() == 0  # nothing was counted


@pytest.mark.parametrize("backend", FP64_BACKENDS)
def test_fact5_blend_input_order_is_image_then_raw(backend):
    _, ours = _pair(backend=backend)
    ours.eval()
    image, feat = _inputs()
    w = ours.blend.blend[0].conv.weight
    with torch.no_grad():
        w[:, :3] = 0  # cut the image channels: α must not depend on the image
    _, a1, _ = ours(image, feat)
    _, a2, _ = ours(torch.rand_like(image), feat)
    torch.testing.assert_close(a2, a1, rtol=0, atol=0)
    _, ours = _pair(backend=backend)
    ours.eval()
    with torch.no_grad():
        ours.blend.blend[0].conv.weight[:, 3:] = 0  # cut the raw channels: α must not depend on F
    _, a1, _ = ours(image, feat)
    _, a2, _ = ours(image, torch.randn_like(feat))
    torch.testing.assert_close(a2, a1, rtol=0, atol=0)
    _, a3, _ = ours(torch.rand_like(image), feat)
    assert not torch.allclose(a3, a1)
