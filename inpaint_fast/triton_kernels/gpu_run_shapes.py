"""The shapes, dtypes and layouts the GPU run (benchmarks/gpu_session.sh) launches the Triton kernels with.

Three readers must agree on them exactly: the GPU tests and the benchmark (which run them), and
``python -m inpaint_fast.triton_kernels.aot build-cache`` (which compiles their sm_90 binaries on a CPU
machine beforehand, into a ``TRITON_CACHE_DIR`` the run carries). Triton's cache key is the
*specialisation* of a launch — argument dtypes, 16-byte pointer alignment, which integers equal 1
or are divisible by 16, every constexpr (tile sizes, dot precision, flags), the compile options —
so a GPU test that builds its inputs another way (another layout, a view with an odd offset, gates
in another dtype) gets a cache miss and compiles on the device (1–8 s per kernel). Build inputs
with :func:`attention_inputs` / :func:`fusion_inputs` (or :func:`launch`, which also runs the
backward as the ops' autograd does) and keep autotuning as the case says
(``INPAINT_FAST_TRITON_AUTOTUNE=0`` for ``autotune=False``, see :func:`autotune_mode`).

API (all cases are frozen dataclasses; ``case.name`` is a readable id for pytest):

* ``ATTENTION_TEST_CASES``, ``FUSION_TEST_CASES`` — the GPU tests' cases, most important first
  (tests/gpu_cases.py parametrises the tests over them), single-configuration.
* :func:`attention_bench_cases`, :func:`fusion_bench_cases` — the benchmark's default CUDA sweeps
  (quick and full), derived from ``inpaint_fast.bench`` so they cannot drift from it.
* :func:`gpu_run_cases` — everything the run launches (what the cache is built from).
* :func:`attention_inputs`, :func:`attention_grads`, :func:`fusion_inputs`, :func:`fusion_grads`
  — inputs on a device (``fill=False``: uninitialised, same shapes/strides, for compiling only).
* :func:`launch` — the Triton launchers of one case, forward then (``case.backward``) backward.
* ``SM_COUNT`` — the GPU run's multiprocessors (H200: 132); the fusion block's backward sizes its
  grid from it, so it is part of the specialisation too.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, replace
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch

__all__ = [
    "ATTENTION_TEST_CASES",
    "AttentionCase",
    "FUSION_LEVEL_CHANNELS",
    "FUSION_TEST_CASES",
    "FusionCase",
    "GPU_ARCH",
    "SM_COUNT",
    "attention_bench_cases",
    "attention_grads",
    "attention_inputs",
    "autotune_mode",
    "fp32_precision",
    "fusion_bench_cases",
    "fusion_grads",
    "fusion_inputs",
    "gpu_run_cases",
    "launch",
]

GPU_ARCH = 90  # H200: compute capability 9.0 (Triton compiles sm_90a for it)
SM_COUNT = 132  # H200 SXM multiprocessors
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}  # the GPU envelope
# fp64 also reaches the launchers (the kernel tests' gradcheck dtype; on a GPU the op refuses it).
_ANY_DTYPE = {**DTYPES, "fp64": torch.float64}
FUSION_LEVEL_CHANNELS = (4, 64, 128, 256, 512, 512)  # DFNet's c_k for fuse_0 .. fuse_5
FUSION_MID = 32  # conv1's output channels
EPS = 1e-5


@dataclass(frozen=True)
class AttentionCase:
    """One short_long_attention launch: (B, Cq, H, W) queries, (B, C, H, W) values, Cp = 0: no pre.

    ``precision`` (fp32 only): PyTorch's float32 matmul precision during the call, "highest"
    (→ tf32x3 dots) or "high" (→ tf32). ``layout``: "contiguous", "channels_last" or "transposed"
    (H and W strides swapped: not addressable with one position stride), applied to q, x, pre and
    mask. ``gates``: dtype of gamma and alpha — "fp32" (the tests: fp32 gates with any feature
    dtype, fp64 with fp64) or "same" (the benchmark: the feature dtype); a pointer's dtype is part
    of the specialisation. ``autotune``: whether the launch autotunes (else the fixed configuration)."""

    B: int
    Cq: int
    C: int
    Cp: int
    H: int
    W: int
    dtype: str
    precision: str = "highest"
    layout: str = "contiguous"
    backward: bool = True
    autotune: bool = False
    gates: str = "fp32"

    @property
    def N(self) -> int:
        return self.H * self.W

    @property
    def torch_dtype(self) -> torch.dtype:
        return _ANY_DTYPE[self.dtype]

    @property
    def gate_dtype(self) -> torch.dtype:
        if self.gates not in ("fp32", "same"):
            raise ValueError(f"AttentionCase.gates={self.gates!r}: expected 'fp32' or 'same'")
        return self.torch_dtype if self.gates == "same" or self.dtype == "fp64" else torch.float32

    @property
    def name(self) -> str:
        prec = f"-{self.precision}" if self.dtype == "fp32" else ""
        tags = "".join(t for t, on in (("-" + self.layout, self.layout != "contiguous"), ("-fwd", not self.backward),
                                       ("-tuned", self.autotune), ("-gates_same", self.gates == "same")) if on)
        return f"attn-{self.dtype}{prec}-B{self.B}-Cq{self.Cq}-C{self.C}-Cp{self.Cp}-{self.H}x{self.W}{tags}"


@dataclass(frozen=True)
class FusionCase:
    """One fusion_block launch: feat (B, c, h, w), image (B, 3, H, W), ``c_alpha`` alpha channels.
    :meth:`dfnet` makes DFNet's level ``k`` of a ``size``² image (c = FUSION_LEVEL_CHANNELS[k],
    h = w = size / 2^k). ``layout`` as for :class:`AttentionCase`, applied to feat and image.
    ``precision`` only steers the reference the tests compare with (the kernels have no dots)."""

    B: int
    c: int
    h: int
    w: int
    H: int
    W: int
    c_alpha: int
    training: bool
    dtype: str
    precision: str = "highest"
    layout: str = "contiguous"
    backward: bool = True

    @classmethod
    def dfnet(cls, B: int, level: int, size: int, c_alpha: int, training: bool, dtype: str, **kw) -> "FusionCase":
        h = size >> level
        return cls(B=B, c=FUSION_LEVEL_CHANNELS[level], h=h, w=h, H=size, W=size, c_alpha=c_alpha,
                   training=training, dtype=dtype, **kw)

    @property
    def torch_dtype(self) -> torch.dtype:
        return _ANY_DTYPE[self.dtype]

    @property
    def autotune(self) -> bool:
        return False  # the fusion block's tiles are fixed

    @property
    def name(self) -> str:
        mode = ("train" if self.training else "eval") + ("-fwd+bwd" if self.backward else "-fwd")
        prec = f"-{self.precision}" if self.dtype == "fp32" else ""
        lay = "" if self.layout == "contiguous" else f"-{self.layout}"
        return (f"fusion-{self.dtype}{prec}-B{self.B}-c{self.c}-{self.h}x{self.w}-img{self.H}x{self.W}"
                f"-A{self.c_alpha}-{mode}{lay}")


# ---------------------------------------------------------------------------------------------
# The GPU tests' cases
# ---------------------------------------------------------------------------------------------
# (dtype, fp32 matmul precision) of the GPU tests, in their order.
TEST_PRECISIONS = (("bf16", "highest"), ("fp16", "highest"), ("fp32", "highest"), ("fp32", "high"))
# (B, Cq, C, Cp, H, W). PIC's layer at 256² / 512² / 1024² (N = 1024, 4096, 16384) and odd N with
# PIC's channels (N = 1; 97 and 1025, not multiples of any tile), then channel counts that are not
# PIC's: C, Cp not powers of two (a value chunk straddling x and pre), and C = 256 (two 128-wide
# value chunks, Cq = 64). Odd N keep PIC's channels on purpose: the kernels specialise on the
# channel blocks, so every extra channel triple costs compiles (and cache space).
PIC_1024 = (8, 32, 128, 128, 32, 32)
PIC_4096 = (8, 32, 128, 128, 64, 64)
PIC_16384 = (1, 32, 128, 128, 128, 128)
ATTN_ODD = ((2, 32, 128, 128, 1, 1), (3, 32, 128, 128, 1, 97), (1, 32, 128, 128, 25, 41))
ATTN_GENERAL = ((2, 16, 96, 40, 9, 13), (1, 64, 256, 256, 16, 16))


def _attention(shape, dtype, precision, with_pre=True, layout="contiguous") -> AttentionCase:
    B, Cq, C, Cp, H, W = shape
    return AttentionCase(B=B, Cq=Cq, C=C, Cp=Cp if with_pre else 0, H=H, W=W, dtype=dtype, precision=precision,
                         layout=layout)


def _attention_test_cases() -> List[AttentionCase]:
    """Most important first (pytest runs them in this order, so a stage cut off by its time limit
    has answered the first questions)."""
    both = (True, False)
    out = [_attention(PIC_4096, d, p, w) for d, p in TEST_PRECISIONS for w in both]
    out += [_attention(PIC_1024, d, p, w) for d, p in TEST_PRECISIONS for w in both]
    out += [_attention(PIC_16384, "bf16", "highest")]
    out += [_attention(s, d, p, w) for s in ATTN_ODD for d, p in TEST_PRECISIONS for w in both]
    out += [_attention(s, d, p, w) for s in ATTN_GENERAL for d, p in (("bf16", "highest"), ("fp32", "highest"))
            for w in both]
    out += [_attention(ATTN_ODD[1], "bf16", "highest", layout=lay) for lay in ("channels_last", "transposed")]
    return out


# (B, c, h, w, H, W, A) beyond DFNet's levels: odd sizes (a non-integer resize ratio, one-pixel
# rows, c not a power of two), and a larger case with several tiles per program in the a1 backward.
FUSION_ODD = ((3, 5, 7, 9, 28, 36, 3), (2, 12, 7, 9, 10, 14, 1), (2, 3, 1, 3, 1, 3, 3))
FUSION_LARGE = (4, 128, 64, 96, 128, 192, 3)


def _fusion(shape, dtype, precision, training, layout="contiguous") -> FusionCase:
    B, c, h, w, H, W, A = shape
    return FusionCase(B=B, c=c, h=h, w=w, H=H, W=W, c_alpha=A, training=training, dtype=dtype,
                      precision=precision, layout=layout)


def _fusion_test_cases() -> List[FusionCase]:
    """DFNet's six levels at a 256² image (B = 2, c_alpha 3 and 1) in every precision, then the
    odd and large shapes in bf16 and fp32, then the strided layouts."""
    both = (False, True)
    out = [FusionCase.dfnet(2, k, 256, a, t, d, precision=p) for k in range(len(FUSION_LEVEL_CHANNELS))
           for a in (3, 1) for d, p in TEST_PRECISIONS for t in both]
    out += [_fusion(s, d, p, t) for s in FUSION_ODD for d, p in (("bf16", "highest"), ("fp32", "highest"))
            for t in both]
    out += [_fusion(FUSION_LARGE, d, p, True) for d, p in (("bf16", "highest"), ("fp32", "highest"))]
    out += [_fusion(FUSION_ODD[0], "bf16", "highest", True, layout=lay) for lay in ("channels_last", "transposed")]
    return out


ATTENTION_TEST_CASES: Tuple[AttentionCase, ...] = tuple(_attention_test_cases())
FUSION_TEST_CASES: Tuple[FusionCase, ...] = tuple(_fusion_test_cases())


# ---------------------------------------------------------------------------------------------
# The benchmark's cases (inpaint_fast/bench default_sweep for cuda, quick and full)
# ---------------------------------------------------------------------------------------------
def attention_bench_cases(autotune: bool = True) -> List[AttentionCase]:
    """The attention benchmark's CUDA sweeps (quick ∪ full), in the benchmark's own layout
    (contiguous, gates in the feature dtype, default matmul precision "highest")."""
    from inpaint_fast.bench.short_long_attention import ShortLongAttentionBench

    bench, cuda = ShortLongAttentionBench(), torch.device("cuda")
    seen, out = set(), []
    for quick in (True, False):
        sweep = bench.default_sweep(cuda, quick)
        for case in bench.cases(sweep, cuda):
            p = dict(case.params)
            c = AttentionCase(B=p["B"], Cq=p["Cq"], C=p["C"], Cp=p["Cp"], H=p["H"], W=p["W"], dtype=case.dtype,
                              autotune=autotune, gates="same")
            if c not in seen:
                seen.add(c)
                out.append(c)
    return out


def fusion_bench_cases() -> List[FusionCase]:
    """The fusion-block benchmark's CUDA sweeps (quick ∪ full): every mode runs the forward, the
    fwd+bwd modes the backward too, so each (shape, variant) is one case with backward."""
    from inpaint_fast.bench.fusion_block import ALPHA, FusionBlockBench

    bench, cuda = FusionBlockBench(), torch.device("cuda")
    seen, out = set(), []
    for quick in (True, False):
        sweep = bench.default_sweep(cuda, quick)
        for case in bench.cases(sweep, cuda):
            p = dict(case.params)
            for mode in sweep.modes:
                variant, _, passes = mode.partition("-")
                c = FusionCase(B=p["B"], c=p["c"], h=p["h"], w=p["w"], H=p["H"], W=p["W"], c_alpha=ALPHA,
                               training=variant == "train", dtype=case.dtype, backward="bwd" in passes)
                if c not in seen:
                    seen.add(c)
                    out.append(c)
    return out


def gpu_run_cases(bench_autotune: bool = True) -> List:
    """Every case the GPU run launches: the tests', then the benchmark's."""
    return [*ATTENTION_TEST_CASES, *FUSION_TEST_CASES, *attention_bench_cases(bench_autotune), *fusion_bench_cases()]


# ---------------------------------------------------------------------------------------------
# Inputs and launches
# ---------------------------------------------------------------------------------------------
def _apply_layout(t: Optional[torch.Tensor], layout: str) -> Optional[torch.Tensor]:
    if t is None:
        return None
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "transposed":
        return t.transpose(2, 3).contiguous().transpose(2, 3)
    if layout != "contiguous":
        raise ValueError(f"layout {layout!r}: expected 'contiguous', 'channels_last' or 'transposed'")
    return t


def _maker(device, dtype, fill: bool, generator: torch.Generator):
    def make(*shape, kind="randn", scale=1.0):
        if not fill:
            return torch.empty(*shape, dtype=dtype, device=device)
        t = (torch.randn if kind == "randn" else torch.rand)(*shape, generator=generator) * scale
        return t.to(device=device, dtype=dtype)

    return make


def attention_inputs(case: AttentionCase, device="cuda", *, seed: int = 0, fill: bool = True) -> Dict[str, Optional[torch.Tensor]]:
    """q, x, gamma, pre, mask, alpha of ``case`` (as inpaint_fast.bench makes them: q ~ N(0, 1)·Cq^-¼,
    x, pre ~ N(0, 1), mask ~ U(0, 1) in the case dtype, gamma = 0.7, alpha = 0.4 in its gate dtype);
    pre, mask and alpha are None when Cp = 0."""
    dtype = case.torch_dtype
    make = _maker(device, dtype, fill, torch.Generator().manual_seed(seed))
    B, H, W = case.B, case.H, case.W
    gates = case.gate_dtype
    out = dict(q=make(B, case.Cq, H, W, scale=case.Cq**-0.25), x=make(B, case.C, H, W),
               gamma=torch.tensor([0.7], dtype=gates, device=device), pre=None, mask=None, alpha=None)
    if case.Cp:
        out.update(pre=make(B, case.Cp, H, W), mask=make(B, 1, H, W, kind="rand"),
                   alpha=torch.tensor([0.4], dtype=gates, device=device))
    for k in ("q", "x", "pre", "mask"):
        out[k] = _apply_layout(out[k], case.layout)
    return out


def attention_grads(case: AttentionCase, device="cuda", *, seed: int = 1, fill: bool = True):
    """(grad_y, grad_cf) as the op's backward receives them: contiguous, in the case dtype; grad_cf
    is (0,) without pre (the op passes zeros_like of the empty ca)."""
    make = _maker(device, case.torch_dtype, fill, torch.Generator().manual_seed(seed))
    gy = make(case.B, case.C, case.H, case.W)
    gcf = make(case.B, case.Cp, case.H, case.W) if case.Cp else torch.zeros((0,), dtype=case.torch_dtype, device=device)
    return gy, gcf


from inpaint_fast.fusion_block_params import PARAM_NAMES  # noqa: E402  (the op's order)


def fusion_inputs(case: FusionCase, device="cuda", *, seed: int = 0, fill: bool = True) -> Dict[str, torch.Tensor]:
    """feat (B, c, h, w), image (B, 3, H, W) in the case layout and the block's 16 parameters and
    buffers (contiguous, all in the case dtype, as the op requires), with the benchmark's scales (without its
    kink-free BatchNorm choice: tests that need it take inputs from inpaint_fast.bench)."""
    dtype, A, M = case.torch_dtype, case.c_alpha, FUSION_MID
    g = torch.Generator().manual_seed(seed)
    make = _maker(device, dtype, fill, g)
    positive = (lambda n: make(n, kind="rand") + 0.5) if fill else (lambda n: make(n))
    c = case.c
    out = dict(
        feat=_apply_layout(make(case.B, c, case.h, case.w), case.layout),
        image=_apply_layout(make(case.B, 3, case.H, case.W, kind="rand"), case.layout),
        map_weight=make(3, c, 1, 1, scale=c**-0.5), map_bias=make(3, scale=0.1),
        conv1_weight=make(M, 6, 1, 1, scale=6**-0.5), conv1_bias=make(M, scale=0.1),
        bn1_weight=make(M, kind="rand") + 0.5 if fill else make(M), bn1_bias=make(M, scale=0.1),
        bn1_running_mean=make(M, scale=0.1), bn1_running_var=positive(M),
        conv2_weight=make(A, M, 3, 3, scale=(9 * M) ** -0.5), conv2_bias=make(A, scale=0.1),
        bn2_weight=make(A, kind="rand") + 0.5 if fill else make(A), bn2_bias=make(A, scale=0.1),
        bn2_running_mean=make(A, scale=0.1), bn2_running_var=positive(A),
        conv3_weight=make(A, A, 1, 1, scale=A**-0.5), conv3_bias=make(A, scale=0.1),
    )  # fmt: skip
    return out


def fusion_grads(case: FusionCase, device="cuda", *, seed: int = 1, fill: bool = True):
    """(grad_out, grad_alpha, grad_raw) as the op's backward receives them: contiguous."""
    make = _maker(device, case.torch_dtype, fill, torch.Generator().manual_seed(seed))
    B, h, w = case.B, case.h, case.w
    return make(B, 3, h, w), make(B, case.c_alpha, h, w), make(B, 3, h, w)


