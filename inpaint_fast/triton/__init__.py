"""Triton kernels of the ops (one file per op: kernels → launchers).

Each op file exposes launchers with exactly the contract of the compiled ops in csrc/ops.cpp;
inpaint_fast/ops/<op>.py registers them as the kernels of ``inpaint_fast::triton_<op>_fwd/_bwd``.

On a CUDA GPU the kernels compile for it. Without a GPU they run only through the Triton
interpreter (``TRITON_INTERPRET=1`` in the environment *before* inpaint_fast is imported: the
interpreter is chosen when a kernel is decorated), on CPU tensors, slowly, in float32/float64 —
which is how CI tests them. The interpreter cannot compute in bfloat16 and does not simulate TF32.
"""

from __future__ import annotations

import os
from typing import Tuple

import torch


def interpreter_mode() -> bool:
    """Whether Triton kernels run through the interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def unavailable_reason() -> str:
    """'' when Triton kernels can run in this process, else why not (decided once, at import)."""
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return f"triton is not importable ({exc}); install it with `pip install triton`"
    if interpreter_mode() or torch.cuda.is_available():
        return ""
    return "no CUDA GPU is visible; set TRITON_INTERPRET=1 before importing inpaint_fast to run the Triton kernels on CPU through the interpreter (slow; float32/float64 only)"


def device_types() -> Tuple[str, ...]:
    """Devices the Triton kernels serve: CUDA, plus CPU tensors under the interpreter."""
    return ("cpu", "cuda") if interpreter_mode() else ("cuda",)


def dtypes() -> Tuple[torch.dtype, ...]:
    """The interpreter computes bfloat16 wrongly (it works on the bit patterns) and float16 only
    partly, so under it the envelope is float32/float64; compiled for a GPU, the half types and
    float32."""
    if interpreter_mode():
        return (torch.float32, torch.float64)
    return (torch.float16, torch.bfloat16, torch.float32)
