"""fusion_block: every backend against the reference, forward and backward, train and eval."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import inpaint_fast
from inpaint_fast import reference
from inpaint_fast.ops.fusion_block import PARAM_NAMES, RUNNING_STATS
from conftest import CPU_BACKENDS, INTERPRETED, assert_close_to_oracle, skip_outside_envelope

ALL_BACKENDS = ["reference"] + CPU_BACKENDS
BUFFERS = set(RUNNING_STATS)

# (B, c, h, w, H, W, A): DFNet's fuse_0 (identity resize) and deeper levels (2x, 4x), a non-integer
# ratio, odd sizes, c not a power of two, c_alpha = 1 and 3.
SHAPES = [
    (2, 4, 16, 16, 16, 16, 3),
    (1, 64, 8, 8, 16, 16, 3),
    (3, 5, 7, 9, 28, 36, 3),
    (2, 12, 7, 9, 10, 14, 1),
    (2, 3, 1, 3, 1, 3, 3),
]


def sample_inputs(shape, dtype=torch.float32, layout="contiguous", cm=32, device="cpu"):
    """(feat, image, params) with non-trivial BN statistics and affine parameters, drawn in fp64
    and rounded to ``dtype``. ``cm``: the blend's middle channels (32 in DFNet)."""
    B, c, h, w, H, W, A = shape
    g = lambda *s: torch.randn(*s, dtype=torch.float64)  # noqa: E731
    feat = g(B, c, h, w)
    image = torch.rand(B, 3, H, W, dtype=torch.float64)
    params = {
        "map_weight": g(3, c, 1, 1) * 0.5, "map_bias": g(3) * 0.1,
        "conv1_weight": g(cm, 6, 1, 1) * 0.4, "conv1_bias": g(cm) * 0.1,
        "bn1_weight": 1 + 0.2 * g(cm), "bn1_bias": 0.1 * g(cm),
        "bn1_running_mean": 0.1 * g(cm), "bn1_running_var": 1 + 0.5 * torch.rand(cm, dtype=torch.float64),
        "conv2_weight": g(A, cm, 3, 3) * 0.1, "conv2_bias": g(A) * 0.1,
        "bn2_weight": 1 + 0.2 * g(A), "bn2_bias": 0.1 * g(A),
        "bn2_running_mean": 0.1 * g(A), "bn2_running_var": 1 + 0.5 * torch.rand(A, dtype=torch.float64),
        "conv3_weight": g(A, A, 1, 1), "conv3_bias": g(A) * 0.1,
    }  # fmt: skip
    if layout == "channels_last":
        feat, image = (t.contiguous(memory_format=torch.channels_last) for t in (feat, image))
    elif layout == "transposed":  # H and W strides swapped: not contiguous in any memory format
        feat, image = (t.transpose(2, 3).contiguous().transpose(2, 3) for t in (feat, image))
    to = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
    return to(feat), to(image), {k: to(v) for k, v in params.items()}


def _run(fn, feat, image, params, training, grads, image_grad=True):
    """Outputs, gradients (feat, image, trainable params) and updated running stats."""
    feat = feat.detach().clone().requires_grad_(True)
    image = image.detach().clone().requires_grad_(image_grad)
    params = {k: v.detach().clone().requires_grad_(k not in BUFFERS) for k, v in params.items()}
    outs = fn(feat, image, *[params[k] for k in PARAM_NAMES], training)
    wrt = [feat] + ([image] if image_grad else []) + [params[k] for k in PARAM_NAMES if k not in BUFFERS]
    in_grads = torch.autograd.grad(outs, wrt, grads)
    stats = [params[k].detach() for k in sorted(BUFFERS)]
    return [o.detach() for o in outs], list(in_grads), stats


