"""Property-based tests (hypothesis): both ops, every backend that runs here, against an fp64
reference run of the reference, on inputs nobody listed.

Drawn per example: batch, channel counts and spatial sizes (1 and primes included), with or
without ``pre``, binary or fractional masks, gates of either sign and zero, the dtype (float64,
float32; bfloat16 for the C++ kernels), the memory layout of every feature tensor (contiguous,
channels_last, a slice of a larger tensor, a batch expanded from one image with stride 0), and
the query's scale (energies up to the hundreds, where a softmax without max subtraction
overflows). The fusion block draws its level's channels, the feature and image sizes, c_alpha,
eval or train (running statistics compared after the update).

Tolerances are conftest.assert_close_to_oracle's: twice the reference's own error in the dtype
against the fp64 run, plus one eps at the magnitude. In float32 and bfloat16 the fusion block's
BatchNorms come from inpaint_fast.bench.fusion_block's kink-free construction: a LeakyReLU input
within rounding of 0 may take either slope in any correct implementation, which no tolerance
derived from rounding can cover (tests/test_models_dfnet.py shows one); float64 examples keep
fully random BatchNorms.

Profiles (HYPOTHESIS_PROFILE): ``ci`` (default) — a fixed, derandomized set of examples in
bounded time, the same on every machine; ``long`` (``make test-properties``) — many more, random.
A failure found is kept below as an explicit ``@example``.
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

import inpaint_fast
from inpaint_fast import reference
from inpaint_fast import FusionBlockParams
from inpaint_fast.fusion_block_params import PARAM_NAMES, RUNNING_STATS
from conftest import CPU_BACKENDS, INTERPRETED, MAX_INTERPRETED_POSITIONS, assert_close_to_oracle

settings.register_profile(
    "ci", max_examples=30, derandomize=True, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)  # fmt: skip
settings.register_profile(
    "long", max_examples=400, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)  # fmt: skip
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
# The interpreter runs every Triton program in numpy: a handful of examples per profile.
INTERPRETED_EXAMPLES = {"ci": 6, "long": 60}[os.environ.get("HYPOTHESIS_PROFILE", "ci")]

SIZES = st.sampled_from([1, 2, 3, 5, 7, 8, 11, 13])
CHANNELS = st.sampled_from([1, 2, 3, 4, 5, 7, 8, 13, 16])
LAYOUTS = st.sampled_from(["contiguous", "channels_last", "sliced", "expanded"])


def _dtypes(backend):
    dtypes = [torch.float64, torch.float32]
    if backend == "cpu":
        dtypes.append(torch.bfloat16)
    return st.sampled_from(dtypes)


def _examples(backend):
    return settings(max_examples=INTERPRETED_EXAMPLES) if backend in INTERPRETED else settings()


def _laid_out(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The values of ``t`` (B, C, H, W) held in ``layout``, as a differentiable function of ``t``
    (so gradients reach the leaf whatever the layout; clone() would make them contiguous again)."""
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "sliced":  # every other channel and row of a larger tensor, columns offset by 2
        B, C, H, W = t.shape
        big = t.new_zeros(B, 2 * C + 1, 2 * H, W + 3)
        big[:, 1::2, ::2, 2 : W + 2] = t
        return big[:, 1::2, ::2, 2 : W + 2]
    if layout == "expanded":  # every image the first one: batch stride 0
        return t[:1].expand_as(t)
    return t


def _run(fn, inputs, grads, layout):
    """(outputs, gradients of every tensor input) of fn(*inputs), the 4-D inputs laid out as asked."""
    leaves = [t.detach().clone().requires_grad_(True) if t is not None else None for t in inputs]
    laid = [_laid_out(t, layout) if t is not None and t.dim() == 4 else t for t in leaves]
    outs = [o for o in fn(*laid) if o is not None]
    wrt = [t for t in leaves if t is not None]
    in_grads = torch.autograd.grad(outs, wrt, grads[: len(outs)], allow_unused=True)
    return [o.detach() for o in outs], [g if g is not None else torch.zeros_like(t) for g, t in zip(in_grads, wrt)]


def _worse(a: torch.Tensor, b: torch.Tensor, oracle: torch.Tensor) -> torch.Tensor:
    """Of two low-precision reference results, the one further from the fp64 oracle."""
    return a if (a.double() - oracle).abs().max() >= (b.double() - oracle).abs().max() else b


