"""End-to-end benchmark: one whole training step of PIC and DFNet, fused ops vs the reference path.

A step is exactly what ``inpaint-fast train`` runs (:class:`inpaint_fast.training.tasks.PICTask` /
``DFNetTask``): PIC = E+G forward, D step on both discriminators, G/E step; DFNet = forward,
loss (L1 + VGG16 perceptual/style + TV), backward, Adam step. The networks are identical between
providers; only the backend of the fused ops differs (``reference`` = the pure-PyTorch ops, which
materialise PIC's N×N attention map; ``cpu``/``triton``/``cuda``/``auto`` = this package's kernels).

For each (model, size, provider):

1. **gate** — build the model from the same seed, run one step on the same batch, and compare
   every loss of that step with the reference provider's (relative 1e-3 in fp32, 5e-2 under
   autocast: the losses are means over whole images, so the kernels' rounding differences stay
   far below that while a wrong kernel moves them by much more). A wrong provider is reported, not
   timed. An out-of-memory is recorded as ``oom`` (the reference path at PIC 1024² is the case the
   fused attention exists for).
2. **time** further steps (warm-up excluded; CUDA: device events, CPU: torch.utils.benchmark),
   and measure the **peak memory** of one step above what the model, its optimiser states and the
   batch already hold (activations, gradients, workspace).

Rows go to the one results CSV (kernel ``train_step_pic`` / ``train_step_dfnet``, mode
``train-step``, dtype = the autocast dtype or fp32, shape ``B<batch>-img<size>``) with ms,
images_per_s, peak_mb and speedup_vs_reference. DFNet's VGG16 gets random weights here: the
timing does not depend on them, and no weights can be downloaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .outcome import Result, attach_speedups, failure_status
from .timing import TimingConfig, peak_memory_mb, time_fn

__all__ = ["MODELS", "TrainCase", "default_cases", "run_train_bench"]

MODELS = ("pic", "dfnet")
AMP_DTYPES = {"off": "fp32", "bf16": "bf16", "fp16": "fp16"}
GATE_RTOL = {"off": 1e-3, "bf16": 5e-2, "fp16": 5e-2}
# A training step lasts 10 ms to seconds: time whole steps for longer than the op benchmarks do.
STEP_TIMING = TimingConfig(min_run_time=2.0, min_reps=3, warmup_time=0.0, gpu_warmup_ms=200.0, gpu_rep_ms=2000.0)
QUICK_STEP_TIMING = TimingConfig(min_run_time=0.5, min_reps=2, warmup_time=0.0, gpu_warmup_ms=50.0, gpu_rep_ms=500.0)


@dataclass(frozen=True)
class TrainCase:
    model: str  # "pic" | "dfnet"
    size: int  # square image side in pixels
    batch: int
    amp: str = "off"  # "off" | "bf16" | "fp16"

    @property
    def kernel(self) -> str:
        return f"train_step_{self.model}"

    @property
    def shape(self) -> str:
        return f"B{self.batch}-img{self.size}"

    @property
    def dtype(self) -> str:
        return AMP_DTYPES[self.amp]


def default_cases(device: torch.device, quick: bool = False) -> List[TrainCase]:
    """The default grid: PIC and DFNet at 256², 512², 1024² on CUDA (PIC batch 8, DFNet batch 6:
    the papers' per-GPU batches); on CPU one small step of each (the full grid takes hours there)."""
    if device.type == "cuda":
        sizes = (256,) if quick else (256, 512, 1024)
        return [TrainCase("pic", s, 8) for s in sizes] + [TrainCase("dfnet", s, 6) for s in sizes]
    return [TrainCase("pic", 128 if quick else 256, 1), TrainCase("dfnet", 256, 2)]  # DFNet: B=1 at 256² hits BN on 1x1


def _batch(case: TrainCase, device: torch.device, seed: int) -> Dict[str, torch.Tensor]:
    from inpaint_fast.data import center_mask

    g = torch.Generator().manual_seed(seed)
    image = torch.rand(case.batch, 3, case.size, case.size, generator=g)
    mask = center_mask(case.size).expand(case.batch, 1, case.size, case.size).contiguous()
    return {"image": image.to(device), "mask": mask.to(device)}


def build_step(case: TrainCase, backend: str, device: torch.device, seed: int = 0):
    """(step, batch): ``step()`` runs one training step of a model built from ``seed`` whose
    fused ops use ``backend``, and returns that step's losses as floats."""
    from inpaint_fast.training.amp import Precision
    from inpaint_fast.training.distributed import DistInfo

    torch.manual_seed(seed)
    batch = _batch(case, device, seed)
    if case.model == "pic":
        from inpaint_fast.models.pic import PIC
        from inpaint_fast.training.tasks import PICTask

        task = PICTask(PIC(backend=backend).to(device))
    elif case.model == "dfnet":
        from inpaint_fast.models.dfnet import DFNet, DFNetLoss, VGG16Features
        from inpaint_fast.training.tasks import DFNetTask

        task = DFNetTask(DFNet(backend=backend).to(device), DFNetLoss(VGG16Features()).to(device))
    else:
        raise ValueError(f"model: expected one of {MODELS}, got {case.model!r}")
    task.setup(DistInfo(device=device), batch)
    task.train(True)
    precision = Precision(case.amp, device.type)
    return (lambda: task.train_step(batch, precision)), batch


def _gate(losses: Dict[str, float], reference: Optional[Dict[str, float]], amp: str) -> Tuple[str, str]:
    if reference is None:
        return "unverified", "the reference step could not run to check it"
    rtol = GATE_RTOL[amp]
    worst, worst_key = 0.0, ""
    for key, want in reference.items():
        got = losses.get(key, math.nan)
        err = abs(got - want) / max(abs(want), 1e-6)
        if math.isnan(err):
            err = math.inf  # a NaN loss is as wrong as it gets
        if err > worst:
            worst, worst_key = err, key
    if not worst <= rtol:
        return "wrong", f"step losses differ from the reference: {worst_key} relative error {worst:.2e} > {rtol:g}"
    return "ok", f"first-step losses within {worst:.1e} (relative) of the reference"


def run_train_bench(
    cases: Sequence[TrainCase],
    providers: Sequence[str],
    device: torch.device,
    config: TimingConfig = STEP_TIMING,
    *,
    progress=None,
    seed: int = 0,
) -> List[Result]:
    """Gate, time and measure every (case, provider); ``providers`` should start with "reference"
    (the gate's oracle). ``progress``: a tqdm bar advanced once per (case, provider)."""
    results: List[Result] = []
    for case in cases:
        reference_losses: Optional[Dict[str, float]] = None
        for provider in providers:
            if progress is not None:
                progress.set_postfix_str(f"{case.kernel} {provider} {case.shape}", refresh=True)
            res = Result(case.kernel, provider, "train-step", case.dtype, case.shape, items=case.batch)
            try:
                step, _ = build_step(case, provider, device, seed)
                losses = step()  # also the warm-up: allocator, autotuning, optimiser states
                if provider == "reference":
                    reference_losses, res.note = losses, "oracle of the gate"
                else:
                    res.status, res.note = _gate(losses, reference_losses, case.amp)
                if res.status in ("ok", "unverified"):
                    step()
                    res.timing = time_fn(step, device, config)
                    res.peak_mb = peak_memory_mb(step, device)
            except Exception as exc:  # noqa: BLE001 - recorded in the CSV, the sweep goes on
                res.status, res.note = failure_status(exc)
            finally:
                step = None  # free the model before the next provider builds its own
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            results.append(res)
            if progress is not None:
                progress.update(1)
    attach_speedups(results)
    return results