@contextlib.contextmanager
def fp32_precision(precision: str) -> Iterator[None]:
    """PyTorch's float32 matmul precision set to "highest" or "high" for the block, then restored.
    Through the legacy setter, which every supported torch has: once a program uses the new
    ``torch.backends.*.fp32_precision`` API the legacy getter raises, so mixing them here would
    break any caller that reads the precision the legacy way (the kernels read either:
    ``inpaint_fast.triton_kernels.fp32_matmul_allows_tf32``)."""
    if precision not in ("highest", "high"):
        raise ValueError(f"precision {precision!r}: expected 'highest' or 'high'")
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


@contextlib.contextmanager
def autotune_mode(enabled: bool) -> Iterator[None]:
    """INPAINT_FAST_TRITON_AUTOTUNE set for the block (read by the launchers at each launch)."""
    previous = os.environ.get("INPAINT_FAST_TRITON_AUTOTUNE")
    os.environ["INPAINT_FAST_TRITON_AUTOTUNE"] = "1" if enabled else "0"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["INPAINT_FAST_TRITON_AUTOTUNE"]
        else:
            os.environ["INPAINT_FAST_TRITON_AUTOTUNE"] = previous


def launch(case, device="cuda", *, fill: bool = True) -> Tuple[tuple, Optional[tuple]]:
    """Runs the Triton launchers of ``case`` as the op does: forward, then (``case.backward``) the
    backward with contiguous upstream gradients and the tensors the forward saved. Returns
    (forward outputs, backward outputs or None)."""
    with autotune_mode(case.autotune):
        if isinstance(case, AttentionCase):
            return _launch_attention(case, device, fill)
        if isinstance(case, FusionCase):
            return _launch_fusion(case, device, fill)
    raise TypeError(f"launch: expected an AttentionCase or a FusionCase, got {type(case).__name__}")


