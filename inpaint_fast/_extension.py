"""Loads the compiled extension ``inpaint_fast._C`` (C++ CPU kernels, CUDA kernels where built).

Importing ``_C`` runs the static initializers that define the compiled ops (csrc/ops.cpp, from
the schemas in inpaint_fast/ops/schemas.inc) and register each backend's kernels. A package installed without a successful build still imports:
the pure-PyTorch reference keeps working, and asking for a compiled backend raises an error that
says why the extension is missing.
"""

from __future__ import annotations

from typing import Optional

import torch  # noqa: F401  (libtorch must be loaded before the extension)

_LOAD_ERROR: Optional[BaseException] = None

try:
    from . import _C  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only on broken installs
    _LOAD_ERROR = exc


def extension_loaded() -> bool:
    """True when ``inpaint_fast._C`` imported, i.e. the op schemas and C++ kernels exist."""
    return _LOAD_ERROR is None


def extension_error() -> str:
    """Why the extension is unavailable, in words a user can act on ('' when it is loaded)."""
    if _LOAD_ERROR is None:
        return ""
    return (
        f"the compiled extension inpaint_fast._C could not be imported ({_LOAD_ERROR}); "
        "rebuild it with `pip install --no-build-isolation -e .` against the installed torch"
    )


def has_kernel(op_name: str, dispatch_key: str) -> bool:
    """Whether ``inpaint_fast::<op_name>`` has a kernel registered for ``dispatch_key`` (e.g. "CPU")."""
    if not extension_loaded():
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"inpaint_fast::{op_name}", dispatch_key)
