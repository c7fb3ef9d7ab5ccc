"""DFNet as a complete network (inpaint_fast.models.dfnet), its loss and VGG16 features.

Expected structure, keys and shapes are rebuilt here from the rules in
docs/dfnet.md (#encoder, #decoder, #state-dict-keys-and-counts; counts: docs/fusion_block.md#sizes-in-dfnet), not read
back from the module. DFNet needs sides that are multiples of 256; loss tests run at 32×32 (the
loss itself accepts any pyramid), where hand values are easy.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import inpaint_fast
from inpaint_fast.models.dfnet import (
    DFNet,
    DFNetLoss,
    VGG16Features,
    gram_matrix,
    load_vgg16_features,
    total_variation_map,
)
from conftest import assert_close_to_oracle

FUSION_BACKENDS = inpaint_fast.available_backends("cpu", torch.float32, op="fusion_block")
# Backends compared with the reference at network level: the compiled CPU kernels (Triton runs
# only under the interpreter here — far too slow for 256² — and is covered by its own op tests).
NETWORK_BACKENDS = [b for b in ("cpu",) if b in FUSION_BACKENDS]


# ---------------------------------------------------------------------------------------------
# The spec, re-stated (docs/dfnet.md)
# ---------------------------------------------------------------------------------------------
# docs/dfnet.md#encoder: (kernel, in, out) of en_0..en_7; only en_0 lacks BN.
ENCODER = [(7, 4, 64), (5, 64, 128), (5, 128, 256), (3, 256, 512), (3, 512, 512), (3, 512, 512),
           (3, 512, 512), (3, 512, 512)]  # fmt: skip
# docs/dfnet.md#decoder: conv in → out of de_k, k = 0..7 (de_0 full resolution, 68 → 4).
DECODER = {7: (1024, 512), 6: (1024, 512), 5: (1024, 512), 4: (1024, 512), 3: (768, 256), 2: (384, 128),
           1: (192, 64), 0: (68, 4)}  # fmt: skip
# Feature channels and parameter count of fuse_0..fuse_5 (docs/dfnet.md#fusion-blocks-in-the-network,
# docs/fusion_block.md#sizes-in-dfnet).
FUSE_CHANNELS = [4, 64, 128, 256, 512, 512]
FUSE_PARAMS = [1188, 1368, 1560, 1944, 2712, 2712]
TOTAL_PARAMS = 32_880_504


def _bn(prefix, c):
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}  # fmt: skip


def _expected_state_dict_shapes():
    keys = {}
    for k, (ks, cin, cout) in enumerate(ENCODER):
        keys[f"en_{k}.encode.0.conv.1.weight"] = (cout, cin, ks, ks)  # asymmetric pad: Sequential(pad, conv)
        keys[f"en_{k}.encode.0.conv.1.bias"] = (cout,)
        if k > 0:
            keys.update(_bn(f"en_{k}.encode.1", cout))
    for k, (cin, cout) in DECODER.items():
        keys[f"de_{k}.decode.0.conv.weight"] = (cout, cin, 3, 3)
        keys[f"de_{k}.decode.0.conv.bias"] = (cout,)
        keys.update(_bn(f"de_{k}.decode.1", cout))
    for k, c in enumerate(FUSE_CHANNELS):
        p = f"fuse_{k}"
        keys[f"{p}.map2img.0.conv.weight"], keys[f"{p}.map2img.0.conv.bias"] = (3, c, 1, 1), (3,)
        keys[f"{p}.blend.blend.0.conv.weight"], keys[f"{p}.blend.blend.0.conv.bias"] = (32, 6, 1, 1), (32,)
        keys.update(_bn(f"{p}.blend.blend.1", 32))
        keys[f"{p}.blend.blend.3.conv.weight"], keys[f"{p}.blend.blend.3.conv.bias"] = (3, 32, 3, 3), (3,)
        keys.update(_bn(f"{p}.blend.blend.4", 3))
        keys[f"{p}.blend.blend.6.conv.weight"], keys[f"{p}.blend.blend.6.conv.bias"] = (3, 3, 1, 1), (3,)
    return keys


def _randomise_bn(model):
    """Non-default BN statistics and affine parameters, so eval mode is not an identity map."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(3)
    return model


