"""Sample grids: one row per example, columns such as masked input | completion(s) | ground truth."""

from __future__ import annotations

from typing import Sequence

import torch

from .files import atomic_write

__all__ = ["make_grid", "masked_input", "save_png"]


def masked_input(image: torch.Tensor, mask: torch.Tensor, fill: float = 1.0) -> torch.Tensor:
    """The input as the model sees it, for display: holes painted ``fill`` (white by default).

    image: (B,3,H,W) in [0,1]; mask: (B,1,H,W), 1 = known. Returns (B,3,H,W).
    """
    return image * mask + fill * (1.0 - mask)


def make_grid(columns: Sequence[torch.Tensor], *, pad: int = 2, pad_value: float = 1.0) -> torch.Tensor:
    """Tile ``columns`` side by side, one row per example.

    Args:
        columns: C tensors of the same shape (B,3,H,W) in [0,1] (values are clamped).
        pad: pixels of ``pad_value`` between and around tiles.
    Returns:
        (3, B·(H+pad)+pad, C·(W+pad)+pad) float tensor on the CPU.
    """
    if not columns:
        raise ValueError("columns: expected at least one (B,3,H,W) tensor")
    shape = tuple(columns[0].shape)
    if len(shape) != 4 or shape[1] != 3:
        raise ValueError(f"columns: expected (B,3,H,W) tensors, got {shape}")
    for c in columns:
        if tuple(c.shape) != shape:
            raise ValueError(f"columns: all must have shape {shape}, got {tuple(c.shape)}")
    b, _, h, w = shape
    grid = torch.full((3, b * (h + pad) + pad, len(columns) * (w + pad) + pad), pad_value)
    for j, col in enumerate(columns):
        col = col.detach().float().clamp(0, 1).cpu()
        for i in range(b):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            grid[:, y:y + h, x:x + w] = col[i]
    return grid


def save_png(image: torch.Tensor, path: str) -> None:
    """Write a (3,H,W) or (1,H,W) tensor in [0,1] as an 8-bit PNG (rounded, not truncated);
    atomically, so a run killed while writing it leaves no truncated PNG."""
    from PIL import Image

    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"image: expected (3,H,W) or (1,H,W), got {tuple(image.shape)}")
    array = (image.detach().float().clamp(0, 1).cpu() * 255.0).round().to(torch.uint8)
    array = array.permute(1, 2, 0).numpy()
    picture = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
    atomic_write(path, lambda f: picture.save(f, format="PNG"))
