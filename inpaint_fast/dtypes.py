"""The dtype rules every backend shares: which floating dtypes exist, and what accumulates.

Each backend computes in an accumulation dtype chosen by one rule, which also fixes the dtype of
the statistics the ops return (the attention's lse, the fusion block's BatchNorm mean/var):
float64 for float64 inputs, float32 for float32, float16 and bfloat16 inputs. The C++ kernels
follow the same rule (``accumulate_dtype`` in csrc/dtypes.h).
"""

from __future__ import annotations

import torch

FLOATING = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """The accumulation (and statistics) dtype for inputs of ``dtype``: float64 for float64,
    else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32
