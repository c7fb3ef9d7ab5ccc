"""Benchmark of ``fusion_block`` (DFNet's learned alpha composite, docs/fusion_block.md; how it is
measured: benchmarks/README.md).

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
    forward must read more than this; the figure is then an effective bandwidth. Backward modes
    report no GB/s.

FLOPs (multiply-adds count 2; per pixel of the h×w grid, Cm = 32, A = 3; reported as TFLOP/s
and, on the CPU, as a fraction of the run's GEMM ceiling; docs/fusion_block.md#cost):
    convs   3c + 6·Cm + 9·Cm·A + A² = 3c + 1065 multiply-adds:
            map2img 1×1 c→3 (3c), conv1 1×1 6→Cm (192), the 3×3 conv Cm→A (864), conv3 1×1 A→A (9)
    BN      Cm + A = 35 (one affine multiply-add per BatchNorm input element)
    resize  12 when the feature is smaller than the image (bilinear: 4 taps × 3 colours), else 0
    fwd      2·B·h·w·(3c + 1065 + 35 + 12·[h·w < H·W])
    bwd      2·B·h·w·(2·(3c + 1065) + 2·35)     each conv's input and weight gradients (2× its
                                                forward), BN's input gradient and Σ g·n̂; no resize
                                                backward (the image gets no gradient)
    fwd+bwd  the sum
    i.e. fuse_0 (c = 4): fwd 2 224, bwd 4 448 FLOPs per pixel; fuse_1 (c = 64): fwd 2 608, bwd
    5 168. Not counted: bias adds, activations, sigmoids, the blend, BatchNorm's statistics and
    the training backward's mean corrections, and whatever a kernel recomputes (a1 for the 3×3
    conv, the forward inside the backward). tests/test_bench_ceiling.py checks the conv, BN and
    resize terms against a count of the reference's own aten calls.

Inputs: F ~ N(0, 1), image ~ U(0, 1), convolution weights ~ N(0, 1/fan_in), all in the benchmark
dtype. Gradients are taken for F and every weight (not the image, as in DFNet). The BatchNorms are chosen
from the activations these inputs produce (:func:`_kink_free_batchnorms`): running statistics
near the batch statistics, and affine parameters that keep every LeakyReLU input at least
KINK_MARGIN from the kink at 0, in training and in eval mode, with both slopes used. The
correctness gate needs that: an input within rounding of 0 may take either slope in any correct
fp32 implementation, and one such element moves a gradient by far more than rounding
(tests/test_models_dfnet.py measures one). The kernels are branch-free, so the values do not
change what is timed.

Providers: ``reference`` (eager PyTorch), this package's backends available on the device, and on
CUDA by default ``compile`` (torch.compile of the reference).
"""

from __future__ import annotations

from typing import Dict, List, Optional

import torch

from ..backends import KERNEL_BACKENDS
from ..fusion_block_params import RUNNING_STATS, TRAINABLE, FusionBlockParams
from .op_bench import DTYPES, Case, Inputs, OpBench, Provider, Sweep, one_of
from .providers import compiled, our_backend

__all__ = ["FusionBlockBench", "LEVEL_CHANNELS", "fusion_block_bytes", "fusion_block_flops", "fusion_block_macs"]

LEVEL_CHANNELS = (4, 64, 128, 256, 512, 512)  # DFNet's c_k for fuse_0 .. fuse_5
MID, ALPHA = 32, 3  # conv1 output channels, alpha channels

WEIGHTS, RUNNING = TRAINABLE, RUNNING_STATS  # the op's trainable parameters and BatchNorm buffers


def fusion_block_bytes(B: int, c: int, h: int, w: int, H: int, W: int, itemsize: int) -> float:
    """Compulsory bytes of one forward (see the module docstring)."""
    return float((c * B * h * w + 3 * B * min(H * W, 4 * h * w) + 9 * B * h * w) * itemsize)


