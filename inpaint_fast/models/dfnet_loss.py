"""DFNet's training loss (docs/dfnet.md#loss): multi-scale L1, VGG16 perceptual and
style, and total variation.

With Y_k the fused results (index 0 = full resolution), T_k the ground truth bilinearly resized
from full resolution to Y_k's size, M_k the mask resized the same way, and φ_1..3 VGG16's pool1..3::

    L_rec   = mean_k over all levels          mean|Y_k − T_k|                       (no mask weighting)
    L_perc  = mean_k over texture levels  Σ_p mean|φ_p(T_k) − φ_p(Y_k)|
    L_style = mean_k over texture levels  Σ_p mean|Gram(φ_p(T_k)) − Gram(φ_p(Y_k))|
    L_tv    = mean_k over texture levels      mean|tv(Z_k) · M_k|                   (Z: see `tv`)
    L       = 6 L_rec + 0.1 L_perc + 240 L_style + 0.1 L_tv

Texture levels are the 3 finest (0, 1, 2). Every resize is ``F.interpolate(bilinear,
align_corners=False)`` without antialias, always from the full-resolution tensor.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .vgg import VGG16Features

__all__ = ["DFNetLoss", "gram_matrix", "resize_like", "total_variation_map"]

TV_MODES = ("released", "intended")


def resize_like(x: Tensor, ref: Tensor) -> Tensor:
    """Bilinear resize of ``x`` (B, C, H, W) to ``ref``'s spatial size (align_corners False, no
    antialias), as DFNet's ``utils.resize_like``. Same size returns ``x`` itself (bilinear at
    scale 1 is the identity, bit for bit)."""
    if x.shape[-2:] == ref.shape[-2:]:
        return x
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)


def gram_matrix(feat: Tensor) -> Tensor:
    """Per-sample Gram matrix normalised by C·H·W, computed in fp32 with autocast off.

    Args:
        feat: (B, C, H, W) features.

    Returns:
        (B, C, C) float32: ``φ̃ φ̃ᵀ / (C·H·W)`` with φ̃ = feat reshaped to (B, C, H·W). A constant map
        of value v gives v²/C everywhere.
    """
    B, C, H, W = feat.shape
    # Sums of H·W squares overflow fp16 easily; DFNet's later code keeps this product in fp32.
    with torch.autocast(device_type=feat.device.type, enabled=False):
        f = feat.float().reshape(B, C, H * W)
        return torch.bmm(f, f.transpose(1, 2)) / (C * H * W)


def total_variation_map(x: Tensor) -> Tensor:
    """DFNet's signed TV response: ``g[i,j] = x[i−1,j] + x[i,j−1] − 2·x[i,j]`` with zero padding.

    That is a depthwise 3×3 conv with kernel [[0,1,0],[1,−2,0],[0,0,0]], padding 1 — one signed
    sum of the up and left backward differences, not |dx| + |dy|.

    Args:
        x: (B, C, H, W).

    Returns:
        (B, C, H, W). For a constant image v: −2v at (0, 0), −v on the rest of row 0 and column 0,
        0 elsewhere.
    """
    C = x.shape[1]
    kernel = x.new_tensor([[0.0, 1.0, 0.0], [1.0, -2.0, 0.0], [0.0, 0.0, 0.0]]).expand(C, 1, 3, 3)
    return F.conv2d(x, kernel, padding=1, groups=C)


class DFNetLoss(nn.Module):
    """DFNet's loss on the fused results of :class:`~inpaint_fast.models.dfnet.DFNet`.

    Args:
        vgg: the frozen feature extractor (:func:`~inpaint_fast.models.vgg.load_vgg16_features`
            for the real ImageNet weights). It is a submodule, so ``.to(device)`` moves it.
        tv: which images the total-variation term is evaluated on.

            * ``"released"`` (default) — on the resized **targets**, as the official ``loss.py``
              does: its lists are swapped (``text_r = targets``, hughplay/DFNet issue #7), so the
              term is a constant with zero gradient and the released recipe effectively has no TV
              regulariser. This matches the recipe of the official checkpoints; the value is still
              reported.
            * ``"intended"`` — on the **results**, what the paper and the maintainer describe; it
              gives the network a gradient.
        w_rec, w_percep, w_style, w_tv: term weights (6, 0.1, 240, 0.1).
        texture_levels: indices into ``results`` that get perceptual, style and TV terms (0, 1, 2).

    Forward:
        results: list of the fused results Y_k, (B, 3, H/2^k, W/2^k), index 0 = full resolution
            (DFNet's first output). Every entry enters the L1 term.
        target: (B, 3, H, W) ground truth in [0, 1].
        mask: (B, 1, H, W), 1 = known, 0 = hole.

    Returns:
        ``(total, terms)``: the scalar loss (fp32) and a dict of floats with keys
        ``reconstruction_loss``, ``perceptual_loss``, ``style_loss``, ``total_variation_loss``
        (unweighted terms).
    """

    def __init__(
        self,
        vgg: VGG16Features,
        *,
        tv: str = "released",
        w_rec: float = 6.0,
        w_percep: float = 0.1,
        w_style: float = 240.0,
        w_tv: float = 0.1,
        texture_levels: Sequence[int] = (0, 1, 2),
    ) -> None:
        super().__init__()
        if not isinstance(vgg, VGG16Features):
            raise TypeError(f"DFNetLoss: `vgg` must be a VGG16Features, got {type(vgg).__name__}")
        if tv not in TV_MODES:
            raise ValueError(f"DFNetLoss: `tv` must be one of {TV_MODES}, got {tv!r}")
        self.vgg = vgg
        self.tv = tv
        self.w_rec, self.w_percep, self.w_style, self.w_tv = float(w_rec), float(w_percep), float(w_style), float(w_tv)
        self.texture_levels = tuple(int(k) for k in texture_levels)

    def _check(self, results: List[Tensor], target: Tensor, mask: Tensor) -> None:
        if not isinstance(results, (list, tuple)) or not results or not all(isinstance(r, Tensor) for r in results):
            raise TypeError("DFNetLoss: `results` must be a non-empty list of tensors (DFNet's first output)")
        if target.dim() != 4 or target.shape[1] != 3:
            raise ValueError(f"DFNetLoss: `target` must be (B, 3, H, W), got {tuple(target.shape)}")
        if mask.dim() != 4 or mask.shape != (target.shape[0], 1, *target.shape[2:]):
            raise ValueError(f"DFNetLoss: `mask` must be (B, 1, H, W) matching `target` {tuple(target.shape)}, "
                             f"got {tuple(mask.shape)}")
        if results[0].shape != target.shape:
            raise ValueError(f"DFNetLoss: results[0] must be full resolution like `target` {tuple(target.shape)}, "
                             f"got {tuple(results[0].shape)}")
        for i, r in enumerate(results):
            if r.dim() != 4 or r.shape[:2] != target.shape[:2]:
                raise ValueError(f"DFNetLoss: results[{i}] must be (B, 3, h, w) with B = {target.shape[0]}, "
                                 f"got {tuple(r.shape)}")
        bad = [k for k in self.texture_levels if not 0 <= k < len(results)]
        if bad:
            raise ValueError(f"DFNetLoss: texture levels {bad} are out of range for {len(results)} results")

    def forward(self, results: List[Tensor], target: Tensor, mask: Tensor) -> Tuple[Tensor, Dict[str, float]]:
        self._check(results, target, mask)
        targets = [resize_like(target, r) for r in results]

        rec = torch.stack([F.l1_loss(y, t) for y, t in zip(results, targets)]).mean()

        percep_terms, style_terms, tv_terms = [], [], []
        for k in self.texture_levels:
            y, t = results[k], targets[k]
            feats_y = self.vgg(y)
            with torch.no_grad():  # the targets never need a graph
                feats_t = self.vgg(t)
            percep_terms.append(sum(F.l1_loss(fy, ft) for fy, ft in zip(feats_y, feats_t)))
            style_terms.append(sum(F.l1_loss(gram_matrix(fy), gram_matrix(ft)) for fy, ft in zip(feats_y, feats_t)))
            tv_input = t if self.tv == "released" else y
            tv_terms.append((total_variation_map(tv_input) * resize_like(mask, y)).abs().mean())
        percep = torch.stack(percep_terms).mean()
        style = torch.stack(style_terms).mean()
        tv = torch.stack(tv_terms).mean()

        total = (self.w_rec * rec.float() + self.w_percep * percep.float() + self.w_style * style
                 + self.w_tv * tv.float())
        terms = {
            "reconstruction_loss": rec.item(),
            "perceptual_loss": percep.item(),
            "style_loss": style.item(),
            "total_variation_loss": tv.item(),
        }
        return total, terms

    def extra_repr(self) -> str:
        return (f"tv={self.tv!r}, w_rec={self.w_rec}, w_percep={self.w_percep}, w_style={self.w_style}, "
                f"w_tv={self.w_tv}, texture_levels={self.texture_levels}")
