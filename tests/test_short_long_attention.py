"""short_long_attention: every backend against the reference, forward and backward.

The reference (inpaint_fast/reference/short_long_attention.py) is the oracle; each fused backend
is compared with it on fresh random inputs, odd sizes included, in float64, float32 and bfloat16.
"""

from __future__ import annotations

import pytest
import torch

import inpaint_fast
from inpaint_fast import reference
from conftest import CPU_BACKENDS, INTERPRETED, assert_close_to_oracle, skip_outside_envelope
from op_samples import (
    ATTENTION_INPUTS,
    LAYOUTS,
    attention_forward_backward,
    attention_sample_inputs,
    attention_upstream,
    assert_direct_call_names,
    kernel_op,
    laid_out,
)

# (B, Cq, C, Cp, H, W): N = 1, 7, 97, 1025, PIC's channel counts; B = 1..3; C not a power of two.
SHAPES = [
    (1, 1, 1, 1, 1, 1),
    (2, 3, 5, 7, 1, 7),
    (3, 4, 12, 6, 1, 97),
    (1, 8, 12, 20, 25, 41),
    (2, 32, 128, 128, 8, 8),
]


def gate_grad_terms(name: str, shape) -> int:
    """Terms summed into a gate's gradient (one scalar over the batch, channels and positions), for
    assert_close_to_oracle's √M growth of a sum's rounding error; 1 for the other gradients."""
    B, _, C, Cp, H, W = shape
    return {"gamma": B * C * H * W, "alpha": B * Cp * H * W}.get(name, 1)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-Cq{}-C{}-Cp{}-{}x{}".format(*s))
@pytest.mark.parametrize("with_pre", [True, False], ids=["pre", "self"])
def test_matches_reference(backend, dtype, shape, with_pre):
    skip_outside_envelope("short_long_attention", backend, dtype, shape[4] * shape[5])
    inputs = attention_sample_inputs(shape, dtype, with_pre)
    grads = attention_upstream(inputs, dtype)
    fn = lambda *a: inpaint_fast.short_long_attention(*a, backend=backend)  # noqa: E731
    ours, our_grads = attention_forward_backward(fn, inputs, grads)
    ref, ref_grads = attention_forward_backward(reference.short_long_attention, inputs, grads)
    inputs64 = [t.double() if t is not None else None for t in inputs]
    ref64, ref64_grads = attention_forward_backward(reference.short_long_attention, inputs64,
                                                    [g.double() for g in grads])
    names = ["y", "cf"]
    for name, a, b, c in zip(names, ours, ref, ref64):
        assert a.dtype == dtype
        assert_close_to_oracle(name, a, b, c, dtype)
    q64 = inputs64[0].reshape(shape[0], shape[1], -1)
    lse_magnitude = torch.logsumexp(q64.transpose(1, 2) @ q64, -1).abs().max().item()
    grad_names = [n for n, t in zip(ATTENTION_INPUTS, inputs) if t is not None]
    for name, a, b, c, t in zip(grad_names, our_grads, ref_grads, ref64_grads, [t for t in inputs if t is not None]):
        assert a.dtype == t.dtype and a.shape == t.shape, f"grad {name}: {a.dtype} {tuple(a.shape)}"
        # Gate grads are float32 next to bfloat16 features, but they sum products of intermediates
        # stored in the feature dtype, so the feature dtype sets their precision.
        assert_close_to_oracle(f"grad_{name}", a, b, c, dtype, recompute_magnitude=lse_magnitude,
                               summed_terms=gate_grad_terms(name, shape))