def fusion_block_macs(c: int, resized: bool, pass_: str, mid: int = MID, alpha: int = ALPHA) -> Dict[str, int]:
    """Multiply-adds per pixel of the feature grid of one ``pass_`` (``fwd``, ``bwd``, ``fwd+bwd``),
    by term: ``conv`` (every convolution), ``bn`` (both BatchNorms), ``resize`` (the bilinear
    downscale of the image, 0 when ``resized`` is False: the identity). See the module docstring."""
    conv = 3 * c + 6 * mid + 9 * mid * alpha + alpha * alpha  # map2img, conv1, the 3×3 conv, conv3
    bn = mid + alpha
    fwd = {"conv": conv, "bn": bn, "resize": 4 * 3 if resized else 0}
    bwd = {"conv": 2 * conv, "bn": 2 * bn, "resize": 0}
    if pass_ == "fwd":
        return fwd
    if pass_ == "bwd":
        return bwd
    if pass_ == "fwd+bwd":
        return {k: fwd[k] + bwd[k] for k in fwd}
    raise ValueError(f"unknown pass {pass_!r}; expected fwd, bwd or fwd+bwd")


def fusion_block_flops(B: int, c: int, h: int, w: int, H: int, W: int, pass_: str) -> float:
    """FLOPs of one ``pass_`` (2 per multiply-add of :func:`fusion_block_macs`, every pixel)."""
    return 2.0 * B * h * w * sum(fusion_block_macs(c, (h, w) != (H, W), pass_).values())


KINK_MARGIN = 1.0  # every LeakyReLU input is at least this far from 0


def _normalised(z: torch.Tensor, mean: Optional[torch.Tensor] = None, var: Optional[torch.Tensor] = None
                ) -> torch.Tensor:
    """BatchNorm's normalisation of z (B, C, h, w): with the batch's own statistics (biased
    variance) when none are given. By hand rather than through F.batch_norm, which refuses one
    value per channel — an eval-mode input of a single pixel is valid."""
    dims, shape = (0, 2, 3), (1, z.shape[1], 1, 1)
    if mean is None:
        mean, var = z.mean(dims), z.var(dims, unbiased=False)
    return (z - mean.view(shape)) / (var + 1e-5).sqrt().view(shape)


def _kink_free_bn(z_train: torch.Tensor, z_eval: torch.Tensor, g: torch.Generator) -> Dict[str, torch.Tensor]:
    """A BatchNorm (weight, bias, running_mean, running_var) whose outputs γ·n + β stay at least
    KINK_MARGIN from 0, both for ``z_train`` normalised with its batch statistics and for
    ``z_eval`` normalised with the running ones. The running statistics are ``z_eval``'s own
    (as a trained network's are), the mean shifted by up to 0.1 standard deviations and the
    variance scaled by 0.8..1.25, so that eval mode differs from training mode; γ ∈ [0.2, 0.4];
    β's sign alternates by channel, so both slopes of the LeakyReLU are used."""
    c, dims, dev = z_train.shape[1], (0, 2, 3), z_train.device
    var_eval = z_eval.var(dims, unbiased=False)  # biased: one value gives 0, not NaN
    running_mean = z_eval.mean(dims) + 0.1 * var_eval.sqrt() * (torch.rand(c, generator=g) * 2 - 1).to(dev)
    running_var = var_eval * (0.8 + 0.45 * torch.rand(c, generator=g)).to(dev)
    n_train, n_eval = _normalised(z_train), _normalised(z_eval, running_mean, running_var)
    reach = torch.maximum(n_train.abs().amax(dims), n_eval.abs().amax(dims))
    weight = (0.2 + 0.2 * torch.rand(c, generator=g)).to(dev)
    sign = torch.tensor([1.0, -1.0], device=dev).repeat(c)[:c]
    return {"weight": weight, "bias": sign * (weight * reach + KINK_MARGIN), "running_mean": running_mean,
            "running_var": running_var}


