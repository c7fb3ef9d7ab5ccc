"""What the GPU run checks (benchmarks/gpu_session.sh), in one place.

The GPU tests of both GPU backends (tests/test_cuda_kernels.py for ``cuda``, the ends of
tests/test_triton_short_long_attention.py and tests/test_triton_fusion_block.py for ``triton``)
are thin parametrisations of :func:`attention_parity` and :func:`fusion_parity` over the case lists
below, and the sanitizer run (benchmarks/gpu_sanitize.py) takes its cases from here too, so an
ahead-of-time Triton cache built from these lists holds every kernel specialisation the run needs.
Every such test is named ``test_gpu_run_*``: benchmarks/gpu_session.sh selects them with ``-k gpu_run``.

``INPAINT_FAST_GPU_TESTS`` chooses how they run:

* unset — on a machine with a CUDA GPU, at the GPU run's shapes; without one they skip, saying why;
* ``require`` (set by benchmarks/gpu_session.sh) — a missing GPU or backend fails the test instead of skipping it,
  so nothing the run is meant to show can hide behind a skip;
* ``dry`` (``gpu_session.sh --dry-run``, CI) — on the CPU at tiny shapes, with the ``cpu`` backend
  standing in for ``cuda`` (same op schema) and Triton under its interpreter, fp32 only (the
  interpreter computes neither bf16 nor TF32): the plumbing runs, the GPU numbers do not.

Each parity test checks, and reports together (every failing tensor with its max error, not
just the first): forward outputs, every input gradient and the updated BatchNorm buffers against
the fp64 oracle with conftest's rule; outputs of runs whose memory was poisoned with NaN
(:func:`poisoned`), so an element a kernel never writes shows as NaN; and a second run on the same
inputs equal bit for bit (the kernels use no float atomics). ``INPAINT_FAST_GPU_REPORT=PATH``
appends one JSON line per test there as it finishes, so a run cut off by its time limit still
tells which cases passed and by how much the others failed.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import List, Optional, Tuple

import pytest
import torch

import inpaint_fast
import op_samples as samples
from conftest import assert_close_to_oracle
from inpaint_fast import reference
from inpaint_fast.backends import registry
from inpaint_fast.bench.fusion_block import _kink_free_batchnorms
from inpaint_fast.fusion_block_params import RUNNING_STATS, TRAINABLE
from inpaint_fast.triton_kernels import gpu_run_shapes as shapes

MODE = os.environ.get("INPAINT_FAST_GPU_TESTS", "")
if MODE not in ("", "require", "dry"):
    raise RuntimeError(f"INPAINT_FAST_GPU_TESTS={MODE!r}: expected unset, 'require' or 'dry'")
DRY = MODE == "dry"
REQUIRE = MODE == "require"
DEVICE = "cpu" if DRY else "cuda"

# ---------------------------------------------------------------------------------------------
# The cases. dtype specs: "fp32-highest" (IEEE fp32 dots), "fp32-high" (TF32 allowed: PyTorch's
# matmul precision, which the Triton attention and the reference's matmuls follow), "fp16", "bf16".
# ---------------------------------------------------------------------------------------------
ALL_SPECS = ("bf16", "fp16", "fp32-highest", "fp32-high")

# The lists are inpaint_fast/triton_kernels/gpu_run_shapes.py's (ATTENTION_TEST_CASES, FUSION_TEST_CASES),
# so the ahead-of-time Triton cache is built from exactly what these tests launch (the inputs
# below are built with the strides and dtypes that module's builders give; tests/test_triton_aot.py
# checks it), in their order: most important first, since pytest runs them in this order and a
# stage cut off by its time limit has answered the first questions.
_C = "contiguous"
AttnCase = Tuple[Tuple[int, ...], str, bool, str]  # ((B, Cq, C, Cp, H, W), spec, with_pre, layout)
FusionCase = Tuple[Tuple[int, ...], str, bool, str]  # ((B, c, h, w, H, W, A), spec, training, layout)


def _spec(dtype: str, precision: str) -> str:
    return f"fp32-{precision}" if dtype == "fp32" else dtype


def as_attn_case(c: shapes.AttentionCase) -> AttnCase:
    return (c.B, c.Cq, c.C, c.Cp, c.H, c.W), _spec(c.dtype, c.precision), c.Cp > 0, c.layout


def as_fusion_case(c: shapes.FusionCase) -> FusionCase:
    return (c.B, c.c, c.h, c.w, c.H, c.W, c.c_alpha), _spec(c.dtype, c.precision), c.training, c.layout


ATTN_CASES: List[AttnCase] = [as_attn_case(c) for c in shapes.ATTENTION_TEST_CASES]
ATTN_CASES_DRY: List[AttnCase] = [
    ((2, 3, 12, 20, 1, 7), "fp32-highest", True, _C),
    ((1, 8, 20, 12, 3, 5), "fp32-high", False, "transposed"),
]

FUSION_CASES: List[FusionCase] = [as_fusion_case(c) for c in shapes.FUSION_TEST_CASES]
FUSION_CASES_DRY: List[FusionCase] = [
    ((2, 4, 4, 6, 4, 6, 3), "fp32-highest", False, _C),
    ((1, 5, 3, 5, 6, 10, 1), "fp32-high", True, "transposed"),
]

# One small case per op for opcheck and torch.compile (fp32, in the lists above, so no new kernels).
ATTN_OP_CASE = (shapes.ATTN_ODD[1], "fp32-highest") if not DRY else ((2, 3, 12, 20, 1, 7), "fp32-highest")
FUSION_OP_CASE = (shapes.FUSION_ODD[1], "fp32-highest") if not DRY else ((1, 3, 2, 3, 4, 6, 1), "fp32-highest")


def attn_cases() -> List[AttnCase]:
    return ATTN_CASES_DRY if DRY else ATTN_CASES


def fusion_cases() -> List[FusionCase]:
    return FUSION_CASES_DRY if DRY else FUSION_CASES


def sanitizer_attn_cases() -> List[AttnCase]:
    """The attention cases small enough for compute-sanitizer (N ≤ 128): every kernel of every
    dtype and variant at tails of its tiles, and nothing the tests did not already compile."""
    return [c for c in attn_cases() if c[0][4] * c[0][5] <= 128]


def sanitizer_fusion_cases() -> List[FusionCase]:
    """The fusion cases with h·w ≤ 256 (odd sizes, DFNet's two deepest levels)."""
    return [c for c in fusion_cases() if c[0][2] * c[0][3] <= 256]


def attn_id(case: AttnCase) -> str:
    shape, spec, with_pre, layout = case
    lay = "" if layout == _C else f"-{layout}"
    return f"{spec}-{'pre' if with_pre else 'self'}{lay}-" + "B{}-Cq{}-C{}-Cp{}-{}x{}".format(*shape)


def fusion_id(case: FusionCase) -> str:
    shape, spec, training, layout = case
    lay = "" if layout == _C else f"-{layout}"
    return f"{spec}-{'train' if training else 'eval'}{lay}-" + "B{}-c{}-{}x{}-from{}x{}-A{}".format(*shape)


# ---------------------------------------------------------------------------------------------
# Backends, availability, precision, poisoning
# ---------------------------------------------------------------------------------------------
def backend_name(backend: str) -> str:
    """The backend that runs for ``backend`` here: in the dry run ``cpu`` stands in for ``cuda``."""
    return "cpu" if DRY and backend == "cuda" else backend


def _label(backend: str, name: str) -> str:
    return backend if name == backend else f"{backend} (as {name}, dry run)"


def unavailable(op: str, backend: str) -> str:
    """Why ``backend`` cannot run ``op`` in this process ('' when it can)."""
    if not DRY and not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    return registry(op).why_not(backend_name(backend), torch.device(DEVICE), torch.float32)


def gpu_test(op: str, backend: str):
    """Mark of a GPU-run test: skipped with the reason where the backend cannot run, except under
    ``require``/``dry``, where the test runs and :func:`require` fails it with that reason."""
    reason = unavailable(op, backend)
    return pytest.mark.skipif(bool(reason) and not (REQUIRE or DRY), reason=reason or "available")


def require(op: str, backend: str) -> str:
    """Fail (never skip) when ``backend`` cannot run ``op``; the backend name to call otherwise."""
    reason = unavailable(op, backend)
    if reason:
        pytest.fail(f"{backend} cannot run {op} here: {reason}")
    return backend_name(backend)


def parse_spec(spec: str) -> Tuple[torch.dtype, Optional[str]]:
    """(dtype, fp32 matmul precision or None) of a dtype spec such as "fp32-high"."""
    name, _, precision = spec.partition("-")
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}.get(name)
    if dtype is None or (precision and name != "fp32") or (name == "fp32" and precision not in ("highest", "high")):
        raise ValueError(f"dtype spec {spec!r}: expected one of {', '.join(ALL_SPECS)}")
    return dtype, precision or None


