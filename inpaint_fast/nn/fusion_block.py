"""``FusionBlock``: drop-in replacement for DFNet's fusion block on the fused op.

The submodules are real ``nn.Conv2d`` / ``nn.BatchNorm2d`` placed so that the state-dict keys are
exactly DFNet's (docs/fusion_block.md#inputs-and-outputs, docs/dfnet.md#state-dict-keys-and-counts)
and an official state dict loads with
``strict=True``; initial values are PyTorch's defaults, as in DFNet. Layout (c = c_feat,
A = c_alpha)::

    map2img.0.conv.{weight, bias}            (3, c, 1, 1), (3,)       conv1x1 c → 3   (then sigmoid)
    blend.blend.0.conv.{weight, bias}        (32, 6, 1, 1), (32,)     conv1x1 6 → 32
    blend.blend.1.{weight, bias, running_mean, running_var, num_batches_tracked}    BatchNorm2d(32)
    blend.blend.3.conv.{weight, bias}        (A, 32, 3, 3), (A,)      conv3x3 32 → A, pad 1
    blend.blend.4.*                                                   BatchNorm2d(A)
    blend.blend.6.conv.{weight, bias}        (A, A, 1, 1), (A,)       conv1x1 A → A   (then sigmoid)

Indices 2 and 5 hold LeakyReLU(0.2) and 7 a Sigmoid, as in DFNet; they document the layer order
but the forward never calls them: the whole chain runs as one ``inpaint_fast.fusion_block`` call.
The convs are :class:`SameConv2d` (stride 1, odd k: symmetric padding, stored as ``.conv``).
"""

from __future__ import annotations

from typing import Optional, Tuple

from torch import Tensor, nn

import inpaint_fast

from .same_conv import SameConv2d

__all__ = ["FusionBlock"]

# DFNet's BlendBlock: c_mid = max(c_in // 2, 32) with c_in = 6 (resized image + raw), so 32.
BLEND_IN_CHANNELS = 6
BLEND_MID_CHANNELS = max(BLEND_IN_CHANNELS // 2, 32)
LEAKY_SLOPE = 0.2


class _BlendBlock(nn.Module):
    """DFNet's alpha function A as a ``Sequential`` named ``blend`` (keys ``blend.<i>.*``).

    Forward (the plain-PyTorch path, kept for reading and debugging; ``FusionBlock`` calls the
    fused op instead): z (B, 6, h, w) → α (B, A, h, w).
    """

    def __init__(self, c_alpha: int) -> None:
        super().__init__()
        self.blend = nn.Sequential(
            SameConv2d(BLEND_IN_CHANNELS, BLEND_MID_CHANNELS, 1),  # 0
            nn.BatchNorm2d(BLEND_MID_CHANNELS),                   # 1
            nn.LeakyReLU(LEAKY_SLOPE),                            # 2
            SameConv2d(BLEND_MID_CHANNELS, c_alpha, 3),            # 3
            nn.BatchNorm2d(c_alpha),                              # 4
            nn.LeakyReLU(LEAKY_SLOPE),                            # 5
            SameConv2d(c_alpha, c_alpha, 1),                       # 6
            nn.Sigmoid(),                                         # 7
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.blend(z)


def _bn_factor(bn: nn.BatchNorm2d, training: bool) -> float:
    """The running-stat factor nn.BatchNorm2d would use for this call (before its increment).

    ``momentum=None`` means a cumulative moving average: factor 1 / num_batches_tracked, counted
    after this call's increment. In eval the factor is unused.
    """
    if bn.momentum is not None:
        return float(bn.momentum)
    return 1.0 / float(bn.num_batches_tracked + 1) if training else 0.0


class FusionBlock(nn.Module):
    """DFNet's fusion block: raw completion R from a feature, blended with the resized image.

    Args:
        c_feat: c, the channels of the decoder feature F_k.
        c_alpha: A, the alpha channels: 1 (the default, as in DFNet's ``FusionBlock``: one alpha
            broadcast over the three colours) or 3 (one per colour channel: what the ``DFNet``
            network builds its blocks with, and what its released weights hold).
        backend: backend of the fused op (``None`` = the global default).

    Math (docs/fusion_block.md#forward)::

        X_k = bilinear_resize(image → h×w, align_corners=False)
        R   = sigmoid(conv1x1_{c→3}(F))
        α   = sigmoid(conv1x1_{A→A}(lrelu0.2(BN(conv3x3_{32→A}(lrelu0.2(BN(conv1x1_{6→32}([X_k, R]))))))))
        Y   = α · R + (1 − α) · X_k

    BatchNorm follows ``self.training`` as nn.BatchNorm2d does: batch statistics and in-place
    running-stat updates (``num_batches_tracked`` incremented here) in training, running
    statistics in eval. Both BNs must share ``eps`` and the resulting momentum factor, since the
    op takes one of each. The BNs must keep ``affine=True`` and ``track_running_stats=True``.
    """

    def __init__(self, c_feat: int, c_alpha: int = 1, *, backend: Optional[str] = None) -> None:
        super().__init__()
        if c_alpha not in (1, 3):
            raise ValueError(f"FusionBlock: c_alpha must be 1 or 3, got {c_alpha!r}")
        if not isinstance(c_feat, int) or c_feat < 1:
            raise ValueError(f"FusionBlock: c_feat must be a positive int, got {c_feat!r}")
        self.c_feat = c_feat
        self.c_alpha = c_alpha
        self.backend = backend
        self.map2img = nn.Sequential(SameConv2d(c_feat, 3, 1), nn.Sigmoid())
        self.blend = _BlendBlock(c_alpha)

    def forward(self, img_miss: Tensor, feat_de: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Fuse one decoder level. Image first, as DFNet's ``FusionBlock.forward(img_miss, feat_de)``.

        Args:
            img_miss: (B, 3, H, W) image with holes at full resolution (resized to h×w inside).
            feat_de: (B, c, h, w) decoder feature F_k.

        Returns:
            ``(out, alpha, raw)``: Y (B, 3, h, w), α (B, A, h, w), R (B, 3, h, w) — DFNet's order.
        """
        bn1, bn2 = self.blend.blend[1], self.blend.blend[4]
        if bn1.eps != bn2.eps:
            raise ValueError(
                f"FusionBlock: both BatchNorms must share eps (the op takes one), got {bn1.eps} and {bn2.eps}"
            )
        momentum1, momentum2 = _bn_factor(bn1, self.training), _bn_factor(bn2, self.training)
        if momentum1 != momentum2:
            raise ValueError(
                "FusionBlock: both BatchNorms must give the same running-stat factor (the op takes one momentum), "
                f"got {momentum1} and {momentum2}; check their momentum and num_batches_tracked"
            )
        if self.training:
            # The op updates running_mean/var in place but leaves the counter to the module, as
            # F.batch_norm does for nn.BatchNorm2d.
            bn1.num_batches_tracked.add_(1)
            bn2.num_batches_tracked.add_(1)
        params = inpaint_fast.FusionBlockParams.from_module(self)
        return inpaint_fast.fusion_block(feat_de, img_miss, params, training=self.training, momentum=momentum1,
                                         eps=float(bn1.eps), backend=self.backend)

    def extra_repr(self) -> str:
        return f"c_feat={self.c_feat}, c_alpha={self.c_alpha}, backend={self.backend!r}"