def _grads(feat, A, dtype):
    B, _, h, w = feat.shape
    return [torch.randn(B, 3, h, w, dtype=dtype), torch.randn(B, A, h, w, dtype=dtype), torch.randn(B, 3, h, w, dtype=dtype)]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-c{}-{}x{}-from{}x{}-A{}".format(*s))
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_matches_reference(backend, dtype, shape, training):
    skip_outside_envelope("fusion_block", backend, dtype, shape[2] * shape[3])
    feat, image, params = sample_inputs(shape, dtype)
    grads = _grads(feat, shape[-1], dtype)
    fn = lambda *a: inpaint_fast.fusion_block(*a, backend=backend)  # noqa: E731
    ours = _run(fn, feat, image, params, training, grads)
    ref = _run(reference.fusion_block, feat, image, params, training, grads)
    p64 = {k: v.double() for k, v in params.items()}
    ref64 = _run(reference.fusion_block, feat.double(), image.double(), p64, training, [g.double() for g in grads])
    labels = ["out", "alpha", "raw"]
    labels += ["grad_feat", "grad_image"] + [f"grad_{k}" for k in PARAM_NAMES if k not in BUFFERS]
    labels += sorted(BUFFERS)
    # Parameter gradients are sums over all M = B·h·w pixels of per-pixel terms rounded to the
    # dtype. Some are mathematically ~0 (a bias just before a training-mode BatchNorm), so their
    # value is rounding noise: judge each at the scale of the largest parameter gradient, with the
    # √M growth of a sum's rounding error (PyTorch's CPU BatchNorm sums in double, so its own
    # error on these can be luckily small).
    param_grads = [c for label, c in zip(labels, sum(ref64, [])) if label.startswith("grad_") and "image" not in
                   label and "feat" not in label]
    param_scale = max(t.abs().max().item() for t in param_grads)
    for label, a, b, c in zip(labels, sum(ours, []), sum(ref, []), sum(ref64, [])):
        assert a.dtype == dtype, label
        is_param = any(c is t for t in param_grads)
        summed = feat.shape[0] * feat.shape[2] * feat.shape[3] if is_param else 1
        assert_close_to_oracle(label, a, b, c, dtype, scale=param_scale if is_param else 0.0, summed_terms=summed)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("layout", ["channels_last", "transposed"])
def test_layouts(backend, layout):
    shape = (2, 5, 6, 7, 12, 14, 3)
    grads = None
    results = []
    for lay in ("contiguous", layout):
        torch.manual_seed(1)
        feat, image, params = sample_inputs(shape, torch.float64, lay)
        grads = grads or _grads(feat, 3, torch.float64)
        results.append(_run(lambda *a: inpaint_fast.fusion_block(*a, backend=backend), feat, image, params, True, grads))
    for a, b in zip(sum(results[0], []), sum(results[1], [])):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_gradcheck_fp64(backend, training):
    if backend in INTERPRETED:
        pytest.skip("interpreted Triton: tests/test_triton_fusion_block.py gradchecks the kernels directly")
    feat, image, params = sample_inputs((2, 3, 3, 4, 6, 8, 3), torch.float64)
    trainable = [k for k in PARAM_NAMES if k not in BUFFERS]

    def fn(feat, image, *values):
        p = dict(params)
        p.update(zip(trainable, values))
        # Running stats are cloned per call so the in-place update in training does not leak
        # between gradcheck's evaluations.
        for k in BUFFERS:
            p[k] = params[k].clone()
        return inpaint_fast.fusion_block(feat, image, *[p[k] for k in PARAM_NAMES], training, backend=backend)

    inputs = [feat.requires_grad_(), image.requires_grad_()] + [params[k].clone().requires_grad_() for k in trainable]
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


# The custom ops behind each kernel backend (one schema, csrc/ops.cpp).
OP_NAMES = {"cpu": "fusion_block", "triton": "triton_fusion_block"}
OP_BACKENDS = [b for b in CPU_BACKENDS if b in OP_NAMES]


@pytest.mark.parametrize("backend", OP_BACKENDS)
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
@pytest.mark.parametrize("requires_grad", [True, False])
def test_opcheck(backend, training, layout, requires_grad):
    feat, image, params = sample_inputs((2, 5, 4, 6, 8, 12, 3), torch.float32, layout)
    args = [feat.requires_grad_(requires_grad), image]
    args += [params[k].requires_grad_(requires_grad and k not in BUFFERS) for k in PARAM_NAMES]
    op = getattr(torch.ops.inpaint_fast, OP_NAMES[backend] + "_fwd").default
    torch.library.opcheck(op, (*args, training, 1e-5))