def _launch_attention(case: AttentionCase, device, fill: bool):
    from . import short_long_attention as K

    i = attention_inputs(case, device, fill=fill)
    scale = 1.0
    with fp32_precision(case.precision) if case.dtype == "fp32" else contextlib.nullcontext():
        fwd = K.short_long_attention_fwd(i["q"], i["x"], i["gamma"], i["pre"], i["mask"], i["alpha"], scale)
        if not case.backward:
            return fwd, None
        _y, _cf, sa, ca, lse = fwd
        gy, gcf = attention_grads(case, device, fill=fill)
        bwd = K.short_long_attention_bwd(gy, gcf, i["q"], i["x"], i["gamma"], i["pre"], i["mask"], i["alpha"],
                                         sa, ca, lse, scale)
    return fwd, bwd


def _launch_fusion(case: FusionCase, device, fill: bool):
    from . import fusion_block as K

    i = fusion_inputs(case, device, fill=fill)
    params = [i[k] for k in PARAM_NAMES]
    fwd = K.fusion_block_fwd(i["feat"], i["image"], *params, case.training, EPS)
    if not case.backward:
        return fwd, None
    _out, _alpha, _raw, m1, v1, m2, v2 = fwd
    p = dict(zip(PARAM_NAMES, params))
    bwd = K.fusion_block_bwd(
        *fusion_grads(case, device, fill=fill), i["feat"], i["image"],
        p["map_weight"], p["map_bias"], p["conv1_weight"], p["conv1_bias"], p["bn1_weight"], p["bn1_bias"], m1, v1,
        p["conv2_weight"], p["conv2_bias"], p["bn2_weight"], p["bn2_bias"], m2, v2,
        p["conv3_weight"], p["conv3_bias"], case.training, EPS,
    )  # fmt: skip
    return fwd, bwd


def with_autotune(cases: Sequence, enabled: bool) -> List:
    """The attention cases of ``cases`` with autotuning set to ``enabled`` (fusion cases unchanged)."""
    return [replace(c, autotune=enabled) if isinstance(c, AttentionCase) else c for c in cases]
