"""Benchmark of ``fusion_block`` (DFNet's learned alpha composite), DESIGN.md §1.2 / §6.

Cases are DFNet's fusion blocks: level k has a decoder feature of c_k channels at (S/2^k)² for an
S×S image, c = [4, 64, 128, 256, 512, 512][k], and the image (B, 3, S, S) at full resolution.
Modes: ``eval-*`` uses the BatchNorm running statistics (inference), ``train-*`` the batch
statistics and updates the running ones in place (the gate compares the updated buffers too).

Bytes (the compulsory traffic of one forward, reported as GB/s for ``eval-fwd`` and ``train-fwd``):
    (c·B·h·w                    read the feature F_k
     + 3·B·min(H·W, 4·h·w)      read the image: a bilinear (align_corners=False) downscale by
                                2^k ≥ 2 touches exactly 2×2 source pixels per output pixel, so
                                deeper levels read 4·h·w of the H·W pixels (k = 0, 1: all of them)
     + 9·B·h·w)                 write Y, α and R (3 channels each)
    × the dtype's size. The weights (≤ 2.7 K parameters) are negligible. A two-pass training
    forward must read more than this; the figure is then an effective bandwidth.

Inputs: F ~ N(0, 1), image ~ U(0, 1), convolution weights ~ N(0, 1/fan_in), BatchNorm affine
parameters and running statistics perturbed from (1, 0, 0, 1), all in the benchmark dtype.
Gradients are taken for F and every weight (not the image, as in DFNet).

Providers: ``reference`` (eager PyTorch), this package's backends available on the device, and on
CUDA by default ``compile`` (torch.compile of the reference).
"""

from __future__ import annotations

from typing import Dict, List, Optional

import torch

from .core import DTYPES, OUR_BACKENDS, Case, Inputs, OpBench, Provider, Sweep
from .providers import compiled, our_backend

__all__ = ["FusionBlockBench", "LEVEL_CHANNELS", "fusion_block_bytes"]

LEVEL_CHANNELS = (4, 64, 128, 256, 512, 512)  # DFNet's c_k for fuse_0 .. fuse_5
MID, ALPHA = 32, 3  # conv1 output channels, alpha channels

WEIGHTS = (
    "map_weight", "map_bias", "conv1_weight", "conv1_bias", "bn1_weight", "bn1_bias",
    "conv2_weight", "conv2_bias", "bn2_weight", "bn2_bias", "conv3_weight", "conv3_bias",
)  # fmt: skip
RUNNING = ("bn1_running_mean", "bn1_running_var", "bn2_running_mean", "bn2_running_var")


def fusion_block_bytes(B: int, c: int, h: int, w: int, H: int, W: int, itemsize: int) -> float:
    """Compulsory bytes of one forward (see the module docstring)."""
    return float((c * B * h * w + 3 * B * min(H * W, 4 * h * w) + 9 * B * h * w) * itemsize)


def _build_reference(case: Optional[Case], device: Optional[torch.device]):
    from inpaint_fast import reference

    return reference.fusion_block


def _build_compile(case: Case, device: torch.device):
    return compiled(_build_reference(case, device))