@pytest.mark.parametrize("backend", OP_BACKENDS)
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_opcheck_backward_op(backend, training):
    feat, image, params = sample_inputs((2, 5, 4, 6, 8, 12, 1), torch.float32)
    values = [params[k] for k in PARAM_NAMES]
    fwd = getattr(torch.ops.inpaint_fast, OP_NAMES[backend] + "_fwd").default
    bwd = getattr(torch.ops.inpaint_fast, OP_NAMES[backend] + "_bwd").default
    out, alpha, raw, m1, v1, m2, v2 = fwd(feat, image, *values, training, 1e-5)
    p = dict(params, bn1_running_mean=m1, bn1_running_var=v1, bn2_running_mean=m2, bn2_running_var=v2)
    args = (torch.randn_like(out), torch.randn_like(alpha), torch.randn_like(raw), feat, image,
            *[p[k] for k in PARAM_NAMES], training, 1e-5)  # fmt: skip
    torch.library.opcheck(bwd, args)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_torch_compile_fullgraph(backend):
    torch._dynamo.reset()
    feat, image, params = sample_inputs((2, 5, 6, 7, 12, 14, 3), torch.float32)
    trainable = [k for k in PARAM_NAMES if k not in BUFFERS]

    def step(feat, image, p):
        out, alpha, raw = inpaint_fast.fusion_block(feat, image, *[p[k] for k in PARAM_NAMES], True, backend=backend)
        return (out * 2).sum() + alpha.square().sum() + raw.sum()

    runs = []
    for compiled in (False, True):
        f = feat.clone().requires_grad_()
        p = {k: v.clone().requires_grad_(k in trainable) for k, v in params.items()}
        fn = torch.compile(step, fullgraph=True) if compiled else step
        loss = fn(f, image, p)
        loss.backward()
        runs.append([loss, f.grad] + [p[k].grad for k in trainable] + [p[k] for k in sorted(BUFFERS)])
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# ---- properties of DFNet's block (docs/fusion_block.md#properties-the-tests-check) ---------------
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_alpha_extremes(backend):
    """Property 2: α → 0 gives Y = resized image; α → 1 gives Y = R; Y lies between them."""
    feat, image, params = sample_inputs((2, 5, 6, 7, 12, 14, 3), torch.float64)
    resized = F.interpolate(image, size=(6, 7), mode="bilinear", align_corners=False)
    for bias, expect_raw in ((-1e4, False), (1e4, True)):
        p = dict(params, conv3_weight=torch.zeros_like(params["conv3_weight"]),
                 conv3_bias=torch.full_like(params["conv3_bias"], bias))  # fmt: skip
        out, alpha, raw = inpaint_fast.fusion_block(feat, image, *[p[k] for k in PARAM_NAMES], False, backend=backend)
        torch.testing.assert_close(out, raw if expect_raw else resized, rtol=0, atol=1e-12)
    out, alpha, raw = inpaint_fast.fusion_block(feat, image, *[params[k] for k in PARAM_NAMES], False, backend=backend)
    lo, hi = torch.minimum(raw, resized), torch.maximum(raw, resized)
    assert bool(((out >= lo - 1e-12) & (out <= hi + 1e-12)).all())
    assert bool(((alpha > 0) & (alpha < 1)).all()) and bool(((raw > 0) & (raw < 1)).all())


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_full_resolution_resize_is_identity(backend):
    """Property 3: at level 0 the resize is the identity, so Y = αR + (1 − α)X exactly."""
    feat, image, params = sample_inputs((2, 4, 8, 8, 8, 8, 3), torch.float64)
    out, alpha, raw = inpaint_fast.fusion_block(feat, image, *[params[k] for k in PARAM_NAMES], False, backend=backend)
    torch.testing.assert_close(out, alpha * raw + (1 - alpha) * image, rtol=0, atol=1e-14)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_halving_resize_is_average_pooling(backend):
    """Property 4: bilinear ×1/2 (align_corners=False) is avg_pool2d(2): with α → 0, Y = pooled image."""
    feat, image, params = sample_inputs((1, 4, 5, 6, 10, 12, 3), torch.float64)
    p = dict(params, conv3_weight=torch.zeros_like(params["conv3_weight"]),
             conv3_bias=torch.full_like(params["conv3_bias"], -1e4))  # fmt: skip
    out, _, _ = inpaint_fast.fusion_block(feat, image, *[p[k] for k in PARAM_NAMES], False, backend=backend)
    torch.testing.assert_close(out, F.avg_pool2d(image, 2), rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_running_stats_follow_batchnorm(backend):
    """Training updates running stats exactly like nn.BatchNorm2d (momentum, unbiased variance)."""
    feat, image, params = sample_inputs((2, 5, 6, 7, 12, 14, 3), torch.float64)
    ours = {k: v.clone() for k, v in params.items()}
    ref = {k: v.clone() for k, v in params.items()}
    for _ in range(3):
        inpaint_fast.fusion_block(feat, image, *[ours[k] for k in PARAM_NAMES], True, 0.3, backend=backend)
        reference.fusion_block(feat, image, *[ref[k] for k in PARAM_NAMES], True, 0.3)
    for k in BUFFERS:
        assert not torch.equal(ours[k], params[k]), f"{k} was not updated"
        torch.testing.assert_close(ours[k], ref[k], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_eval_is_batch_independent(backend):
    """Property 6: eval output of one sample does not depend on the rest of the batch."""
    feat, image, params = sample_inputs((3, 5, 6, 7, 12, 14, 3), torch.float64)
    values = [params[k] for k in PARAM_NAMES]
    full = inpaint_fast.fusion_block(feat, image, *values, False, backend=backend)
    single = inpaint_fast.fusion_block(feat[1:2], image[1:2], *values, False, backend=backend)
    for a, b in zip(full, single):
        torch.testing.assert_close(a[1:2], b, rtol=1e-12, atol=1e-12)


# ---- bad input --------------------------------------------------------------------------------
def _call(backend="reference", training=False, **changes):
    feat, image, params = sample_inputs((2, 5, 4, 6, 8, 12, 3), torch.float32)
    args = dict(feat=feat, image=image, **params)
    args.update(changes)
    return inpaint_fast.fusion_block(**args, training=training, backend=backend)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize(
    "changes,error,match",
    [
        (dict(feat=torch.randn(2, 5, 24)), ValueError, r"`feat` must be a 4-D \(B, c, h, w\)"),
        (dict(image=torch.rand(2, 4, 8, 12)), ValueError, r"`image` must have shape \(B, 3, H, W\)"),
        (dict(image=torch.rand(3, 3, 8, 12)), ValueError, r"`image` must have shape"),
        (dict(map_weight=torch.randn(3, 4, 1, 1)), ValueError, r"`map_weight` must have shape \(3, c, 1, 1\)"),
        (dict(conv2_weight=torch.randn(3, 32, 1, 1)), ValueError, r"`conv2_weight` must have shape \(A, Cm, 3, 3\)"),
        (dict(conv3_weight=torch.randn(2, 2, 1, 1)), ValueError, r"A = c_alpha in \(1, 3\)"),
        (dict(bn1_running_var=torch.ones(31)), ValueError, r"`bn1_running_var` must have shape"),
        (dict(feat=torch.ones(2, 5, 4, 6, dtype=torch.int32)), TypeError, r"`feat` must be floating point"),
        (dict(image=torch.rand(2, 3, 8, 12, dtype=torch.float64)), TypeError, r"`image` has dtype float64"),
        (dict(map_bias=None), TypeError, r"`map_bias` must be a tensor"),
    ],
)
def test_bad_input(backend, changes, error, match):
    with pytest.raises(error, match=match):
        _call(backend, **changes)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_training_needs_more_than_one_value(backend):
    feat, image, params = sample_inputs((1, 5, 1, 1, 2, 2, 3), torch.float32)
    with pytest.raises(ValueError, match="more than one value per channel"):
        inpaint_fast.fusion_block(feat, image, *[params[k] for k in PARAM_NAMES], True, backend=backend)
