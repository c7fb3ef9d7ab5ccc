"""Benchmark of ``short_long_attention`` (PIC's short+long-range attention,
docs/short_long_attention.md; how it is measured: benchmarks/README.md).

Cases are PIC's layer: C = Cp = 128 value channels, Cq = 32 query/key channels, with ``pre``,
``mask`` and ``alpha`` (the long-range term), at N = (S/8)² positions for an S×S input image
(attention at input/8: N = 1 024 at 256², 4 096 at 512², 16 384 at 1024²). Unless a batch is
given, B·N is held constant (4 096 on CPU, 16 384 on CUDA, i.e. PIC's generator batch of 16 at
256²).

FLOPs (matmuls only, docs/short_long_attention.md#cost):
    fwd      2·B·N²·(Cq + C + Cp)           scores, then P·[x | pre]
    bwd      2·B·N²·(3·Cq + 2·(C + Cp))     recompute scores, dq via dS and dSᵀ, dP and dV per stream
    fwd+bwd  the sum
reported as TFLOP/s and, in CPU runs of ``inpaint-fast bench``, as ``fraction_of_gemm``: the
FLOP rate over that of the run's fp32 2048³ GEMM ceiling (:mod:`.ceilings`).

Inputs: q ~ N(0, 1)·Cq^(-1/4), so scores qᵢ·qⱼ have a diagonal of about √Cq and off-diagonal
spread about 1 (a peaked but not one-hot softmax); x, pre ~ N(0, 1); mask ~ U(0, 1) (fractional
values are allowed); gamma = 0.7, alpha = 0.4 (PIC starts them at 0, which would hide errors in
the attention outputs from the gate).

Providers: ``reference`` (eager, materialises N×N), this package's backends available on the
device (``cpu``, ``triton``, ``cuda``; ``auto`` on request), and, by default on CUDA only,
``compile`` (torch.compile of the reference), ``sdpa`` (``F.scaled_dot_product_attention(qᵀ, qᵀ,
[x|pre]ᵀ, scale=1)`` plus the epilogue in eager PyTorch; PyTorch picks the SDPA backend) and
``flex`` (compiled FlexAttention plus the eager epilogue). Any of them can be requested on CPU.
"""

from __future__ import annotations

import functools
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F

from ..backends import KERNEL_BACKENDS
from .op_bench import DTYPES, Case, Inputs, OpBench, Provider, Sweep, Unavailable, one_of
from .providers import compiled, our_backend

__all__ = ["ShortLongAttentionBench", "attention_flops"]

C_DEFAULT, CQ_DEFAULT, CP_DEFAULT = 128, 32, 128
PIC_CHANNELS = ((CQ_DEFAULT, C_DEFAULT, CP_DEFAULT),)
# The general sweep of the full runs, at one size (N = 4096): narrower and wider than PIC, a head
# dim that is not a power of two, and PIC's discriminator mode (no pre). (Cq, C, Cp).
GENERAL_CHANNELS = ((16, 64, 64), (48, 192, 96), (64, 256, 256), (32, 128, 0))
GENERAL_SIZE = 512


def attention_flops(B: int, N: int, Cq: int, C: int, Cp: int, pass_: str) -> float:
    """Matmul FLOPs of one pass (see the module docstring)."""
    fwd = 2.0 * B * N * N * (Cq + C + Cp)
    bwd = 2.0 * B * N * N * (3 * Cq + 2 * (C + Cp))
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[pass_]


def _epilogue(o: torch.Tensor, x, gamma, pre, mask, alpha):
    """PIC's gates and residuals applied to the un-gated attention outputs o = P·[x | pre]."""
    C = x.shape[1]
    y = gamma.reshape(()) * o[:, :C] + x
    if pre is None:
        return y, None
    cf = alpha.reshape(()) * (1 - mask) * o[:, C:] + mask * pre
    return y, cf


