"""The accumulation dtype of inpaint_fast.dtypes as the Triton kernels need it: as a torch dtype
for the tensors the launchers allocate and as a Triton dtype for the kernels' ``CT``/``ACC``."""

from __future__ import annotations

from typing import Tuple

import torch
import triton.language as tl

from ..dtypes import accumulate_dtype

_TRITON_DTYPE = {torch.float32: tl.float32, torch.float64: tl.float64}


def accumulator(dtype: torch.dtype) -> Tuple[torch.dtype, "tl.dtype"]:
    """(torch dtype, Triton dtype) the kernels accumulate in for inputs of ``dtype``."""
    acc = accumulate_dtype(dtype)
    return acc, _TRITON_DTYPE[acc]