def matmul_precision(precision: Optional[str]):
    """PyTorch's fp32 matmul precision for the block (None: leave it), as the cache builder sets it."""
    return shapes.fp32_precision(precision) if precision is not None else contextlib.nullcontext()


@contextlib.contextmanager
def poisoned(device: str = DEVICE):
    """Every tensor allocated uninitialised in the block (torch.empty, at::empty: outputs, partial
    sums, scratch) starts as NaN: PyTorch's deterministic mode fills uninitialised memory. Without
    it the caching allocator hands a kernel blocks that still hold an earlier run's correct values,
    and an element the kernel never writes goes unseen. ``warn_only``: the reference's CUDA ops
    that have no deterministic version must still run."""
    was_on = torch.are_deterministic_algorithms_enabled()
    was_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    was_fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        probe = torch.empty(64, device=device)
        if not bool(torch.isnan(probe).all()):
            raise RuntimeError("poisoned(): torch.empty did not return NaN-filled memory; this torch does not "
                               "fill uninitialised memory in deterministic mode, so unwritten outputs would go unseen")
        yield
    finally:
        torch.utils.deterministic.fill_uninitialized_memory = was_fill
        torch.use_deterministic_algorithms(was_on, warn_only=was_warn)


# ---------------------------------------------------------------------------------------------
# Reporting: every comparison of a test, failures listed together
# ---------------------------------------------------------------------------------------------
class Checks:
    """Collects a test's comparisons; :meth:`finish` fails with all failing ones (max errors
    included) and appends the test's line to ``INPAINT_FAST_GPU_REPORT``."""

    def __init__(self, label: str):
        self.label = label
        self.count = 0
        self.failures: List[str] = []

    def oracle(self, name, got, lowp, ref64, dtype, **rule):
        self.count += 1
        try:
            assert_close_to_oracle(name, got, lowp, ref64, dtype, **rule)
        except AssertionError as exc:  # its first line; pytest's rewriting appends the compared values
            self.failures.append(str(exc).splitlines()[0])

    def bitwise(self, name, first: torch.Tensor, second: torch.Tensor):
        self.count += 1
        # Bit patterns, not values: -0.0 and 0.0 differ, and a NaN left in both runs by an unwritten
        # element compares equal here (the oracle check reports it once).
        same = first.shape == second.shape and first.dtype == second.dtype and torch.equal(_bits(first), _bits(second))
        if not same:
            diff = (first.double() - second.double()).abs().max().item() if first.shape == second.shape else "n/a"
            self.failures.append(f"{name}: a second run on the same inputs differs (max |diff| {diff}): "
                                 "not deterministic")

    def finish(self):
        path = os.environ.get("INPAINT_FAST_GPU_REPORT")
        if path:
            test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0]
            with open(path, "a") as f:
                f.write(json.dumps({"test": test, "case": self.label, "checks": self.count,
                                    "failed": self.failures}) + "\n")
        assert self.count, f"{self.label}: nothing was compared"
        assert not self.failures, f"{self.label}: {len(self.failures)} of {self.count} checks failed:\n" + "\n".join(
            self.failures)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