def _inputs(b, h, w, seed=1):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(b, 3, h, w, generator=g)
    mask = (torch.rand(b, 1, h, w, generator=g) > 0.3).float()
    return image, mask


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return _randomise_bn(DFNet(backend="reference")).eval()


def _set_backend(model, backend):
    model.backend = backend
    return model


# ---------------------------------------------------------------------------------------------
# Structure
# ---------------------------------------------------------------------------------------------
def test_parameter_counts(net):
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == TOTAL_PARAMS
    assert [sum(p.numel() for p in getattr(net, f"fuse_{k}").parameters()) for k in range(6)] == FUSE_PARAMS


def test_state_dict_keys_and_shapes_match_spec(net):
    expected = _expected_state_dict_shapes()
    assert len(expected) == 215
    got = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert sorted(got) == sorted(expected)
    assert got == expected


def test_backend_reaches_every_fusion_block():
    model = DFNet(backend="reference")
    blocks = [m for m in model.modules() if isinstance(m, inpaint_fast.nn.FusionBlock)]
    assert len(blocks) == 6 and all(b.backend == "reference" for b in blocks)
    model.backend = "cpu"
    assert model.backend == "cpu" and all(b.backend == "cpu" for b in blocks)
    assert [getattr(model, f"fuse_{k}").c_feat for k in range(6)] == FUSE_CHANNELS


def test_strict_load_round_trip(net):
    image, mask = _inputs(1, 256, 256)
    source = copy.deepcopy(net)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.01 * torch.randn_like(p))  # differ from a fresh model everywhere
    buf = io.BytesIO()
    torch.save(source.state_dict(), buf)
    buf.seek(0)
    loaded = DFNet(backend="reference")
    loaded.load_state_dict(torch.load(buf, weights_only=True), strict=True)
    loaded.eval()
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in loaded.state_dict().items())
    with torch.no_grad():
        ref = source(image * mask, mask)
        got = loaded(image * mask, mask)
    for a, b in zip(ref[0] + ref[1] + ref[2], got[0] + got[1] + got[2]):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("b,h,w", [(2, 256, 256), (1, 256, 512)])
def test_output_shapes_and_convex_blend(net, b, h, w):
    image, mask = _inputs(b, h, w)
    x = image * mask
    with torch.no_grad():
        results, alphas, raws = net(x, mask)
    assert len(results) == len(alphas) == len(raws) == 6
    for k, (y, a, r) in enumerate(zip(results, alphas, raws)):
        shape = (b, 3, h >> k, w >> k)
        assert y.shape == a.shape == r.shape == shape
        assert 0 < a.min() and a.max() < 1 and 0 <= r.min() and r.max() <= 1
        # Y is the element-wise convex combination of R and the resized input (property 2,
        # docs/fusion_block.md#properties-the-tests-check).
        x_k = F.interpolate(x, size=shape[2:], mode="bilinear", align_corners=False)
        lo, hi = torch.minimum(r, x_k), torch.maximum(r, x_k)
        assert (y >= lo - 1e-6).all() and (y <= hi + 1e-6).all()
    # Property 3: at full resolution the blend is exact in the un-resized X.
    torch.testing.assert_close(results[0], alphas[0] * raws[0] + (1 - alphas[0]) * x, rtol=0, atol=1e-6)


def test_autocast_runs_fusion_blocks_in_fp32(net):
    """Under autocast the decoder feature is bf16 while the image and BN statistics are fp32."""
    image, mask = _inputs(1, 256, 256, seed=2)
    with torch.no_grad():
        ref = net(image * mask, mask)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = net(image * mask, mask)
    for a, b in zip(ref[0] + ref[1] + ref[2], got[0] + got[1] + got[2]):
        assert b.dtype == torch.float32
        torch.testing.assert_close(b, a, rtol=0, atol=2e-2)  # bf16 encoder/decoder: ~3 significant digits


