"""Drop-in modules built on the fused ops.

* :class:`ShortLongAttention` — PIC's ``Auto_Attn`` (same state-dict names and forward contract);
  :func:`convert_auto_attn_state_dict` / ``ShortLongAttention.load_pic_state_dict`` read PIC's
  checkpoint layout.
* :class:`FusionBlock` — DFNet's fusion block (same state-dict keys; official state dicts load
  with ``strict=True``).
* :class:`SameConv2d` — DFNet's TF-"same" padded conv (its storage fixes DFNet's state-dict keys).
* :class:`SpectralNormConv2d`, :class:`SpectralNormConvTranspose2d`, :class:`PreActResBlock` —
  PIC's spectral-normed convs and the ResBlock configuration ``Auto_Attn`` uses.
"""

from .fusion_block import FusionBlock
from .same_conv import SameConv2d
from .short_long_attention import PreActResBlock, ShortLongAttention, convert_auto_attn_state_dict
from .spectral_norm import SpectralNormConv2d, SpectralNormConvTranspose2d

__all__ = [
    "FusionBlock",
    "PreActResBlock",
    "SameConv2d",
    "ShortLongAttention",
    "SpectralNormConv2d",
    "SpectralNormConvTranspose2d",
    "convert_auto_attn_state_dict",
]
