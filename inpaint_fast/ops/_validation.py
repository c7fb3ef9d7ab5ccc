"""Input checks shared by the ops: every message names the argument and what was expected.

Shape, dtype and device checks run everywhere (they are metadata and trace under torch.compile).
Value checks need to read the data, so they run in eager mode only (one device synchronisation
per call) and can be switched off with ``INPAINT_FAST_CHECK_VALUES=0``.

Non-finite values, the policy every backend follows:

* The small inputs whose values shape the computation — the attention's ``q`` (its energies) and
  gates, the fusion block's weights and BatchNorm statistics — must be finite: an infinity there
  makes the math itself undefined (inf − inf in the softmax's max subtraction, in the folded
  BatchNorm), and each backend would return NaN in different places. A negative running variance
  is refused too (its square root is NaN). These are errors naming the argument.
* The feature inputs (``x``, ``pre``, ``feat``, ``image``) are not checked: NaN and ±Inf there
  propagate. Every output and gradient element that the reference makes non-finite is non-finite
  in every backend — no backend hides one. A fused backend may make a few more elements
  non-finite than the reference (it reads its inputs in tiles: a NaN entering a 3x3 window with a
  zero weight is still NaN), and NaN and ±Inf may trade places. tests/test_nonfinite.py holds
  every backend to this.
"""

from __future__ import annotations

import functools
import os
import weakref
from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..dtypes import FLOATING


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


# Tensors that passed the value checks, with their version counter then: parameters (weights, BN
# statistics, gates) are the same objects call after call and change only when written in place,
# so an unchanged one is not read again — inference then pays the device synchronisation once.
_CHECKED: Dict[int, Tuple["weakref.ref[Tensor]", tuple]] = {}  # id -> (the tensor, weakly; its stamp)


def _stamp(t: Tensor) -> tuple:
    """What must be unchanged for a checked tensor to be skipped (``.data =`` swaps the storage
    without touching the version counter, hence the data pointer too)."""
    return t.data_ptr(), t._version


def _already_checked(t: Tensor) -> bool:
    entry = _CHECKED.get(id(t))
    return entry is not None and entry[0]() is t and entry[1] == _stamp(t)


def _remember(t: Tensor) -> None:
    key = id(t)
    _CHECKED[key] = (weakref.ref(t, lambda _, key=key: _CHECKED.pop(key, None)), _stamp(t))


def check_values(op: str, *, finite: Optional[Mapping[str, Optional[Tensor]]] = None,
                 nonnegative: Sequence[str] = (), unit_range: Optional[Mapping[str, Optional[Tensor]]] = None
                 ) -> None:
    """Data checks, in one device synchronisation (eager only, see :func:`values_checked`):
    every tensor in ``finite`` has only finite values, those of them named in ``nonnegative`` none
    below 0, and every tensor in ``unit_range`` lies in [0, 1] (so no NaN there either). Raises
    ValueError naming the first argument that fails."""
    if not values_checked():
        return
    finite, unit_range = finite or {}, unit_range or {}
    fin = {n: t.detach() for n, t in finite.items() if t is not None and t.numel() and not _already_checked(t)}
    rng = {n: t.detach() for n, t in unit_range.items() if t is not None and t.numel()}
    if not fin and not rng:
        return
    flags = []
    if fin:  # one flat buffer: the checked tensors are small, so the cost is per-op overhead
        dtype = functools.reduce(torch.promote_types, (t.dtype for t in fin.values()))
        flags.append(torch.isfinite(torch.cat([t.reshape(-1).to(dtype) for t in fin.values()])).all())
        signs = [fin[n].reshape(-1) for n in nonnegative if n in fin]
        if signs:
            flags.append(torch.cat(signs).min() >= 0)
    for t in rng.values():
        lo, hi = torch.aminmax(t)
        flags.append((lo >= 0) & (hi <= 1))  # False for NaN
    if bool(torch.stack(flags).all()):
        for name, t in finite.items():
            if name in fin:
                _remember(t)
        return
    _raise_first_failure(op, fin, nonnegative, rng)


def _raise_first_failure(op: str, fin: Mapping[str, Tensor], nonnegative: Sequence[str],
                         rng: Mapping[str, Tensor]) -> None:
    for name, t in rng.items():
        lo, hi = torch.aminmax(t)
        if not (bool(lo >= 0) and bool(hi <= 1)):
            raise ValueError(
                f"{op}: `{name}` must lie in [0, 1] (1 = visible, 0 = hole, fractions blend), "
                f"got values in [{float(lo):.4g}, {float(hi):.4g}]"
            )
    for name, t in fin.items():
        bad = t[~torch.isfinite(t)]
        if bad.numel():
            raise ValueError(
                f"{op}: `{name}` has {bad.numel()} non-finite value(s), e.g. {bad[0].item()}; it must be finite "
                "(an infinity there makes the result undefined; inpaint_fast/ops/_validation.py states the "
                "policy, INPAINT_FAST_CHECK_VALUES=0 skips the check)"
            )
    for name in nonnegative:
        if name in fin and bool(fin[name].min() < 0):
            raise ValueError(
                f"{op}: `{name}` has negative values (min {fin[name].min().item():.4g}); a variance must be >= 0 "
                "(its square root would be NaN): the BatchNorm's running statistics are corrupt"
            )
