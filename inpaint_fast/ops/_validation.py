"""Input checks shared by the ops: every message names the argument and what was expected.

Shape, dtype and device checks run everywhere (they are metadata and trace under torch.compile).
Value checks (the mask lies in [0, 1]) need to read the data, so they run in eager mode only and
can be switched off with ``INPAINT_FAST_CHECK_VALUES=0``; non-finite values are not checked: they
propagate through every backend as they do through the reference (documented policy).
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import torch
from torch import Tensor

FLOATING = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def check_tensor(op: str, name: str, t: object, ndim: int, layout: str) -> Tensor:
    """``t`` is a floating tensor of rank ``ndim`` (``layout`` names the dims, e.g. "(B, C, H, W)")."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: `{name}` must be a {ndim}-D {layout} tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{op}: `{name}` must be a {ndim}-D {layout} tensor, got shape {tuple(t.shape)}")
    if t.dtype not in FLOATING:
        raise TypeError(
            f"{op}: `{name}` must be floating point (float16, bfloat16, float32 or float64), "
            f"got {_dtype_name(t.dtype)}"
        )
    return t


def check_scalar(op: str, name: str, t: object) -> Tensor:
    """``t`` is a one-element floating tensor (shape () or (1,)), like PIC's ``gamma``/``alpha``."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: `{name}` must be a one-element tensor (e.g. an nn.Parameter of shape (1,)), "
                        f"got {type(t).__name__}")
    if t.numel() != 1:
        raise ValueError(f"{op}: `{name}` must have exactly one element, got shape {tuple(t.shape)}")
    if t.dtype not in FLOATING:
        raise TypeError(f"{op}: `{name}` must be floating point, got {_dtype_name(t.dtype)}")
    return t


def check_shape(op: str, name: str, t: Tensor, expected: Sequence[Optional[int]], layout: str, why: str = "") -> None:
    """``t.shape`` equals ``expected`` (None = any size)."""
    if len(expected) != t.dim() or any(e is not None and e != s for e, s in zip(expected, t.shape)):
        want = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
        suffix = f" ({why})" if why else ""
        raise ValueError(f"{op}: `{name}` must have shape {layout} = {want}{suffix}, got {tuple(t.shape)}")


def check_same_dtype(op: str, reference_name: str, reference: Tensor, **others: Optional[Tensor]) -> None:
    for name, t in others.items():
        if t is not None and t.dtype != reference.dtype:
            raise TypeError(
                f"{op}: `{name}` has dtype {_dtype_name(t.dtype)} but `{reference_name}` has "
                f"{_dtype_name(reference.dtype)}; all feature tensors must share one dtype"
            )


def check_same_device(op: str, reference_name: str, reference: Tensor, **others: Optional[Tensor]) -> None:
    for name, t in others.items():
        if t is not None and t.device != reference.device:
            raise ValueError(
                f"{op}: `{name}` is on {t.device} but `{reference_name}` is on {reference.device}; "
                "all inputs must be on one device"
            )


def values_checked() -> bool:
    """Whether data-dependent checks run: eager mode, and not disabled by the environment."""
    if os.environ.get("INPAINT_FAST_CHECK_VALUES", "1") == "0":
        return False
    return not torch.compiler.is_compiling()


def check_unit_range(op: str, name: str, t: Tensor) -> None:
    """Values of ``t`` lie in [0, 1] (eager only; reading the data syncs a GPU)."""
    if not values_checked() or t.numel() == 0:
        return
    lo, hi = torch.aminmax(t.detach())
    if not (bool(lo >= 0) and bool(hi <= 1)):
        raise ValueError(
            f"{op}: `{name}` must lie in [0, 1] (1 = visible, 0 = hole, fractions blend), "
            f"got values in [{float(lo):.4g}, {float(hi):.4g}]"
        )
