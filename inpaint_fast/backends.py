"""Backend choice: which implementation of an operator serves a call.

Backends:

* ``"reference"`` — the readable pure-PyTorch definition (inpaint_fast/reference/); any device
  and floating dtype; materialises intermediates (the attention's N×N map).
* ``"cpu"`` — the C++ CPU kernels of the compiled extension (csrc/cpu/).
* ``"triton"`` — Triton kernels (GPU; CPU only under ``TRITON_INTERPRET=1``).
* ``"cuda"`` — the CUDA C++ kernels of the compiled extension (csrc/cuda/).
* ``"auto"`` — the fastest correct implementation for the device and dtype, from the
  preference lists below. A backend joins ``auto``'s list only once benchmarks in
  benchmarks/results/ show it is the fastest correct one there.

The default backend is ``"auto"``; ``INPAINT_FAST_BACKEND`` in the environment or
:func:`set_backend` changes it, :func:`use_backend` changes it within a ``with`` block, and the
``backend=`` argument of every op overrides it per call. Asking for a backend that cannot serve a
call (wrong device, unsupported dtype, not built) raises :class:`BackendError` naming the reason;
there is never a silent fallback to another implementation.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

__all__ = [
    "BACKENDS",
    "BackendError",
    "available_backends",
    "get_backend",
    "set_backend",
    "use_backend",
]

# The backends that run this package's own kernels (what benchmarks compare with the reference).
KERNEL_BACKENDS: Tuple[str, ...] = ("cpu", "triton", "cuda")
BACKENDS: Tuple[str, ...] = ("auto", "reference") + KERNEL_BACKENDS
ENV_VAR = "INPAINT_FAST_BACKEND"

# What "auto" tries, in order, per device type. Only measured winners go first (see module doc).
AUTO_PREFERENCE: Dict[str, Tuple[str, ...]] = {
    "cpu": ("cpu", "reference"),
    "cuda": ("reference",),
}


class BackendError(RuntimeError):
    """A requested backend cannot serve this call (unknown, unavailable, wrong device or dtype)."""


def _check_name(name: str, where: str) -> str:
    if not isinstance(name, str) or name not in BACKENDS:
        raise BackendError(f"{where}: unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")
    return name


# Read once at import (plain Python state, so torch.compile traces the choice); checked on use so
# a bad value errors where it matters, naming the variable.
_default_backend: str = os.environ.get(ENV_VAR, "auto")
_default_source: str = f"environment variable {ENV_VAR}"


def get_backend() -> str:
    """The default backend used when an op is called with ``backend=None``."""
    return _check_name(_default_backend, _default_source)


def set_backend(name: str) -> None:
    """Set the default backend for every op (one of :data:`BACKENDS`)."""
    global _default_backend, _default_source
    _default_backend, _default_source = _check_name(name, "set_backend"), "set_backend"


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """``with use_backend("cpu"): ...`` — a default backend for the duration of the block."""
    previous = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


@dataclass(frozen=True)
class Implementation:
    """One backend's implementation of one op.

    ``unavailable`` is '' when the implementation can run in this process, or the reason it
    cannot (e.g. the extension is not built), decided once at import so that choosing a backend
    is plain Python that torch.compile traces; ``devices`` and ``dtypes`` state its envelope.
    """

    backend: str
    devices: Tuple[str, ...]
    dtypes: Tuple[torch.dtype, ...]
    unavailable: str
    run: Callable


class OpRegistry:
    """The implementations of one op, and the rule that picks one for a call."""

    def __init__(self, op_name: str) -> None:
        self.op_name = op_name
        self._impls: Dict[str, Implementation] = {}

    def register(self, impl: Implementation) -> None:
        _check_name(impl.backend, f"{self.op_name}: registering")
        self._impls[impl.backend] = impl

    def why_not(self, backend: str, device: torch.device, dtype: torch.dtype) -> str:
        """'' when ``backend`` can serve ``device``/``dtype`` inputs, else the reason it cannot."""
        impl = self._impls.get(backend)
        if impl is None:
            return f"backend {backend!r} has no implementation of {self.op_name} in this version"
        # The inputs' device comes first: it is what the caller can change at once, and a backend
        # that is both on the wrong device and not built must not hide the former.
        if device.type not in impl.devices:
            here = [b for b in self._impls if device.type in self._impls[b].devices and not self._impls[b].unavailable]
            reason = (
                f"backend {backend!r} runs on {'/'.join(impl.devices)} tensors, but the inputs are on "
                f"{device.type} (backends for {device.type} inputs here: {', '.join(here) or 'none'})"
            )
            if impl.unavailable:
                reason += f"; it is also unavailable in this process: {impl.unavailable}"
            return reason
        if impl.unavailable:
            return f"backend {backend!r} is unavailable: {impl.unavailable}"
        if dtype not in impl.dtypes:
            names = ", ".join(str(d).replace("torch.", "") for d in impl.dtypes)
            return f"backend {backend!r} supports dtypes {names}, but the inputs are {str(dtype).replace('torch.', '')}"
        return ""

    def resolve(self, backend: Optional[str], device: torch.device, dtype: torch.dtype) -> Implementation:
        """The implementation for a call; raises :class:`BackendError` if the request cannot be served."""
        name = get_backend() if backend is None else _check_name(backend, f"{self.op_name}(backend=...)")
        if name == "auto":
            for candidate in AUTO_PREFERENCE.get(device.type, ("reference",)):
                if not self.why_not(candidate, device, dtype):
                    return self._impls[candidate]
            name = "reference"
        reason = self.why_not(name, device, dtype)
        if reason:
            raise BackendError(f"{self.op_name}: {reason}")
        return self._impls[name]

    def available(self, device: torch.device, dtype: Optional[torch.dtype]) -> List[str]:
        dtypes: Sequence[torch.dtype] = (dtype,) if dtype is not None else (torch.float32,)
        return [b for b in self._impls if all(not self.why_not(b, device, d) for d in dtypes)]


_REGISTRIES: Dict[str, OpRegistry] = {}


def registry(op_name: str) -> OpRegistry:
    """The registry of ``op_name`` (created on first use by the op's module)."""
    return _REGISTRIES.setdefault(op_name, OpRegistry(op_name))


def available_backends(
    device: "torch.device | str" = "cpu", dtype: Optional[torch.dtype] = None, op: Optional[str] = None
) -> List[str]:
    """Backends (excluding ``"auto"``) that can serve ``op`` (default: every op) on ``device``/``dtype``.

    Example: ``available_backends("cpu")`` → ``["reference", "cpu"]`` once the extension is built.
    """
    device = torch.device(device)
    ops = [registry(op)] if op is not None else list(_REGISTRIES.values())
    names = [b for b in BACKENDS if b != "auto"]
    return [b for b in names if ops and all(b in r.available(device, dtype) for r in ops)]