# ---------------------------------------------------------------------------------------------
# short_long_attention
# ---------------------------------------------------------------------------------------------
def attention_parity(backend: str, case: AttnCase) -> None:
    """Forward and backward of ``backend`` against the fp64 oracle, poisoned, twice (bitwise)."""
    shape, spec, with_pre, layout = case
    name = require("short_long_attention", backend)
    dtype, precision = parse_spec(spec)
    checks = Checks(f"{_label(backend, name)} attention {attn_id(case)}")
    with matmul_precision(precision):
        inputs = samples.attention_sample_inputs(shape, dtype, with_pre, layout, device=DEVICE)
        grads = samples.attention_upstream(inputs, dtype)
        fn = lambda *a: inpaint_fast.short_long_attention(*a, backend=name)  # noqa: E731
        with poisoned():
            ours, our_grads = samples.attention_forward_backward(fn, inputs, grads)
            again, again_grads = samples.attention_forward_backward(fn, inputs, grads)
        ref, ref_grads = samples.attention_forward_backward(reference.short_long_attention, inputs, grads)
        inputs64 = [t.double() if t is not None else None for t in inputs]
        ref64, ref64_grads = samples.attention_forward_backward(reference.short_long_attention, inputs64,
                                                                [g.double() for g in grads])
    for label, a, b, c in zip(["y", "cf"], ours, ref, ref64):
        checks.count += 1
        if a.dtype != dtype or a.device.type != DEVICE:
            checks.failures.append(f"{label}: {a.dtype} on {a.device}, expected {dtype} on {DEVICE}")
        checks.oracle(label, a, b, c, dtype)
    # The fused backward recomputes P from the saved lse (conftest: recompute_magnitude).
    q64 = inputs64[0].reshape(shape[0], shape[1], -1)
    lse_magnitude = torch.logsumexp(q64.transpose(1, 2) @ q64, -1).abs().max().item()
    names = [n for n, t in zip(samples.ATTENTION_INPUTS, inputs) if t is not None]
    live = [t for t in inputs if t is not None]
    for label, a, b, c, t in zip(names, our_grads, ref_grads, ref64_grads, live):
        checks.count += 1
        if a.dtype != t.dtype or a.shape != t.shape:
            checks.failures.append(f"grad_{label}: {a.dtype} {tuple(a.shape)}, expected {t.dtype} {tuple(t.shape)}")
        checks.oracle(f"grad_{label}", a, b, c, dtype, recompute_magnitude=lse_magnitude)
    for label, a, b in zip(["y", "cf"] + [f"grad_{n}" for n in names], ours + our_grads, again + again_grads):
        checks.bitwise(label, a, b)
    checks.finish()


