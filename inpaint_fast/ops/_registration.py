"""Registration helpers shared by the op files: which kernels exist, and wiring Triton launchers.

The compiled kernels register themselves from C++ (TORCH_LIBRARY_IMPL). The Triton launchers are
Python functions with the same contract; they become the kernels of ``inpaint_fast::triton_<op>_*``
(schemas in csrc/ops.cpp) for the devices Triton serves in this process.
"""

from __future__ import annotations

import importlib

import torch

from .. import triton as triton_support
from .._extension import extension_error, extension_loaded, has_kernel


def stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of the statistics an op returns (lse, BN mean/var): float64 for float64, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def compiled_unavailable(op: str, dispatch_key: str) -> str:
    """'' when the compiled extension has ``<op>_fwd`` kernels for ``dispatch_key``, else why not."""
    if not extension_loaded():
        return extension_error()
    if not has_kernel(f"{op}_fwd", dispatch_key):
        return f"the extension was built without {dispatch_key} kernels"
    return ""


def register_triton_kernels(op: str) -> str:
    """Registers ``inpaint_fast.triton.<op>``'s launchers for ``triton_<op>_fwd/_bwd``.

    Returns '' on success, else the reason the Triton backend of ``op`` is unavailable.
    """
    if not extension_loaded():
        return extension_error()  # the op schemas live in the extension
    reason = triton_support.unavailable_reason()
    if reason:
        return reason
    try:
        kernels = importlib.import_module(f"{triton_support.__name__}.{op}")
    except ImportError as exc:  # surfaced whenever the triton backend is asked for
        return f"the Triton kernels of {op} failed to import ({exc})"
    devices = triton_support.device_types()
    torch.library.impl(f"inpaint_fast::triton_{op}_fwd", devices, getattr(kernels, f"{op}_fwd"))
    torch.library.impl(f"inpaint_fast::triton_{op}_bwd", devices, getattr(kernels, f"{op}_bwd"))
    return ""