@pytest.mark.parametrize("gemm", ["blas", "strip-avx2", "strip-avx512"])
@pytest.mark.parametrize("with_pre", [True, False], ids=["pre", "self"])
@pytest.mark.parametrize("shape", [(1, 8, 12, 20, 25, 41), (3, 4, 12, 6, 1, 7)], ids=["B1-N1025", "B3-N7"])
def test_cpu_gemm_choices_match_reference(gemm, with_pre, shape, monkeypatch):
    """Every GEMM of the cpu backend's float strip products (INPAINT_FAST_CPU_GEMM, the default
    picks one per CPU; a set of tiles the CPU cannot run is skipped, saying so): N = 1025 runs the
    register-tiled kernels past their 256-deep k block with a tail; C + Cp = 12 (self) and Cq = 8
    leave a partial 16-column panel, C + Cp = 32 (pre) is one whole 32-column pair of the AVX-512
    tiles and 18 (B3) a whole panel and a partial one after no pair; one image's strips are split over the threads there, while B = 3 images of one strip
    each are processed one image per thread (the backward's other work split), with tiles of fewer
    rows than the 6- and 14-row tiles."""
    monkeypatch.setenv("INPAINT_FAST_CPU_GEMM", gemm)
    dtype = torch.float32
    inputs = attention_sample_inputs(shape, dtype, with_pre)
    grads = attention_upstream(inputs, dtype)
    fn = lambda *a: inpaint_fast.short_long_attention(*a, backend="cpu")  # noqa: E731
    try:
        ours, our_grads = attention_forward_backward(fn, inputs, grads)
    except RuntimeError as e:
        if gemm.startswith("strip-") and f"INPAINT_FAST_CPU_GEMM={gemm} needs a CPU with" in str(e):
            pytest.skip(str(e))
        raise
    ref, ref_grads = attention_forward_backward(reference.short_long_attention, inputs, grads)
    inputs64 = [t.double() if t is not None else None for t in inputs]
    ref64, ref64_grads = attention_forward_backward(reference.short_long_attention, inputs64,
                                                    [g.double() for g in grads])
    for name, a, b, c in zip(["y", "cf"], ours, ref, ref64):
        assert_close_to_oracle(name, a, b, c, dtype)
    q64 = inputs64[0].reshape(shape[0], shape[1], -1)
    lse_magnitude = torch.logsumexp(q64.transpose(1, 2) @ q64, -1).abs().max().item()
    grad_names = [n for n, t in zip(ATTENTION_INPUTS, inputs) if t is not None]
    for name, a, b, c in zip(grad_names, our_grads, ref_grads, ref64_grads):
        assert_close_to_oracle(f"grad_{name}", a, b, c, dtype, recompute_magnitude=lse_magnitude,
                               summed_terms=gate_grad_terms(name, shape))


@pytest.mark.parametrize("with_pre", [True, False], ids=["pre", "self"])
def test_cpu_bfloat16_outputs_are_the_float32_results_rounded_once(with_pre):
    """The cpu forward computes in float32 and writes bfloat16 outputs straight from its strips:
    each must equal the float32 forward on the same (bfloat16-valued) inputs, rounded once. A
    second rounding, a missed conversion or a strip written at the wrong offset breaks equality."""
    op = kernel_op("short_long_attention", "cpu", "fwd")
    inputs = attention_sample_inputs((2, 8, 12, 20, 9, 13), torch.bfloat16, with_pre)
    as_float = [t.float() if t is not None and t.dtype == torch.bfloat16 else t for t in inputs]
    ours = op(*inputs, 1.0)
    want = op(*as_float, 1.0)
    for name, a, b in zip(["y", "cf", "sa", "ca", "lse"], ours, want):
        expected = b.to(a.dtype)
        assert a.dtype == (torch.float32 if name == "lse" else torch.bfloat16), name
        mismatched = (a != expected).sum().item()
        assert mismatched == 0, f"{name}: {mismatched} of {a.numel()} elements differ from the float32 result rounded"


@pytest.mark.parametrize("with_pre", [True, False], ids=["pre", "self"])
def test_cpu_bfloat16_gradients_are_the_float32_results_rounded_once(with_pre):
    """The cpu backward computes in float32 and writes the bfloat16 inputs' gradients straight from
    its last pass: each must equal the float32 backward on the same (bfloat16-valued) inputs and
    upstream gradients, rounded once; the gate gradients (float32 gates) must be equal outright."""
    fwd = kernel_op("short_long_attention", "cpu", "fwd")
    bwd = kernel_op("short_long_attention", "cpu", "bwd")
    inputs = attention_sample_inputs((2, 8, 12, 20, 9, 13), torch.bfloat16, with_pre)
    upstream = attention_upstream(inputs, torch.bfloat16)
    grad_cf = upstream[1] if with_pre else torch.empty(0, dtype=torch.bfloat16)
    as_float = lambda ts: [t.float() if t is not None and t.dtype == torch.bfloat16 else t for t in ts]  # noqa: E731
    _y, _cf, sa, ca, lse = fwd(*inputs, 1.0)
    ours = bwd(upstream[0], grad_cf, *inputs, sa, ca, lse, 1.0)
    want = bwd(*as_float([upstream[0], grad_cf, *inputs, sa, ca]), lse, 1.0)
    for name, a, b in zip(["q", "x", "gamma", "pre", "mask", "alpha"], ours, want):
        if not with_pre and name in ("pre", "mask", "alpha"):
            continue
        expected = b.to(a.dtype)
        assert a.dtype == (torch.float32 if name in ("gamma", "alpha") else torch.bfloat16), name
        mismatched = (a != expected).sum().item()
        assert mismatched == 0, (f"grad_{name}: {mismatched} of {a.numel()} elements differ from the float32 "
                                 f"result rounded")