# opcheck's tests; the dry run keeps the cheap ones (the AOT-dispatch test traces the op through
# Dynamo and AOTAutograd with dynamic shapes: tens of seconds on 2 busy cores, seconds on a GPU host).
OPCHECK_UTILS = ("test_schema", "test_faketensor") if DRY else (
    "test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


def attention_opcheck(backend: str) -> None:
    """torch.library.opcheck of the backend's forward and backward ops (schema, fake tensors,
    autograd registration, AOT dispatch) on one case."""
    name = require("short_long_attention", backend)
    (shape, spec), dtype = ATTN_OP_CASE, parse_spec(ATTN_OP_CASE[1])[0]
    fwd, bwd = (samples.kernel_op("short_long_attention", name, d) for d in ("fwd", "bwd"))
    q, x, gamma, pre, mask, alpha = samples.attention_sample_inputs(shape, dtype, device=DEVICE)
    inputs = [t.requires_grad_(True) for t in (q, x, gamma, pre, mask, alpha)]
    torch.library.opcheck(fwd, (*inputs, 1.0), test_utils=OPCHECK_UTILS)
    with torch.no_grad():
        y, cf, sa, ca, lse = fwd(q, x, gamma, pre, mask, alpha, 0.5)
    args = (torch.randn_like(y), torch.randn_like(cf), q.detach(), x.detach(), gamma.detach(), pre.detach(),
            mask.detach(), alpha.detach(), sa, ca, lse, 0.5)
    torch.library.opcheck(bwd, args, test_utils=OPCHECK_UTILS)


def _compile_backend() -> str:
    # On the CPU Inductor would spend most of the dry run compiling C++; aot_eager still traces
    # the op through Dynamo (fullgraph) and AOTAutograd with its fake kernels.
    return "aot_eager" if DRY else "inductor"


def attention_compile(backend: str) -> None:
    """torch.compile(fullgraph=True) of a step around the op equals the eager step."""
    name = require("short_long_attention", backend)
    torch._dynamo.reset()
    shape, spec = ATTN_OP_CASE
    inputs = samples.attention_sample_inputs(shape, parse_spec(spec)[0], device=DEVICE)

    def step(q, x, gamma, pre, mask, alpha):
        y, cf = inpaint_fast.short_long_attention(q, x, gamma, pre, mask, alpha, backend=name)
        return (y * 1.5).sum() + (cf**2).sum()

    runs = []
    for compiled in (False, True):
        leaves = [t.clone().requires_grad_(True) for t in inputs]
        fn = torch.compile(step, fullgraph=True, backend=_compile_backend()) if compiled else step
        loss = fn(*leaves)
        loss.backward()
        runs.append([loss.detach()] + [t.grad for t in leaves])
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# fusion_block
# ---------------------------------------------------------------------------------------------
def fusion_inputs(shape, dtype, layout="contiguous"):
    """op_samples.fusion_sample_inputs with kink-free BatchNorms (bench/fusion_block.py
    ``_kink_free_batchnorms``), on DEVICE: every LeakyReLU input stays ≥ 1 from its kink. A
    pre-activation within rounding of 0 may take either slope in any correct fp32 implementation
    and moves that pixel's gradient by 0.8·|g|; at B·h·w of tens of thousands some always does."""
    feat, image, params = samples.fusion_sample_inputs(shape, torch.float64, layout)
    kw = {k: v.float() for k, v in dict(params._asdict(), feat=feat, image=image).items()}
    bns = _kink_free_batchnorms(kw, torch.device(DEVICE), torch.Generator().manual_seed(1))
    params = params._replace(**{k: v.double() for k, v in bns.items()})
    to = lambda t: t.to(device=DEVICE, dtype=dtype)  # noqa: E731 - .to keeps a dense layout's strides
    return to(feat), to(image), samples.fusion_params_to(params, device=DEVICE, dtype=dtype)


def fusion_parity(backend: str, case: FusionCase) -> None:
    """Outputs, updated running statistics and every gradient (feat, image, the 12 trainable
    parameters) of ``backend`` against the fp64 oracle, poisoned, twice (bitwise)."""
    shape, spec, training, layout = case
    name = require("fusion_block", backend)
    dtype, precision = parse_spec(spec)
    checks = Checks(f"{_label(backend, name)} fusion {fusion_id(case)}")
    with matmul_precision(precision):
        feat, image, params = fusion_inputs(shape, dtype, layout)
        grads = samples.fusion_upstream(feat, shape[-1], dtype)
        fn = lambda *a, **kw: inpaint_fast.fusion_block(*a, **kw, backend=name)  # noqa: E731
        with poisoned():
            ours = samples.fusion_run(fn, feat, image, params, training, grads)
            again = samples.fusion_run(fn, feat, image, params, training, grads)
        ref = samples.fusion_run(reference.fusion_block, feat, image, params, training, grads)
        p64 = samples.fusion_params_to(params, torch.float64)
        ref64 = samples.fusion_run(reference.fusion_block, feat.double(), image.double(), p64, training,
                                   [g.double() for g in grads])
    labels = samples.FUSION_RESULTS
    flat_ours, flat_ref, flat_ref64 = sum(ours, []), sum(ref, []), sum(ref64, [])
    # Parameter gradients and running statistics are sums over all M = B·h·w pixels: judged at the
    # largest parameter gradient's scale with the √M growth of a sum's rounding (conftest's rule).
    is_sum = {label: label in RUNNING_STATS or (label.startswith("grad_") and label not in ("grad_feat", "grad_image"))
              for label in labels}
    param_scale = max(c.abs().max().item() for label, c in zip(labels, flat_ref64)
                      if is_sum[label] and label.startswith("grad_"))
    M = shape[0] * shape[2] * shape[3]
    for label, a, b, c in zip(labels, flat_ours, flat_ref, flat_ref64):
        checks.count += 1
        if a.dtype != dtype or a.device.type != DEVICE:
            checks.failures.append(f"{label}: {a.dtype} on {a.device}, expected {dtype} on {DEVICE}")
        grad_sum = is_sum[label] and label.startswith("grad_")
        checks.oracle(label, a, b, c, dtype, scale=param_scale if grad_sum else 0.0,
                      summed_terms=M if is_sum[label] else 1)
    for label, a, b in zip(labels, flat_ours, sum(again, [])):
        checks.bitwise(label, a, b)
    checks.finish()


def fusion_opcheck(backend: str, training: bool) -> None:
    name = require("fusion_block", backend)
    shape, spec = FUSION_OP_CASE
    feat, image, params = fusion_inputs(shape, parse_spec(spec)[0])
    fwd, bwd = (samples.kernel_op("fusion_block", name, d) for d in ("fwd", "bwd"))
    args = (feat.clone().requires_grad_(True), image, *samples.fusion_params_clone(params, leaves=True))
    torch.library.opcheck(fwd, (*args, training, 1e-5), test_utils=OPCHECK_UTILS)
    out, alpha, raw, *stats = fwd(feat, image, *params, training, 1e-5)
    saved = samples.fusion_saved_params(params, stats)
    torch.library.opcheck(bwd, (torch.randn_like(out), torch.randn_like(alpha), torch.randn_like(raw), feat, image,
                                *saved, training, 1e-5), test_utils=OPCHECK_UTILS)


def fusion_compile(backend: str) -> None:
    """torch.compile(fullgraph=True) of a training step around the op equals the eager step."""
    name = require("fusion_block", backend)
    torch._dynamo.reset()
    shape, spec = FUSION_OP_CASE
    feat, image, params = fusion_inputs(shape, parse_spec(spec)[0])

    def step(feat, image, p):
        out, alpha, raw = inpaint_fast.fusion_block(feat, image, p, training=True, backend=name)
        return (out * 2).sum() + alpha.square().sum() + raw.sum()

    runs = []
    for compiled in (False, True):
        f = feat.clone().requires_grad_()
        p = samples.fusion_params_clone(params, leaves=True)
        fn = torch.compile(step, fullgraph=True, backend=_compile_backend()) if compiled else step
        loss = fn(f, image, p)
        loss.backward()
        runs.append([loss.detach(), f.grad] + [getattr(p, k).grad for k in TRAINABLE]
                    + [getattr(p, k) for k in RUNNING_STATS])
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
