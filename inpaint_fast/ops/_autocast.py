"""Autocast policy of the ops: what dtype each op computes in inside ``torch.autocast``.

Custom ops are invisible to autocast (it only casts the ATen ops on its lists), so each public
function applies its policy itself, then runs with autocast off so the reference backend computes
in exactly the dtype the kernels do:

* ``short_long_attention`` — **lower precision**, like ``scaled_dot_product_attention``: every
  floating input is cast to the autocast dtype (fp16/bf16); the kernels accumulate in fp32 and
  keep the log-sum-exp in fp32. Outputs are in the autocast dtype.
* ``fusion_block`` — **fp32**, like ``batch_norm``: its BatchNorm statistics, the running-stat
  update and the sigmoids want fp32, and the block is bandwidth-bound on 3/6/32 channels, so
  ``feat`` and ``image`` are cast up to the parameters' dtype. Outputs are fp32.

Gradients flow through the casts back to the inputs' own dtypes, as with any autocast op.
"""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["autocast_dtype"]


def autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """The autocast dtype active for ``device_type`` ("cpu", "cuda"), or None when autocast is off."""
    if device_type not in ("cpu", "cuda") or not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)