def test_cpu_forward_does_not_depend_on_the_threads():
    """The cpu forward's strips go to whichever thread is free: every output bit must be the same on
    1, 2 and 3 threads, and from call to call (9 strips of 64 rows, so the threads share them)."""
    fwd = kernel_op("short_long_attention", "cpu", "fwd")
    inputs = attention_sample_inputs((2, 8, 12, 20, 24, 24), torch.float32, with_pre=True)
    threads = torch.get_num_threads()
    try:
        results = {}
        for n in (1, 2, 3, 2):
            torch.set_num_threads(n)
            results.setdefault(n, []).append(fwd(*inputs, 1.0))
    finally:
        torch.set_num_threads(threads)
    want = results[1][0]
    for n, runs in results.items():
        for got in runs:
            for name, a, b in zip(["y", "cf", "sa", "ca", "lse"], got, want):
                mismatched = (a != b).sum().item()
                assert mismatched == 0, f"{name} on {n} threads: {mismatched} of {a.numel()} elements differ from 1 thread"


def test_cpu_gemm_choice_is_checked(monkeypatch):
    monkeypatch.setenv("INPAINT_FAST_CPU_GEMM", "mkl")
    inputs = attention_sample_inputs((1, 2, 3, 0, 2, 3), torch.float32, with_pre=False)
    with pytest.raises(RuntimeError, match=r"INPAINT_FAST_CPU_GEMM=mkl: expected auto, blas, strip, strip-avx2 or strip-avx512"):
        inpaint_fast.short_long_attention(*inputs, backend="cpu")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_layouts(backend, layout):
    """channels_last and non-contiguous inputs give the contiguous-input results."""
    shape = (2, 3, 6, 5, 4, 7)
    base = attention_sample_inputs(shape, torch.float64)
    laid = [laid_out(t, layout) for t in base]
    grads = attention_upstream(base, torch.float64)
    fn = lambda *a: inpaint_fast.short_long_attention(*a, backend=backend)  # noqa: E731
    outs, in_grads = attention_forward_backward(fn, laid, grads)
    ref_outs, ref_grads = attention_forward_backward(fn, base, grads)
    for a, b in zip(outs + in_grads, ref_outs + ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("with_pre", [True, False], ids=["pre", "self"])
def test_gradcheck_fp64(backend, with_pre):
    if backend in INTERPRETED:
        pytest.skip("interpreted Triton: tests/test_triton_short_long_attention.py gradchecks the kernels directly")
    inputs = attention_sample_inputs((2, 3, 4, 5, 3, 5), torch.float64, with_pre, requires_grad=True)
    inputs = [t for t in inputs if t is not None]

    def fn(*args):
        y, cf = inpaint_fast.short_long_attention(*args, backend=backend)
        return (y, cf) if cf is not None else y

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


def _op(backend, direction):
    return kernel_op("short_long_attention", backend, direction)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("with_pre", [True, False], ids=["pre", "self"])
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
@pytest.mark.parametrize("requires_grad", [True, False])
def test_opcheck(backend, with_pre, layout, requires_grad):
    inputs = attention_sample_inputs((2, 3, 5, 4, 3, 4), torch.float32, with_pre, layout, requires_grad)
    torch.library.opcheck(_op(backend, "fwd"), (*inputs, 1.0))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_opcheck_backward_op(backend):
    q, x, gamma, pre, mask, alpha = attention_sample_inputs((2, 3, 5, 4, 3, 4), torch.float32)
    y, cf, sa, ca, lse = _op(backend, "fwd")(q, x, gamma, pre, mask, alpha, 0.5)
    args = (torch.randn_like(y), torch.randn_like(cf), q, x, gamma, pre, mask, alpha, sa, ca, lse, 0.5)
    torch.library.opcheck(_op(backend, "bwd"), args)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("direction", ["fwd", "bwd"])
def test_direct_op_call_names_the_wrong_argument(backend, direction):
    q, x, gamma, pre, mask, alpha = attention_sample_inputs((2, 3, 5, 4, 3, 4))
    if direction == "fwd":
        name, args = "mask", (q, x, gamma, pre, torch.rand(2, 3, 3, 4), alpha, 1.0)
    else:  # stand-ins for the forward's outputs, in their shapes
        sa, ca, lse = torch.randn_like(x), torch.randn_like(pre), torch.randn(2, 3, 4)
        grads = torch.randn(2, 5, 4, 3), torch.randn_like(pre)
        name, args = "grad_y", (*grads, q, x, gamma, pre, mask, alpha, sa, ca, lse, 1.0)
    assert_direct_call_names("short_long_attention", backend, direction, args, name)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_torch_compile_fullgraph(backend):
    torch._dynamo.reset()
    inputs = attention_sample_inputs((2, 4, 6, 5, 5, 3), torch.float32)

    def step(q, x, gamma, pre, mask, alpha):
        y, cf = inpaint_fast.short_long_attention(q, x, gamma, pre, mask, alpha, backend=backend)
        return (y * 1.5).sum() + (cf ** 2).sum()

    eager_inputs = [t.clone().requires_grad_(True) for t in inputs]
    compiled_inputs = [t.clone().requires_grad_(True) for t in inputs]
    eager = step(*eager_inputs)
    eager.backward()
    compiled = torch.compile(step, fullgraph=True)(*compiled_inputs)
    compiled.backward()
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    for a, b in zip(compiled_inputs, eager_inputs):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-5)