def _yardstick(ref: torch.Tensor, permuted: torch.Tensor, moved: torch.Tensor, oracle: torch.Tensor) -> torch.Tensor:
    """A stand-in for "the reference's result" whose error is the yardstick described below."""
    conditioned = oracle + ROUNDINGS * (moved.double() - oracle) / 2  # assert_close_to_oracle doubles it
    worst = _worse(ref, permuted, oracle)
    return worst if (worst.double() - oracle).abs().max() >= (conditioned - oracle).abs().max() else conditioned


def _perturbed(t: torch.Tensor, dtype: torch.dtype, g: torch.Generator) -> torch.Tensor:
    """``t`` in fp64, each value moved by up to one unit roundoff of ``dtype`` (relative)."""
    u = torch.finfo(dtype).eps / 2
    return t.double() * (1 + u * (2 * torch.rand(t.shape, generator=g, dtype=torch.float64) - 1))


# The fp32 reference's own error is the yardstick, but one evaluation may be lucky (a value
# rounded exactly, errors cancelling), which would make the rule demand that luck of every other
# correct evaluation. So the yardstick is the worst of: the reference in the dtype; the reference
# in the dtype on an equivalent problem (channels and positions permuted, results permuted back),
# whose sums round differently; and ROUNDINGS × the effect on the exact (fp64) result of moving
# every input by one rounding — the problem's own conditioning. An implementation rounds at every
# stage (the fusion block's forward and backward chain about 16 of them: resize, convolutions,
# BatchNorms, sigmoids, blend, and their gradients); independent roundings, each amplified like
# an input's, add up to about √16 = 4 times one. (Found: an fp32 fusion block of one pixel with
# running variance 0, a gain of ~7000 from BN1 to the output, where nothing can be permuted: the
# fp32 reference 2.9e-7 off in grad_feat, moved inputs 9.9e-7, the C++ kernel 2.3e-6.)
ROUNDINGS = 4