@torch.no_grad()
def _kink_free_batchnorms(kw: Dict[str, torch.Tensor], device: torch.device, g: torch.Generator
                          ) -> Dict[str, torch.Tensor]:
    """Both BatchNorms of the block, chosen by :func:`_kink_free_bn` from the activations these
    inputs produce (in fp32 on ``device``); returned on the CPU."""
    import torch.nn.functional as F

    from inpaint_fast.reference.fusion_block import LEAKY_SLOPE, resize_like

    t = {k: v.to(device=device, dtype=torch.float32) for k, v in kw.items()}
    x_k = resize_like(t["image"], t["feat"].shape[-2:])
    raw = torch.sigmoid(F.conv2d(t["feat"], t["map_weight"], t["map_bias"]))
    z1 = F.conv2d(torch.cat([x_k, raw], 1), t["conv1_weight"], t["conv1_bias"])
    bn1 = _kink_free_bn(z1, z1, g)

    def z2(training: bool) -> torch.Tensor:
        n1 = _normalised(z1) if training else _normalised(z1, bn1["running_mean"], bn1["running_var"])
        a1 = F.leaky_relu(n1 * bn1["weight"].view(1, -1, 1, 1) + bn1["bias"].view(1, -1, 1, 1), LEAKY_SLOPE)
        return F.conv2d(a1, t["conv2_weight"], t["conv2_bias"], padding=1)

    bn2 = _kink_free_bn(z2(True), z2(False), g)
    return {f"{name}_{k}": v.cpu() for name, bn in (("bn1", bn1), ("bn2", bn2)) for k, v in bn.items()}


def with_flat_params(fn):
    """``fn(feat, image, params, *, training, momentum, eps)`` called with the benchmark's inputs:
    one keyword argument per parameter, so that the gate, the backward and the state checks can
    name each one."""

    def run(feat, image, *, training, momentum, eps, **params):
        return fn(feat, image, FusionBlockParams(**params), training=training, momentum=momentum, eps=eps)

    return run


def _build_reference(case: Optional[Case], device: Optional[torch.device]):
    from inpaint_fast import reference

    return with_flat_params(reference.fusion_block)


def _build_compile(case: Case, device: torch.device):
    return compiled(_build_reference(case, device))


def _build_ours(backend: str):
    build = our_backend("fusion_block", backend)
    return lambda case, device: with_flat_params(build(case, device))


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
                raise ValueError(f"--dtype: unknown dtype {dtype!r}; expected {one_of(DTYPES)}")
            for size in sweep.sizes:
                for k in levels:
                    if not 0 <= k < len(LEVEL_CHANNELS):
                        raise ValueError(f"--levels: fusion block level {k} is out of range; expected "
                                         f"0..{len(LEVEL_CHANNELS) - 1}")
                    if size % (2**k):
                        raise ValueError(f"--sizes: fusion block image size {size} is not divisible by 2^{k} "
                                         f"(level {k}); expected multiples of {2**k}")
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
        kw.update(_kink_free_batchnorms(kw, device, g))
        kw = {k: v.to(device=device, dtype=dtype) for k, v in kw.items()}
        grad = ("feat",) + WEIGHTS
        for name in grad:
            kw[name].requires_grad_(True)
        kw.update(training=(variant == "train"), momentum=0.1, eps=1e-5)
        return Inputs(kw, grad=grad, state=RUNNING)

    def providers(self) -> Dict[str, Provider]:
        ps = {"reference": Provider("reference", _build_reference)}
        for b in KERNEL_BACKENDS + ("auto",):
            ps[b] = Provider(b, _build_ours(b), default_on=())
        ps["compile"] = Provider("compile", _build_compile, default_on=("cuda",), quick=False)
        return ps

    def oracle(self):
        return _build_reference(None, None)

    def zero_in_exact_arithmetic(self, variant: str) -> Dict[str, str]:
        if variant != "train":
            return {}
        # A training-mode BatchNorm subtracts the batch mean, so the conv biases before it do nothing.
        return {"grad_conv1_bias": "grad_conv1_weight", "grad_conv2_bias": "grad_conv2_weight"}

    def flops(self, case: Case, pass_: str) -> float:
        B, c, h, w, H, W = (case.param(k) for k in ("B", "c", "h", "w", "H", "W"))
        return fusion_block_flops(B, c, h, w, H, W, pass_)

    def bytes(self, case: Case, pass_: str) -> Optional[float]:
        if pass_ != "fwd":
            return None
        B, c, h, w, H, W = (case.param(k) for k in ("B", "c", "h", "w", "H", "W"))
        return fusion_block_bytes(B, c, h, w, H, W, DTYPES[case.dtype].itemsize)

