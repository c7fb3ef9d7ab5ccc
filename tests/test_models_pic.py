"""PIC as complete networks (inpaint_fast.models.pic; docs/pic.md).

Sizes: E and G need sides that are multiples of 32 with more than one 32x32 cell (G's InstanceNorm
at input/32); D needs sides ≥ 96. So shape tests use 32x64, 64x64 and 64x96, and everything that
runs a discriminator (losses, training step) uses 96x96 / 96x128 with batch 1.
"""

from __future__ import annotations

import copy
import re

import pytest
import torch
import torch.nn.functional as F

from inpaint_fast.models.pic import PIC, _attention_mask, gaussian_kl, hole_prior_sigma, load_pic_checkpoints
from inpaint_fast.models.pic_checkpoint import convert_pic_state_dict
from inpaint_fast.models.pic_blocks import (
    Output,
    ResBlock,
    ResBlockDecoder,
    ResBlockEncoderOptimized,
    ResDiscriminator,
)
from inpaint_fast.nn import PreActResBlock, SpectralNormConvTranspose2d, convert_auto_attn_state_dict

from conftest import CPU_BACKENDS, assert_close_to_oracle


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # These tiny convs run fastest single-threaded on a shared 2-core machine; restore afterwards.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _inputs(B, H, W, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(B, 3, H, W, generator=g)
    mask = torch.ones(B, 1, H, W)
    mask[..., H // 4: 3 * H // 4, W // 4: 3 * W // 4] = 0  # PIC's center hole
    return image, mask


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    return PIC(**kw)


# ---------------------------------------------------------------------------------------------
# Parameter counts (SN u/v are buffers, so excluded)
# ---------------------------------------------------------------------------------------------
def _sn(cin, cout, k):  # one SN conv with bias
    return cout * cin * k * k + cout


def _res(cin, cout, hid, norm=False):  # ResBlock: conv3x3 in→hid, conv3x3 hid→out, conv1x1 in→out
    return _sn(cin, hid, 3) + _sn(hid, cout, 3) + _sn(cin, cout, 1) + (2 * cin + 2 * hid if norm else 0)


def _enc_opt(cin, cout):  # conv3x3 in→out, conv3x3 out→out, conv1x1 in→out
    return _sn(cin, cout, 3) + _sn(cout, cout, 3) + _sn(cin, cout, 1)


def _dec(cin, cout, hid):  # conv3x3 in→hid, convT3x3 hid→out, convT3x3 in→out, IN(in) + IN(hid)
    return _sn(cin, hid, 3) + _sn(hid, cout, 3) + _sn(cin, cout, 3) + 2 * cin + 2 * hid


def _attn(c):  # query_conv C→C/4 (bias), gamma, alpha, ResBlock 2C→C hidden C
    return c * (c // 4) + c // 4 + 2 + _res(2 * c, c, c)


def test_parameter_counts_match_the_layer_shapes_and_the_spec_estimates():
    m = PIC()
    counts = {n: sum(p.numel() for p in getattr(m, n).parameters()) for n in ("net_E", "net_G", "net_D", "net_D_rec")}
    # Derivation from docs/pic.md#encoder-e, #generator-g, #discriminators-d-and-d_rec (C = 128 from input/8 on):
    enc = _enc_opt(3, 32) + _res(32, 64, 32) + _res(64, 128, 64) + 2 * _res(128, 128, 128) \
        + 6 * _res(128, 128, 128) + 2 * _res(128, 256, 128)
    gen = _res(128, 128, 128) + _dec(128, 128, 128) + _dec(128, 128, 128) + _attn(128) \
        + _dec(131, 128, 128) + _dec(131, 64, 64) + _dec(67, 32, 32) + 2 * _sn(128, 3, 3) + _sn(64, 3, 3) + _sn(32, 3, 3)
    dis = _enc_opt(3, 32) + _res(32, 64, 32) + _res(64, 128, 64) + _attn(128) + 3 * _res(128, 128, 128) + _sn(128, 1, 3)
    assert counts == {"net_E": enc, "net_G": gen, "net_D": dis, "net_D_rec": dis}
    # Pinned (docs/pic.md#parameter-counts).
    assert counts == {"net_E": 3_604_224, "net_G": 2_374_016, "net_D": 1_575_075, "net_D_rec": 1_575_075}
    assert sum(p.numel() for p in m.net_D.attn2.model.parameters()) == _res(256, 128, 128) == 475_520
    assert len(m.generator_parameters()) == len(list(m.net_E.parameters())) + len(list(m.net_G.parameters()))
    assert sum(p.numel() for p in m.discriminator_parameters()) == 2 * dis


# ---------------------------------------------------------------------------------------------
# Shapes and sizes
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("H,W", [(32, 64), (64, 64), (64, 96)])
def test_forward_train_shapes(H, W):
    m = _model()
    image, mask = _inputs(2, H, W)
    out = m.forward_train(image, mask)
    sizes = [(H // 8, W // 8), (H // 4, W // 4), (H // 2, W // 2), (H, W)]
    for key in ("img_rec", "img_g"):
        assert [tuple(t.shape) for t in out[key]] == [(2, 3, h, w) for h, w in sizes]
        assert all(t.abs().max() <= 1 for t in out[key])
    lat = (2, 128, H // 32, W // 32)
    for key in ("kl_rec", "kl_g", "mu_post", "sigma_post", "mu_prior", "sigma_prior"):
        assert tuple(out[key].shape) == lat, key
    assert (out["sigma_post"] > 0).all() and (out["sigma_prior"] > 0).all()
    assert tuple(out["sigma_m"].shape) == (2, 1, 1, 1)
    assert tuple(out["img_out"].shape) == (2, 3, H, W)
    assert 0 <= out["img_out"].min() and out["img_out"].max() <= 1
    known = mask.expand_as(image) == 1
    assert torch.equal(out["img_out"][known], image[known])
    # Encoder features: f[0..4] at H/2 .. H/32 with 32, 64, 128, 128, 128 channels (2B: I_m and I_c).
    _, f = m.net_E(image, image)
    assert [tuple(t.shape) for t in f] == [(4, c, H // s, W // s) for c, s in
                                           [(32, 2), (64, 4), (128, 8), (128, 16), (128, 32)]]


@pytest.mark.parametrize("H,W", [(96, 96), (96, 128)])
def test_discriminator_output_shape(H, W):
    torch.manual_seed(0)
    d = ResDiscriminator()
    assert tuple(d(torch.rand(1, 3, H, W) * 2 - 1).shape) == (1, 1, H // 32 - 2, W // 32 - 2)


def test_bad_sizes_raise_clear_errors():
    m = _model()
    for H, W in [(48, 64), (64, 40), (32, 32)]:
        image, mask = _inputs(1, H, W)
        with pytest.raises(ValueError, match=f"{H}x{W}"):
            m.forward_train(image, mask)
        with pytest.raises(ValueError, match=f"{H}x{W}"):
            m.sample(image, mask, 1)
    with pytest.raises(ValueError, match=r"H, W >= 96"):
        m.net_D(torch.zeros(1, 3, 64, 64))
    image, mask = _inputs(1, 64, 64)
    with pytest.raises(ValueError, match="mask"):
        m.forward_train(image, mask.expand(1, 3, 64, 64))
    with pytest.raises(ValueError, match="k must be"):
        m.sample(image, mask, 0)
    with pytest.raises(TypeError, match="unknown size"):
        PIC(nfg=3)


def test_attention_mask_resize_center_hole():
    # docs/pic.md#the-attention-layer: 256 → 32 bilinear/align_corners=True of the center mask:
    # holes at 8..23, binary.
    mask = torch.ones(1, 1, 256, 256)
    mask[..., 64:192, 64:192] = 0
    m32 = _attention_mask(mask, torch.empty(1, 128, 32, 32))
    expected = torch.ones(32, 32)
    expected[8:24, 8:24] = 0
    assert tuple(m32.shape) == (1, 1, 32, 32)
    assert torch.equal(m32[0, 0] == 0, expected == 0)  # holes exactly 0 at 8..23
    torch.testing.assert_close(m32[0, 0], expected, rtol=0, atol=1e-6)  # known ≈ 1 up to bilinear rounding


# ---------------------------------------------------------------------------------------------
# Distributions and KL (docs/pic.md#two-path-training-forward)
# ---------------------------------------------------------------------------------------------
def test_hole_prior_sigma_table():
    table = {1.0: 0.168, 0.9: 0.310, 0.8: 0.5, 0.75: 0.599, 0.5: 0.917, 0.0: 0.998}
    for v, expected in table.items():
        mask = torch.zeros(1, 1, 10, 10)
        mask.view(-1)[: round(v * 100)] = 1
        s = hole_prior_sigma(mask).item()
        assert s == pytest.approx(expected, abs=6e-4), v
        assert s == pytest.approx(torch.sigmoid(torch.tensor(-8 * (v - 1e-5 - 0.8))).item(), abs=1e-6)
    assert hole_prior_sigma(torch.full((1, 1, 4, 4), 0.8 + 1e-5)).item() == pytest.approx(0.5, abs=1e-6)


def test_gaussian_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(1)
    mu1, mu2 = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    s1, s2 = torch.rand(2, 3, 4, 4, generator=g) + 0.1, torch.rand(2, 3, 4, 4, generator=g) + 0.1
    N = torch.distributions.Normal
    torch.testing.assert_close(gaussian_kl(mu1, s1, mu2, s2), torch.distributions.kl_divergence(N(mu1, s1), N(mu2, s2)))
    hand = torch.log(s2 / s1) + (s1 ** 2 + (mu1 - mu2) ** 2) / (2 * s2 ** 2) - 0.5
    torch.testing.assert_close(gaussian_kl(mu1, s1, mu2, s2), hand, rtol=1e-5, atol=1e-6)


def test_kl_terms_have_pics_directions_and_detach():
    m = _model()
    image, mask = _inputs(2, 64, 64)
    mask[1] = 1  # second image: no hole (σ_m = 0.168)
    out = m.forward_train(image, mask)
    N, kl = torch.distributions.Normal, torch.distributions.kl_divergence
    sm = out["sigma_m"]
    torch.testing.assert_close(sm.flatten(), torch.tensor([0.599, 0.168]), atol=6e-4, rtol=0)
    post = N(out["mu_post"], out["sigma_post"])
    prior = N(out["mu_prior"], out["sigma_prior"])
    fixed = N(torch.zeros_like(out["mu_post"]), sm.expand_as(out["sigma_post"]))
    torch.testing.assert_close(out["kl_rec"], kl(fixed, post))
    torch.testing.assert_close(out["kl_g"], kl(N(post.loc.detach(), post.scale.detach()), prior))
    assert not torch.allclose(out["kl_rec"], kl(post, fixed))  # the direction matters
    # kl_g trains the conditional prior only: no gradient path into the posterior.
    g_post = torch.autograd.grad(out["kl_g"].sum(), [out["mu_post"], out["mu_prior"]], allow_unused=True)
    assert g_post[0] is None and g_post[1] is not None


# ---------------------------------------------------------------------------------------------
# Training step: losses, gradients, freezing (docs/pic.md#losses; properties 1–2 of
# docs/short_long_attention.md#properties-the-tests-check)
# ---------------------------------------------------------------------------------------------
def test_training_step_gradients():
    m = _model()
    image, mask = _inputs(1, 96, 96)
    seen = {}
    hook = m.net_D.attn2.register_forward_hook(lambda mod, args, res: seen.update(x=args[0], y=res[0]))
    out = m.forward_train(image, mask)
    loss, terms = m.generator_loss(out, image, mask)
    hook.remove()
    assert set(terms) == {"loss_kl_rec", "loss_kl_g", "loss_app_rec", "loss_app_g", "loss_ad_g", "loss_ad_rec"}
    assert loss.item() == pytest.approx(sum(terms.values()), rel=1e-5)
    assert torch.equal(seen["y"], seen["x"])  # fact 1: γ = 0 → D's attention is the identity
    loss.backward()
    for name, p in list(m.net_E.named_parameters()) + list(m.net_G.named_parameters()):
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # fact 2: at init the output does not depend on query_conv: its gradient is exactly 0 ...
    assert torch.count_nonzero(m.net_G.attn1.query_conv.weight.grad) == 0
    assert torch.count_nonzero(m.net_G.attn1.query_conv.bias.grad) == 0
    # ... while γ's and α's are not.
    assert m.net_G.attn1.gamma.grad.abs().item() > 0 and m.net_G.attn1.alpha.grad.abs().item() > 0
    # The discriminators get nothing from the generator loss, and their flags are restored.
    assert all(p.grad is None for p in m.discriminator_parameters())
    assert all(p.requires_grad for p in m.discriminator_parameters())

    eg_grads = [p.grad.clone() for p in m.generator_parameters()]
    d_loss, d_terms = m.discriminator_loss(out, image)
    assert set(d_terms) == {"loss_img_d", "loss_img_d_rec"}
    d_loss.backward()
    for p, g in zip(m.generator_parameters(), eg_grads):
        assert torch.equal(p.grad, g)  # generator outputs were detached
    for net in (m.net_D, m.net_D_rec):
        for name, p in net.named_parameters():
            if name.startswith("attn2.model.") or name == "attn2.alpha":
                assert p.grad is None, name  # self-attention only: no ResBlock, no long-range gate
            elif name.startswith("attn2.query_conv"):
                assert torch.count_nonzero(p.grad) == 0  # γ = 0 (fact 2 in D)
            else:
                assert p.grad is not None and torch.isfinite(p.grad).all(), name

    m.set_discriminators_trainable(False)
    assert m.discriminator_parameters() == [] and len(m.generator_parameters()) > 0
    m.set_discriminators_trainable(True)


def test_adversarial_terms_and_loss_ad_rec_target():
    m = _model()
    image, mask = _inputs(1, 96, 96)
    out = m.forward_train(image, mask)
    state = copy.deepcopy(m.state_dict())  # SN u/v move on every D call: replay from the same state
    _, terms = m.generator_loss(out, image, mask)
    m.load_state_dict(state)
    with torch.no_grad():
        d_g = m.net_D(out["img_g"][-1])
        d_fake = m.net_D_rec(out["img_rec"][-1])  # same call order as generator_loss
        d_real = m.net_D_rec(image * 2 - 1)
    assert terms["loss_ad_g"] == pytest.approx(F.mse_loss(d_g, torch.ones_like(d_g)).item(), rel=1e-6)
    # loss_ad_rec's target is D_rec's output on the real image, not the constant 1.
    assert terms["loss_ad_rec"] == pytest.approx(F.mse_loss(d_fake, d_real).item(), rel=1e-6)
    assert terms["loss_ad_rec"] != pytest.approx(F.mse_loss(d_fake, torch.ones_like(d_fake)).item(), rel=1e-3)
    m.load_state_dict(state)
    _, d_terms = m.discriminator_loss(out, image)
    m.load_state_dict(state)
    with torch.no_grad():
        r, f = m.net_D(image * 2 - 1), m.net_D(out["img_g"][-1])
    expected = 0.5 * (F.mse_loss(r, torch.ones_like(r)) + F.mse_loss(f, torch.zeros_like(f)))
    assert d_terms["loss_img_d"] == pytest.approx(expected.item(), rel=1e-6)


def test_loss_app_g_ignores_hole_pixels_of_the_ground_truth():
    m = _model()
    image, mask = _inputs(1, 96, 96)
    out = m.forward_train(image, mask)
    _, base = m.generator_loss(out, image, mask)
    # Change the hole pixels at least 2 px away from the hole border: at every pyramid level the
    # bilinear samples that read them have mask exactly 0. (At the border, coarse levels mix hole
    # and known pixels with a fractional mask, as in PIC, so there it is not exactly invariant.)
    inner = torch.zeros_like(mask)
    inner[..., 26:70, 26:70] = 1  # the hole is 24..71
    changed = image * (1 - inner) + (1 - image) * inner
    _, new = m.generator_loss(out, changed, mask)
    assert new["loss_app_g"] == base["loss_app_g"]
    assert new["loss_app_rec"] != base["loss_app_rec"]  # the reconstructive term does see them
    # The full-resolution level alone ignores every hole pixel.
    full_hole = image * mask + (1 - image) * (1 - mask)
    lvl = lambda gt: F.l1_loss(out["img_g"][-1] * mask, (gt * 2 - 1) * mask)  # noqa: E731
    assert lvl(full_hole) == lvl(image)
    # ... and a known pixel does change it.
    known = image.clone()
    known[..., 0:8, 0:8] = 1 - known[..., 0:8, 0:8]
    _, other = m.generator_loss(out, known, mask)
    assert other["loss_app_g"] != base["loss_app_g"]


# ---------------------------------------------------------------------------------------------
# Pluralistic sampling (docs/pic.md#sampling)
# ---------------------------------------------------------------------------------------------
def _sn_buffers(m):
    return {k: v.clone() for k, v in m.state_dict().items() if k.endswith(("weight_u", "weight_v"))}


def test_sample():
    m = _model()
    image, mask = _inputs(2, 64, 64)
    mask[1, :, 5:9, 40:60] = 0.5  # fractional values are composited, not thresholded
    before = _sn_buffers(m)
    s = m.sample(image, mask, 3, generator=torch.Generator().manual_seed(7))
    assert tuple(s.shape) == (2, 3, 3, 64, 64)
    assert s.min() >= 0 and s.max() <= 1
    known = (mask == 1).unsqueeze(1).expand_as(s)
    # Known pixels: exactly the input (composited in [0, 1]: tolerance 0).
    assert torch.equal(s[known], image.unsqueeze(1).expand_as(s)[known])
    hole = (mask == 0).expand(2, 3, 64, 64)
    for b in range(2):
        for i in range(3):
            for j in range(i):
                assert (s[b, i][hole[b]] - s[b, j][hole[b]]).abs().max() > 1e-3  # K samples differ
    # The u/v buffers are restored by default → the same seed gives the same samples.
    assert all(torch.equal(v, _sn_buffers(m)[k]) for k, v in before.items())
    s2 = m.sample(image, mask, 3, generator=torch.Generator().manual_seed(7))
    assert torch.equal(s, s2)
    s3 = m.sample(image, mask, 3, generator=torch.Generator().manual_seed(8))
    assert not torch.allclose(s, s3)
    chunked = m.sample(image, mask, 3, generator=torch.Generator().manual_seed(7), batch_size=2)
    torch.testing.assert_close(chunked, s, rtol=1e-5, atol=1e-6)
    det = m.sample(image, mask, 3, deterministic=True)
    assert all(torch.equal(det[:, 0], det[:, i]) for i in range(1, 3))
    # PIC's behaviour on request: u/v advance (one power iteration per network).
    m.sample(image, mask, 2, update_spectral_norm=True)
    assert any(not torch.equal(v, _sn_buffers(m)[k]) for k, v in before.items())


# ---------------------------------------------------------------------------------------------
# Fused backend vs reference
# ---------------------------------------------------------------------------------------------
def _trained_attention_pic(**kw):
    """PIC whose attention is not trivial: open gates and a peaked softmax (energies in the hundreds)."""
    model = _model(**kw)
    with torch.no_grad():
        model.net_G.attn1.gamma.fill_(0.7)
        model.net_G.attn1.alpha.fill_(-0.4)
        model.net_G.attn1.query_conv.weight.mul_(300)
    return model


# The fused attention's fp32 rounding feeds the rest of the generator, so the completions of an
# fp32 backend and the fp32 reference differ by more than one op's rounding: each is judged
# against an fp64 run by the fp32 reference's own error there (conftest.assert_close_to_oracle).
# The fp32 comparison samples deterministically (z = the prior's mean), because N(0, 1) draws in
# fp32 and fp64 differ; in fp64 the backend must equal the reference, random draws included.
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_generator_backend_matches_reference(backend):
    ref = _trained_attention_pic(backend="reference")
    image, mask = _inputs(2, 64, 96)

    def completions(backend_name, dtype, **kw):
        model = PIC(backend=backend_name).to(dtype)
        model.load_state_dict(ref.state_dict())
        return model.sample(image.to(dtype), mask.to(dtype), 2, **kw)

    random_draws = dict(generator=torch.Generator().manual_seed(3))
    oracle = completions("reference", torch.float64, **random_draws)
    random_draws = dict(generator=torch.Generator().manual_seed(3))
    assert_close_to_oracle("fp64 samples", completions(backend, torch.float64, **random_draws), oracle, oracle,
                           torch.float64)
    oracle = completions("reference", torch.float64, deterministic=True)
    ref32 = completions("reference", torch.float32, deterministic=True)
    got32 = completions(backend, torch.float32, deterministic=True)
    assert_close_to_oracle("fp32 completion", got32, ref32, oracle, torch.float32)
    # the attention is not trivial here: closing the gates changes the completion
    closed = PIC(backend=backend)
    closed.load_state_dict(ref.state_dict())
    with torch.no_grad():
        closed.net_G.attn1.gamma.zero_()
    assert (closed.sample(image, mask, 2, deterministic=True) - got32).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------
# Checkpoints in PIC's layout (docs/pic.md#official-checkpoint-layout)
# ---------------------------------------------------------------------------------------------
# Written independently of pic_checkpoint.py, from the Sequential contents in docs/pic.md#official-checkpoint-layout:
# ResBlock / ResBlockDecoder: model = ([norm], act, conv1, [norm], act, conv2), shortcut = (bypass,);
# ResBlockEncoderOptimized: model = (conv1, act, conv2, AvgPool), shortcut = (AvgPool, bypass);
# Output: model = (act, ReflectionPad, conv1, Tanh). Norms are registered only in the Sequential.
_SEQ_PLAIN = {"conv1": "model.1", "conv2": "model.3", "bypass": "shortcut.0"}
_SEQ_NORM = {"norm1": "model.0", "conv1": "model.2", "norm2": "model.3", "conv2": "model.5", "bypass": "shortcut.0"}
_SEQ_ENC_OPT = {"conv1": "model.0", "conv2": "model.2", "bypass": "shortcut.1"}
_SEQ_OUTPUT = {"conv1": "model.2"}


def _seq_table(block):
    if isinstance(block, (ResBlock, ResBlockDecoder)) and getattr(block, "norm1", None) is not None:
        return _SEQ_NORM
    if isinstance(block, (PreActResBlock, ResBlockDecoder)):
        return _SEQ_PLAIN
    if isinstance(block, ResBlockEncoderOptimized):
        return _SEQ_ENC_OPT
    if isinstance(block, Output):
        return _SEQ_OUTPUT
    return {}


def _to_pic_layout(net, data_parallel=True):
    """Our network's state dict as PIC saves it: SN tensors under `.module.`, SN convs twice."""
    mods = dict(net.named_modules())
    out = {}
    pre = "module." if data_parallel else ""
    for key, value in net.state_dict().items():
        owner, _, leaf = key.rpartition(".")
        parent_path, _, attr = owner.rpartition(".")
        is_sn = leaf in ("weight_bar", "weight_u", "weight_v") or (leaf == "bias" and hasattr(mods[owner], "weight_bar"))
        tail = f"module.{leaf}" if is_sn else leaf
        seq = _seq_table(mods[parent_path]).get(attr)
        join = (lambda *p: ".".join(x for x in p if x))  # noqa: E731
        if seq is None or not attr.startswith("norm"):
            out[pre + join(owner, tail)] = value.clone()
        if seq is not None:
            out[pre + join(parent_path, seq, tail)] = value.clone()
    return out


@pytest.mark.parametrize("data_parallel", [True, False])
def test_checkpoint_round_trip_is_bit_identical(data_parallel, tmp_path):
    src = _model(seed=0)
    with torch.no_grad():
        for net in (src.net_G, src.net_D, src.net_D_rec):
            for p in net.parameters():
                p.add_(0.01 * torch.randn_like(p))  # non-default gates, norms, query convs
    dst = _model(seed=1)
    pic = {n: _to_pic_layout(getattr(src, f"net_{n}"), data_parallel) for n in ("E", "G", "D", "D_rec")}
    # Layout sanity: the G attention's conv1 appears under both names, D's final conv once.
    pre = "module." if data_parallel else ""
    assert f"{pre}attn1.model.conv1.module.weight_bar" in pic["G"]
    assert f"{pre}attn1.model.model.1.module.weight_bar" in pic["G"]
    assert f"{pre}decoder2.model.0.weight" in pic["G"] and f"{pre}decoder2.model.5.module.weight_u" in pic["G"]
    assert f"{pre}conv.module.weight_bar" in pic["D"] and f"{pre}block0.shortcut.1.module.bias" in pic["D"]
    torch.save(pic["E"], tmp_path / "10_net_E.pth")
    load_pic_checkpoints(dst, E=tmp_path / "10_net_E.pth", G=pic["G"], D=pic["D"], D_rec=pic["D_rec"])
    ours, theirs = src.state_dict(), dst.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    image, mask = _inputs(1, 64, 64)
    a = src.sample(image, mask, 2, generator=torch.Generator().manual_seed(5))
    b = dst.sample(image, mask, 2, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    # The existing attention-layer converter reads the same layout the same way.
    g_plain = {k[len(pre):]: v for k, v in pic["G"].items()}
    att = convert_auto_attn_state_dict(g_plain, prefix="attn1.")
    assert att.keys() == dst.net_G.attn1.state_dict().keys()
    assert all(torch.equal(att[k], v) for k, v in dst.net_G.attn1.state_dict().items())


def test_checkpoint_errors():
    m = _model()
    g = _to_pic_layout(m.net_G)
    # An unknown Sequential index is reported, never loaded into some conv.
    bad = dict(g)
    bad["module.decoder0.model.4.module.weight_bar"] = bad.pop("module.decoder0.model.5.module.weight_bar")
    before = m.net_G.decoder0.conv2.weight_bar.clone()
    with pytest.raises(RuntimeError, match=re.escape("module.decoder0.model.4.module.weight_bar")):
        load_pic_checkpoints(m, G=bad)
    # Missing keys are named in both layouts.
    missing = {k: v for k, v in g.items() if ".out3." not in k}
    with pytest.raises(RuntimeError, match=re.escape("out3.conv1.weight_bar (PIC: out3.conv1.module.weight_bar or "
                                                     "out3.model.2.module.weight_bar)")):
        load_pic_checkpoints(m, G=missing)
    # Two copies of one conv that disagree.
    clash = dict(g)
    clash["module.generator.model.1.module.bias"] = clash["module.generator.model.1.module.bias"] + 1
    with pytest.raises(ValueError, match="registered twice"):
        load_pic_checkpoints(m, G=clash)
    # strict=False loads what matches and leaves the rest.
    m2 = _model(seed=3)
    load_pic_checkpoints(m2, G=missing, strict=False)
    assert torch.equal(m2.net_G.decoder0.conv1.weight_bar, m.net_G.decoder0.conv1.weight_bar)
    assert not torch.equal(m2.net_G.out3.conv1.weight_bar, m.net_G.out3.conv1.weight_bar)
    assert torch.equal(m.net_G.decoder0.conv2.weight_bar, before)  # the failed loads changed nothing
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_pic_checkpoints(m, E="nope.pth")
    with pytest.raises(ValueError, match="at least one"):
        load_pic_checkpoints(m)


# ---------------------------------------------------------------------------------------------
# Spectral norm for transposed convs (docs/pic.md#spectral-norm: the 2-D view has C_in rows)
# ---------------------------------------------------------------------------------------------
def test_spectral_norm_conv_transpose():
    torch.manual_seed(4)
    ref = torch.nn.ConvTranspose2d(6, 5, 3, stride=2, padding=1, output_padding=1)
    torch.manual_seed(4)
    sn = SpectralNormConvTranspose2d(6, 5, 3, stride=2, padding=1, output_padding=1).double()
    torch.testing.assert_close(sn.weight_bar.float(), ref.weight.detach(), rtol=0, atol=0)  # PyTorch's init
    assert tuple(sn.weight_bar.shape) == (6, 5, 3, 3)
    assert tuple(sn.weight_u.shape) == (6,) and tuple(sn.weight_v.shape) == (45,)  # (C_in, C_out·kH·kW)
    w = sn.weight_bar.detach().reshape(6, -1)
    v1 = w.t() @ sn.weight_u
    v1 = v1 / (v1.norm() + 1e-12)
    u1 = w @ v1
    u1 = u1 / (u1.norm() + 1e-12)
    x = torch.randn(2, 6, 4, 5, dtype=torch.float64)
    y = sn(x)
    assert tuple(y.shape) == (2, 5, 8, 10)
    expected = F.conv_transpose2d(x, sn.weight_bar.detach() / (u1 @ w @ v1), sn.bias.detach(), stride=2,
                                  padding=1, output_padding=1)
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sn.weight_u, u1, rtol=1e-14, atol=1e-15)
    y.sum().backward()
    assert sn.weight_bar.grad is not None and sn.weight_u.grad is None
    # σ converges to the top singular value of the (C_in, ·) view (same as of its transpose).
    with torch.no_grad():
        for _ in range(200):
            sn(x)
    torch.testing.assert_close(sn.sigma().detach(), torch.linalg.matrix_norm(w, ord=2), rtol=1e-8, atol=0)


# ---------------------------------------------------------------------------------------------
# Blocks against PIC's structure re-stated from docs/pic.md#building-blocks and #spectral-norm
# (SN wrapper + Sequentials): PyTorch
# itself then writes the checkpoint layout (duplicates, `.module.`), and the outputs must agree.
# ---------------------------------------------------------------------------------------------
class _PicSN(torch.nn.Module):
    """PIC's SpectralNorm: the wrapped conv keeps weight_bar/weight_u/weight_v; view(W.shape[0], -1)."""

    def __init__(self, module):
        super().__init__()
        self.module = module
        w = module.weight.data
        h = w.shape[0]
        l2n = lambda v: v / (v.norm() + 1e-12)  # noqa: E731
        u = torch.nn.Parameter(l2n(w.new_empty(h).normal_()), requires_grad=False)
        v = torch.nn.Parameter(l2n(w.new_empty(w[0].numel()).normal_()), requires_grad=False)
        del module._parameters["weight"]
        module.register_parameter("weight_u", u)
        module.register_parameter("weight_v", v)
        module.register_parameter("weight_bar", torch.nn.Parameter(w))

    def forward(self, x):
        m = self.module
        w = m.weight_bar.view(m.weight_bar.shape[0], -1)
        l2n = lambda v: v / (v.norm() + 1e-12)  # noqa: E731
        m.weight_v.data = l2n(w.data.t() @ m.weight_u.data)
        m.weight_u.data = l2n(w.data @ m.weight_v.data)
        m.weight = m.weight_bar / m.weight_u.dot(w.mv(m.weight_v))
        return m(x)


class _PicBlock(torch.nn.Module):
    def __init__(self, kind, cin, cout, norm):
        super().__init__()
        act = torch.nn.LeakyReLU(0.1)
        IN = (lambda c: torch.nn.InstanceNorm2d(c, affine=True)) if norm else None  # noqa: E731
        k3 = dict(kernel_size=3, padding=1)
        self.kind = kind
        if kind == "output":
            self.conv1 = _PicSN(torch.nn.Conv2d(cin, cout, 3))
            self.model = torch.nn.Sequential(act, torch.nn.ReflectionPad2d(1), self.conv1, torch.nn.Tanh())
            return
        if kind == "enc_opt":
            self.conv1 = _PicSN(torch.nn.Conv2d(cin, cout, **k3))
            self.conv2 = _PicSN(torch.nn.Conv2d(cout, cout, **k3))
            self.bypass = _PicSN(torch.nn.Conv2d(cin, cout, 1))
            self.model = torch.nn.Sequential(self.conv1, act, self.conv2, torch.nn.AvgPool2d(2))
            self.shortcut = torch.nn.Sequential(torch.nn.AvgPool2d(2), self.bypass)
            return
        self.conv1 = _PicSN(torch.nn.Conv2d(cin, cout, **k3))
        if kind == "decoder":
            up = dict(kernel_size=3, stride=2, padding=1, output_padding=1)
            self.conv2 = _PicSN(torch.nn.ConvTranspose2d(cout, cout, **up))
            self.bypass = _PicSN(torch.nn.ConvTranspose2d(cin, cout, **up))
        else:
            self.conv2 = _PicSN(torch.nn.Conv2d(cout, cout, **k3))
            self.bypass = _PicSN(torch.nn.Conv2d(cin, cout, 1))
        if IN is None:
            self.model = torch.nn.Sequential(act, self.conv1, act, self.conv2)
        else:
            self.model = torch.nn.Sequential(IN(cin), act, self.conv1, IN(cout), act, self.conv2)
        self.shortcut = torch.nn.Sequential(self.bypass)

    def forward(self, x):
        if self.kind == "output":
            return self.model(x)
        if self.kind == "down":
            return F.avg_pool2d(self.model(x), 2) + F.avg_pool2d(self.shortcut(x), 2)
        return self.model(x) + self.shortcut(x)


@pytest.mark.parametrize("kind,norm", [("down", False), ("none", True), ("enc_opt", False), ("decoder", True),
                                       ("decoder", False), ("output", False)])
def test_blocks_match_pic_structure_and_load_its_state_dict(kind, norm):
    cin, cout = 6, 5
    torch.manual_seed(0)
    pic = _PicBlock(kind, cin, cout, norm).double()
    nm = "instance" if norm else None
    ours = {
        "down": lambda: ResBlock(cin, cout, cout, sample="down"),
        "none": lambda: ResBlock(cin, cout, cout, norm=nm),
        "enc_opt": lambda: ResBlockEncoderOptimized(cin, cout),
        "decoder": lambda: ResBlockDecoder(cin, cout, cout, norm=nm),
        "output": lambda: Output(cin, cout),
    }[kind]().double()
    with torch.no_grad():  # non-trivial norm affine parameters
        for name, p in pic.named_parameters():
            if ".weight" in name or ".bias" in name:
                p.add_(0.1 * torch.randn_like(p))
    sd = pic.state_dict()
    assert any(".model." in k or k.startswith("model.") for k in sd)  # the Sequential copies are there
    converted, missing, unexpected = convert_pic_state_dict(ours, sd)
    assert missing == [] and unexpected == []
    ours.load_state_dict(converted)
    x = torch.randn(2, cin, 8, 6, dtype=torch.float64)
    for _ in range(2):  # two calls: u/v advance identically
        torch.testing.assert_close(ours(x), pic(x), rtol=1e-10, atol=1e-12)