# ---- properties of PIC's layer (docs/short_long_attention.md#properties-the-tests-check) ----------
ALL_BACKENDS = ["reference"] + CPU_BACKENDS


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_identity_when_gamma_is_zero(backend):
    """Property 1: with gamma = 0 and no pre, y == x exactly."""
    q, x, _, _, _, _ = attention_sample_inputs((2, 4, 6, 5, 3, 5), torch.float32, with_pre=False)
    y, cf = inpaint_fast.short_long_attention(q, x, torch.zeros(1), backend=backend)
    assert cf is None
    assert torch.equal(y, x)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_constant_values_are_reproduced(backend):
    """Property 4: rows of A sum to 1, so spatially constant x gives sa == x: y = (1 + gamma) x."""
    q, _, gamma, pre, mask, alpha = attention_sample_inputs((2, 4, 6, 5, 3, 5), torch.float64)
    x = torch.randn(2, 6, 1, 1, dtype=torch.float64).expand(2, 6, 3, 5).contiguous()
    y, _ = inpaint_fast.short_long_attention(q, x, gamma, pre, mask, alpha, backend=backend)
    torch.testing.assert_close(y, (1 + gamma) * x, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_uniform_attention_gives_spatial_mean(backend):
    """Property 5: q = 0 makes A = 1/N: sa is the spatial mean of x, ca that of pre."""
    _, x, gamma, pre, _, alpha = attention_sample_inputs((2, 4, 6, 5, 3, 5), torch.float64)
    q = torch.zeros(2, 4, 3, 5, dtype=torch.float64)
    mask = torch.zeros(2, 1, 3, 5, dtype=torch.float64)
    y, cf = inpaint_fast.short_long_attention(q, x, gamma, pre, mask, alpha, backend=backend)
    torch.testing.assert_close(y, gamma * x.mean((2, 3), keepdim=True) + x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(cf, (alpha * pre.mean((2, 3), keepdim=True)).expand_as(pre), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_mask_extremes(backend):
    """Property 6: an all-ones mask gives cf == pre whatever alpha; all-zeros gives alpha·(pre Aᵀ)."""
    q, x, gamma, pre, _, _ = attention_sample_inputs((2, 4, 6, 5, 3, 5), torch.float64)
    ones, zeros = torch.ones(2, 1, 3, 5, dtype=torch.float64), torch.zeros(2, 1, 3, 5, dtype=torch.float64)
    _, cf = inpaint_fast.short_long_attention(q, x, gamma, pre, ones, torch.tensor([3.0], dtype=torch.float64),
                                              backend=backend)
    assert torch.equal(cf, pre)  # visible pixels keep the encoder feature bit for bit
    _, cf0 = inpaint_fast.short_long_attention(q, x, gamma, pre, zeros, torch.tensor([2.0], dtype=torch.float64),
                                               backend=backend)
    attn = reference.attention_map(q)
    expected = 2.0 * torch.bmm(pre.reshape(2, 5, 15), attn.transpose(1, 2)).reshape(pre.shape)
    torch.testing.assert_close(cf0, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_permutation_equivariance(backend):
    """Property 7: permuting positions of q, x, pre and mask together permutes y and cf."""
    q, x, gamma, pre, mask, alpha = attention_sample_inputs((2, 4, 6, 5, 1, 11), torch.float64)
    perm = torch.randperm(11)
    y, cf = inpaint_fast.short_long_attention(q, x, gamma, pre, mask, alpha, backend=backend)
    yp, cfp = inpaint_fast.short_long_attention(q[..., perm], x[..., perm], gamma, pre[..., perm], mask[..., perm],
                                                alpha, backend=backend)
    torch.testing.assert_close(yp, y[..., perm], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(cfp, cf[..., perm], rtol=1e-12, atol=1e-12)


def test_attention_map_facts():
    """Properties 3–4: E symmetric, rows of A sum to 1, diag(Z)·A symmetric."""
    q = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    attn = inpaint_fast.attention_map(q)
    qf = q.reshape(2, 3, 20)
    energy = qf.transpose(1, 2) @ qf
    torch.testing.assert_close(energy, energy.transpose(1, 2))
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 20, dtype=torch.float64))
    z = torch.logsumexp(energy, -1).exp()
    za = z[:, :, None] * attn
    torch.testing.assert_close(za, za.transpose(1, 2))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_gate_gradients_at_init(backend):
    """Property 2: with gamma = alpha = 0, q gets exactly zero gradient; gamma and alpha do not."""
    q, x, _, pre, mask, _ = attention_sample_inputs((2, 4, 6, 5, 3, 5), torch.float64, requires_grad=True)
    gamma = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    alpha = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    y, cf = inpaint_fast.short_long_attention(q, x, gamma, pre, mask, alpha, backend=backend)
    (y.square().sum() + cf.square().sum()).backward()
    assert torch.count_nonzero(q.grad) == 0
    assert gamma.grad.abs().item() > 0 and alpha.grad.abs().item() > 0


# ---- bad input --------------------------------------------------------------------------------
def _bad_cases():
    def base():
        return dict(zip(ATTENTION_INPUTS, attention_sample_inputs((2, 3, 5, 4, 3, 4))))

    def case(label, error, match, **changes):
        return pytest.param(changes, error, match, id=label)

    return [
        case("x-rank", ValueError, r"`x` must be a 4-D \(B, C, H, W\)", x=torch.randn(2, 5, 12)),
        case("q-batch", ValueError, r"`q` must have shape", q=torch.randn(3, 3, 3, 4)),
        case("q-spatial", ValueError, r"`q` must have shape", q=torch.randn(2, 3, 4, 3)),
        case("pre-spatial", ValueError, r"`pre` must have shape", pre=torch.randn(2, 4, 3, 5)),
        case("mask-channels", ValueError, r"`mask` must have shape \(B, 1, H, W\)", mask=torch.rand(2, 3, 3, 4)),
        case("mask-range", ValueError, r"`mask` must lie in \[0, 1\]", mask=torch.full((2, 1, 3, 4), 1.5)),
        case("x-int", TypeError, r"`x` must be floating point", x=torch.ones(2, 5, 3, 4, dtype=torch.int64)),
        case("pre-dtype", TypeError, r"`pre` has dtype float64 but `x` has float32",
             pre=torch.randn(2, 4, 3, 4, dtype=torch.float64)),
        case("gamma-shape", ValueError, r"`gamma` must have exactly one element", gamma=torch.zeros(2)),
        case("gamma-float", TypeError, r"`gamma` must be a one-element tensor", gamma=0.5),
        case("mask-without-pre", ValueError, r"`mask` was given without `pre`", pre=None, alpha=None),
        case("alpha-without-pre", ValueError, r"`alpha` was given without `pre`", pre=None, mask=None),
        case("pre-without-mask", ValueError, r"`pre` was given without `mask`", mask=None),
        case("pre-without-alpha", ValueError, r"`pre` was given without `alpha`", alpha=None),
        case("device", ValueError, r"`mask` is on meta but `x` is on cpu", mask=torch.rand(2, 1, 3, 4, device="meta")),
    ], base


_CASES, _base_inputs = _bad_cases()


@pytest.mark.parametrize("changes,error,match", _CASES)
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_bad_input(changes, error, match, backend):
    kwargs = _base_inputs()
    kwargs.update(changes)
    with pytest.raises(error, match=match):
        inpaint_fast.short_long_attention(**kwargs, backend=backend)


def test_unsupported_dtype_is_an_error_not_a_fallback():
    if "cpu" not in CPU_BACKENDS:
        pytest.skip("C++ extension not built")
    inputs = attention_sample_inputs((1, 2, 3, 3, 2, 2), torch.float16)
    with pytest.raises(inpaint_fast.BackendError, match="backend 'cpu' supports dtypes .* but the inputs are float16"):
        inpaint_fast.short_long_attention(*inputs, backend="cpu")


def test_gpu_backend_on_cpu_tensors_is_an_error():
    inputs = attention_sample_inputs((1, 2, 3, 3, 2, 2))
    with pytest.raises(inpaint_fast.BackendError, match="backend 'cuda'"):
        inpaint_fast.short_long_attention(*inputs, backend="cuda")
