"""ShortLongAttention (PIC's Auto_Attn drop-in) and its spectral norm.

The "original" here is a plain re-statement of the documented behaviour of PIC's ``Auto_Attn``,
``ResBlock`` and ``SpectralNorm`` (docs/pic.md#the-attention-layer, #spectral-norm,
#official-checkpoint-layout): explicit N×N
softmax, spectral norm storing ``weight_bar``/``weight_u``/``weight_v`` on the wrapped conv, each
SN conv registered twice. Our module must load its state dict as saved and match it, forward and
backward, on every backend that runs here.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import inpaint_fast
from inpaint_fast.nn import ShortLongAttention, SpectralNormConv2d, convert_auto_attn_state_dict

OP = "short_long_attention"
FP64_BACKENDS = inpaint_fast.available_backends("cpu", torch.float64, op=OP)
# (backend, dtype) pairs for module parity: fp64 everywhere it runs, fp32 for fp32-only backends.
PARITY_CASES = [(b, torch.float64) for b in FP64_BACKENDS] + [
    (b, torch.float32) for b in inpaint_fast.available_backends("cpu", torch.float32, op=OP) if b not in FP64_BACKENDS
]
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=2e-4, atol=2e-5)}


# ---------------------------------------------------------------------------------------------
# The original, re-stated from docs/pic.md#the-attention-layer
# ---------------------------------------------------------------------------------------------
def _l2n(v):
    return v / (v.norm() + 1e-12)


class _PicSpectralNorm(nn.Module):
    """PIC's SpectralNorm: wraps ``module``; W as ``weight_bar``, u, v as frozen Parameters on it."""

    def __init__(self, module):
        super().__init__()
        self.module = module
        w = module.weight.data
        height = w.shape[0]
        u = nn.Parameter(_l2n(w.new_empty(height).normal_(0, 1)), requires_grad=False)
        v = nn.Parameter(_l2n(w.new_empty(w.view(height, -1).shape[1]).normal_(0, 1)), requires_grad=False)
        del module._parameters["weight"]
        module.register_parameter("weight_u", u)
        module.register_parameter("weight_v", v)
        module.register_parameter("weight_bar", nn.Parameter(w))

    def forward(self, x):
        m = self.module
        w, u, v = m.weight_bar, m.weight_u, m.weight_v
        h = w.shape[0]
        v.data = _l2n(torch.mv(w.view(h, -1).data.t(), u.data))  # every call, train and eval
        u.data = _l2n(torch.mv(w.view(h, -1).data, v.data))
        sigma = u.dot(w.view(h, -1).mv(v))
        m.weight = w / sigma
        return m(x)


class _PicResBlock(nn.Module):
    """ResBlock(in → out, hidden, norm None, LeakyReLU(0.01), 'none', use_spect=True)."""

    def __init__(self, cin, cout, hidden):
        super().__init__()
        self.conv1 = _PicSpectralNorm(nn.Conv2d(cin, hidden, 3, padding=1))
        self.conv2 = _PicSpectralNorm(nn.Conv2d(hidden, cout, 3, padding=1))
        self.bypass = _PicSpectralNorm(nn.Conv2d(cin, cout, 1))
        act = nn.LeakyReLU()
        self.model = nn.Sequential(act, self.conv1, act, self.conv2)  # the same convs, registered again
        self.shortcut = nn.Sequential(self.bypass)

    def forward(self, x):
        return self.model(x) + self.shortcut(x)


