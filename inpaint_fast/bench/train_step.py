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
2. **peak memory** of the next step (the second warm-up step) above what the model, its optimiser
   states and the batch already hold (activations, gradients, workspace).
3. **time** further steps (warm-up excluded; CUDA: device events, CPU: torch.utils.benchmark
   within ``STEP_TIMING``'s budget), or, with ``reps=N`` (``--reps N``), exactly N steps timed
   one by one: at large sizes a step lasts seconds to minutes, and gate + peak + N steps is all
   it costs (the note then says ``N timed steps``). p20/p50/p80 are over the timed steps either way.

``memory_limit_gib`` (``--memory-limit GIB``) runs each (case, provider) in a child process whose
memory is capped (:mod:`.memory_limit`, RLIMIT_DATA): an allocation over the cap fails there as a
real allocation failure and is recorded as ``oom`` while the sweep goes on, and every row's note
states the limit. The child returns the Result and its first-step losses; the reference's losses
gate the others as without a limit, and when the reference could not run they are
``unverified`` with the reason in the note.

Rows go to the one results CSV (kernel ``train_step_pic`` / ``train_step_dfnet``, mode
``train-step``, dtype = the autocast dtype or fp32, shape ``B<batch>-img<size>``) with ms,
images_per_s, peak_mb and speedup_vs_reference. DFNet's VGG16 gets random weights here: the
timing does not depend on them, and no weights can be downloaded.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .memory_limit import ChildFailed, limit_note, run_limited
from .outcome import Result, attach_speedups, failure_status
from .timing import Timing, TimingConfig, peak_memory_mb, quantiles, time_fn

__all__ = ["MODELS", "TrainCase", "default_cases", "measure_case", "run_train_bench", "time_steps"]

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


def _gate(losses: Dict[str, float], reference: Optional[Dict[str, float]], amp: str,
          why_unverified: str = "") -> Tuple[str, str]:
    if reference is None:
        return "unverified", why_unverified or "the reference step could not run to check it"
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


def time_steps(fn: Callable[[], object], device: torch.device, reps: int) -> Timing:
    """Exactly ``reps`` calls of ``fn``, each timed on its own (CUDA: events around the call; CPU:
    the host clock), as p20/p50/p80 of those times; no warm-up (the caller has run one). For units
    of work long enough (seconds) that one measurement each is precise and more are expensive."""
    if reps < 1:
        raise ValueError(f"reps: expected 1 or more, got {reps}")
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    p20, p50, p80 = quantiles(times)
    return Timing(p20, p50, p80, reps)


def measure_case(case: TrainCase, provider: str, device: "torch.device | str", config: TimingConfig, seed: int,
                 reference_losses: Optional[Dict[str, float]], why_unverified: str = "",
                 reps: Optional[int] = None) -> Tuple[Result, Optional[Dict[str, float]]]:
    """One (case, provider): (its Result, its first-step losses or None when it failed).

    Steps: (1) the gate step (also the warm-up of the allocator, autotuning and the optimiser
    states), compared with ``reference_losses`` (None: this is the reference, or it could not run;
    ``why_unverified`` then says why); (2) one step whose peak memory is measured (also the second
    warm-up); (3) the timed steps: :func:`time_fn` with ``config``, or exactly ``reps`` steps
    (:func:`time_steps`). A failure of any step is recorded in the Result, never raised. Module
    level and picklable, so :func:`inpaint_fast.bench.memory_limit.run_limited` can run it in a child.
    """
    device = torch.device(device)
    res = Result(case.kernel, provider, "train-step", case.dtype, case.shape, items=case.batch)
    losses = None
    step = None
    try:
        step, _ = build_step(case, provider, device, seed)
        losses = step()
        if provider == "reference":
            res.note = "oracle of the gate"
        else:
            res.status, res.note = _gate(losses, reference_losses, case.amp, why_unverified)
        if res.status in ("ok", "unverified"):
            res.peak_mb = peak_memory_mb(step, device)
            if reps is None:
                res.timing = time_fn(step, device, config)
            else:
                res.timing = time_steps(step, device, reps)
                res.note = "; ".join(filter(None, [res.note, f"{reps} timed step{'s' if reps > 1 else ''}"]))
    except Exception as exc:  # noqa: BLE001 - recorded in the CSV, the sweep goes on
        res.status, res.note = failure_status(exc)
        res.timing = None
    finally:
        step = None  # free the model before the next provider builds its own
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return res, losses


def run_train_bench(
    cases: Sequence[TrainCase],
    providers: Sequence[str],
    device: torch.device,
    config: TimingConfig = STEP_TIMING,
    *,
    progress=None,
    seed: int = 0,
    reps: Optional[int] = None,
    memory_limit_gib: Optional[float] = None,
) -> List[Result]:
    """Gate, time and measure every (case, provider); ``providers`` should start with "reference"
    (the gate's oracle). ``progress``: a tqdm bar advanced once per (case, provider).

    ``reps``: time exactly this many steps per provider instead of ``config``'s time budget.
    ``memory_limit_gib``: run each (case, provider) in a child process capped at that many GiB
    (:mod:`inpaint_fast.bench.memory_limit`); an allocation over it is ``oom``, and every row's
    note states the limit.
    """
    results: List[Result] = []
    for case in cases:
        reference_losses: Optional[Dict[str, float]] = None
        why_unverified = ""
        for provider in providers:
            if progress is not None:
                progress.set_postfix_str(f"{case.kernel} {provider} {case.shape}", refresh=True)
            args = (case, provider, str(device), config, seed, reference_losses, why_unverified, reps)
            if memory_limit_gib is None:
                res, losses = measure_case(*args)
            else:
                try:
                    res, losses = run_limited(measure_case, args, memory_limit_gib)
                except ChildFailed as exc:
                    res = Result(case.kernel, provider, "train-step", case.dtype, case.shape, items=case.batch,
                                 status=exc.status, note=exc.note)
                    losses = None
            if provider == "reference":
                reference_losses = losses  # its first step's, even if a later step failed
                if reference_losses is None:
                    why_unverified = f"the reference step could not run to check it ({res.status}: {res.note})"
            if memory_limit_gib is not None:
                res.note = "; ".join(filter(None, [res.note, limit_note(memory_limit_gib)]))
            results.append(res)
            if progress is not None:
                progress.update(1)
    attach_speedups(results)
    return results
