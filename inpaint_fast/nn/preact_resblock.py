"""``PreActResBlock``: PIC's ``ResBlock`` in the configuration its attention layer uses.

The block inside ``Auto_Attn`` (:class:`inpaint_fast.nn.ShortLongAttention`'s ``model``), and the
base of the networks' ResBlocks (:class:`inpaint_fast.models.pic_blocks.ResBlock` adds the norm,
the slope and the pooling).
"""

from __future__ import annotations

from typing import Dict, Optional

import torch.nn.functional as F
from torch import Tensor, nn

from .pic_layout import resblock_pic_aliases
from .spectral_norm import SpectralNormConv2d

__all__ = ["RESBLOCK_LEAKY_SLOPE", "PreActResBlock"]

# PIC's ResBlock default nonlinearity is nn.LeakyReLU() (slope 0.01), which Auto_Attn's block
# keeps, unlike the 0.1 used by every other block of the networks (docs/pic.md#conventions).
RESBLOCK_LEAKY_SLOPE = 0.01


class PreActResBlock(nn.Module):
    """PIC's ``ResBlock`` in the configuration ``Auto_Attn`` uses: no norm, no resampling, SN convs.

    ``out = conv2(lrelu(conv1(lrelu(x)))) + bypass(x)`` with lrelu slope 0.01, ``conv1`` an SN
    conv3x3 (in → hidden, pad 1), ``conv2`` an SN conv3x3 (hidden → out, pad 1), ``bypass`` an SN
    conv1x1 (in → out). The attribute names are PIC's.

    Args:
        in_channels: C_in (2C in ``Auto_Attn``).
        out_channels: C_out (C).
        hidden_channels: C_hidden (C); defaults to ``out_channels`` as in PIC.

    Forward: x (B, C_in, H, W) → (B, C_out, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, hidden_channels: Optional[int] = None) -> None:
        super().__init__()
        hidden_channels = out_channels if hidden_channels is None else hidden_channels
        self.conv1 = SpectralNormConv2d(in_channels, hidden_channels, 3, padding=1)
        self.conv2 = SpectralNormConv2d(hidden_channels, out_channels, 3, padding=1)
        self.bypass = SpectralNormConv2d(in_channels, out_channels, 1, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C_in, H, W) → (B, C_out, H, W)."""
        h = self.conv1(F.leaky_relu(x, RESBLOCK_LEAKY_SLOPE))
        h = self.conv2(F.leaky_relu(h, RESBLOCK_LEAKY_SLOPE))
        return h + self.bypass(x)

    def pic_aliases(self) -> Dict[str, str]:
        """PIC's Sequential names → our attribute names (:func:`.pic_layout.resblock_pic_aliases`)."""
        return resblock_pic_aliases(False)
