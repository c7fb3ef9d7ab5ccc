"""Provider builders shared by the ops: this package's backends, and torch.compile wrappers."""

from __future__ import annotations

import functools

import torch

from .op_bench import Case, Unavailable

__all__ = ["our_backend", "compiled"]


def our_backend(op_name: str, backend: str, **fixed):
    """Builder of ``inpaint_fast.<op_name>(..., backend=backend, **fixed)``. A backend that
    cannot serve a case raises the op's BackendError on the gate's call, which records why."""

    def build(case: Case, device: torch.device):
        import inpaint_fast

        op = getattr(inpaint_fast, op_name, None)
        if op is None:
            raise Unavailable(f"inpaint_fast.{op_name} is not exported by this build")
        return functools.partial(op, backend=backend, **fixed)

    return build


def _raise_recompile_limit(limit: int = 256) -> None:
    """One compiled function is benchmarked at many shapes and dtypes: without this, Dynamo
    silently falls back to eager after 8 recompilations of the same code object."""
    import torch._dynamo.config as dynamo_config

    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, max(getattr(dynamo_config, name), limit))


def compiled(fn):
    """``torch.compile(fn, dynamic=False)``; compilation happens on the first call (the gate's),
    outside the timings.

    This switches AOTAutograd's donated buffers off for the process: they forbid
    ``backward(retain_graph=True)``, which the ``bwd`` mode needs to time a backward repeatedly
    (the setting is read when the backward is compiled, so it cannot be scoped to a call).
    """
    if not hasattr(torch, "compile"):
        raise Unavailable("torch.compile is not available")
    _raise_recompile_limit()
    try:
        import torch._functorch.config as functorch_config

        if hasattr(functorch_config, "donated_buffer"):
            functorch_config.donated_buffer = False
    except ImportError:
        pass
    return torch.compile(fn, dynamic=False)
