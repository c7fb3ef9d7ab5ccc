"""Registration helpers shared by the op files: which kernels exist, and wiring Triton launchers.

Every op's schema is written once, in inpaint_fast/ops/schemas.inc. The compiled ops
(``inpaint_fast::<op>_fwd/_bwd``) are defined from it by the C++ extension (csrc/ops.cpp), whose
kernels register themselves from C++ (TORCH_LIBRARY_IMPL). The Triton ops
(``inpaint_fast::triton_<op>_fwd/_bwd``) are defined here, from the same file, so the Triton
backend works whether or not the extension built; their kernels are the launchers of
inpaint_fast/triton_kernels/<op>.py, Python functions with the compiled ops' contract, registered
for the devices Triton serves in this process.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Callable, Dict, Optional

import torch

from .. import triton_kernels
from ..dtypes import FLOATING
from .._extension import extension_error, extension_loaded, has_kernel
from ..backends import Implementation, OpRegistry, registry

CPU_KERNEL_DTYPES = (torch.bfloat16, torch.float32, torch.float64)
CUDA_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


SCHEMA_FILE = Path(__file__).with_name("schemas.inc")


def read_schemas(path: Path = SCHEMA_FILE) -> Dict[str, str]:
    """``{op name: schema without the name}`` from the schema file: each
    ``INPAINT_FAST_OP(name, "piece" "piece")`` with its C string pieces joined, ``//`` comments
    skipped."""
    text = re.sub(r"//[^\n]*", "", path.read_text(encoding="utf-8"))
    schemas = {}
    for name, pieces in re.findall(r'INPAINT_FAST_OP\(\s*(\w+)\s*,((?:\s*"[^"]*")+)\s*\)', text):
        schemas[name] = "".join(re.findall(r'"([^"]*)"', pieces))
    if not schemas:
        raise RuntimeError(f"{path}: no INPAINT_FAST_OP(name, \"schema\") entries found")
    return schemas


SCHEMAS = read_schemas()

# Holds the Triton ops' definitions: they live as long as this library object does. A fragment,
# since the compiled extension defines the namespace's other ops (TORCH_LIBRARY in csrc/ops.cpp).
_TRITON_LIBRARY = torch.library.Library("inpaint_fast", "FRAGMENT")


def define_triton_ops(op: str) -> None:
    """Defines ``inpaint_fast::triton_<op>_fwd/_bwd`` with the compiled ops' schemas."""
    for suffix in ("fwd", "bwd"):
        _TRITON_LIBRARY.define(f"triton_{op}_{suffix}{SCHEMAS[f'{op}_{suffix}']}")


def compiled_unavailable(op: str, dispatch_key: str) -> str:
    """'' when the compiled extension has ``<op>_fwd`` kernels for ``dispatch_key``, else why not."""
    if not extension_loaded():
        return extension_error()
    if not has_kernel(f"{op}_fwd", dispatch_key):
        return f"the extension was built without {dispatch_key} kernels"
    return ""


def _checked(launcher: Callable, check_args: Optional[Callable]) -> Callable:
    """``launcher`` behind ``check_args`` (the op's structural input checks): a direct call of a
    ``torch.ops.inpaint_fast.triton_*`` op gets the public function's one-line errors instead of a
    failure inside a kernel. Checks that read data (and synchronise) stay in the public function."""
    if check_args is None:
        return launcher

    def run(*args):
        check_args(*args)
        return launcher(*args)

    run.__name__ = run.__qualname__ = launcher.__name__
    run.__doc__ = launcher.__doc__
    return run


def register_triton_kernels(op: str, check_fwd_args: Optional[Callable] = None,
                            check_bwd_args: Optional[Callable] = None) -> str:
    """Registers ``inpaint_fast.triton_kernels.<op>``'s launchers for ``triton_<op>_fwd/_bwd``,
    each behind the op's checks of its arguments (``check_fwd_args(*fwd op args)``, likewise bwd).

    Returns '' on success, else the reason the Triton backend of ``op`` is unavailable.
    """
    reason = triton_kernels.unavailable_reason()
    if reason:
        return reason
    try:
        kernels = importlib.import_module(f"{triton_kernels.__name__}.{op}")
    except ImportError as exc:  # surfaced whenever the triton backend is asked for
        return f"the Triton kernels of {op} failed to import ({exc})"
    devices = triton_kernels.device_types()
    fwd, bwd = getattr(kernels, f"{op}_fwd"), getattr(kernels, f"{op}_bwd")
    torch.library.impl(f"inpaint_fast::triton_{op}_fwd", devices, _checked(fwd, check_fwd_args), lib=_TRITON_LIBRARY)
    torch.library.impl(f"inpaint_fast::triton_{op}_bwd", devices, _checked(bwd, check_bwd_args), lib=_TRITON_LIBRARY)
    return ""


def register_backends(
    op: str,
    reference_run: Callable,
    kernel_runner: Callable[[str], Callable],
    register_fake_and_autograd: Callable[[str, str], None],
    check_fwd_args: Optional[Callable] = None,
    check_bwd_args: Optional[Callable] = None,
) -> OpRegistry:
    """Every backend of ``op``, registered the same way for each op.

    ``reference_run`` is the pure-PyTorch implementation; ``kernel_runner(fwd_op_name)`` builds
    the forward that calls a kernel backend's op; ``register_fake_and_autograd(fwd, bwd)`` adds
    the op's fake kernels and autograd formula to one forward/backward op pair;
    ``check_fwd_args``/``check_bwd_args`` check a Triton op's arguments when it is called directly
    (the compiled kernels check theirs in C++). Availability is decided here, once, so choosing a
    backend later is plain Python.
    """
    if extension_loaded():
        register_fake_and_autograd(f"{op}_fwd", f"{op}_bwd")
    define_triton_ops(op)
    triton_unavailable = register_triton_kernels(op, check_fwd_args, check_bwd_args)
    if not triton_unavailable:
        register_fake_and_autograd(f"triton_{op}_fwd", f"triton_{op}_bwd")

    reg = registry(op)
    reg.register(Implementation("reference", ("cpu", "cuda"), FLOATING, "", reference_run))
    reg.register(Implementation("cpu", ("cpu",), CPU_KERNEL_DTYPES, compiled_unavailable(op, "CPU"),
                                kernel_runner(f"{op}_fwd")))  # fmt: skip
    reg.register(Implementation("cuda", ("cuda",), CUDA_KERNEL_DTYPES, compiled_unavailable(op, "CUDA"),
                                kernel_runner(f"{op}_fwd")))  # fmt: skip
    reg.register(Implementation("triton", triton_kernels.device_types(), triton_kernels.dtypes(),
                                triton_unavailable, kernel_runner(f"triton_{op}_fwd")))  # fmt: skip
    return reg
