"""Shared test helpers: the backends under test and the dtype-aware comparison rule."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    # Without a GPU the Triton kernels run through the interpreter. It must be chosen before
    # triton (and so inpaint_fast) is first imported: triton's own @jit helpers are decorated then.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import inpaint_fast  # noqa: E402
from inpaint_fast.backends import registry  # noqa: E402
from inpaint_fast.triton_kernels import interpreter_mode  # noqa: E402

# Backends that can run on this machine's CPU, apart from the reference itself.
CPU_BACKENDS = [b for b in inpaint_fast.available_backends("cpu") if b != "reference"]
# The interpreter runs every Triton program one after another in numpy: fine for small shapes,
# far too slow for N = 1025 on a 2-core CI machine. Larger shapes run on a GPU.
INTERPRETED = {"triton"} if interpreter_mode() else set()
MAX_INTERPRETED_POSITIONS = 256


def pytest_report_header(config):
    return f"inpaint_fast backends on cpu: {inpaint_fast.available_backends('cpu')}"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """Run a test on one torch thread (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    small models and tiny ops are quicker there, and immune to OpenMP threads waiting on each
    other when the 2-core machine is busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def skip_outside_envelope(op: str, backend: str, dtype: torch.dtype, positions: int = 0) -> None:
    """Skip a parity case the backend does not serve here (its stated envelope), never silently
    a case it claims to serve: that one must run and pass."""
    reason = registry(op).why_not(backend, torch.device("cpu"), dtype)
    if reason:
        pytest.skip(reason)
    if backend in INTERPRETED and positions > MAX_INTERPRETED_POSITIONS:
        pytest.skip(f"{backend} runs through the Triton interpreter here; {positions} positions is a GPU-sized case")


def assert_close_to_oracle(
    name, got, reference_lowp, reference_fp64, dtype, recompute_magnitude=0.0, scale=0.0, summed_terms=1
):
    """flash-attention's acceptance rule: our error against the float64 oracle may be at most twice
    the error PyTorch's own reference makes in the same dtype, plus one unit of the dtype's epsilon
    at the output's magnitude (so an exactly-representable result does not demand bit equality).
    In float64 the oracle is the reference itself and the rule reduces to a 1e-10 relative bound.

    ``recompute_magnitude``: the fused attention backward recomputes P = exp(E − lse) from the
    saved log-sum-exp, as flash attention does, while the reference keeps P from its forward;
    rounding lse to the dtype costs every recomputed probability a relative error of
    eps·|lse|, so the floor grows by that factor (pass max|lse| for attention gradients).

    ``scale``, ``summed_terms``: for results that are sums of ``summed_terms`` rounded terms
    (weight gradients), a magnitude to judge them at when it exceeds their own (sums cancelling
    to ~0 are pure rounding noise of terms that size), and the √M growth of a sum's rounding error.
    """
    got64 = got.double()
    magnitude = max(1.0, scale, reference_fp64.abs().max().item() if reference_fp64.numel() else 1.0)
    if dtype == torch.float64:
        tol = 1e-10 * magnitude * (1 + recompute_magnitude)
    else:
        ref_err = (reference_lowp.double() - reference_fp64).abs().max().item() if got.numel() else 0.0
        floor = torch.finfo(dtype).eps * magnitude * (1 + recompute_magnitude) * summed_terms**0.5
        tol = 2 * ref_err + floor
    err = (got64 - reference_fp64).abs().max().item() if got.numel() else 0.0
    assert got.shape == reference_fp64.shape, f"{name}: shape {tuple(got.shape)} != {tuple(reference_fp64.shape)}"
    assert err <= tol, f"{name}: max error {err:.3e} exceeds {tol:.3e} ({dtype})"
