"""``convert_auto_attn_state_dict``: a PIC ``Auto_Attn`` state dict in :class:`ShortLongAttention`'s names.

The same rule as every PIC network's (:mod:`inpaint_fast.nn.pic_layout`), applied to the module
tree of a :class:`ShortLongAttention`; it needs no layer of the caller's, since the key names do
not depend on the channel count.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from typing import Mapping

import torch
from torch import Tensor

from .pic_layout import convert_pic_layer_state_dict
from .short_long_attention import ShortLongAttention

__all__ = ["convert_auto_attn_state_dict"]


@functools.lru_cache(maxsize=1)
def _layout() -> ShortLongAttention:
    """A layer with ``Auto_Attn``'s module tree, built on the meta device: no memory, and no draw
    from the global RNG (which the caller's results may depend on)."""
    with torch.device("meta"):
        return ShortLongAttention(4)


def convert_auto_attn_state_dict(state_dict: Mapping[str, Tensor], prefix: str = "") -> "OrderedDict[str, Tensor]":
    """PIC ``Auto_Attn`` checkpoint entries → :class:`ShortLongAttention`'s state-dict layout.

    PIC's layout (docs/pic.md#official-checkpoint-layout), per spectral-normed conv ``X`` in {conv1, conv2, bypass}::

        [module.][prefix]model.X.module.{weight_bar, weight_u, weight_v, bias}
        [module.][prefix]model.model.{1,3}.module.{...}      (conv1, conv2: the Sequential copy)
        [module.][prefix]model.shortcut.0.module.{...}       (bypass: the Sequential copy)

    becomes ``model.X.{weight_bar, weight_u, weight_v, bias}``; ``query_conv.*``, ``gamma`` and
    ``alpha`` keep their names. Duplicates are checked to be equal (``ValueError`` otherwise) and
    kept once. Keys outside this pattern are passed through unchanged, so a strict load reports
    them.

    Args:
        state_dict: name → tensor, PIC's layout (ours passes through unchanged).
        prefix: the layer's name inside a whole-network state dict (e.g. ``"attn."``), after any
            ``module.``; only keys under it are converted.

    Returns:
        An ``OrderedDict`` for ``ShortLongAttention.load_state_dict``.
    """
    return convert_pic_layer_state_dict(_layout(), state_dict, prefix, where="convert_auto_attn_state_dict")[0]
