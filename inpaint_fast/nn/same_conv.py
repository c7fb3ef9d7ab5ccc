"""``SameConv2d``: a convolution with TensorFlow's "SAME" padding, stored the way DFNet stores it.

Used by DFNet's encoder/decoder (inpaint_fast/models/dfnet.py) and by :class:`FusionBlock`; the
storage layout decides the state-dict keys that official DFNet checkpoints use.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["SameConv2d"]


class SameConv2d(nn.Module):
    """A conv with TensorFlow's "SAME" zero padding, stored as DFNet's ``Conv2dSame`` stores it.

    Total padding is k − s (for inputs divisible by the stride). When it is even it is split
    symmetrically inside ``nn.Conv2d`` and the conv is ``.conv``; when it is odd the extra row and
    column go right/bottom through an explicit ``ConstantPad2d`` ``(p, p+1, p, p+1)``, p = ⌊(k−s)/2⌋,
    and ``.conv`` is ``Sequential(pad, conv)`` — hence keys ``conv.weight`` vs ``conv.1.weight``.

    Args:
        in_channels, out_channels: channel counts.
        kernel_size: k (square), ≥ stride.
        stride: s.

    Forward: (B, C_in, H, W) → (B, C_out, ⌈H/s⌉, ⌈W/s⌉).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__()
        if kernel_size < stride or stride < 1:
            raise ValueError(f"SameConv2d: need kernel_size >= stride >= 1, got kernel_size={kernel_size}, "
                             f"stride={stride}")
        total = kernel_size - stride
        if total % 2 == 0:
            self.conv: nn.Module = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=total // 2)
        else:
            p = total // 2
            self.conv = nn.Sequential(
                nn.ConstantPad2d((p, p + 1, p, p + 1), 0.0),
                nn.Conv2d(in_channels, out_channels, kernel_size, stride),
            )

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)