@pytest.mark.parametrize("h,w", [(250, 256), (256, 300), (128, 128), (512, 384)])
def test_size_not_multiple_of_256_is_a_clear_error(net, h, w):
    image, mask = _inputs(1, h, w)
    with pytest.raises(ValueError, match=rf"multiples of 256.*got {h}x{w}.*[Pp]ad or resize"):
        net(image * mask, mask)


def test_train_mode_batch_one_at_256_is_a_clear_error():
    model = DFNet(backend="reference").train()
    image, mask = _inputs(1, 256, 256)
    with pytest.raises(ValueError, match=r"batch 1 at 256x256.*1x1"):
        model(image * mask, mask)
    # Batch 1 works in eval, and in training when the bottleneck has 2 values (256x512).
    with torch.no_grad():
        model.eval()(image * mask, mask)
        image, mask = _inputs(1, 256, 512)
        model.train()(image * mask, mask)


def test_input_shape_errors(net):
    image, mask = _inputs(1, 256, 256)
    with pytest.raises(ValueError, match=r"`mask` must be \(B, 1, H, W\)"):
        net(image, mask.expand(1, 3, 256, 256))
    with pytest.raises(ValueError, match=r"must match"):
        net(image, torch.ones(2, 1, 256, 256))


def _with_alpha_bias(model, value):
    """Make every fusion block's last conv output exactly `value` (weight 0), so α = sigmoid(value)."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for k in range(6):
            conv = getattr(model, f"fuse_{k}").blend.blend[6].conv
            conv.weight.zero_()
            conv.bias.fill_(value)
    return model


def _functional_dfnet(sd, x, mask):
    """DFNet's eval forward re-stated (docs/fusion_block.md#forward, docs/dfnet.md) with plain
    functionals on a state dict."""

    def bn(t, p):
        return F.batch_norm(t, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"])

    def conv(t, p, **kw):
        return F.conv2d(t, sd[p + ".weight"], sd[p + ".bias"], **kw)

    skips = [torch.cat([x, mask], 1)]
    for k, (ks, _, _) in enumerate(ENCODER):  # TF "same": total pad k − 2, the extra one right/bottom
        pad = (ks - 2) // 2
        t = conv(F.pad(skips[-1], (pad, pad + 1, pad, pad + 1)), f"en_{k}.encode.0.conv.1", stride=2)
        skips.append(t if k == 0 else F.relu(bn(t, f"en_{k}.encode.1")))
    d = skips[8]
    results, alphas, raws = [], [], []
    for k in range(7, -1, -1):
        up = F.interpolate(d, scale_factor=2, mode="nearest")
        d = conv(torch.cat([up, skips[k]], 1), f"de_{k}.decode.0.conv", padding=1)
        d = F.leaky_relu(bn(d, f"de_{k}.decode.1"), 0.2)
        if k <= 5:
            p = f"fuse_{k}"
            x_k = F.interpolate(x, size=d.shape[2:], mode="bilinear", align_corners=False)
            raw = torch.sigmoid(conv(d, f"{p}.map2img.0.conv"))
            a = F.leaky_relu(bn(conv(torch.cat([x_k, raw], 1), f"{p}.blend.blend.0.conv"), f"{p}.blend.blend.1"), 0.2)
            a = F.leaky_relu(bn(conv(a, f"{p}.blend.blend.3.conv", padding=1), f"{p}.blend.blend.4"), 0.2)
            a = torch.sigmoid(conv(a, f"{p}.blend.blend.6.conv"))
            results.insert(0, a * raw + (1 - a) * x_k)
            alphas.insert(0, a)
            raws.insert(0, raw)
    return results, alphas, raws


def test_eval_forward_matches_functional_restatement(net):
    image, mask = _inputs(1, 256, 512, seed=6)
    with torch.no_grad():
        got = net(image * mask, mask)
        ref = _functional_dfnet(net.state_dict(), image * mask, mask)
    for name, g_list, r_list in zip(("results", "alphas", "raws"), got, ref):
        for k, (g, r) in enumerate(zip(g_list, r_list)):
            torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5, msg=f"{name}[{k}]")


def test_alpha_zero_gives_resized_input_and_alpha_one_gives_raw(net):
    """Property 2 (docs/fusion_block.md#properties-the-tests-check): α ≡ 0 ⇒ Y_k = resize(X);
    α ≡ 1 ⇒ Y_k = R_k = sigmoid(conv1x1(D_k))."""
    image, mask = _inputs(1, 256, 256)
    x = image * mask
    with torch.no_grad():
        results, alphas, _ = _with_alpha_bias(net, -1e4)(x, mask)
        for k in range(6):
            assert torch.equal(alphas[k], torch.zeros_like(alphas[k]))
            expected = F.interpolate(x, size=results[k].shape[2:], mode="bilinear", align_corners=False)
            torch.testing.assert_close(results[k], expected, rtol=0, atol=1e-6)

        model = _with_alpha_bias(net, 1e4)
        feats = {}
        for k in range(6):
            getattr(model, f"de_{k}").register_forward_hook(lambda mod, inp, out, k=k: feats.__setitem__(k, out))
        results, alphas, raws = model(x, mask)
        for k in range(6):
            assert torch.equal(alphas[k], torch.ones_like(alphas[k]))
            assert torch.equal(results[k], raws[k])
            conv = getattr(model, f"fuse_{k}").map2img[0].conv
            torch.testing.assert_close(raws[k], torch.sigmoid(F.conv2d(feats[k], conv.weight, conv.bias)),
                                       rtol=0, atol=1e-6)


def test_fusion_result_is_not_fed_back_into_the_decoder(net):
    """docs/dfnet.md#fusion-blocks-in-the-network: changing a fusion block's alpha changes only that level's outputs."""
    image, mask = _inputs(1, 256, 256)
    model = copy.deepcopy(net)
    with torch.no_grad():
        before = model(image * mask, mask)
        getattr(model, "fuse_3").blend.blend[6].conv.bias.add_(1.0)
        after = model(image * mask, mask)
    for k in range(6):
        same = torch.equal(before[0][k], after[0][k])
        assert same == (k != 3)
        assert torch.equal(before[2][k], after[2][k])  # raws depend on the decoder only


# ---------------------------------------------------------------------------------------------
# Backends: the compiled CPU fusion kernel against the pure-PyTorch reference, whole network
# ---------------------------------------------------------------------------------------------
# Only each fusion op's own rounding differs between backends: the encoder and decoder run the
# same PyTorch code, and a fusion block's output leaves the network without feeding the decoder,
# so the fused kernel's rounding reaches them only through the gradient it sends back.
#
# * float64, train and eval: every output, running statistic and gradient of the backend equals
#   the reference's to fp64 rounding (conftest's fp64 rule, 1e-10 of each tensor's magnitude;
#   the differences measured are below 1e-13).
# * float32: a whole fp32 DFNet is not accurate to fp32 rounding. Train-mode BN at the 1x1
#   bottleneck (256² input, batch 2: two values per channel) amplifies rounding, so both fp32
#   paths are 0.2-3% off an fp64 run in the encoder's weight gradients, by an amount that depends
#   on the CPU (oneDNN's AVX2 and AVX-512 convolutions round differently). Each fp32 backend is
#   therefore judged against the fp64 run by the fp32 reference's own error there
#   (conftest.assert_close_to_oracle: at most twice that error plus one eps at the magnitude).
# * The fusion block's two LeakyReLUs: a pre-activation within rounding of 0 may take either
#   slope in any fp32 implementation, and one such element moves a small level's BN gradients by
#   percents (seen on an AVX2 CPU: one BN1 output of fuse_4 at 4.4e-8 came out -5.2e-8 in the
#   fused kernel and +8.9e-8 in the reference, so fuse_4.blend.blend.1.bias was 2.2e-2 off fp64
#   against the reference's 8.7e-6; the kernel's BN1 outputs are no less accurate than the
#   reference's on average). That says nothing about either implementation's accuracy, so the fp32
#   training comparison gives the fusion blocks' BNs affine parameters that put every
#   pre-activation far from the kink (half of the channels on each side, so both slopes are
#   used) and checks that margin on the fp32 run's own fusion inputs first.
KINK_MARGIN = 0.1  # |BN output| ≥ this everywhere: ~1e6 fp32 roundings of an O(1) value


def _loss(results, alphas, raws):
    """A scalar touching every output, with distinct weights per level."""
    return sum((k + 1) * (y.square().mean() + a.mean() + r.mean()) for k, (y, a, r) in
               enumerate(zip(results, alphas, raws)))


def _run(model, backend, dtype, image, mask, *, training):
    """A copy of `model` on `backend` in `dtype`: forward (+ backward of _loss). Returns every
    output, buffer and parameter gradient by name, and each fusion block's inputs."""
    model = _set_backend(copy.deepcopy(model), backend).to(dtype).train(training)
    fusion_inputs = {}
    for k in range(6):
        getattr(model, f"fuse_{k}").register_forward_pre_hook(
            lambda module, args, k=k: fusion_inputs.__setitem__(k, tuple(a.detach() for a in args)))
    results, alphas, raws = model((image * mask).to(dtype), mask.to(dtype))
    _loss(results, alphas, raws).backward()
    tensors = {f"{kind}[{k}]": t.detach() for kind, ts in (("results", results), ("alphas", alphas), ("raws", raws))
               for k, t in enumerate(ts)}  # fmt: skip
    tensors.update({f"buffer {n}": b for n, b in model.named_buffers() if b.is_floating_point()})
    tensors.update({f"grad {n}": p.grad for n, p in model.named_parameters()})
    return tensors, fusion_inputs


def _assert_all_close_to_oracle(got, ref_lowp, oracle, dtype):
    failures = []
    for name, expected in oracle.items():
        try:
            assert_close_to_oracle(name, got[name], ref_lowp[name], expected, dtype)
        except AssertionError as exc:
            failures.append(str(exc).splitlines()[0])
    assert not failures, f"{len(failures)} of {len(oracle)} tensors off:\n" + "\n".join(failures)


def _kink_free_fusion_bns(model):
    """Fusion-block BNs whose outputs γ·n + β stay far from 0: β = ±3 alternating by channel,
    γ ∈ [0.2, 0.4], so an output would need |n| > 7.5 to reach the LeakyReLU's kink."""
    with torch.no_grad():
        for k in range(6):
            blend = getattr(model, f"fuse_{k}").blend.blend
            for bn in (blend[1], blend[4]):
                bn.weight.uniform_(0.2, 0.4)
                bn.bias.copy_(torch.tensor([3.0, -3.0]).repeat(bn.num_features)[: bn.num_features])
    return model


def _fusion_preactivations(block, image, feat):
    """The training-mode inputs of a fusion block's two LeakyReLUs, re-stated in float64."""
    sd = {n: v.double() for n, v in block.state_dict().items()}
    image, feat = image.double(), feat.double()
    x_k = F.interpolate(image, size=feat.shape[-2:], mode="bilinear", align_corners=False)
    raw = torch.sigmoid(F.conv2d(feat, sd["map2img.0.conv.weight"], sd["map2img.0.conv.bias"]))
    z1 = F.conv2d(torch.cat([x_k, raw], 1), sd["blend.blend.0.conv.weight"], sd["blend.blend.0.conv.bias"])
    v1 = F.batch_norm(z1, None, None, sd["blend.blend.1.weight"], sd["blend.blend.1.bias"], True)
    z2 = F.conv2d(F.leaky_relu(v1, 0.2), sd["blend.blend.3.conv.weight"], sd["blend.blend.3.conv.bias"], padding=1)
    v2 = F.batch_norm(z2, None, None, sd["blend.blend.4.weight"], sd["blend.blend.4.bias"], True)
    return v1, v2


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("backend", NETWORK_BACKENDS)
def test_backend_matches_reference_in_fp64(net, backend, training):
    image, mask = _inputs(2, 256, 256, seed=4)
    ref, _ = _run(net, "reference", torch.float64, image, mask, training=training)
    got, _ = _run(net, backend, torch.float64, image, mask, training=training)
    _assert_all_close_to_oracle(got, ref, ref, torch.float64)


@pytest.mark.parametrize("backend", NETWORK_BACKENDS)
def test_backend_fp32_error_within_the_references_in_train(net, backend):
    model = _kink_free_fusion_bns(copy.deepcopy(net))
    image, mask = _inputs(2, 256, 256, seed=4)
    oracle, _ = _run(model, "reference", torch.float64, image, mask, training=True)
    ref32, fusion_inputs = _run(model, "reference", torch.float32, image, mask, training=True)
    for k, (img, feat) in fusion_inputs.items():
        for name, v in zip(("blend.blend.1", "blend.blend.4"), _fusion_preactivations(model.get_submodule(f"fuse_{k}"),
                                                                                      img, feat)):
            nearest = v.abs().min().item()
            assert nearest >= KINK_MARGIN, (f"fuse_{k}.{name}: an output at {nearest:.2e}, nearer the kink "
                                            f"than {KINK_MARGIN}")
            assert 0 < (v < 0).double().mean().item() < 1, f"fuse_{k}.{name}: one LeakyReLU slope unused"
    got32, _ = _run(model, backend, torch.float32, image, mask, training=True)
    _assert_all_close_to_oracle(got32, ref32, oracle, torch.float32)


@pytest.mark.parametrize("backend", NETWORK_BACKENDS)
def test_backend_fp32_error_within_the_references_in_eval(net, backend):
    image, mask = _inputs(2, 256, 256, seed=3)
    runs = {}
    for name, b, dtype in (("oracle", "reference", torch.float64), ("ref32", "reference", torch.float32),
                           ("got32", backend, torch.float32)):  # fmt: skip
        model = _set_backend(copy.deepcopy(net), b).to(dtype).eval()
        with torch.no_grad():
            results, alphas, raws = model((image * mask).to(dtype), mask.to(dtype))
        runs[name] = {f"{kind}[{k}]": t for kind, ts in (("results", results), ("alphas", alphas), ("raws", raws))
                      for k, t in enumerate(ts)}  # fmt: skip
    _assert_all_close_to_oracle(runs["got32"], runs["ref32"], runs["oracle"], torch.float32)


# ---------------------------------------------------------------------------------------------
# inpaint
# ---------------------------------------------------------------------------------------------
def test_inpaint_composites_in_eval_and_restores_mode(net):
    model = copy.deepcopy(net).train()
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    image, mask = _inputs(1, 256, 256, seed=5)  # batch 1 at 256: would fail in train mode
    out = model.inpaint(image, mask)
    assert model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in stats.items())  # no BN update
    assert out.shape == image.shape and out.min() >= 0 and out.max() <= 1
    known = mask.bool().expand_as(image)
    assert torch.equal(out[known], image[known])
    with torch.no_grad():
        results = net(image * mask, mask)[0]
    torch.testing.assert_close(out[~known], results[0][~known], rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# Loss pieces, by hand
# ---------------------------------------------------------------------------------------------
def test_gram_of_constant_map_is_v_squared_over_c():
    v, c = 1.5, 5
    g = gram_matrix(torch.full((2, c, 3, 4), v))
    torch.testing.assert_close(g, torch.full((2, c, c), v * v / c))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert gram_matrix(torch.full((1, c, 3, 4), v, dtype=torch.bfloat16)).dtype == torch.float32


def test_total_variation_of_constant_image():
    v = 0.7
    g = total_variation_map(torch.full((1, 2, 4, 5), v))
    expected = torch.zeros(1, 2, 4, 5)
    expected[..., 0, :] = -v
    expected[..., :, 0] = -v
    expected[..., 0, 0] = -2 * v
    torch.testing.assert_close(g, expected)
    # A step to the right: g = x[i, j-1] − x[i, j] + (x[i-1, j] − x[i, j]) away from the borders.
    x = torch.zeros(1, 1, 4, 4)
    x[..., 2:] = 1.0
    g = total_variation_map(x)
    assert g[0, 0, 2, 2].item() == -1.0 and g[0, 0, 2, 3].item() == 0.0 and g[0, 0, 2, 1].item() == 0.0


def _central_mean_pyramid(x, levels):
    """Property 4: bilinear 1/2^k (align_corners False) = mean of the central 2×2 of each 2^k block."""
    out = [x]
    B, C, H, W = x.shape
    for k in range(1, levels):
        s = 2**k
        o = s // 2 - 1
        blocks = x.reshape(B, C, H // s, s, W // s, s)[:, :, :, o:o + 2, :, o:o + 2]
        out.append(blocks.mean(dim=(3, 5)))
    return out


@pytest.fixture(scope="module")
def vgg():
    torch.manual_seed(0)
    return VGG16Features()


def _loss_case(seed=7, size=32):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(1, 3, size, size, generator=g)
    mask = (torch.rand(1, 1, size, size, generator=g) > 0.4).float()
    results = [torch.rand(1, 3, size >> k, size >> k, generator=g) for k in range(6)]
    return results, target, mask


def test_loss_reconstruction_term_by_hand_and_weights(vgg):
    results, target, mask = _loss_case()
    targets = _central_mean_pyramid(target, 6)
    expected = sum((y - t).abs().mean() for y, t in zip(results, targets)) / 6
    total, terms = DFNetLoss(vgg)(results, target, mask)
    assert set(terms) == {"reconstruction_loss", "perceptual_loss", "style_loss", "total_variation_loss"}
    assert all(isinstance(v, float) for v in terms.values())
    assert terms["reconstruction_loss"] == pytest.approx(expected.item(), rel=1e-6)
    assert terms["perceptual_loss"] > 0 and terms["style_loss"] > 0
    weighted = (6 * terms["reconstruction_loss"] + 0.1 * terms["perceptual_loss"] + 240 * terms["style_loss"]
                + 0.1 * terms["total_variation_loss"])
    assert total.item() == pytest.approx(weighted, rel=1e-5)


def test_loss_texture_terms_vanish_when_results_equal_targets(vgg):
    _, target, mask = _loss_case()
    results = _central_mean_pyramid(target, 6)
    total, terms = DFNetLoss(vgg)(results, target, mask)
    assert terms["reconstruction_loss"] < 1e-6
    assert terms["perceptual_loss"] < 1e-6 and terms["style_loss"] < 1e-9
    assert total.item() == pytest.approx(0.1 * terms["total_variation_loss"], rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("known", ["all", "right_half"])
def test_loss_tv_value_on_constant_target(vgg, known):
    """Released TV is on the targets. A constant v has |tv| = 2v at the corner and v on the rest of
    row 0 and column 0. With every pixel known that is 2S·v over S² pixels at scale S; with only the
    right half known (the resized mask stays exactly binary: the edge is at a multiple of 2^k) only
    row 0's S/2 known pixels count: v/(2S)."""
    v, size = 0.5, 32
    target = torch.full((1, 3, size, size), v)
    mask = torch.ones(1, 1, size, size)
    if known == "right_half":
        mask[..., : size // 2] = 0
    results = [torch.rand(1, 3, size >> k, size >> k) for k in range(6)]
    _, terms = DFNetLoss(vgg, tv="released")(results, target, mask)
    per_scale = (lambda s: 2 * v / s) if known == "all" else (lambda s: v / (2 * s))
    expected = sum(per_scale(size >> k) for k in range(3)) / 3
    assert terms["total_variation_loss"] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("tv", ["released", "intended"])
def test_loss_tv_gradient_released_vs_intended(vgg, tv):
    results, target, mask = _loss_case(seed=8)
    results = [r.requires_grad_() for r in results]
    total, _ = DFNetLoss(vgg, tv=tv, w_rec=0.0, w_percep=0.0, w_style=0.0, w_tv=1.0)(results, target, mask)
    total.backward()
    grads = [r.grad.abs().max().item() for r in results]
    if tv == "released":
        assert grads == [0.0] * 6  # TV of the targets: a constant
    else:
        assert all(g > 0 for g in grads[:3]) and grads[3:] == [0.0] * 3  # texture levels only


def test_loss_gradient_reaches_every_level_and_spares_vgg(vgg):
    results, target, mask = _loss_case(seed=9)
    results = [r.requires_grad_() for r in results]
    for name, weights in {"rec": dict(w_percep=0.0, w_style=0.0, w_tv=0.0),
                          "percep": dict(w_rec=0.0, w_style=0.0, w_tv=0.0),
                          "style": dict(w_rec=0.0, w_percep=0.0, w_tv=0.0)}.items():  # fmt: skip
        for r in results:
            r.grad = None
        total, _ = DFNetLoss(vgg, **weights)(results, target, mask)
        total.backward()
        reached = [r.grad is not None and r.grad.abs().max().item() > 0 for r in results]
        assert reached == ([True] * 6 if name == "rec" else [True] * 3 + [False] * 3), name
    assert all(p.grad is None for p in vgg.parameters())


def test_loss_errors(vgg):
    results, target, mask = _loss_case()
    with pytest.raises(ValueError, match="tv"):
        DFNetLoss(vgg, tv="faithful")
    with pytest.raises(ValueError, match="results\\[0\\]"):
        DFNetLoss(vgg)(results[1:], target, mask)
    with pytest.raises(ValueError, match="mask"):
        DFNetLoss(vgg)(results, target, mask[:, :, :16])


# ---------------------------------------------------------------------------------------------
# VGG16 features and loading
# ---------------------------------------------------------------------------------------------
CONV_INDICES = [0, 2, 5, 7, 10, 12, 14]
CONV_CHANNELS = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256)]


def test_vgg_layout_frozen_and_pools(vgg):
    feats = vgg.features
    assert len(feats) == 17
    assert [i for i, m in enumerate(feats) if isinstance(m, nn.Conv2d)] == CONV_INDICES
    assert [i for i, m in enumerate(feats) if isinstance(m, nn.MaxPool2d)] == [4, 9, 16]
    assert all(not p.requires_grad for p in vgg.parameters())
    assert not vgg.train().training
    x = torch.rand(1, 3, 32, 48)
    p1, p2, p3 = vgg(x)
    assert p1.shape == (1, 64, 16, 24) and p2.shape == (1, 128, 8, 12) and p3.shape == (1, 256, 4, 6)
    # pool1 by hand: two 3x3 convs with ReLU, then 2x2 max-pool.
    h = F.relu(F.conv2d(x, feats[0].weight, feats[0].bias, padding=1))
    h = F.relu(F.conv2d(h, feats[2].weight, feats[2].bias, padding=1))
    torch.testing.assert_close(p1, F.max_pool2d(h, 2))


def _torchvision_style_state_dict():
    g = torch.Generator().manual_seed(11)
    sd = {}
    for i, (cin, cout) in zip(CONV_INDICES, CONV_CHANNELS):
        sd[f"features.{i}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * 0.05
        sd[f"features.{i}.bias"] = torch.randn(cout, generator=g) * 0.05
    # Keys beyond pool3 and the classifier are ignored (kept tiny here; their real shapes are huge).
    sd["features.28.weight"] = torch.zeros(2, 2, 3, 3)
    sd["classifier.0.weight"] = torch.zeros(4, 4)
    sd["classifier.6.bias"] = torch.zeros(4)
    return sd


def test_load_vgg16_features_from_torchvision_format(tmp_path):
    sd = _torchvision_style_state_dict()
    path = tmp_path / "vgg16.pth"
    torch.save(sd, path)
    model = load_vgg16_features(path)
    for i in CONV_INDICES:
        assert torch.equal(model.features[i].weight, sd[f"features.{i}.weight"])
        assert torch.equal(model.features[i].bias, sd[f"features.{i}.bias"])
    assert all(not p.requires_grad for p in model.parameters()) and not model.training


def test_load_vgg16_features_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"vgg16-397923af\.pth") as info:
        load_vgg16_features(tmp_path / "missing.pth")
    assert "features.0.weight" in str(info.value) and "torchvision" in str(info.value)

    sd = _torchvision_style_state_dict()
    del sd["features.14.bias"]
    torch.save(sd, tmp_path / "short.pth")
    with pytest.raises(ValueError, match=r"features\.14\.bias"):
        load_vgg16_features(tmp_path / "short.pth")

    sd = _torchvision_style_state_dict()
    sd["features.5.weight"] = torch.zeros(128, 32, 3, 3)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"features\.5\.weight: \(128, 32, 3, 3\), expected \(128, 64, 3, 3\)"):
        load_vgg16_features(tmp_path / "bad.pth")

    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="not a state dict"):
        load_vgg16_features(tmp_path / "list.pth")