class FusionBlockBench(OpBench):
    kernel = "fusion_block"
    aliases = ("fusion_block", "fusion")
    variants = ("eval", "train")
    output_names = ("out", "alpha", "raw")

    def default_sweep(self, device: torch.device, quick: bool) -> Sweep:
        modes = ("eval-fwd", "train-fwd+bwd") if quick else ("eval-fwd", "eval-fwd+bwd", "train-fwd", "train-fwd+bwd")
        if device.type == "cuda":
            if quick:
                return Sweep(sizes=(512,), dtypes=("fp32", "bf16"), modes=modes, batch=6, levels=(0, 1, 3))
            return Sweep(sizes=(256, 512, 1024), dtypes=("fp32", "bf16", "fp16"), modes=modes, batch=6,
                         levels=tuple(range(6)))
        if quick:
            return Sweep(sizes=(256,), dtypes=("fp32",), modes=modes, batch=1, levels=(0, 2))
        return Sweep(sizes=(256, 512), dtypes=("fp32",), modes=modes, batch=1, levels=tuple(range(6)))

    def cases(self, sweep: Sweep, device: torch.device) -> List[Case]:
        out = []
        levels = sweep.levels or tuple(range(len(LEVEL_CHANNELS)))
        for dtype in sweep.dtypes:
            if dtype not in DTYPES:
                raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(DTYPES)}")
            for size in sweep.sizes:
                for k in levels:
                    if not 0 <= k < len(LEVEL_CHANNELS):
                        raise ValueError(f"fusion block level {k} out of range 0..{len(LEVEL_CHANNELS) - 1}")
                    if size % (2**k):
                        raise ValueError(f"image size {size} is not divisible by 2^{k} (level {k})")
                    B, c, h = sweep.batch or 1, LEVEL_CHANNELS[k], size // 2**k
                    shape = f"B{B}-k{k}-c{c}-{h}x{h}-img{size}"
                    out.append(Case(self.kernel, dtype, shape, (("B", B), ("k", k), ("c", c), ("h", h), ("w", h),
                                                                ("H", size), ("W", size))))
        return out

    def make_inputs(self, case: Case, device: torch.device, variant: str = "eval", seed: int = 0) -> Inputs:
        B, c, h, w, H, W = (case.param(k) for k in ("B", "c", "h", "w", "H", "W"))
        dtype = DTYPES[case.dtype]
        g = torch.Generator().manual_seed(seed)

        def randn(*shape, std=1.0, mean=0.0):
            return torch.randn(*shape, generator=g) * std + mean

        kw = dict(
            feat=randn(B, c, h, w),
            image=torch.rand(B, 3, H, W, generator=g),
            map_weight=randn(3, c, 1, 1, std=c**-0.5), map_bias=randn(3, std=0.1),
            conv1_weight=randn(MID, 6, 1, 1, std=6**-0.5), conv1_bias=randn(MID, std=0.1),
            bn1_weight=randn(MID, std=0.1, mean=1.0), bn1_bias=randn(MID, std=0.1),
            bn1_running_mean=randn(MID, std=0.1), bn1_running_var=torch.rand(MID, generator=g) + 0.5,
            conv2_weight=randn(ALPHA, MID, 3, 3, std=(9 * MID) ** -0.5), conv2_bias=randn(ALPHA, std=0.1),
            bn2_weight=randn(ALPHA, std=0.1, mean=1.0), bn2_bias=randn(ALPHA, std=0.1),
            bn2_running_mean=randn(ALPHA, std=0.1), bn2_running_var=torch.rand(ALPHA, generator=g) + 0.5,
            conv3_weight=randn(ALPHA, ALPHA, 1, 1, std=ALPHA**-0.5), conv3_bias=randn(ALPHA, std=0.1),
        )  # fmt: skip
        kw = {k: v.to(device=device, dtype=dtype) for k, v in kw.items()}
        grad = ("feat",) + WEIGHTS
        for name in grad:
            kw[name].requires_grad_(True)
        kw.update(training=(variant == "train"), momentum=0.1, eps=1e-5)
        return Inputs(kw, grad=grad, state=RUNNING)

    def providers(self) -> Dict[str, Provider]:
        ps = {"reference": Provider("reference", _build_reference)}
        for b in OUR_BACKENDS + ("auto",):
            ps[b] = Provider(b, our_backend("fusion_block", b), default_on=())
        ps["compile"] = Provider("compile", _build_compile, default_on=("cuda",), quick=False)
        return ps

    def oracle(self):
        return _build_reference(None, None)

    def bytes(self, case: Case, pass_: str) -> Optional[float]:
        if pass_ != "fwd":
            return None
        B, c, h, w, H, W = (case.param(k) for k in ("B", "c", "h", "w", "H", "W"))
        return fusion_block_bytes(B, c, h, w, H, W, DTYPES[case.dtype].itemsize)

