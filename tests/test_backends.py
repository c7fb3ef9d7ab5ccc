"""Backend selection: defaults, overrides, and clear errors instead of silent fallbacks."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import inpaint_fast
from inpaint_fast.backends import AUTO_PREFERENCE, registry


def test_extension_is_built():
    """The C++ backend must exist wherever the tests run: otherwise its tests would only skip."""
    from inpaint_fast._extension import extension_error

    assert "cpu" in inpaint_fast.available_backends("cpu"), extension_error() or "CPU kernels not registered"


def test_auto_picks_the_cpu_kernels_on_cpu():
    for op in ("short_long_attention", "fusion_block"):
        assert registry(op).resolve("auto", torch.device("cpu"), torch.float32).backend == "cpu"
        # float16 is outside the C++ envelope: auto picks the reference, asking for "cpu" is an error.
        assert registry(op).resolve("auto", torch.device("cpu"), torch.float16).backend == "reference"
        with pytest.raises(inpaint_fast.BackendError, match="supports dtypes"):
            registry(op).resolve("cpu", torch.device("cpu"), torch.float16)


def test_auto_preference_lists_only_known_backends():
    for names in AUTO_PREFERENCE.values():
        assert set(names) <= set(inpaint_fast.BACKENDS) - {"auto"}


def test_set_and_use_backend():
    assert inpaint_fast.get_backend() == "auto"
    with inpaint_fast.use_backend("reference"):
        assert inpaint_fast.get_backend() == "reference"
        assert registry("short_long_attention").resolve(None, torch.device("cpu"), torch.float32).backend == "reference"
    assert inpaint_fast.get_backend() == "auto"
    with pytest.raises(inpaint_fast.BackendError, match="unknown backend 'fast'"):
        inpaint_fast.set_backend("fast")
    assert inpaint_fast.get_backend() == "auto"


def test_unknown_backend_argument():
    q, x = torch.randn(1, 2, 3, 3), torch.randn(1, 4, 3, 3)
    with pytest.raises(inpaint_fast.BackendError, match=r"unknown backend 'gpu'; expected one of auto, reference"):
        inpaint_fast.short_long_attention(q, x, torch.zeros(1), backend="gpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for CPU inputs on a machine without a GPU")
def test_cuda_backend_on_cpu_tensors_names_the_device_first():
    q, x = torch.randn(1, 2, 3, 3), torch.randn(1, 4, 3, 3)
    with pytest.raises(inpaint_fast.BackendError) as info:
        inpaint_fast.short_long_attention(q, x, torch.zeros(1), backend="cuda")
    message = str(info.value)
    assert "backend 'cuda' runs on cuda tensors, but the inputs are on cpu" in message, message
    assert "backends for cpu inputs here: reference, cpu" in message, message


def test_triton_backend_is_not_silently_replaced():
    """Outside Triton's envelope here (CPU tensors without the interpreter; bfloat16 under it,
    which the interpreter computes wrongly) asking for it is an error, not the reference."""
    from inpaint_fast.triton_kernels import interpreter_mode

    dtype = torch.bfloat16 if interpreter_mode() else torch.float32
    q, x = torch.randn(1, 2, 3, 3, dtype=dtype), torch.randn(1, 4, 3, 3, dtype=dtype)
    with pytest.raises(inpaint_fast.BackendError, match="backend 'triton'"):
        inpaint_fast.short_long_attention(q, x, torch.zeros(1), backend="triton")


def _python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)  # fmt: skip


def test_environment_variable_sets_the_default():
    done = _python("import inpaint_fast; print(inpaint_fast.get_backend())", INPAINT_FAST_BACKEND="reference")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "reference"


def test_bad_environment_variable_is_named():
    code = "import torch, inpaint_fast; inpaint_fast.short_long_attention(torch.ones(1,1,1,1), torch.ones(1,1,1,1), torch.zeros(1))"
    done = _python(code, INPAINT_FAST_BACKEND="fastest")
    assert done.returncode != 0
    assert "environment variable INPAINT_FAST_BACKEND: unknown backend 'fastest'" in done.stderr
