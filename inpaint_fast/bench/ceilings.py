"""The two ceilings the GPU targets are stated against, measured in the same run as the kernels.

* ``ceiling_gemm`` — a large bf16 GEMM (``torch.mm``, cuBLAS on CUDA): the attainable tensor-core
  rate, in TFLOP/s (2·M·N·K per call). The attention target "fwd at N = 16384 ≥ 40% of the bf16
  GEMM rate" divides by this row.
* ``ceiling_copy`` — a device-to-device copy (``dst.copy_(src)``): the attainable memory
  bandwidth, in GB/s counting the bytes read plus the bytes written (2·size). The fusion-block
  target "≥ 70% of the copy bandwidth" divides by this row.

Both are timed like every provider (:func:`.timing.time_fn`: device events, L2 flushed before each
call, median and p20/p80) and written as ordinary result rows (provider ``torch``, mode ``fwd``).
Sizes on CUDA: 8192³ (≈1.1 TFLOP, a few ms: past any launch or tail effect) and 1 GiB (far beyond
the 50–60 MB L2 of an H100/H200); on the CPU tiny ones, only so that the dry run of
benchmarks/gpu_session.sh exercises the code. Before timing, each result is spot-checked (a GEMM
block against an fp32 product, the copy for equality): a broken library is reported ``wrong`` and
not timed, as the correctness gate does for providers.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from .outcome import Result, failure_status
from .timing import TimingConfig, peak_memory_mb, time_fn

__all__ = ["CEILING_KERNELS", "measure_ceilings"]

CEILING_KERNELS = ("ceiling_gemm", "ceiling_copy")


def _sizes(device: torch.device) -> Tuple[int, int]:
    """(GEMM side, copy bytes) for ``device``."""
    return (8192, 2**30) if device.type == "cuda" else (256, 8 * 2**20)


def _gemm(device: torch.device, n: int, config: TimingConfig) -> Result:
    res = Result("ceiling_gemm", "torch", "fwd", "bf16", f"M{n}-N{n}-K{n}")
    try:
        g = torch.Generator(device=device).manual_seed(0)
        a = torch.randn(n, n, device=device, dtype=torch.bfloat16, generator=g)
        b = torch.randn(n, n, device=device, dtype=torch.bfloat16, generator=g)
        out = torch.empty(n, n, device=device, dtype=torch.bfloat16)
        torch.mm(a, b, out=out)
        k = min(n, 64)
        want = a[:k].float() @ b[:, :k].float()
        err = (out[:k, :k].float() - want).abs().max().item()
        allowed = 2 ** -7 * want.abs().max().item()  # bf16 rounding of the result, ~1 unit
        if not err <= allowed:
            res.status, res.note = "wrong", f"GEMM block max err {err:.3g} > allowed {allowed:.3g}"
            return res
        call = lambda: torch.mm(a, b, out=out)  # noqa: E731
        res.timing, res.peak_mb = time_fn(call, device, config), peak_memory_mb(call, device)
        res.flops = 2.0 * n * n * n
        res.note = "torch.mm, bf16 in and out"
    except Exception as exc:  # noqa: BLE001 - recorded, as for any provider
        res.status, res.note = failure_status(exc)
    return res


def _copy(device: torch.device, nbytes: int, config: TimingConfig) -> Result:
    numel = nbytes // 2
    res = Result("ceiling_copy", "torch", "fwd", "bf16", f"bytes{numel * 2}")
    try:
        src = torch.randn(numel, device=device, dtype=torch.float32).to(torch.bfloat16)
        dst = torch.empty_like(src)
        dst.copy_(src)
        if not torch.equal(dst, src):
            res.status, res.note = "wrong", "the copy differs from its source"
            return res
        call = lambda: dst.copy_(src)  # noqa: E731
        res.timing, res.peak_mb = time_fn(call, device, config), peak_memory_mb(call, device)
        res.nbytes = 2.0 * numel * 2  # read src + write dst
        res.note = "dst.copy_(src); GB/s counts read + write"
    except Exception as exc:  # noqa: BLE001
        res.status, res.note = failure_status(exc)
    return res


def measure_ceilings(device: torch.device, config: TimingConfig = TimingConfig(),
                     sizes: Optional[Tuple[int, int]] = None) -> List[Result]:
    """The GEMM and copy ceilings on ``device`` (``sizes``: (GEMM side, copy bytes), default per device)."""
    n, nbytes = sizes or _sizes(device)
    results = [_gemm(device, n, config), _copy(device, nbytes, config)]
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return results
