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
:meth:`ShortLongAttention.load_pic_state_dict` and :func:`inpaint_fast.nn.convert_auto_attn_state_dict`
take that layout as it is (:mod:`inpaint_fast.nn.pic_layout` has the rule).
"""

from __future__ import annotations

from typing import Mapping, Optional, Tuple

import torch
from torch import Tensor, nn

import inpaint_fast

from .pic_layout import convert_pic_layer_state_dict, pic_key_aliases
from .preact_resblock import PreActResBlock

__all__ = ["ShortLongAttention"]


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
        :func:`inpaint_fast.nn.convert_auto_attn_state_dict` for the mapping.

        Args:
            state_dict: PIC's keys → tensors (our own layout is accepted too).
            strict: if True, any missing or unexpected key raises ``RuntimeError`` naming the keys
                in both layouts; if False, loads what matches (``nn.Module.load_state_dict``'s rule).
            prefix: the attention layer's name inside a whole-network state dict (e.g.
                ``"attn."``); only keys under it are taken.

        Returns:
            ``nn.Module.load_state_dict``'s ``(missing_keys, unexpected_keys)`` in our names.
        """
        where = "ShortLongAttention.load_pic_state_dict"
        converted, missing, unexpected = convert_pic_layer_state_dict(self, state_dict, prefix, where=where)
        if strict and (missing or unexpected):
            aliases = pic_key_aliases(self)
            lines = [f"{where}: the state dict does not match Auto_Attn's layout."]
            if missing:
                lines.append("Missing: " + ", ".join(f"{k} (PIC: {' or '.join(aliases[k])})" for k in missing))
            if unexpected:
                lines.append("Unexpected: " + ", ".join(unexpected))
            raise RuntimeError("\n  ".join(lines))
        return self.load_state_dict(converted, strict=strict)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, scale={self.scale}, return_attention={self.return_attention}, "
            f"backend={self.backend!r}"
        )