class _PicAutoAttn(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.query_conv = nn.Conv2d(c, c // 4, 1)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.alpha = nn.Parameter(torch.zeros(1))
        self.softmax = nn.Softmax(dim=-1)
        self.model = _PicResBlock(2 * c, c, c)

    def forward(self, x, pre=None, mask=None):
        B, C, H, W = x.shape
        q = self.query_conv(x).view(B, -1, H * W)
        attention = self.softmax(torch.bmm(q.permute(0, 2, 1), q))
        sa = torch.bmm(x.view(B, C, H * W), attention.permute(0, 2, 1)).view(B, C, H, W)
        out = self.gamma * sa + x
        if pre is not None:
            cf = torch.bmm(pre.view(B, -1, H * W), attention.permute(0, 2, 1)).view(B, -1, H, W)
            cf = self.alpha * (1 - mask) * cf + mask * pre
            out = self.model(torch.cat([out, cf], dim=1))
        return out, attention


def _trained_pic(c=8, dtype=torch.float64):
    """An original with non-trivial gates and a peaked attention (not the near-uniform init)."""
    pic = _PicAutoAttn(c).to(dtype)
    with torch.no_grad():
        pic.query_conv.weight.normal_(0, 0.4)
        pic.query_conv.bias.normal_(0, 0.2)
        pic.gamma.fill_(0.7)
        pic.alpha.fill_(-0.45)
    return pic


def _inputs(B=2, C=8, H=5, W=3, dtype=torch.float64, requires_grad=True):
    x = torch.randn(B, C, H, W, dtype=dtype, requires_grad=requires_grad)
    pre = torch.randn(B, C, H, W, dtype=dtype, requires_grad=requires_grad)
    mask = torch.rand(B, 1, H, W, dtype=dtype)
    mask[:, :, :2] = 1.0  # visible rows, fractional elsewhere
    mask[:, :, -1] = 0.0  # a hole row
    return x, pre, mask


# ---------------------------------------------------------------------------------------------
# State dict layout and loading
# ---------------------------------------------------------------------------------------------
SN_KEYS = ["weight_bar", "bias", "weight_u", "weight_v"]
OUR_KEYS = {"query_conv.weight", "query_conv.bias", "gamma", "alpha"} | {
    f"model.{conv}.{k}" for conv in ("conv1", "conv2", "bypass") for k in SN_KEYS
}


def test_state_dict_keys_shapes_and_parameter_count():
    m = ShortLongAttention(8)
    sd = m.state_dict()
    assert set(sd) == OUR_KEYS
    assert sd["query_conv.weight"].shape == (2, 8, 1, 1)
    assert sd["model.conv1.weight_bar"].shape == (8, 16, 3, 3)
    assert sd["model.conv1.weight_u"].shape == (8,) and sd["model.conv1.weight_v"].shape == (16 * 9,)
    assert sd["model.bypass.weight_bar"].shape == (8, 16, 1, 1)
    # u, v are buffers: an optimiser over parameters() never sees them.
    assert not any(n.endswith(("weight_u", "weight_v")) for n, _ in m.named_parameters())
    # PIC's size, C = 128: the ResBlock is 475 520 parameters (docs/pic.md#parameter-counts).
    big = ShortLongAttention(128)
    assert sum(p.numel() for p in big.model.parameters()) == 475_520
    assert sum(p.numel() for p in big.parameters()) == 475_520 + 128 * 32 + 32 + 2


def test_init_matches_pic():
    m = ShortLongAttention(16)
    assert torch.equal(m.gamma, torch.zeros(1)) and torch.equal(m.alpha, torch.zeros(1))
    assert torch.equal(m.query_conv.bias, torch.zeros(4))
    w = m.query_conv.weight.view(4, 16)
    torch.testing.assert_close(w @ w.t(), 0.02**2 * torch.eye(4), rtol=0, atol=1e-7)  # orthogonal rows × 0.02
    for conv in (m.model.conv1, m.model.conv2, m.model.bypass):  # PyTorch default: |w| ≤ 1/√fan_in
        fan_in = conv.weight_bar[0].numel()
        assert conv.weight_bar.abs().max() <= fan_in**-0.5
        torch.testing.assert_close(conv.weight_u.norm(), torch.tensor(1.0))


def test_pic_checkpoint_layout_has_duplicates_and_loads():
    pic = _trained_pic()
    sd = pic.state_dict()
    assert len(sd) == 4 + 2 * 3 * 4  # each SN conv twice (docs/pic.md#official-checkpoint-layout)
    assert "model.model.3.module.weight_bar" in sd and "model.shortcut.0.module.bias" in sd
    ours = ShortLongAttention(8).double()
    ours.load_pic_state_dict(sd)
    assert torch.equal(ours.model.conv2.weight_bar, pic.model.conv2.module.weight_bar)
    assert torch.equal(ours.model.bypass.weight_u, pic.model.bypass.module.weight_u)
    assert torch.equal(ours.gamma, pic.gamma)
    # DataParallel prefix, and a layer inside a whole-network state dict.
    dp = {"module." + k: v for k, v in sd.items()}
    ShortLongAttention(8).double().load_pic_state_dict(dp)
    net = {"attn2." + k: v for k, v in sd.items()}
    net["encoder2.conv1.module.weight_bar"] = torch.zeros(3)
    ShortLongAttention(8).double().load_pic_state_dict({"module." + k: v for k, v in net.items()}, prefix="attn2.")
    assert set(convert_auto_attn_state_dict(sd)) == OUR_KEYS


def test_pic_loader_errors():
    sd = _trained_pic().state_dict()
    ours = ShortLongAttention(8).double()
    bad = dict(sd)
    bad["model.model.1.module.weight_bar"] = bad["model.model.1.module.weight_bar"] + 1
    with pytest.raises(ValueError, match="registered twice"):
        ours.load_pic_state_dict(bad)
    missing = {k: v for k, v in sd.items() if not k.endswith("conv2.module.bias") and k != "model.model.3.module.bias"}
    with pytest.raises(RuntimeError, match=r"Missing: model\.conv2\.bias"):
        ours.load_pic_state_dict(missing)
    result = ours.load_pic_state_dict(missing, strict=False)
    assert result.missing_keys == ["model.conv2.bias"]
    extra = dict(sd)
    extra["model.model.2.module.weight_bar"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match=r"Unexpected: model\.model\.2\.module\.weight_bar"):
        ours.load_pic_state_dict(extra)
    with pytest.raises(KeyError, match="prefix"):
        ours.load_pic_state_dict(sd, prefix="attn2.")


def test_pic_converter_keeps_unknown_keys_and_draws_no_random_numbers():
    from inpaint_fast.nn import auto_attn_checkpoint

    sd = _trained_pic().state_dict()
    net = {"module.attn2." + k: v for k, v in sd.items()}
    net["module.attn2.extra"] = torch.zeros(1)
    net["module.encoder2.conv1.module.weight_bar"] = torch.zeros(3)
    auto_attn_checkpoint._layout.cache_clear()  # the first call builds the layout it reads keys from
    rng = torch.random.get_rng_state()
    converted = convert_auto_attn_state_dict(net, prefix="attn2.")
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert set(converted) == OUR_KEYS | {"extra"}  # passed through, so a strict load reports it
    result = ShortLongAttention(8).double().load_pic_state_dict(net, strict=False, prefix="attn2.")
    assert result.missing_keys == [] and result.unexpected_keys == ["extra"]
    with pytest.raises(RuntimeError, match=r"Unexpected: extra$"):
        ShortLongAttention(8).double().load_pic_state_dict(net, prefix="attn2.")


def test_state_dict_round_trip(tmp_path):
    a = ShortLongAttention(8).double()
    a.load_pic_state_dict(_trained_pic().state_dict())
    torch.save(a.state_dict(), tmp_path / "attn.pt")
    b = ShortLongAttention(8).double()
    b.load_state_dict(torch.load(tmp_path / "attn.pt"), strict=True)
    x, pre, mask = _inputs(requires_grad=False)
    torch.testing.assert_close(b(x, pre, mask)[0], a(x, pre, mask)[0], rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# Parity with the original, forward and backward, on every backend
# ---------------------------------------------------------------------------------------------
def _grads_in_our_names(pic):
    return convert_auto_attn_state_dict({n: p.grad for n, p in pic.named_parameters() if p.requires_grad})


@pytest.mark.parametrize("backend,dtype", PARITY_CASES)
def test_matches_pic_with_pre(backend, dtype):
    pic = _trained_pic(dtype=dtype)
    ours = ShortLongAttention(8, backend=backend).to(dtype)
    ours.load_pic_state_dict(pic.state_dict())
    tol = TOL[dtype]
    for step in range(2):  # the second step runs on the u, v the first one updated
        x, pre, mask = _inputs(dtype=dtype)
        x2, pre2 = x.detach().clone().requires_grad_(), pre.detach().clone().requires_grad_()
        out_p, _ = pic(x, pre, mask)
        out_o, attention = ours(x2, pre2, mask)
        assert attention is None
        torch.testing.assert_close(out_o, out_p, **tol)
        g = torch.randn_like(out_p)
        pic.zero_grad()
        ours.zero_grad()
        out_p.backward(g)
        out_o.backward(g)
        torch.testing.assert_close(x2.grad, x.grad, **tol)
        torch.testing.assert_close(pre2.grad, pre.grad, **tol)
        expected = _grads_in_our_names(pic)
        for name, p in ours.named_parameters():
            torch.testing.assert_close(p.grad, expected[name], **tol, msg=lambda m: f"{name} (step {step}): {m}")
        for conv in ("conv1", "conv2", "bypass"):
            sn_o, sn_p = getattr(ours.model, conv), getattr(pic.model, conv).module
            torch.testing.assert_close(sn_o.weight_u, sn_p.weight_u, **tol)
            torch.testing.assert_close(sn_o.weight_v, sn_p.weight_v, **tol)


@pytest.mark.parametrize("backend,dtype", PARITY_CASES)
def test_matches_pic_self_attention_only(backend, dtype):
    pic = _trained_pic(dtype=dtype)
    ours = ShortLongAttention(8, return_attention=True, backend=backend).to(dtype)
    ours.load_pic_state_dict(pic.state_dict())
    x, _, _ = _inputs(dtype=dtype)
    x2 = x.detach().clone().requires_grad_()
    out_p, a_p = pic(x)
    out_o, a_o = ours(x2)
    torch.testing.assert_close(out_o, out_p, **TOL[dtype])
    torch.testing.assert_close(a_o, a_p, **TOL[dtype])
    g = torch.randn_like(out_p)
    out_p.backward(g)
    out_o.backward(g)
    torch.testing.assert_close(x2.grad, x.grad, **TOL[dtype])
    torch.testing.assert_close(ours.gamma.grad, pic.gamma.grad, **TOL[dtype])
    torch.testing.assert_close(ours.query_conv.weight.grad, pic.query_conv.weight.grad, **TOL[dtype])


def test_model_not_applied_without_pre():
    m = ShortLongAttention(8).double()
    u_before = m.model.conv1.weight_u.clone()
    x, pre, mask = _inputs(requires_grad=False)
    m(x)  # discriminator mode: the ResBlock (and its SN update) is skipped, as in PIC
    assert torch.equal(m.model.conv1.weight_u, u_before)
    m(x, pre, mask)
    assert not torch.equal(m.model.conv1.weight_u, u_before)


def test_bad_inputs():
    m = ShortLongAttention(8).double()
    x, pre, mask = _inputs(requires_grad=False)
    with pytest.raises(ValueError, match="without `mask`"):
        m(x, pre)
    with pytest.raises(ValueError, match=r"\(B, 8, H, W\)"):
        m(x, pre[:, :4], mask)
    with pytest.raises(ValueError, match="in_channels"):
        ShortLongAttention(3)


def test_return_attention_rows_sum_to_one():
    m = ShortLongAttention(8, return_attention=True).double()
    with torch.no_grad():
        m.query_conv.weight.normal_(0, 0.5)
    x, pre, mask = _inputs(H=4, W=6, requires_grad=False)
    _, attention = m(x, pre, mask)
    assert attention.shape == (2, 24, 24)
    torch.testing.assert_close(attention.sum(-1), torch.ones(2, 24, dtype=torch.float64), rtol=0, atol=1e-12)
    q = m.query_conv(x).flatten(2)
    torch.testing.assert_close(attention, torch.softmax(q.transpose(1, 2) @ q, -1), rtol=1e-12, atol=1e-14)
    assert attention.std() > 1e-3  # a peaked map, so the check above is not the uniform case


# ---------------------------------------------------------------------------------------------
# Properties of docs/short_long_attention.md#properties-the-tests-check
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", FP64_BACKENDS)
def test_fact1_identity_at_init_without_pre(backend):
    m = ShortLongAttention(8, backend=backend).double()
    x, _, _ = _inputs(requires_grad=False)
    out, _ = m(x)
    assert torch.equal(out, x)


@pytest.mark.parametrize("backend", FP64_BACKENDS)
def test_fact2_init_gradients(backend):
    m = ShortLongAttention(8, backend=backend).double()
    with torch.no_grad():  # a non-uniform attention, so SA and pre·Aᵀ are not trivial
        m.query_conv.weight.normal_(0, 0.5)
    x, pre, mask = _inputs()
    out, _ = m(x, pre, mask)
    out.backward(torch.randn_like(out))
    # γ = α = 0: the output does not depend on query_conv; its gradient is exactly zero.
    assert torch.count_nonzero(m.query_conv.weight.grad) == 0
    assert torch.count_nonzero(m.query_conv.bias.grad) == 0
    assert m.gamma.grad.abs().item() > 1e-6 and m.alpha.grad.abs().item() > 1e-6

    # dγ = ⟨dL/dy, SA⟩ and dα = ⟨dL/dCF, (1 − m)·(pre Aᵀ)⟩, through the functional op.
    q = m.query_conv(x).detach()
    gamma = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    alpha = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    qg = q.clone().requires_grad_()
    y, cf = inpaint_fast.short_long_attention(qg, x.detach(), gamma, pre.detach(), mask, alpha, backend=backend)
    gy, gcf = torch.randn_like(y), torch.randn_like(cf)
    torch.autograd.backward([y, cf], [gy, gcf])
    a = inpaint_fast.attention_map(q)
    sa = (x.detach().flatten(2) @ a.transpose(1, 2)).view_as(y)
    ca = (pre.detach().flatten(2) @ a.transpose(1, 2)).view_as(cf)
    torch.testing.assert_close(gamma.grad, (gy * sa).sum().view(1), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(alpha.grad, (gcf * (1 - mask) * ca).sum().view(1), rtol=1e-10, atol=1e-12)
    assert torch.count_nonzero(qg.grad) == 0


@pytest.mark.parametrize("backend", FP64_BACKENDS)
def test_fact6_mask_extremes(backend):
    x, pre, _ = _inputs(requires_grad=False)
    q = torch.randn(2, 2, 5, 3, dtype=torch.float64)
    gamma, alpha = torch.tensor([0.3], dtype=torch.float64), torch.tensor([-1.7], dtype=torch.float64)
    ones = torch.ones(2, 1, 5, 3, dtype=torch.float64)
    _, cf = inpaint_fast.short_long_attention(q, x, gamma, pre, ones, alpha, backend=backend)
    assert torch.equal(cf, pre)  # all visible: cf == pre, whatever α is
    _, cf = inpaint_fast.short_long_attention(q, x, gamma, pre, torch.zeros_like(ones), alpha, backend=backend)
    a = inpaint_fast.attention_map(q)
    expected = alpha * (pre.flatten(2) @ a.transpose(1, 2)).view_as(pre)
    torch.testing.assert_close(cf, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", FP64_BACKENDS)
def test_fact7_permutation_equivariance(backend):
    B, H, W = 2, 4, 5
    x, pre, mask = _inputs(B=B, H=H, W=W, requires_grad=False)
    q = torch.randn(B, 2, H, W, dtype=torch.float64)
    gamma, alpha = torch.tensor([0.8], dtype=torch.float64), torch.tensor([0.6], dtype=torch.float64)
    perm = torch.randperm(H * W)

    def p(t):  # permute the N positions, keep the (H, W) shape
        return t.flatten(2)[:, :, perm].reshape(t.shape)

    y, cf = inpaint_fast.short_long_attention(q, x, gamma, pre, mask, alpha, backend=backend)
    yp, cfp = inpaint_fast.short_long_attention(p(q), p(x), gamma, p(pre), p(mask), alpha, backend=backend)
    torch.testing.assert_close(yp, p(y), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(cfp, p(cf), rtol=1e-10, atol=1e-12)
    assert not torch.allclose(y, p(y))  # the permutation is not a no-op on this input


# ---------------------------------------------------------------------------------------------
# Spectral norm (docs/pic.md#spectral-norm)
# ---------------------------------------------------------------------------------------------
def test_spectral_norm_updates_u_v_every_forward_in_eval_too():
    sn = SpectralNormConv2d(6, 4, 3, padding=1).double().eval()
    x = torch.randn(1, 6, 5, 5, dtype=torch.float64)
    seen = [(sn.weight_u.clone(), sn.weight_v.clone())]
    for _ in range(2):
        sn(x)
        u, v = sn.weight_u.clone(), sn.weight_v.clone()
        assert not torch.equal(u, seen[-1][0]) and not torch.equal(v, seen[-1][1])
        torch.testing.assert_close(u.norm(), torch.tensor(1.0, dtype=torch.float64))
        seen.append((u, v))
    out1, out2 = sn(x), sn(x)
    assert not torch.equal(out1, out2)  # not idempotent, as in PIC (u, v keep moving)


def test_spectral_norm_is_one_power_iteration():
    sn = SpectralNormConv2d(5, 4, 3, padding=1).double()
    x = torch.randn(2, 5, 6, 4, dtype=torch.float64)
    w = sn.weight_bar.detach().view(4, -1)
    v1 = _l2n(w.t() @ sn.weight_u)
    u1 = _l2n(w @ v1)
    sigma = u1 @ w @ v1
    out = sn(x)
    torch.testing.assert_close(sn.weight_v, v1, rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(sn.weight_u, u1, rtol=1e-14, atol=1e-15)
    expected = F.conv2d(x, sn.weight_bar.detach() / sigma, sn.bias.detach(), padding=1)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-13)


def test_spectral_norm_gradient_flows_through_sigma():
    sn = SpectralNormConv2d(5, 4, 1).double()
    x = torch.randn(2, 5, 3, 3, dtype=torch.float64)
    g = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    u0 = sn.weight_u.clone()
    (sn(x) * g).sum().backward()
    # Expected: autograd of conv(x, W / (u1ᵀ W v1)) with u1, v1 constants (no grad through the update).
    w = sn.weight_bar.detach().clone().requires_grad_()
    wm = w.detach().view(4, -1)
    v1 = _l2n(wm.t() @ u0)
    u1 = _l2n(wm @ v1)
    (F.conv2d(x, w / (u1 @ w.view(4, -1) @ v1), sn.bias.detach()) * g).sum().backward()
    torch.testing.assert_close(sn.weight_bar.grad, w.grad, rtol=1e-12, atol=1e-13)
    # ...and σ's term matters: treating σ as a constant gives a different gradient.
    sigma = (u1 @ wm @ v1).item()
    w_const = w.detach().clone().requires_grad_()
    (F.conv2d(x, w_const / sigma, sn.bias.detach()) * g).sum().backward()
    assert not torch.allclose(w_const.grad, w.grad, rtol=1e-6)
    assert sn.weight_u.grad is None and not sn.weight_u.requires_grad


def test_spectral_norm_normalises_largest_singular_value():
    sn = SpectralNormConv2d(8, 6, 3, padding=1).double()
    with torch.no_grad():
        sn.weight_bar.mul_(7.0)
        x = torch.randn(1, 8, 3, 3, dtype=torch.float64)
        for _ in range(300):  # power iteration converges to the top singular pair
            sn(x)
        w_eff = sn.effective_weight().view(6, -1)
    assert torch.linalg.matrix_norm(sn.weight_bar.detach().view(6, -1), ord=2) > 2.0
    torch.testing.assert_close(torch.linalg.matrix_norm(w_eff, ord=2), torch.tensor(1.0, dtype=torch.float64),
                               rtol=0, atol=1e-8)


def test_spectral_norm_two_forwards_before_backward():
    # PIC's D is called on several inputs before one backward; each call must keep its own u, v.
    sn = SpectralNormConv2d(3, 2, 1).double()
    x1, x2 = torch.randn(1, 3, 2, 2, dtype=torch.float64), torch.randn(1, 3, 2, 2, dtype=torch.float64)
    (sn(x1).sum() + sn(x2).sum()).backward()
    assert torch.isfinite(sn.weight_bar.grad).all() and sn.weight_bar.grad.abs().sum() > 0
