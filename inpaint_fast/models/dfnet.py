"""DFNet (Deep Fusion Network, Hong et al. 2019) on the fused fusion-block op.

A U-Net whose six finest decoder levels each end in a fusion block (:class:`inpaint_fast.nn.FusionBlock`)
that turns the decoder feature into an RGB completion and alpha-blends it with the resized input.
Behaviour, layer order and state-dict keys follow the official ``model.py`` as written down in
docs/dfnet.md (encoder, decoder, state-dict keys), so an official checkpoint
(``model_places2.pth``, ``model_celeba.pth``)
loads with ``strict=True``::

    en_{0..7}.encode.0.conv.1.{weight,bias}       stride-2 convs, TF-"same" asymmetric padding
    en_{1..7}.encode.1.*                          BatchNorm (en_0 has no norm and no activation)
    de_{0..7}.decode.0.conv.{weight,bias}         3x3 convs after nearest x2 + concat [up, skip]
    de_{0..7}.decode.1.*                          BatchNorm (then LeakyReLU 0.2, all 8 blocks)
    fuse_{0..5}.map2img.* / fuse_{0..5}.blend.*   fusion blocks (see inpaint_fast.nn.FusionBlock)

Level k has resolution H/2^k: ``de_0`` and ``fuse_0`` are full resolution. 215 state-dict entries,
32,880,504 trainable parameters with the released defaults.

This module also re-exports the loss and its VGG16 (:mod:`.dfnet_loss`, :mod:`.vgg`), so the
network, its loss and VGG16 import from one module.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn import FusionBlock, SameConv2d
from .sizes import dfnet_size_problem
from .dfnet_loss import DFNetLoss, gram_matrix, resize_like, total_variation_map
from .vgg import VGG16Features, load_vgg16_features

__all__ = [
    "DFNet",
    "DFNetLoss",
    "SameConv2d",
    "VGG16Features",
    "gram_matrix",
    "load_vgg16_features",
    "resize_like",
    "total_variation_map",
]

# The released configuration (official model.py / config.yaml).
EN_KSIZE = (7, 5, 5, 3, 3, 3, 3, 3)
DE_KSIZE = (3,) * 8
BLEND_LAYERS = (0, 1, 2, 3, 4, 5)
FIRST_CHANNELS = 64
MAX_CHANNELS = 512
LEAKY_SLOPE = 0.2


class _EncodeBlock(nn.Module):
    """Stride-2 "same" conv, then BN + ReLU unless ``plain`` (DFNet's en_0 is purely linear).

    Forward: (B, C_in, H, W) → (B, C_out, H/2, W/2). Keys ``encode.0.conv.*``, ``encode.1.*``.
    """

    def __init__(self, c_in: int, c_out: int, ksize: int, plain: bool) -> None:
        super().__init__()
        layers: List[nn.Module] = [SameConv2d(c_in, c_out, ksize, stride=2)]
        if not plain:
            layers += [nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        self.encode = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.encode(x)


class _DecodeBlock(nn.Module):
    """Nearest x2 upsample, concat ``[up, skip]``, "same" conv, BN, LeakyReLU(0.2).

    Forward: x (B, C_up, h, w), skip (B, C_skip, 2h, 2w) → (B, C_out, 2h, 2w).
    Keys ``decode.0.conv.*``, ``decode.1.*``.
    """

    def __init__(self, c_up: int, c_skip: int, c_out: int, ksize: int) -> None:
        super().__init__()
        self.decode = nn.Sequential(
            SameConv2d(c_up + c_skip, c_out, ksize, stride=1),
            nn.BatchNorm2d(c_out),
            nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
        )

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        up = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.decode(torch.cat([up, skip], dim=1))


class DFNet(nn.Module):
    """Deep Fusion Network for image completion (docs/dfnet.md), fusion blocks on the fused op.

    Args:
        backend: backend of every fusion block's op (``None`` = the global default; see
            :mod:`inpaint_fast.backends`). Assigning ``model.backend`` later changes them all.
        c_img, c_mask: image and mask channels (3, 1).
        c_alpha: alpha channels of each fusion block (3: per colour channel, as released).
        en_ksize: kernel size of each stride-2 encoder block; its length is the depth d (8).
        de_ksize: kernel size of the decoder block at each level 0..d−1 (all 3).
        blend_layers: levels that get a fusion block (0..5); level 0 is required.

    The defaults are the released model: 32,880,504 trainable parameters.

    Forward:
        image_with_holes: (B, c_img, H, W), X = I·M with I in [0, 1] (holes are 0). The official
            checkpoints were run on BGR images (docs/dfnet.md#conventions).
        mask: (B, c_mask, H, W), 1 = known, 0 = hole, fractional allowed.
        H and W must be multiples of 2^d = 256.

    Returns:
        ``(results, alphas, raws)``: three lists with one entry per fusion level, finest first
        (index 0 = full resolution): results[i] Y (B, 3, H/2^k, W/2^k), alphas[i] α
        (B, c_alpha, ·, ·) in (0, 1), raws[i] R (B, 3, ·, ·) in (0, 1), k = sorted(blend_layers)[i].

    Under ``torch.autocast`` the encoder and decoder follow autocast's dtype while the fusion blocks
    run in fp32 (their outputs are fp32).

    BatchNorm follows ``self.training``. In training the bottleneck has B·(H/2^d)·(W/2^d) values per
    channel, which must be > 1 (batch ≥ 2 at 256×256).
    """

    def __init__(
        self,
        *,
        backend: Optional[str] = None,
        c_img: int = 3,
        c_mask: int = 1,
        c_alpha: int = 3,
        en_ksize: Sequence[int] = EN_KSIZE,
        de_ksize: Sequence[int] = DE_KSIZE,
        blend_layers: Sequence[int] = BLEND_LAYERS,
    ) -> None:
        super().__init__()
        depth = len(en_ksize)
        if depth < 1 or len(de_ksize) != depth:
            raise ValueError(f"DFNet: en_ksize and de_ksize must be non-empty and of equal length, got "
                             f"{list(en_ksize)} and {list(de_ksize)}")
        levels = sorted(set(int(k) for k in blend_layers))
        if not levels or levels[0] != 0 or levels[-1] >= depth or len(levels) != len(blend_layers):
            raise ValueError(f"DFNet: blend_layers must be distinct levels in 0..{depth - 1} including 0 "
                             f"(the full-resolution result), got {list(blend_layers)}")
        if c_img != 3:
            raise ValueError(f"DFNet: c_img must be 3 (the fusion block blends RGB), got {c_img}")
        self._backend = backend
        self.c_mask = c_mask
        self.depth = depth
        self.blend_layers = tuple(levels)
        self.multiple = 2**depth

        # Encoder: channels 64, 128, ... capped at 512. enc_channels[k] = channels at level k (input = level 0).
        enc_channels = [c_img + c_mask]
        c = FIRST_CHANNELS
        for k, ksize in enumerate(en_ksize):
            self.add_module(f"en_{k}", _EncodeBlock(enc_channels[-1], c, ksize, plain=(k == 0)))
            enc_channels.append(c)
            c = min(2 * c, MAX_CHANNELS)

        # Decoder: de_k works at level k; its output channels mirror the encoder's input at level k.
        # Registered deepest first, as in the official model (key order only; strict load ignores it).
        for k in reversed(range(depth)):
            # The deeper input (en_{d-1}'s output or de_{k+1}'s) has level k+1's channels.
            c_up = enc_channels[k + 1]
            self.add_module(f"de_{k}", _DecodeBlock(c_up, enc_channels[k], enc_channels[k], de_ksize[k]))
        for k in reversed(self.blend_layers):
            self.add_module(f"fuse_{k}", FusionBlock(enc_channels[k], c_alpha, backend=backend))

    @property
    def backend(self) -> Optional[str]:
        """The fused op's backend for every fusion block; assigning it updates them all."""
        return self._backend

    @backend.setter
    def backend(self, name: Optional[str]) -> None:
        self._backend = name
        for module in self.modules():
            if isinstance(module, FusionBlock):
                module.backend = name

    # -- input checks -------------------------------------------------------------------------
    def _check_inputs(self, image: Tensor, mask: Tensor, name: str = "image_with_holes") -> None:
        for arg, t, c in ((name, image, 3), ("mask", mask, self.c_mask)):
            if not isinstance(t, Tensor):
                raise TypeError(f"DFNet: `{arg}` must be a tensor, got {type(t).__name__}")
            if t.dim() != 4 or t.shape[1] != c:
                raise ValueError(f"DFNet: `{arg}` must be (B, {c}, H, W), got {tuple(t.shape)}")
        if mask.shape[0] != image.shape[0] or mask.shape[2:] != image.shape[2:]:
            raise ValueError(f"DFNet: `mask` {tuple(mask.shape)} must match `{name}` {tuple(image.shape)} "
                             "in batch and spatial size")
        H, W = image.shape[2:]
        m = self.multiple
        problem = dfnet_size_problem(H, W, depth=self.depth)
        if problem:
            raise ValueError(f"DFNet: {problem}")
        bottleneck_bn = getattr(self, f"en_{self.depth - 1}").encode
        if len(bottleneck_bn) > 1 and bottleneck_bn[1].training and image.shape[0] * (H // m) * (W // m) == 1:
            raise ValueError(
                f"DFNet: a train-mode forward of batch 1 at {H}x{W} leaves the bottleneck (en_{self.depth - 1}) "
                "at 1x1, one value per channel, so BatchNorm has no batch statistics. Use a batch of at "
                f"least 2, an image larger than {m}x{m}, or eval() mode."
            )

    # -- forward ------------------------------------------------------------------------------
    def forward(self, image_with_holes: Tensor, mask: Tensor) -> Tuple[List[Tensor], List[Tensor], List[Tensor]]:
        self._check_inputs(image_with_holes, mask)
        x = torch.cat([image_with_holes, mask], dim=1)
        skips = [x]  # skips[k] = the tensor at level k: the input, then en_{k-1}'s output
        for k in range(self.depth):
            x = getattr(self, f"en_{k}")(x)
            skips.append(x)
        feat = skips.pop()  # bottleneck, level `depth`
        results: List[Tensor] = []
        alphas: List[Tensor] = []
        raws: List[Tensor] = []
        for k in reversed(range(self.depth)):
            feat = getattr(self, f"de_{k}")(feat, skips[k])
            if k in self.blend_layers:
                # The fusion output leaves the network; the decoder continues from `feat` unchanged.
                # Under autocast the fused op runs in fp32 like BatchNorm (ops/_autocast.py): the
                # bf16/fp16 decoder feature is cast up inside, and the outputs are fp32.
                y, a, r = getattr(self, f"fuse_{k}")(image_with_holes, feat)
                results.append(y)
                alphas.append(a)
                raws.append(r)
        # Built coarse to fine; return finest first.
        return results[::-1], alphas[::-1], raws[::-1]

    @torch.no_grad()
    def inpaint(self, image: Tensor, mask: Tensor) -> Tensor:
        """Complete ``image`` where ``mask`` is 0, as the official test script does.

        Runs in eval mode (running BN statistics; the module's mode is restored afterwards) on
        X = image·mask and composites the full-resolution result into the holes.

        Args:
            image: (B, 3, H, W) in [0, 1]; H, W multiples of 256.
            mask: (B, 1, H, W), 1 = known, 0 = hole, fractional allowed (a soft blend).

        Returns:
            (B, 3, H, W) in [0, 1]: ``image·mask + results[0]·(1 − mask)``.
        """
        was_training = self.training
        self.eval()
        try:
            self._check_inputs(image, mask, name="image")  # in eval: batch 1 at 256² is fine here
            results, _, _ = self(image * mask, mask)
        finally:
            self.train(was_training)
        return image * mask + results[0] * (1 - mask)

    def extra_repr(self) -> str:
        return f"depth={self.depth}, blend_layers={list(self.blend_layers)}, backend={self.backend!r}"
