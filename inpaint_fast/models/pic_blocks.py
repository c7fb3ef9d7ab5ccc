"""PIC's architecture: its residual blocks and its three networks (encoder, generator, discriminator).

Behaviour as docs/pic.md describes it (Zheng/Cham/Cai, CVPR 2019).
Every convolution except the attention's ``query_conv`` is spectral-normed with PIC's variant
(:mod:`inpaint_fast.nn.spectral_norm`); activations are LeakyReLU(0.1) except the ResBlock inside
the attention layer (0.01, :class:`inpaint_fast.nn.PreActResBlock`).

Attribute names are PIC's (``conv1``, ``conv2``, ``bypass``, ``block0``, ``encoder{i}``,
``decoder{i}``, ``out{i}``, ``attn{i}``, ...), so that our state dict maps one-to-one onto PIC's
checkpoints. PIC registers every spectral-normed conv twice (attribute and ``nn.Sequential``
index) and its norm layers only inside the Sequential; :meth:`pic_aliases` of each block gives
the Sequential names PIC uses for it, :mod:`inpaint_fast.nn.pic_layout` renames the keys and
:mod:`inpaint_fast.models.pic_checkpoint` reads the files.

Sizes: every network is fully convolutional. E and G need H and W to be multiples of 32
(``2**layers``: the latent is input/32 and the attention at input/8 must line up with the
encoder feature); D downsamples 5 times and ends with an unpadded 3x3 conv, so it needs H, W ≥ 96
(its output is (B, 1, H/32 − 2, W/32 − 2)).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn import PreActResBlock, ShortLongAttention, SpectralNormConv2d, SpectralNormConvTranspose2d
from ..nn.pic_layout import resblock_pic_aliases
from .sizes import pic_discriminator_minimum

__all__ = [
    "LEAKY_SLOPE",
    "Output",
    "ResBlock",
    "ResBlockDecoder",
    "ResBlockEncoderOptimized",
    "ResDiscriminator",
    "ResEncoder",
    "ResGenerator",
    "resblock_pic_aliases",
]

# PIC's get_nonlinearity_layer('LeakyReLU') → nn.LeakyReLU(0.1), used by every block of E, G, D.
LEAKY_SLOPE = 0.1


def _norm(kind: Optional[str], channels: int) -> Optional[nn.Module]:
    # PIC's get_norm_layer: 'instance' → InstanceNorm2d(affine=True) (no running stats, so train
    # and eval agree); 'none' → no layer at all.
    if kind is None or kind == "none":
        return None
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    raise ValueError(f"norm must be None, 'none' or 'instance', got {kind!r}")


def _apply(norm: Optional[nn.Module], x: Tensor) -> Tensor:
    return x if norm is None else norm(x)


def _preact_main(block: nn.Module, x: Tensor) -> Tensor:
    """The pre-activation main branch PIC's ResBlock and ResBlockDecoder share:
    ``conv2(act([norm2](conv1(act([norm1](x))))))`` (the decoder's conv2 is transposed)."""
    h = block.conv1(F.leaky_relu(_apply(block.norm1, x), block.slope))
    return block.conv2(F.leaky_relu(_apply(block.norm2, h), block.slope))


class ResBlock(PreActResBlock):
    """PIC's general ``ResBlock``: pre-activation, optional InstanceNorm, optional 2x down-sampling.

    ``main = conv2(act(norm2(conv1(act(norm1(x))))))``, ``short = bypass(x)`` (always a conv, even
    when C_in == C_out); ``out = main + short`` or, with ``sample="down"``,
    ``avgpool2(main) + avgpool2(short)`` (pooled separately, as PIC does). conv1/conv2 are SN
    conv3x3 (pad 1), bypass an SN conv1x1; all with bias. Extends
    :class:`inpaint_fast.nn.PreActResBlock` (same convs and names) with the norm, the slope and the
    pooling.

    Args:
        in_channels, out_channels: C_in, C_out.
        hidden_channels: C_hidden (PIC's default: C_out).
        norm: None / "none" or "instance" (InstanceNorm2d(affine=True) on C_in and C_hidden).
        sample: "none" or "down".
        slope: LeakyReLU slope (0.1 in E, G, D).

    Forward: x (B, C_in, H, W) → (B, C_out, H, W), or (B, C_out, H//2, W//2) with "down".
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden_channels: Optional[int] = None,
        *,
        norm: Optional[str] = None,
        sample: str = "none",
        slope: float = LEAKY_SLOPE,
    ) -> None:
        super().__init__(in_channels, out_channels, hidden_channels)
        if sample not in ("none", "down"):
            raise ValueError(f"ResBlock: sample must be 'none' or 'down', got {sample!r}")
        hidden = self.conv1.out_channels
        self.norm1 = _norm(norm, in_channels)
        self.norm2 = _norm(norm, hidden)
        self.sample = sample
        self.slope = slope

    def pic_aliases(self) -> Dict[str, str]:
        return resblock_pic_aliases(self.norm1 is not None)

    def forward(self, x: Tensor) -> Tensor:
        h = _preact_main(self, x)
        s = self.bypass(x)
        if self.sample == "down":
            return F.avg_pool2d(h, 2) + F.avg_pool2d(s, 2)
        return h + s

    def extra_repr(self) -> str:
        return f"sample={self.sample!r}, slope={self.slope}"


class ResBlockEncoderOptimized(nn.Module):
    """PIC's first block of E and D (no pre-activation), halves H and W.

    ``main = avgpool2(conv2(act([norm](conv1(x)))))``, ``short = bypass(avgpool2(x))``, out = sum.
    conv1 SN 3x3 C_in→C_out, conv2 SN 3x3 C_out→C_out, bypass SN 1x1 C_in→C_out.

    Forward: x (B, C_in, H, W) → (B, C_out, H//2, W//2).
    """

    def __init__(self, in_channels: int, out_channels: int, *, norm: Optional[str] = None,
                 slope: float = LEAKY_SLOPE) -> None:
        super().__init__()
        self.conv1 = SpectralNormConv2d(in_channels, out_channels, 3, padding=1)
        self.conv2 = SpectralNormConv2d(out_channels, out_channels, 3, padding=1)
        self.bypass = SpectralNormConv2d(in_channels, out_channels, 1)
        self.norm1 = _norm(norm, out_channels)
        self.slope = slope

    def pic_aliases(self) -> Dict[str, str]:
        # PIC: model = Sequential(conv1, [norm], act, conv2, AvgPool); shortcut = Sequential(AvgPool, bypass).
        if self.norm1 is not None:
            return {"model.0": "conv1", "model.1": "norm1", "model.3": "conv2", "shortcut.1": "bypass"}
        return {"model.0": "conv1", "model.2": "conv2", "shortcut.1": "bypass"}

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv2(F.leaky_relu(_apply(self.norm1, self.conv1(x)), self.slope))
        return F.avg_pool2d(h, 2) + self.bypass(F.avg_pool2d(x, 2))


class ResBlockDecoder(nn.Module):
    """PIC's up-sampling block: doubles H and W with SN transposed convs (3x3, s2, p1, output_padding 1).

    ``main = conv2(act([norm2](conv1(act([norm1](x))))))`` with conv1 an SN conv3x3 C_in→C_hidden
    (s1, p1) and conv2 an SN ConvTranspose3x3 C_hidden→C_out; ``short = bypass(x)``, an SN
    ConvTranspose3x3 C_in→C_out; out = sum. Sequential layout as :func:`resblock_pic_aliases`.

    Forward: x (B, C_in, H, W) → (B, C_out, 2H, 2W).
    """

    def __init__(self, in_channels: int, out_channels: int, hidden_channels: Optional[int] = None, *,
                 norm: Optional[str] = None, slope: float = LEAKY_SLOPE) -> None:
        super().__init__()
        hidden = out_channels if hidden_channels is None else hidden_channels
        up = dict(stride=2, padding=1, output_padding=1)
        self.conv1 = SpectralNormConv2d(in_channels, hidden, 3, padding=1)
        self.conv2 = SpectralNormConvTranspose2d(hidden, out_channels, 3, **up)
        self.bypass = SpectralNormConvTranspose2d(in_channels, out_channels, 3, **up)
        self.norm1 = _norm(norm, in_channels)
        self.norm2 = _norm(norm, hidden)
        self.slope = slope

    def pic_aliases(self) -> Dict[str, str]:
        return resblock_pic_aliases(self.norm1 is not None)

    def forward(self, x: Tensor) -> Tensor:
        return _preact_main(self, x) + self.bypass(x)


class Output(nn.Module):
    """PIC's image head: ``tanh(conv1(reflection_pad1(act(x))))``, conv1 an SN conv3x3 (no zero pad).

    Forward: x (B, C_in, H, W) → (B, C_out, H, W) in [-1, 1].
    """

    def __init__(self, in_channels: int, out_channels: int = 3, *, slope: float = LEAKY_SLOPE) -> None:
        super().__init__()
        self.conv1 = SpectralNormConv2d(in_channels, out_channels, 3, padding=0)
        self.slope = slope

    def pic_aliases(self) -> Dict[str, str]:
        # PIC: model = Sequential(act, ReflectionPad2d(1), conv1, Tanh).
        return {"model.2": "conv1"}

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(self.conv1(F.pad(F.leaky_relu(x, self.slope), (1, 1, 1, 1), mode="reflect")))


def _channels(base: int, mult: int, cap: int) -> int:
    return base * min(mult, cap // base)


class ResEncoder(nn.Module):
    """PIC's encoder E (``ResEncoder``; docs/pic.md#encoder-e), shared by the two paths.

    Trunk: ``block0`` (ResBlockEncoderOptimized 3→ngf), then ``encoder0..layers-2`` (ResBlock,
    down, hidden = C_in); features f[0..layers-1] are the outputs of these blocks (f[2] at
    input/8 is the attention's ``pre``; f[-1] at input/32 is ``f_m``).
    Conditional prior (from I_m): ``infer_prior0..L-1`` (ResBlock none) then ``prior``
    (ResBlock → 2·z_nc). Posterior (from I_c): ``posterior`` (ResBlock → 2·z_nc) directly on f[-1].
    Each head's output is split into μ (first z_nc channels) and σ = softplus(rest).

    Args (PIC's defaults): input_nc=3, ngf=32, z_nc=128, img_f=128, layers=5, L=6, slope=0.1.
    """

    def __init__(self, input_nc: int = 3, ngf: int = 32, z_nc: int = 128, img_f: int = 128, layers: int = 5,
                 L: int = 6, slope: float = LEAKY_SLOPE) -> None:
        super().__init__()
        self.layers, self.z_nc, self.L = layers, z_nc, L
        self.block0 = ResBlockEncoderOptimized(input_nc, ngf, slope=slope)
        mult = 1
        for i in range(layers - 1):
            c_in = _channels(ngf, mult, img_f)
            mult = 2 ** (i + 1)
            c_out = _channels(ngf, mult, img_f)
            setattr(self, f"encoder{i}", ResBlock(c_in, c_out, c_in, sample="down", slope=slope))
        c = _channels(ngf, mult, img_f)
        for i in range(L):
            setattr(self, f"infer_prior{i}", ResBlock(c, c, c, slope=slope))
        self.posterior = ResBlock(c, 2 * z_nc, c, slope=slope)
        self.prior = ResBlock(c, 2 * z_nc, c, slope=slope)

    def _split(self, o: Tensor) -> Tuple[Tensor, Tensor]:
        mu, s = torch.split(o, self.z_nc, dim=1)
        return mu, F.softplus(s)

    def conditional_prior(self, f_last: Tensor) -> Tuple[Tensor, Tensor]:
        """f[-1] of I_m (B, C, h, w) → (μ, σ) of p(z | I_m), each (B, z_nc, h, w), σ > 0."""
        for i in range(self.L):
            f_last = getattr(self, f"infer_prior{i}")(f_last)
        return self._split(self.prior(f_last))

    def forward(self, img_m: Tensor, img_c: Optional[Tensor] = None) -> Tuple[Tuple[Tensor, ...], List[Tensor]]:
        """Encode.

        Args:
            img_m: (B, 3, H, W) masked image in [-1, 1] (holes 0).
            img_c: (B, 3, H, W) hole content in [-1, 1], or None (test time: one path).

        Returns:
            ``(dist, features)``. With ``img_c``: the trunk runs once on ``cat[img_m, img_c]``
            (2B, as PIC does; this matters for spectral norm's one update per call) and ``dist`` is
            ``(mu_post, sigma_post, mu_prior, sigma_prior)``, ``features`` are over 2B (I_m first).
            Without: ``dist = (mu_prior, sigma_prior)`` and ``features`` over B. Latents are
            (B, z_nc, H/2**layers, W/2**layers).
        """
        x = img_m if img_c is None else torch.cat([img_m, img_c], dim=0)
        out = self.block0(x)
        features = [out]
        for i in range(self.layers - 1):
            out = getattr(self, f"encoder{i}")(out)
            features.append(out)
        if img_c is None:
            return self.conditional_prior(out), features
        f_m, f_c = out.chunk(2)
        mu_post, sigma_post = self._split(self.posterior(f_c))
        mu_prior, sigma_prior = self.conditional_prior(f_m)
        return (mu_post, sigma_post, mu_prior, sigma_prior), features


class ResGenerator(nn.Module):
    """PIC's generator G (``ResGenerator``; docs/pic.md#generator-g) with the short+long attention at input/8.

    ``generator`` (ResBlock z_nc→C, no norm) on z, plus f_m; then ``decoder0..layers-1``
    (ResBlockDecoder with InstanceNorm, each doubling the size; +3 input channels after each
    emitted image), ``attn1`` (ShortLongAttention after decoder1, reading ``f_e`` and the mask),
    and ``out{i}`` (Output → 3) for the last ``output_scale`` decoders; each image is concatenated
    to the features before the next decoder.

    Args (PIC's defaults): output_nc=3, ngf=32, z_nc=128, img_f=128, L=0, layers=5, output_scale=4,
    norm="instance", use_attn=True, slope=0.1; backend: the attention's backend (None = default).
    """

    def __init__(self, output_nc: int = 3, ngf: int = 32, z_nc: int = 128, img_f: int = 128, L: int = 0,
                 layers: int = 5, output_scale: int = 4, norm: Optional[str] = "instance", use_attn: bool = True,
                 slope: float = LEAKY_SLOPE, backend: Optional[str] = None) -> None:
        super().__init__()
        if not 1 <= output_scale <= layers - 1:
            raise ValueError(f"ResGenerator: output_scale must be in [1, layers - 1] = [1, {layers - 1}], "
                             f"got {output_scale}")
        self.layers, self.L, self.output_scale, self.use_attn = layers, L, output_scale, use_attn
        c = _channels(ngf, 2 ** (layers - 1), img_f)
        self.generator = ResBlock(z_nc, c, c, slope=slope)
        for i in range(L):
            setattr(self, f"generator{i}", ResBlock(c, c, c, slope=slope))
        for i in range(layers):
            c_prev = c
            c = _channels(ngf, 2 ** (layers - i - 1), img_f)
            extra = output_nc if i > layers - output_scale else 0
            setattr(self, f"decoder{i}", ResBlockDecoder(c_prev + extra, c, c, norm=norm, slope=slope))
            if i > layers - output_scale - 1:
                setattr(self, f"out{i}", Output(c, output_nc, slope=slope))
            if i == 1 and use_attn:
                self.attn1 = ShortLongAttention(c, backend=backend)

    def forward(self, z: Tensor, f_m: Tensor, f_e: Tensor, mask: Tensor) -> List[Tensor]:
        """Decode.

        Args:
            z: (B, z_nc, h, w) latent, h = H/2**layers.
            f_m: (B, C, h, w) f[-1] of I_m, added to the decoded z.
            f_e: (B, C_attn, 4h, 4w) f[2] of I_m, the attention's ``pre``.
            mask: (B, 1, 4h, 4w) image mask resized to f_e's size, 1 = visible (fractional allowed).

        Returns:
            ``output_scale`` images, coarse → fine, (B, 3, 2**k·h, ...) in [-1, 1]; the last is
            (B, 3, H, W). (PIC also returns the attention map, which no caller reads; here it is
            not computed.)
        """
        f = self.generator(z)
        for i in range(self.L):
            f = getattr(self, f"generator{i}")(f)
        out = f_m + f
        results = []
        for i in range(self.layers):
            out = getattr(self, f"decoder{i}")(out)
            if i == 1 and self.use_attn:
                out, _ = self.attn1(out, f_e, mask)
            if i > self.layers - self.output_scale - 1:
                img = getattr(self, f"out{i}")(out)
                results.append(img)
                out = torch.cat([out, img], dim=1)
        return results


class ResDiscriminator(nn.Module):
    """PIC's discriminator (``ResDiscriminator``; docs/pic.md#discriminators-d-and-d_rec); used twice (D and D_rec).

    ``block0`` (ResBlockEncoderOptimized 3→ndf), ``encoder0..layers-2`` (ResBlock down, hidden =
    C_in), ``attn2`` (ShortLongAttention before encoder2, self-attention only: its inner ResBlock
    exists, is in the state dict, and is never run), ``block1`` (ResBlock), then
    ``conv(act(·))`` with ``conv`` an SN conv3x3 → 1 channel, no padding. No norm, no sigmoid.

    Args (PIC's defaults): input_nc=3, ndf=32, img_f=128, layers=5, use_attn=True, slope=0.1;
    backend: the attention's backend.

    Forward: x (B, 3, H, W) in [-1, 1], H, W ≥ 96 → raw scores (B, 1, H//32 − 2, W//32 − 2)
    (6x6 at 256²).
    """

    def __init__(self, input_nc: int = 3, ndf: int = 32, img_f: int = 128, layers: int = 5, use_attn: bool = True,
                 slope: float = LEAKY_SLOPE, backend: Optional[str] = None) -> None:
        super().__init__()
        self.layers, self.use_attn, self.slope = layers, use_attn, slope
        self.block0 = ResBlockEncoderOptimized(input_nc, ndf, slope=slope)
        mult = 1
        for i in range(layers - 1):
            c_in = _channels(ndf, mult, img_f)
            mult = 2 ** (i + 1)
            if i == 2 and use_attn:
                self.attn2 = ShortLongAttention(c_in, backend=backend)
            setattr(self, f"encoder{i}", ResBlock(c_in, _channels(ndf, mult, img_f), c_in, sample="down", slope=slope))
        c = _channels(ndf, mult, img_f)
        self.block1 = ResBlock(c, c, c, slope=slope)
        self.conv = SpectralNormConv2d(c, 1, 3)

    def forward(self, x: Tensor) -> Tensor:
        minimum = pic_discriminator_minimum(self.layers)
        if x.dim() != 4 or x.shape[2] < minimum or x.shape[3] < minimum:
            raise ValueError(f"ResDiscriminator: input must be (B, C, H, W) with H, W >= {minimum}; "
                             f"got shape {tuple(x.shape)}")
        out = self.block0(x)
        for i in range(self.layers - 1):
            if i == 2 and self.use_attn:
                out, _ = self.attn2(out)
            out = getattr(self, f"encoder{i}")(out)
        out = self.block1(out)
        return self.conv(F.leaky_relu(out, self.slope))
