"""fusion_block: every backend against the reference, forward and backward, train and eval."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import inpaint_fast
from inpaint_fast import reference
from inpaint_fast.fusion_block_params import RUNNING_STATS, TRAINABLE
from conftest import CPU_BACKENDS, INTERPRETED, assert_close_to_oracle, skip_outside_envelope
from op_samples import (
    FUSION_RESULTS,
    assert_direct_call_names,
    fusion_params_clone,
    fusion_params_to,
    fusion_run,
    fusion_sample_inputs,
    fusion_saved_params,
    fusion_upstream,
    kernel_op,
)

ALL_BACKENDS = ["reference"] + CPU_BACKENDS

# (B, c, h, w, H, W, A): DFNet's fuse_0 (identity resize) and deeper levels (2x, 4x), a non-integer
# ratio, odd sizes, c not a power of two, c_alpha = 1 and 3. The CPU kernel's map conv sums the
# channels in blocks of four: c = 3, 5 and 12 cover a partial block, a whole one and several.
SHAPES = [
    (2, 4, 16, 16, 16, 16, 3),
    (1, 64, 8, 8, 16, 16, 3),
    (3, 5, 7, 9, 28, 36, 3),
    (2, 12, 7, 9, 10, 14, 1),
    (2, 3, 1, 3, 1, 3, 3),
]


def shape_id(s):
    return "B{}-c{}-{}x{}-from{}x{}-A{}".format(*s)


def _ours(backend):
    return lambda *a, **kw: inpaint_fast.fusion_block(*a, **kw, backend=backend)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_cpu_results_do_not_depend_on_the_threads(training):
    """The cpu kernels sum every reduction per block of rows, whichever thread ran it: outputs,
    gradients and running statistics must be bitwise the same on 1, 2 and 3 threads and from call
    to call (67 rows: 9 blocks an image, the last one short)."""
    feat, image, params = fusion_sample_inputs((2, 5, 67, 23, 67, 23, 3), torch.float32)
    grads = fusion_upstream(feat, 3, torch.float32)
    threads = torch.get_num_threads()
    try:
        runs = []
        for n in (1, 2, 3, 2):
            torch.set_num_threads(n)
            outs, in_grads, stats = fusion_run(_ours("cpu"), feat, image, params, training, grads)
            runs.append((n, outs + in_grads + stats))
    finally:
        torch.set_num_threads(threads)
    want = runs[0][1]
    for n, got in runs[1:]:
        for name, a, b in zip(FUSION_RESULTS, got, want):
            mismatched = (a != b).sum().item()
            assert mismatched == 0, f"{name} on {n} threads: {mismatched} of {a.numel()} elements differ from 1 thread"


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_matches_reference(backend, dtype, shape, training):
    skip_outside_envelope("fusion_block", backend, dtype, shape[2] * shape[3])
    _check_against_reference(backend, dtype, shape, training)


@pytest.mark.parametrize("conv", ["generic", "avx2"])
@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[3], (1, 5, 6, 41, 12, 82, 3)], ids=shape_id)
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_cpu_conv_choices_match_reference(conv, shape, training, monkeypatch):
    """Both float 3x3 conv kernels of the cpu backend (INPAINT_FAST_CPU_CONV; the default picks
    one per CPU, so without the switch a machine tests only its own): the AVX2 rows' 8-pixel
    blocks (w = 16), a scalar tail (w = 9, A = 1) and a 32-pixel block with both (w = 41).
    Skipped, saying so, where AVX2 is absent."""
    monkeypatch.setenv("INPAINT_FAST_CPU_CONV", conv)
    try:
        _check_against_reference("cpu", torch.float32, shape, training)
    except RuntimeError as e:
        if conv == "avx2" and "INPAINT_FAST_CPU_CONV=avx2 needs a CPU with AVX2 and FMA" in str(e):
            pytest.skip(str(e))
        raise


def test_cpu_conv_choice_is_checked(monkeypatch):
    monkeypatch.setenv("INPAINT_FAST_CPU_CONV", "avx512")
    feat, image, params = fusion_sample_inputs(SHAPES[0], torch.float32)
    with pytest.raises(RuntimeError, match=r"INPAINT_FAST_CPU_CONV=avx512: expected auto, generic or avx2"):
        inpaint_fast.fusion_block(feat, image, params, backend="cpu")


def _check_against_reference(backend, dtype, shape, training):
    """Outputs, gradients and running statistics of ``backend`` against the reference, judged
    against the float64 reference (assert_close_to_oracle)."""
    feat, image, params = fusion_sample_inputs(shape, dtype)
    grads = fusion_upstream(feat, shape[-1], dtype)
    ours = fusion_run(_ours(backend), feat, image, params, training, grads)
    ref = fusion_run(reference.fusion_block, feat, image, params, training, grads)
    ref64 = fusion_run(reference.fusion_block, feat.double(), image.double(), fusion_params_to(params, torch.float64),
                       training, [g.double() for g in grads])
    # Parameter gradients are sums over all M = B·h·w pixels of per-pixel terms rounded to the
    # dtype. Some are mathematically ~0 (a bias just before a training-mode BatchNorm), so their
    # value is rounding noise: judge each at the scale of the largest parameter gradient, with the
    # √M growth of a sum's rounding error (PyTorch's CPU BatchNorm sums in double, so its own
    # error on these can be luckily small).
    param_grads = [c for label, c in zip(FUSION_RESULTS, sum(ref64, [])) if label.startswith("grad_") and "image" not in
                   label and "feat" not in label]
    param_scale = max(t.abs().max().item() for t in param_grads)
    for label, a, b, c in zip(FUSION_RESULTS, sum(ours, []), sum(ref, []), sum(ref64, [])):
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
        feat, image, params = fusion_sample_inputs(shape, torch.float64, lay)
        grads = grads or fusion_upstream(feat, 3, torch.float64)
        results.append(fusion_run(_ours(backend), feat, image, params, True, grads))
    for a, b in zip(sum(results[0], []), sum(results[1], [])):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_gradcheck_fp64(backend, training):
    if backend in INTERPRETED:
        pytest.skip("interpreted Triton: tests/test_triton_fusion_block.py gradchecks the kernels directly")
    feat, image, params = fusion_sample_inputs((2, 3, 3, 4, 6, 8, 3), torch.float64)

    def fn(feat, image, *values):
        # Running stats are cloned per call so the in-place update in training does not leak
        # between gradcheck's evaluations.
        p = fusion_params_clone(params)._replace(**dict(zip(TRAINABLE, values)))
        return inpaint_fast.fusion_block(feat, image, p, training=training, backend=backend)

    inputs = [feat.requires_grad_(), image.requires_grad_()] + [getattr(params, k).clone().requires_grad_()
                                                                 for k in TRAINABLE]
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


def _op(backend, direction):
    return kernel_op("fusion_block", backend, direction)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
@pytest.mark.parametrize("requires_grad", [True, False])
def test_opcheck(backend, training, layout, requires_grad):
    feat, image, params = fusion_sample_inputs((2, 5, 4, 6, 8, 12, 3), torch.float32, layout)
    params = fusion_params_clone(params, leaves=requires_grad)
    torch.library.opcheck(_op(backend, "fwd"), (feat.requires_grad_(requires_grad), image, *params, training, 1e-5))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_opcheck_backward_op(backend, training):
    feat, image, params = fusion_sample_inputs((2, 5, 4, 6, 8, 12, 1), torch.float32)
    out, alpha, raw, *stats = _op(backend, "fwd")(feat, image, *params, training, 1e-5)
    args = (torch.randn_like(out), torch.randn_like(alpha), torch.randn_like(raw), feat, image,
            *fusion_saved_params(params, stats), training, 1e-5)  # fmt: skip
    torch.library.opcheck(_op(backend, "bwd"), args)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("direction", ["fwd", "bwd"])
def test_direct_op_call_names_the_wrong_argument(backend, direction):
    B, c, h, w, H, W, A = shape = (2, 5, 4, 6, 8, 12, 3)
    feat, image, params = fusion_sample_inputs(shape)
    if direction == "fwd":
        name, args = "image", (feat, image[:, :2], *params, False, 1e-5)
    else:  # the running statistics stand in for the forward's: same shapes, and eval mode
        grads = torch.randn(B, 3, h, w), torch.randn(B, A + 1, h, w), torch.randn(B, 3, h, w)
        name, args = "grad_alpha", (*grads, feat, image, *params, False, 1e-5)
    assert_direct_call_names("fusion_block", backend, direction, args, name)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_torch_compile_fullgraph(backend):
    torch._dynamo.reset()
    feat, image, params = fusion_sample_inputs((2, 5, 6, 7, 12, 14, 3), torch.float32)

    def step(feat, image, p):
        out, alpha, raw = inpaint_fast.fusion_block(feat, image, p, training=True, backend=backend)
        return (out * 2).sum() + alpha.square().sum() + raw.sum()

    runs = []
    for compiled in (False, True):
        f = feat.clone().requires_grad_()
        p = fusion_params_clone(params, leaves=True)
        fn = torch.compile(step, fullgraph=True) if compiled else step
        loss = fn(f, image, p)
        loss.backward()
        runs.append([loss, f.grad] + [getattr(p, k).grad for k in TRAINABLE] + [getattr(p, k) for k in RUNNING_STATS])
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# ---- properties of DFNet's block (docs/fusion_block.md#properties-the-tests-check) ---------------
def _constant_alpha(params, bias):
    """``params`` with conv3 replaced by a constant: α = sigmoid(bias) everywhere."""
    return params._replace(conv3_weight=torch.zeros_like(params.conv3_weight),
                           conv3_bias=torch.full_like(params.conv3_bias, bias))  # fmt: skip


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_alpha_extremes(backend):
    """Property 2: α → 0 gives Y = resized image; α → 1 gives Y = R; Y lies between them."""
    feat, image, params = fusion_sample_inputs((2, 5, 6, 7, 12, 14, 3), torch.float64)
    resized = F.interpolate(image, size=(6, 7), mode="bilinear", align_corners=False)
    for bias, expect_raw in ((-1e4, False), (1e4, True)):
        p = _constant_alpha(params, bias)
        out, alpha, raw = inpaint_fast.fusion_block(feat, image, p, backend=backend)
        torch.testing.assert_close(out, raw if expect_raw else resized, rtol=0, atol=1e-12)
    out, alpha, raw = inpaint_fast.fusion_block(feat, image, params, backend=backend)
    lo, hi = torch.minimum(raw, resized), torch.maximum(raw, resized)
    assert bool(((out >= lo - 1e-12) & (out <= hi + 1e-12)).all())
    assert bool(((alpha > 0) & (alpha < 1)).all()) and bool(((raw > 0) & (raw < 1)).all())


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_full_resolution_resize_is_identity(backend):
    """Property 3: at level 0 the resize is the identity, so Y = αR + (1 − α)X exactly."""
    feat, image, params = fusion_sample_inputs((2, 4, 8, 8, 8, 8, 3), torch.float64)
    out, alpha, raw = inpaint_fast.fusion_block(feat, image, params, backend=backend)
    torch.testing.assert_close(out, alpha * raw + (1 - alpha) * image, rtol=0, atol=1e-14)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_halving_resize_is_average_pooling(backend):
    """Property 4: bilinear ×1/2 (align_corners=False) is avg_pool2d(2): with α → 0, Y = pooled image."""
    feat, image, params = fusion_sample_inputs((1, 4, 5, 6, 10, 12, 3), torch.float64)
    out, _, _ = inpaint_fast.fusion_block(feat, image, _constant_alpha(params, -1e4), backend=backend)
    torch.testing.assert_close(out, F.avg_pool2d(image, 2), rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_running_stats_follow_batchnorm(backend):
    """Training updates running stats exactly like nn.BatchNorm2d (momentum, unbiased variance)."""
    feat, image, params = fusion_sample_inputs((2, 5, 6, 7, 12, 14, 3), torch.float64)
    ours, ref = fusion_params_clone(params), fusion_params_clone(params)
    for _ in range(3):
        inpaint_fast.fusion_block(feat, image, ours, training=True, momentum=0.3, backend=backend)
        reference.fusion_block(feat, image, ref, training=True, momentum=0.3)
    for k in RUNNING_STATS:
        assert not torch.equal(getattr(ours, k), getattr(params, k)), f"{k} was not updated"
        torch.testing.assert_close(getattr(ours, k), getattr(ref, k), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_eval_is_batch_independent(backend):
    """Property 6: eval output of one sample does not depend on the rest of the batch."""
    feat, image, params = fusion_sample_inputs((3, 5, 6, 7, 12, 14, 3), torch.float64)
    full = inpaint_fast.fusion_block(feat, image, params, backend=backend)
    single = inpaint_fast.fusion_block(feat[1:2], image[1:2], params, backend=backend)
    for a, b in zip(full, single):
        torch.testing.assert_close(a[1:2], b, rtol=1e-12, atol=1e-12)


# ---- bad input --------------------------------------------------------------------------------
def _call(backend="reference", training=False, **changes):
    """The op on sample inputs with some of them (feat, image or parameters, by name) replaced."""
    feat, image, params = fusion_sample_inputs((2, 5, 4, 6, 8, 12, 3), torch.float32)
    feat, image = changes.pop("feat", feat), changes.pop("image", image)
    return inpaint_fast.fusion_block(feat, image, params._replace(**changes), training=training, backend=backend)


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
def test_params_must_be_named(backend):
    feat, image, params = fusion_sample_inputs((2, 5, 4, 6, 8, 12, 3))
    with pytest.raises(TypeError, match=r"`params` must be a FusionBlockParams .*got tuple"):
        inpaint_fast.fusion_block(feat, image, tuple(params), backend=backend)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_training_needs_more_than_one_value(backend):
    feat, image, params = fusion_sample_inputs((1, 5, 1, 1, 2, 2, 3), torch.float32)
    with pytest.raises(ValueError, match="more than one value per channel"):
        inpaint_fast.fusion_block(feat, image, params, training=True, backend=backend)
