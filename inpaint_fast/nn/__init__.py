"""Drop-in modules built on the fused ops.

* :class:`ShortLongAttention` — PIC's ``Auto_Attn`` (same state-dict names and forward contract);
  :func:`convert_auto_attn_state_dict` / ``ShortLongAttention.load_pic_state_dict`` read PIC's
  checkpoint layout, by the renaming rule of :mod:`.pic_layout` that the PIC networks share.
* :class:`FusionBlock` — DFNet's fusion block (same state-dict keys; official state dicts load
  with ``strict=True``).
* :class:`SameConv2d` — DFNet's TF-"same" padded conv (its storage fixes DFNet's state-dict keys).
* :class:`SpectralNormConv2d`, :class:`SpectralNormConvTranspose2d`, :class:`PreActResBlock` —
  PIC's spectral-normed convs and the ResBlock configuration ``Auto_Attn`` uses.
"""

from .auto_attn_checkpoint import convert_auto_attn_state_dict
from .fusion_block import FusionBlock
from .preact_resblock import PreActResBlock
from .same_conv import SameConv2d
from .short_long_attention import ShortLongAttention
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
