"""Triton kernels of the ops (one file per op: kernels → launchers).

Each op file exposes launchers with exactly the contract of the compiled ops (schemas: inpaint_fast/ops/schemas.inc);
inpaint_fast/ops/<op>.py registers them as the kernels of ``inpaint_fast::triton_<op>_fwd/_bwd``.

On a CUDA GPU the kernels compile for it. Without a GPU they run only through the Triton
interpreter (``TRITON_INTERPRET=1`` in the environment *before* inpaint_fast is imported: the
interpreter is chosen when a kernel is decorated), on CPU tensors, slowly, in float32/float64 —
which is how CI tests them. The interpreter cannot compute in bfloat16 and does not simulate TF32.

Tile sizes are autotuned on a GPU unless ``INPAINT_FAST_TRITON_AUTOTUNE=0`` (read at each launch):
then every kernel launches with one fixed configuration, compiled once per specialisation and
never benchmarked — what tests and a precompiled kernel cache (``python -m
inpaint_fast.triton_kernels.aot``) use. ``INPAINT_FAST_TRITON_CACHE_REPORT=<file>`` (read at import)
appends one JSON line per Triton compile request — kernel, cache hit or miss, seconds — so a run
shows whether a carried ``TRITON_CACHE_DIR`` served it.
"""

from __future__ import annotations

import os
from typing import Tuple

import torch


def interpreter_mode() -> bool:
    """Whether Triton kernels run through the interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def autotune_enabled() -> bool:
    """Whether launchers autotune their tile sizes (the default on a GPU) or launch their one fixed
    configuration (``INPAINT_FAST_TRITON_AUTOTUNE=0``, and always under the interpreter)."""
    if interpreter_mode():
        return False
    value = os.environ.get("INPAINT_FAST_TRITON_AUTOTUNE", "1").strip().lower()
    if value not in ("0", "1", "false", "true", "off", "on", ""):
        raise ValueError(f"INPAINT_FAST_TRITON_AUTOTUNE={value!r}: expected 0 or 1")
    return value not in ("0", "false", "off")


def fp32_matmul_allows_tf32() -> bool:
    """Whether PyTorch's setting lets float32 CUDA matmuls use TF32, read so that it works with both
    of PyTorch's APIs.

    ``torch.get_float32_matmul_precision()`` raises "mix of the legacy and new APIs" once a program
    set ``torch.backends.cuda.matmul.fp32_precision = "tf32"`` (or ``torch.backends.fp32_precision``)
    — seen with torch 2.11 and 2.13 — so the new per-backend attribute is read first. It already
    folds in the legacy setters (``set_float32_matmul_precision("high")``, ``allow_tf32 = True``
    read back as "tf32") and the global default ("none" inherits it). Torch releases without it
    (< 2.9) only have the legacy API.
    """
    matmul = torch.backends.cuda.matmul
    for holder in (matmul, torch.backends):
        try:
            value = getattr(holder, "fp32_precision")
        except (AttributeError, RuntimeError):
            continue
        if value in ("tf32", "ieee"):
            return value == "tf32"
    # Both new attributes absent or "none": nothing set TF32 through the new API, so the legacy
    # getter does not raise.
    return torch.get_float32_matmul_precision() != "highest"


# Offsets inside one batch item are int32 in the kernels (the batch offset is int64).
INDEX_LIMIT = 2**31


def check_index_range(op: str, **extents) -> None:
    """Refuses inputs whose offsets would overflow the kernels' int32 arithmetic.

    Each keyword is a tensor — its per-item extent, 1 + Σ_{d ≥ 1} (size_d − 1)·stride_d (C·H·W
    for a contiguous (B, C, H, W) tensor) — or an int, the number of elements a kernel addresses in
    a launch-sized buffer (a workspace item, the partial-sum rows). Each must stay below 2³¹: the
    kernels form such products in int32 (e.g. ``b * (3 * hw)``), so an extent of exactly 2³¹
    already wraps.
    """
    for name, value in extents.items():
        if value is None:
            continue
        if isinstance(value, torch.Tensor):
            if value.dim() < 2 or value.numel() == 0:
                continue
            extent = 1 + sum((n - 1) * st for n, st in zip(value.shape[1:], value.stride()[1:]))
            what = f"`{name}` of shape {tuple(value.shape)} (strides {tuple(value.stride())}) spans {extent} elements per batch item"
        else:
            extent = int(value)
            what = f"{name} spans {extent} elements"
        if extent >= INDEX_LIMIT:
            raise ValueError(
                f"{op} (triton backend): {what}; the Triton kernels index within one batch item with 32-bit "
                f"offsets, so each must stay below 2^31 = {INDEX_LIMIT}. Use fewer channels or a smaller "
                "spatial size per call (e.g. split the image into tiles)."
            )


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


def _install_cache_report() -> None:
    path = os.environ.get("INPAINT_FAST_TRITON_CACHE_REPORT", "")
    if not path or interpreter_mode():
        return
    try:
        import triton  # noqa: F401
    except ImportError:
        return
    from .aot import install_cache_report

    install_cache_report(path)


_install_cache_report()
