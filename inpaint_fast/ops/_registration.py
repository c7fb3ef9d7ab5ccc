"""Registration helpers shared by the op files: which kernels exist, and wiring Triton launchers.

The compiled kernels register themselves from C++ (TORCH_LIBRARY_IMPL). The Triton launchers are
Python functions with the same contract; they become the kernels of ``inpaint_fast::triton_<op>_*``
(schemas in csrc/ops.cpp) for the devices Triton serves in this process.
"""

from __future__ import annotations

import importlib
from typing import Callable

import torch

from .. import triton as triton_support
from .._extension import extension_error, extension_loaded, has_kernel
from ..backends import Implementation, OpRegistry, registry

ALL_FLOATING = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
CPU_KERNEL_DTYPES = (torch.bfloat16, torch.float32, torch.float64)
CUDA_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


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


def register_backends(
    op: str,
    reference_run: Callable,
    kernel_runner: Callable[[str], Callable],
    register_fake_and_autograd: Callable[[str, str], None],
) -> OpRegistry:
    """Every backend of ``op``, registered the same way for each op.

    ``reference_run`` is the pure-PyTorch implementation; ``kernel_runner(fwd_op_name)`` builds
    the forward that calls a kernel backend's op; ``register_fake_and_autograd(fwd, bwd)`` adds
    the op's fake kernels and autograd formula to one forward/backward op pair. Availability is
    decided here, once, so choosing a backend later is plain Python.
    """
    if extension_loaded():
        register_fake_and_autograd(f"{op}_fwd", f"{op}_bwd")
    triton_unavailable = register_triton_kernels(op)
    if not triton_unavailable:
        register_fake_and_autograd(f"triton_{op}_fwd", f"triton_{op}_bwd")

    reg = registry(op)
    reg.register(Implementation("reference", ("cpu", "cuda"), ALL_FLOATING, "", reference_run))
    reg.register(Implementation("cpu", ("cpu",), CPU_KERNEL_DTYPES, compiled_unavailable(op, "CPU"),
                                kernel_runner(f"{op}_fwd")))  # fmt: skip
    reg.register(Implementation("cuda", ("cuda",), CUDA_KERNEL_DTYPES, compiled_unavailable(op, "CUDA"),
                                kernel_runner(f"{op}_fwd")))  # fmt: skip
    reg.register(Implementation("triton", triton_support.device_types(), triton_support.dtypes(),
                                triton_unavailable, kernel_runner(f"triton_{op}_fwd")))  # fmt: skip
    return reg