def _as_sequence(t: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 1, N, C): one head, positions as the sequence, contiguous."""
    return t.flatten(2).transpose(1, 2).unsqueeze(1).contiguous()


def _attention_fn(attend):
    """(q, x, gamma, pre, mask, alpha) -> (y, cf) with ``attend(qt, kt, vt)`` for P·V."""

    def fn(q, x, gamma, pre=None, mask=None, alpha=None):
        B, _, H, W = q.shape
        qt = _as_sequence(q)
        vt = _as_sequence(x if pre is None else torch.cat([x, pre], dim=1))
        o = attend(qt, qt, vt)  # (B, 1, N, C + Cp)
        o = o.squeeze(1).transpose(1, 2).reshape(B, -1, H, W)
        return _epilogue(o, x, gamma, pre, mask, alpha)

    return fn


def _build_reference(case: Case, device: torch.device):
    from inpaint_fast import reference

    return functools.partial(reference.short_long_attention, scale=1.0)


def _build_sdpa(case: Case, device: torch.device):
    return _attention_fn(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, scale=1.0))


def _build_flex(case: Case, device: torch.device):
    try:
        from torch.nn.attention.flex_attention import flex_attention
    except ImportError as exc:
        raise Unavailable(f"FlexAttention needs torch >= 2.5 ({exc})")
    flex = compiled(flex_attention)
    return _attention_fn(lambda q, k, v: flex(q, k, v, scale=1.0))


def _build_compile(case: Case, device: torch.device):
    return compiled(_build_reference(case, device))


class ShortLongAttentionBench(OpBench):
    kernel = "short_long_attention"
    aliases = ("attention", "short_long_attention")
    variants = ("",)
    output_names = ("y", "cf")

    def default_sweep(self, device: torch.device, quick: bool) -> Sweep:
        if device.type == "cuda":
            if quick:
                return Sweep(sizes=(256, 512, 1024), dtypes=("fp32", "bf16"), modes=("fwd", "fwd+bwd"),
                             channels=PIC_CHANNELS)
            return Sweep(sizes=(128, 256, 512, 1024), dtypes=("fp32", "bf16", "fp16"), modes=("fwd", "bwd", "fwd+bwd"))
        if quick:
            return Sweep(sizes=(256, 512), dtypes=("fp32",), modes=("fwd", "fwd+bwd"), batch=1, channels=PIC_CHANNELS)
        return Sweep(sizes=(128, 256, 512, 1024), dtypes=("fp32",), modes=("fwd", "bwd", "fwd+bwd"))

    def cases(self, sweep: Sweep, device: torch.device) -> List[Case]:
        bn = 16384 if device.type == "cuda" else 4096
        out = []
        for dtype in sweep.dtypes:
            if dtype not in DTYPES:
                raise ValueError(f"--dtype: unknown dtype {dtype!r}; expected {one_of(DTYPES)}")
            for size, (Cq, C, Cp) in self._size_channels(sweep):
                if size % 8:
                    raise ValueError(f"--sizes: attention size {size} is not a multiple of 8 (the attention runs at "
                                     "input/8); expected multiples of 8")
                if min(Cq, C) < 1 or Cp < 0:
                    raise ValueError(f"--channels: Cq={Cq}, C={C}, Cp={Cp}; expected Cq >= 1, C >= 1 and Cp >= 0")
                H = W = size // 8
                N = H * W
                B = sweep.batch or max(1, bn // N)
                shape = f"B{B}-C{C}-Cq{Cq}-Cp{Cp}-N{N}"
                out.append(Case(self.kernel, dtype, shape, (("B", B), ("C", C), ("Cq", Cq), ("Cp", Cp),
                                                            ("H", H), ("W", W))))
        return out

    @staticmethod
    def _size_channels(sweep: Sweep) -> List[Tuple[int, Tuple[int, int, int]]]:
        """(size, (Cq, C, Cp)) pairs: every size × ``sweep.channels`` when given; otherwise (the
        full default grid) every size at PIC's channels plus the general channel sweep at 512²."""
        if sweep.channels:
            return [(size, ch) for size in sweep.sizes for ch in sweep.channels]
        pairs = [(size, ch) for size in sweep.sizes for ch in PIC_CHANNELS]
        if GENERAL_SIZE in sweep.sizes:
            pairs += [(GENERAL_SIZE, ch) for ch in GENERAL_CHANNELS]
        return pairs

    def make_inputs(self, case: Case, device: torch.device, variant: str = "", seed: int = 0) -> Inputs:
        B, C, Cq, Cp, H, W = (case.param(k) for k in ("B", "C", "Cq", "Cp", "H", "W"))
        dtype = DTYPES[case.dtype]
        g = torch.Generator().manual_seed(seed)

        def t(*shape, kind="randn", scale=1.0):
            x = (torch.randn if kind == "randn" else torch.rand)(*shape, generator=g) * scale
            return x.to(device=device, dtype=dtype)

        kw = dict(q=t(B, Cq, H, W, scale=Cq ** -0.25), x=t(B, C, H, W),
                  gamma=torch.tensor([0.7], device=device, dtype=dtype))
        grad = ["q", "x", "gamma"]
        if Cp:
            kw.update(pre=t(B, Cp, H, W), mask=t(B, 1, H, W, kind="rand"),
                      alpha=torch.tensor([0.4], device=device, dtype=dtype))
            grad += ["pre", "alpha"]
        for name in grad:
            kw[name].requires_grad_(True)
        return Inputs(kw, grad=tuple(grad))

    def providers(self) -> Dict[str, Provider]:
        ps = {"reference": Provider("reference", _build_reference)}
        for b in KERNEL_BACKENDS + ("auto",):
            ps[b] = Provider(b, our_backend("short_long_attention", b, scale=1.0), default_on=())
        ps["compile"] = Provider("compile", _build_compile, default_on=("cuda",), quick=False)
        ps["sdpa"] = Provider("sdpa", _build_sdpa, default_on=("cuda",))
        ps["flex"] = Provider("flex", _build_flex, default_on=("cuda",), quick=False)
        return ps

    def oracle(self):
        return _build_reference(None, None)

    def flops(self, case: Case, pass_: str) -> float:
        B, C, Cq, Cp, H, W = (case.param(k) for k in ("B", "C", "Cq", "Cp", "H", "W"))
        return attention_flops(B, H * W, Cq, C, Cp, pass_)

