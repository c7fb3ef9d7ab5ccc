"""Shared test helpers: the backends under test and the dtype-aware comparison rule."""

from __future__ import annotations

import pytest
import torch

import inpaint_fast

# Backends that can run on this machine's CPU, apart from the reference itself.
CPU_BACKENDS = [b for b in inpaint_fast.available_backends("cpu") if b != "reference"]


def pytest_report_header(config):
    return f"inpaint_fast backends on cpu: {inpaint_fast.available_backends('cpu')}"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def assert_close_to_oracle(name, got, reference_lowp, reference_fp64, dtype):
    """flash-attention's acceptance rule: our error against the float64 oracle may be at most twice
    the error PyTorch's own reference makes in the same dtype, plus one unit of the dtype's epsilon
    at the output's magnitude (so an exactly-representable result does not demand bit equality).
    In float64 the oracle is the reference itself and the rule reduces to a 1e-10 relative bound.
    """
    got64 = got.double()
    magnitude = max(1.0, reference_fp64.abs().max().item()) if reference_fp64.numel() else 1.0
    if dtype == torch.float64:
        tol = 1e-10 * magnitude
    else:
        ref_err = (reference_lowp.double() - reference_fp64).abs().max().item() if got.numel() else 0.0
        tol = 2 * ref_err + torch.finfo(dtype).eps * magnitude
    err = (got64 - reference_fp64).abs().max().item() if got.numel() else 0.0
    assert got.shape == reference_fp64.shape, f"{name}: shape {tuple(got.shape)} != {tuple(reference_fp64.shape)}"
    assert err <= tol, f"{name}: max error {err:.3e} exceeds {tol:.3e} ({dtype})"
