"""``ShortLongAttention``: drop-in replacement for PIC's ``Auto_Attn`` on the fused op.

Same parameters, same state-dict names (``query_conv``, ``gamma``, ``alpha``, ``model``), same
forward contract ``forward(x, pre=None, mask=None) -> (out, attention)`` as ``Auto_Attn``
(docs/pic.md#the-attention-layer), except that the N×N attention map is only computed when asked for
(``return_attention=True``): no PIC caller reads it, and never materialising it is the point of
the fused op.

State-dict layout of this module (C = in_channels)::

    query_conv.weight         (C/4, C, 1, 1)   plain conv, no spectral norm (as in PIC)
    query_conv.bias           (C/4,)
    gamma                     (1,)             gate of the short-range (self) term, init 0
    alpha                     (1,)             gate of the long-range (encoder) term, init 0
    model.conv1.{weight_bar, bias, weight_u, weight_v}    SN conv3x3 2C → C
    model.conv2.{weight_bar, bias, weight_u, weight_v}    SN conv3x3 C → C
    model.bypass.{weight_bar, bias, weight_u, weight_v}   SN conv1x1 2C → C

PIC's own checkpoints store each spectral-normed conv twice and one level deeper
(``model.conv1.module.weight_bar`` *and* ``model.model.1.module.weight_bar``, ...);
:func:`convert_auto_attn_state_dict` / :meth:`ShortLongAttention.load_pic_state_dict` take that
layout as it is.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import inpaint_fast

from .spectral_norm import SpectralNormConv2d

__all__ = ["PreActResBlock", "ShortLongAttention", "convert_auto_attn_state_dict"]

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


class ShortLongAttention(nn.Module):
    """PIC's short+long-range attention layer (``Auto_Attn``) on ``inpaint_fast.short_long_attention``.

    Args:
        in_channels: C, the channels of ``x`` (and of ``pre``); must be ≥ 4 so that C/4 ≥ 1.
        scale: multiplier of the energies qᵀq (PIC: 1.0, no 1/√d).
        return_attention: if True, ``forward`` also returns the (B, N, N) attention map, computed
            separately by :func:`inpaint_fast.attention_map` (O(N²) memory, as in PIC).
        backend: backend of the fused op (``None`` = the global default, see
            :mod:`inpaint_fast.backends`).

    Parameters (PIC's names and initial values, docs/pic.md#the-attention-layer):
        query_conv: ``nn.Conv2d(C, C // 4, 1)`` with bias, orthogonal init with gain 0.02, bias 0.
        gamma: (1,) zeros. alpha: (1,) zeros.
        model: :class:`PreActResBlock` (2C → C, hidden C), spectral-normed convs.
    """

    def __init__(
        self,
        in_channels: int,
        *,
        scale: float = 1.0,
        return_attention: bool = False,
        backend: Optional[str] = None,
    ) -> None:
        super().__init__()
        if in_channels < 4:
            raise ValueError(
                f"ShortLongAttention: in_channels must be >= 4 (query has C // 4 channels), got {in_channels}"
            )
        self.in_channels = in_channels
        self.scale = float(scale)
        self.return_attention = return_attention
        self.backend = backend
        self.query_conv = nn.Conv2d(in_channels, in_channels // 4, kernel_size=1)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.alpha = nn.Parameter(torch.zeros(1))
        self.model = PreActResBlock(2 * in_channels, in_channels, in_channels)
        self.reset_query_parameters()

    def reset_query_parameters(self) -> None:
        """PIC's ``init_weights('orthogonal', gain=0.02)``; it reaches only ``query_conv``.

        The SN convs keep PyTorch's default init because PIC's wrapper hides their ``weight``
        from the initialiser (docs/pic.md#spectral-norm, "Initialisation").
        """
        nn.init.orthogonal_(self.query_conv.weight, gain=0.02)
        nn.init.zeros_(self.query_conv.bias)

    def forward(
        self, x: Tensor, pre: Optional[Tensor] = None, mask: Optional[Tensor] = None
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """Short-range self-attention, plus the long-range context flow when ``pre`` is given.

        Args:
            x: (B, C, H, W) decoder feature.
            pre: (B, C, H, W) encoder feature, or None (PIC's discriminator mode).
            mask: (B, 1, H, W), 1 = visible, 0 = hole, fractional allowed; required with ``pre``,
                ignored without it (as in PIC).

        Returns:
            ``(out, attention)``:

            * without ``pre``: ``out = y = gamma · x Aᵀ + x``, (B, C, H, W); ``model`` is not applied;
            * with ``pre``: ``out = model(cat[y, cf])``, (B, C, H, W), where
              ``cf = alpha · (1 − mask) · pre Aᵀ + mask · pre``;
            * ``attention``: (B, N, N) softmax(scale · qᵀq) with N = H·W if ``return_attention``,
              else None.
        """
        q = self.query_conv(x)
        if pre is None:
            y, _ = inpaint_fast.short_long_attention(q, x, self.gamma, scale=self.scale, backend=self.backend)
            out = y
        else:
            if pre.dim() != 4 or pre.shape[1] != self.in_channels:
                raise ValueError(
                    f"ShortLongAttention: `pre` must be (B, {self.in_channels}, H, W) like `x` (the ResBlock "
                    f"takes cat[y, cf] with 2C channels), got shape {tuple(pre.shape)}"
                )
            if mask is None:
                raise ValueError("ShortLongAttention: `pre` was given without `mask`; pass mask (B, 1, H, W), "
                                 "1 = visible, 0 = hole")
            y, cf = inpaint_fast.short_long_attention(
                q, x, self.gamma, pre, mask, self.alpha, scale=self.scale, backend=self.backend
            )
            out = self.model(torch.cat([y, cf], dim=1))  # channel order as in PIC: y first, then cf
        attention = inpaint_fast.attention_map(q, scale=self.scale) if self.return_attention else None
        return out, attention

    def load_pic_state_dict(self, state_dict: Mapping[str, Tensor], strict: bool = True, prefix: str = ""):
        """Load an ``Auto_Attn`` state dict in PIC's checkpoint layout (docs/pic.md#official-checkpoint-layout).

        Accepts the layout as saved: optional DataParallel ``module.`` prefix, each SN conv twice
        (attribute and ``Sequential`` index), SN tensors under ``.module.``. See
        :func:`convert_auto_attn_state_dict` for the mapping.

        Args:
            state_dict: PIC's keys → tensors (our own layout is accepted too).
            strict: if True, any missing or unexpected key raises ``RuntimeError`` naming the keys
                in both layouts; if False, loads what matches (``nn.Module.load_state_dict``'s rule).
            prefix: the attention layer's name inside a whole-network state dict (e.g.
                ``"attn."``); only keys under it are taken.

        Returns:
            ``nn.Module.load_state_dict``'s ``(missing_keys, unexpected_keys)`` in our names.
        """
        converted, sources = _convert(state_dict, prefix)
        if strict:
            own = set(self.state_dict().keys())
            missing = sorted(own - converted.keys())
            unexpected = sorted(set(converted) - own)
            if missing or unexpected:
                lines = ["ShortLongAttention.load_pic_state_dict: the state dict does not match Auto_Attn's layout."]
                if missing:
                    lines.append("Missing: " + ", ".join(f"{k} (PIC: {_pic_names(k)})" for k in missing))
                if unexpected:
                    lines.append("Unexpected: " + ", ".join(
                        f"{k} (from {' = '.join(sources[k])})" if sources[k] != [k] else k for k in unexpected
                    ))
                raise RuntimeError("\n  ".join(lines))
        return self.load_state_dict(converted, strict=strict)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, scale={self.scale}, return_attention={self.return_attention}, "
            f"backend={self.backend!r}"
        )


# ---------------------------------------------------------------------------------------------
# PIC checkpoint layout → ours
# ---------------------------------------------------------------------------------------------
# PIC's ResBlock registers each SN conv twice: as an attribute (conv1, conv2, bypass) and inside
# Sequentials. Without a norm (Auto_Attn's case) the main branch is Sequential(act, conv1, act,
# conv2), so conv1 and conv2 sit at indices 1 and 3, and the shortcut is Sequential(bypass)
# (docs/pic.md#official-checkpoint-layout). Indices 1/3 are our reading of that layout; a checkpoint with other
# indices is reported as unexpected keys, never loaded silently into the wrong conv.
_SEQUENTIAL_ALIASES = {
    "model.model.1.": "model.conv1.",
    "model.model.3.": "model.conv2.",
    "model.shortcut.0.": "model.bypass.",
}
# PIC's SpectralNorm wraps the conv as `.module`; our SpectralNormConv2d holds the tensors itself.
_SN_KEY = re.compile(r"^model\.(conv1|conv2|bypass)\.module\.(weight_bar|weight_u|weight_v|bias)$")


def _our_name(key: str) -> str:
    for pic_prefix, ours in _SEQUENTIAL_ALIASES.items():
        if key.startswith(pic_prefix):
            key = ours + key[len(pic_prefix):]
            break
    return _SN_KEY.sub(r"model.\1.\2", key)


def _pic_names(our_key: str) -> str:
    m = re.match(r"^model\.(conv1|conv2|bypass)\.(\w+)$", our_key)
    if not m:
        return our_key
    seq = {v: k for k, v in _SEQUENTIAL_ALIASES.items()}[f"model.{m.group(1)}."]
    return f"model.{m.group(1)}.module.{m.group(2)} / {seq}module.{m.group(2)}"


def _convert(state_dict: Mapping[str, Tensor], prefix: str) -> Tuple["OrderedDict[str, Tensor]", Dict[str, List[str]]]:
    out: "OrderedDict[str, Tensor]" = OrderedDict()
    sources: Dict[str, List[str]] = {}
    for key, value in state_dict.items():
        name = key[len("module."):] if key.startswith("module.") else key  # DataParallel
        if prefix:
            if not name.startswith(prefix):
                continue
            name = name[len(prefix):]
        ours = _our_name(name)
        if ours in out:
            first = sources[ours][0]
            prev = out[ours]
            if prev.shape != value.shape or prev.dtype != value.dtype or not torch.equal(prev, value):
                raise ValueError(
                    f"convert_auto_attn_state_dict: {key!r} and {first!r} are the same tensor in PIC's layout "
                    f"(one SN conv registered twice) but hold different values"
                )
            sources[ours].append(key)
            continue
        out[ours] = value
        sources[ours] = [key]
    if prefix and not out:
        raise KeyError(f"convert_auto_attn_state_dict: no key starts with prefix {prefix!r}")
    return out, sources


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
    return _convert(state_dict, prefix)[0]