# ---------------------------------------------------------------------------------------------
# short_long_attention
# ---------------------------------------------------------------------------------------------
@st.composite
def attention_cases(draw, backend):
    B, Cq, C = draw(st.integers(1, 3)), draw(CHANNELS), draw(CHANNELS)
    H, W = draw(SIZES), draw(SIZES)
    if backend in INTERPRETED:
        H = min(H, MAX_INTERPRETED_POSITIONS // W)
    Cp = draw(st.sampled_from([0, 1, 3, 8, 13]))  # 0: no pre
    return dict(
        shape=(B, Cq, C, Cp, H, W), dtype=draw(_dtypes(backend)), layout=draw(LAYOUTS),
        q_scale=draw(st.sampled_from([0.1, 0.5, 2.0, 6.0])), binary_mask=draw(st.booleans()),
        gamma=draw(st.sampled_from([0.0, 0.7, -1.3])), alpha=draw(st.sampled_from([0.0, -0.4, 1.1])),
        seed=draw(st.integers(0, 2**16)),
    )  # fmt: skip


def _attention_inputs(case):
    B, Cq, C, Cp, H, W = case["shape"]
    g = torch.Generator().manual_seed(case["seed"])
    f64 = dict(generator=g, dtype=torch.float64)
    q = case["q_scale"] * torch.randn(B, Cq, H, W, **f64)
    x = torch.randn(B, C, H, W, **f64)
    gamma = torch.tensor([case["gamma"]], dtype=torch.float64)
    if Cp:
        pre = torch.randn(B, Cp, H, W, **f64)
        mask = torch.rand(B, 1, H, W, **f64)
        mask = (mask > 0.5).double() if case["binary_mask"] else mask
        alpha = torch.tensor([case["alpha"]], dtype=torch.float64)
    else:
        pre = mask = alpha = None
    dtype = case["dtype"]
    gate_dtype = torch.float64 if dtype == torch.float64 else torch.float32  # fp32 gates next to bf16, as PIC
    q, x, pre, mask = (t.to(dtype) if t is not None else None for t in (q, x, pre, mask))
    return [q, x, gamma.to(gate_dtype), pre, mask, alpha.to(gate_dtype) if alpha is not None else None]


def _check_attention(backend, case):
    inputs = _attention_inputs(case)
    dtype = case["dtype"]
    g = torch.Generator().manual_seed(case["seed"] + 1)
    x, pre = inputs[1], inputs[3]
    grads = [torch.randn(x.shape, generator=g, dtype=torch.float64).to(dtype)]
    if pre is not None:
        grads.append(torch.randn(pre.shape, generator=g, dtype=torch.float64).to(dtype))
    layout = case["layout"]
    ours = _run(lambda *a: inpaint_fast.short_long_attention(*a, backend=backend), inputs, grads, layout)
    ref = _run(reference.short_long_attention, inputs, grads, layout)
    inputs64 = [t.double() if t is not None else None for t in inputs]
    ref64 = _run(reference.short_long_attention, inputs64, [t.double() for t in grads], layout)
    permuted = _permuted_attention_reference(inputs, grads, case["seed"])
    g = torch.Generator().manual_seed(case["seed"] + 3)
    moved = _run(reference.short_long_attention, [_perturbed(t, dtype, g) if t is not None else None for t in inputs],
                 [t.double() for t in grads], layout)
    ref = tuple([_yardstick(a, b, d, c) for a, b, c, d in zip(ra, rb, rc, rd)]
                for ra, rb, rc, rd in zip(ref, permuted, ref64, moved))
    lse, q_terms = _recompute_error_scales(inputs64, [t.double() for t in grads])
    names = ["y", "cf"][: len(ours[0])]
    names += [f"grad_{n}" for n, t in zip(["q", "x", "gamma", "pre", "mask", "alpha"], inputs) if t is not None]
    B, _, C, Cp, H, W = case["shape"]
    gate_terms = {"grad_gamma": B * C * H * W, "grad_alpha": B * Cp * H * W}  # each gate's grad is one such sum
    for name, a, b, c in zip(names, ours[0] + ours[1], ref[0] + ref[1], ref64[0] + ref64[1]):
        # Two roundings of size eps·|lse| per recomputed probability: the saved lse, and the energy
        # the backward recomputes with its own summation order.
        assert_close_to_oracle(name, a, b, c, dtype, recompute_magnitude=2 * lse if name.startswith("grad") else 0.0,
                               scale=q_terms if name == "grad_q" else 0.0, summed_terms=gate_terms.get(name, 1))


def _permuted_attention_reference(inputs, grads, seed):
    """The reference's (outputs, gradients) on the same problem with its positions and query
    channels permuted (the math is invariant; the sums' order is not), permuted back."""
    q, x, gamma, pre, mask, alpha = inputs
    B, Cq, H, W = q.shape
    g = torch.Generator().manual_seed(seed + 2)
    pos, chan = torch.randperm(H * W, generator=g), torch.randperm(Cq, generator=g)
    undo_pos, undo_chan = torch.argsort(pos), torch.argsort(chan)

    def flat(t, channels=None):  # (B, C, H, W) -> (B, C, 1, N) in permuted position order
        t = t.reshape(t.shape[0], t.shape[1], 1, H * W)[..., pos]
        return t[:, channels] if channels is not None else t

    def back(t, channels=None):
        t = t[..., undo_pos].reshape(t.shape[0], t.shape[1], H, W)
        return t[:, channels] if channels is not None else t

    p_inputs = [flat(q, chan), flat(x), gamma] + ([flat(pre), flat(mask), alpha] if pre is not None else [None] * 3)
    outs, in_grads = _run(reference.short_long_attention, p_inputs, [flat(t) for t in grads], "contiguous")
    outs = [back(o) for o in outs]
    restored = [back(in_grads[0], undo_chan), back(in_grads[1]), in_grads[2]]
    if pre is not None:
        restored += [back(in_grads[3]), back(in_grads[4]), in_grads[5]]
    return outs, restored


def _recompute_error_scales(inputs64, grads64):
    """(max |lse|, the magnitude of grad_q's terms), in fp64, for the recompute term of the rule.

    The fused backward recomputes P = exp(E − lse) from the lse it saved in the dtype, so each row
    i of P is off by one factor (1 + ε_i), |ε_i| ≤ eps·|lse_i|, and each recomputed energy by its
    own rounding of the same size. grad_q = (dS + dSᵀ) q is a sum of rows' contributions that may
    cancel to far less than each: its error is bounded by eps·|lse| times the size of those terms,
    Σ_j (|dS_kj| + P_kj |δ_k| + the same for jk)·|q_j|, not by the result's own magnitude (found by
    this test: energies ~ 60, grad_q 0.005 from terms of ~1, error 1.2e-5). With the lse kept
    exactly, the fused error equals the reference's — an emulation in fp32 gave 5.4e-7 for both.
    """
    q, x, gamma, pre, mask, alpha = inputs64
    B, Cq = q.shape[:2]
    qf = q.reshape(B, Cq, -1)
    E = qf.transpose(1, 2) @ qf
    P = torch.softmax(E, -1)
    dP = gamma * (grads64[0].reshape(B, x.shape[1], -1).transpose(1, 2) @ x.reshape(B, x.shape[1], -1))
    if pre is not None:
        gate = (alpha * (1 - mask.reshape(B, -1)))[:, :, None]
        dP = dP + gate * (grads64[1].reshape(B, pre.shape[1], -1).transpose(1, 2) @ pre.reshape(B, pre.shape[1], -1))
    delta = (P * dP).sum(-1, keepdim=True)
    # A row's factor (1 + ε_i) moves dS_ij = P_ij (dP_ij − δ_i) by ε_i (dS_ij − P_ij δ_i) when δ
    # comes from the recomputed row, so both parts count.
    size = (P * (dP - delta)).abs() + P * delta.abs()
    terms = (size + size.transpose(1, 2)) @ qf.abs().transpose(1, 2)
    return torch.logsumexp(E, -1).abs().max().item(), terms.max().item()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_attention_matches_the_fp64_reference(backend):
    @_examples(backend)
    @given(case=attention_cases(backend))
    @example(case=dict(shape=(1, 1, 1, 0, 1, 1), dtype=torch.float64, layout="contiguous", q_scale=0.1,
                       binary_mask=False, gamma=0.0, alpha=0.0, seed=0))  # one position, no pre
    @example(case=dict(shape=(2, 8, 13, 13, 7, 11), dtype=torch.float32, layout="expanded", q_scale=6.0,
                       binary_mask=True, gamma=-1.3, alpha=1.1, seed=3))  # energies ~300, stride-0 batch
    @example(case=dict(shape=(1, 1, 1, 0, 1, 8), dtype=torch.float32, layout="contiguous", q_scale=6.0,
                       binary_mask=False, gamma=0.7, alpha=0.0, seed=4166))  # found: grad_q's recompute error
    @example(case=dict(shape=(1, 5, 1, 0, 5, 5), dtype=torch.float32, layout="contiguous", q_scale=2.0,
                       binary_mask=False, gamma=0.7, alpha=0.0, seed=237))  # found: the P·δ part of that error
    @example(case=dict(shape=(3, 13, 3, 13, 13, 5), dtype=torch.float32, layout="expanded", q_scale=0.1,
                       binary_mask=False, gamma=-1.3, alpha=1.1, seed=128))  # found: grad_alpha, a sum of 2535
    def check(case):
        _check_attention(backend, case)

    check()


# ---------------------------------------------------------------------------------------------
# fusion_block
# ---------------------------------------------------------------------------------------------
RUNNING = set(RUNNING_STATS)


@st.composite
def fusion_cases(draw, backend):
    h, w = draw(SIZES), draw(SIZES)
    B = draw(st.integers(1, 3))
    training = draw(st.booleans())
    if training and B * h * w < 2:
        B = 2
    scale = draw(st.sampled_from([1, 2, 3, 4]))  # image = feature size x scale, or any other size
    H, W = (h * scale, w * scale) if draw(st.booleans()) else (draw(SIZES) * 2, draw(SIZES) + 1)
    return dict(
        B=B, c=draw(st.sampled_from([1, 3, 4, 5, 12, 64])), h=h, w=w, H=H, W=W, A=draw(st.sampled_from([1, 3])),
        cm=draw(st.sampled_from([1, 5, 32])), training=training, dtype=draw(_dtypes(backend)),
        layout=draw(LAYOUTS), seed=draw(st.integers(0, 2**16)),
    )  # fmt: skip


def _fusion_inputs(case):
    from inpaint_fast.bench.fusion_block import _kink_free_batchnorms

    B, c, h, w, H, W, A, cm = (case[k] for k in ("B", "c", "h", "w", "H", "W", "A", "cm"))
    g = torch.Generator().manual_seed(case["seed"])
    randn = lambda *s, std=1.0: std * torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    params = {
        "map_weight": randn(3, c, 1, 1, std=0.5), "map_bias": randn(3, std=0.1),
        "conv1_weight": randn(cm, 6, 1, 1, std=0.4), "conv1_bias": randn(cm, std=0.1),
        "bn1_weight": 1 + randn(cm, std=0.2), "bn1_bias": randn(cm, std=0.1),
        "bn1_running_mean": randn(cm, std=0.1), "bn1_running_var": 1 + torch.rand(cm, generator=g, dtype=torch.float64),
        "conv2_weight": randn(A, cm, 3, 3, std=0.1), "conv2_bias": randn(A, std=0.1),
        "bn2_weight": 1 + randn(A, std=0.2), "bn2_bias": randn(A, std=0.1),
        "bn2_running_mean": randn(A, std=0.1), "bn2_running_var": 1 + torch.rand(A, generator=g, dtype=torch.float64),
        "conv3_weight": randn(A, A, 1, 1), "conv3_bias": randn(A, std=0.1),
    }  # fmt: skip
    feat, image = randn(B, c, h, w), torch.rand(B, 3, H, W, generator=g, dtype=torch.float64)
    if case["dtype"] != torch.float64:  # see the module docstring
        params.update(_kink_free_batchnorms({"feat": feat, "image": image, **params}, torch.device("cpu"), g))
        # A channel of (nearly) zero running variance gives eval-mode BatchNorm a gain of
        # γ/√eps ≈ 300γ, and there the fused kernels' folded BatchNorm is measurably less accurate
        # than the reference (up to ~10 ulp of `out` against ~1; benchmarks/NOTES.md): low-precision
        # examples keep variances ≥ 0.05 (gain ≤ 4.5γ); the float64 examples keep such channels.
        for name in ("bn1_running_var", "bn2_running_var"):
            params[name] = params[name].clamp(min=0.05)
    dtype = case["dtype"]
    return feat.to(dtype), image.to(dtype), {k: v.to(dtype) for k, v in params.items()}


def _fusion_run(fn, feat, image, params, training, grads, layout):
    leaves = [t.detach().clone().requires_grad_(True) for t in (feat, image)]
    p = {k: v.detach().clone().requires_grad_(k not in RUNNING) for k, v in params.items()}
    outs = fn(*[_laid_out(t, layout) for t in leaves], FusionBlockParams(**p), training=training)
    wrt = leaves + [p[k] for k in PARAM_NAMES if k not in RUNNING]
    in_grads = torch.autograd.grad(outs, wrt, grads)
    return [o.detach() for o in outs] + list(in_grads) + [p[k].detach() for k in sorted(RUNNING)]


def _permuted_fusion_reference(feat, image, params, training, grads, layout, seed):
    """The reference's results (as _fusion_run) with the feature channels and the blend's middle
    channels permuted — the same function, other sums — permuted back."""
    g = torch.Generator().manual_seed(seed + 2)
    c, cm = feat.shape[1], params["conv1_weight"].shape[0]
    pc, pm = torch.randperm(c, generator=g), torch.randperm(cm, generator=g)
    uc, um = torch.argsort(pc), torch.argsort(pm)
    # name -> (dim of the feature channels, dim of the middle channels) that each parameter has
    dims = {"map_weight": (1, None), "conv1_weight": (None, 0), "conv1_bias": (None, 0), "conv2_weight": (None, 1),
            **{f"bn1_{k}": (None, 0) for k in ("weight", "bias", "running_mean", "running_var")}}

    def perm(t, name, pc, pm):
        fd, md = dims.get(name, (None, None))
        if fd is not None:
            t = t.index_select(fd, pc)
        if md is not None:
            t = t.index_select(md, pm)
        return t

    p = {k: perm(v, k, pc, pm) for k, v in params.items()}
    res = _fusion_run(reference.fusion_block, feat[:, pc], image, p, training, grads, layout)
    trainable = [k for k in PARAM_NAMES if k not in RUNNING]
    names = ["out", "alpha", "raw", "feat", "image"] + trainable + sorted(RUNNING)
    restored = []
    for name, t in zip(names, res):
        if name == "feat":
            t = t[:, uc]
        restored.append(perm(t, name, uc, um))
    return restored


def _min_batch_variance(feat, image, params):
    """The smallest training-mode batch variance of the two BatchNorms' inputs, in fp64."""
    import torch.nn.functional as F

    p = {k: v.double() for k, v in params.items()}
    feat, image = feat.double(), image.double()
    x_k = F.interpolate(image, size=feat.shape[-2:], mode="bilinear", align_corners=False)
    raw = torch.sigmoid(F.conv2d(feat, p["map_weight"], p["map_bias"]))
    z1 = F.conv2d(torch.cat([x_k, raw], 1), p["conv1_weight"], p["conv1_bias"])
    n1 = (z1 - z1.mean((0, 2, 3), keepdim=True)) / (z1.var((0, 2, 3), unbiased=False, keepdim=True) + 1e-5).sqrt()
    a1 = F.leaky_relu(n1 * p["bn1_weight"].view(1, -1, 1, 1) + p["bn1_bias"].view(1, -1, 1, 1), 0.2)
    z2 = F.conv2d(a1, p["conv2_weight"], p["conv2_bias"], padding=1)
    return min(z.var((0, 2, 3), unbiased=False).min().item() for z in (z1, z2))


def _check_fusion(backend, case):
    feat, image, params = _fusion_inputs(case)
    dtype, training = case["dtype"], case["training"]
    if training and dtype != torch.float64:
        # Equal pixels (a stride-0 batch of one-pixel images) leave a batch variance of ~0: the
        # training BatchNorm's gain γ/√eps, where the fused kernels' folded BatchNorm is less accurate
        # than the reference (see _fusion_inputs); float64 examples keep such batches.
        laid = [_laid_out(t, case["layout"]) for t in (feat, image)]
        assume(_min_batch_variance(*laid, params) >= 0.05)
    B, A, h, w = case["B"], case["A"], case["h"], case["w"]
    g = torch.Generator().manual_seed(case["seed"] + 1)
    grads = [torch.randn(B, n, h, w, generator=g, dtype=torch.float64).to(dtype) for n in (3, A, 3)]
    layout = case["layout"]
    ours = _fusion_run(lambda *a, **kw: inpaint_fast.fusion_block(*a, **kw, backend=backend), feat, image, params,
                       training, grads, layout)
    ref = _fusion_run(reference.fusion_block, feat, image, params, training, grads, layout)
    p64 = {k: v.double() for k, v in params.items()}
    ref64 = _fusion_run(reference.fusion_block, feat.double(), image.double(), p64, training,
                        [t.double() for t in grads], layout)
    permuted = _permuted_fusion_reference(feat, image, params, training, grads, layout, case["seed"])
    g = torch.Generator().manual_seed(case["seed"] + 3)
    moved = _fusion_run(reference.fusion_block, _perturbed(feat, dtype, g), _perturbed(image, dtype, g),
                        {k: _perturbed(v, dtype, g) for k, v in params.items()}, training, [t.double() for t in grads],
                        layout)
    ref = [_yardstick(a, b, d, c) for a, b, c, d in zip(ref, permuted, ref64, moved)]
    names = ["out", "alpha", "raw", "grad_feat", "grad_image"] + [f"grad_{k}" for k in PARAM_NAMES
                                                                  if k not in RUNNING] + sorted(RUNNING)
    # Parameter gradients sum B·h·w rounded terms; some are ~0 in exact arithmetic (a bias before a
    # training-mode BatchNorm), so each is judged at the largest parameter gradient's magnitude with
    # the √M growth of a sum's rounding error, as tests/test_fusion_block.py does.
    params_at = [i for i, n in enumerate(names) if n.startswith("grad_") and n not in ("grad_feat", "grad_image")]
    scale = max(ref64[i].abs().max().item() for i in params_at)
    for i, (name, a, b, c) in enumerate(zip(names, ours, ref, ref64)):
        is_param = i in params_at
        assert_close_to_oracle(name, a, b, c, dtype, scale=scale if is_param else 0.0,
                               summed_terms=B * h * w if is_param else 1)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_fusion_block_matches_the_fp64_reference(backend):
    @_examples(backend)
    @given(case=fusion_cases(backend))
    @example(case=dict(B=2, c=1, h=1, w=1, H=1, W=1, A=1, cm=1, training=True, dtype=torch.float64,
                       layout="contiguous", seed=0))  # one pixel per image, the smallest block
    @example(case=dict(B=3, c=64, h=13, w=7, H=26, W=8, A=3, cm=32, training=True, dtype=torch.float32,
                       layout="expanded", seed=5))  # a stride-0 batch in training: equal images
    @example(case=dict(B=1, c=1, h=1, w=1, H=1, W=1, A=1, cm=1, training=False, dtype=torch.float32,
                       layout="contiguous", seed=0))  # found: one pixel in all, where batch statistics do not exist
    @example(case=dict(B=1, c=1, h=1, w=1, H=2, W=3, A=1, cm=1, training=False, dtype=torch.float32,
                       layout="contiguous", seed=0))  # found: a gain of ~7000 (see ROUNDINGS, _fusion_inputs)
    @example(case=dict(B=1, c=1, h=1, w=1, H=26, W=2, A=3, cm=5, training=False, dtype=torch.float32,
                       layout="contiguous", seed=3))  # found: the same, 11 ulp of `out` at running variance 0
    def check(case):
        _check_fusion(backend, case)

    check()
