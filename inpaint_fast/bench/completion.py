"""End-to-end benchmark: one PIC completion, exactly what ``inpaint-fast inpaint --model pic`` runs.

The pipeline is :mod:`inpaint_fast.inpaint`'s, not a copy: the same size checks
(:func:`~inpaint_fast.training.run.check_size`, :func:`~inpaint_fast.inpaint.check_kernel_limits`),
the same network construction (``PIC()``, moved to the device, eval mode; here with random weights
from ``seed``: the time does not depend on them and none can be downloaded) and
:func:`~inpaint_fast.inpaint.inpaint_pic` (resize to the working size, E, one latent draw, G,
resize back, composite into the holes). The input is a synthetic S x S image (uniform noise from
``seed``) with PIC's centre hole (:func:`inpaint_fast.data.center_mask`), completed at working size
S, one sample. Only the provider differs: the backend of PIC's three attention layers (the command
sets it with ``--backend``; here it is the model's ``backend`` argument, the same kernels).
Reading and writing PNGs is not part of the measurement.

Per (size, provider):

1. **check, warm-up and peak memory**: one completion, whose peak memory above what the network
   and the inputs already hold is measured (:func:`~inpaint_fast.bench.timing.peak_memory_mb`) and
   whose output must keep the known pixels (mask = 1) of the input exactly (``torch.equal`` on
   those pixels, as the composite promises): otherwise the row is ``wrong``, with the number of
   differing known pixels in the note, and not timed.
2. **time** ``reps`` further completions, each timed on its own
   (:func:`~inpaint_fast.bench.train_step.time_steps`): at 2048² one lasts minutes on a CPU, so
   one timed run is the default; the note says how many.

``memory_limit_gib`` runs each (size, provider) in a capped child process
(:mod:`inpaint_fast.bench.memory_limit`): the reference path's N×N attention map at 2048² is
(2048/8)^4 x 4 B = 16 GiB, a real allocation failure under a smaller cap, recorded as ``oom``.

Rows (the results CSV's schema): kernel ``completion_pic``, mode ``inference``, dtype ``fp32``,
shape ``B1-img<S>``; metrics ms, images_per_s, peak_mb, speedup_vs_reference.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

from .memory_limit import ChildFailed, limit_note, run_limited
from .outcome import Result, attach_speedups, failure_status
from .timing import peak_memory_mb
from .train_step import time_steps

__all__ = ["KERNEL", "MODE", "default_sizes", "known_pixels_status", "measure_completion", "run_completion_bench",
           "synthetic_inputs"]

KERNEL = "completion_pic"
MODE = "inference"
DTYPE = "fp32"


def default_sizes(device: torch.device) -> Tuple[int, ...]:
    """2048² on every device (the size the issue asks for; on a CPU one completion takes minutes)."""
    return (2048,)


def shape(size: int) -> str:
    return f"B1-img{size}"


def synthetic_inputs(size: int, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """(image (1, 3, S, S) uniform in [0, 1) from ``seed``, mask (1, 1, S, S) with PIC's centre hole,
    1 = known) -- what ``inpaint-fast inpaint`` reads from an S x S image and a mask file."""
    from inpaint_fast.data import center_mask

    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed))
    return image, center_mask(size)[None]


def known_pixels_status(out: torch.Tensor, image: torch.Tensor, mask: torch.Tensor) -> Tuple[str, str]:
    """("ok", note) when every completion in ``out`` (K, 3, H, W) holds ``image``'s pixels exactly
    where ``mask`` is 1, else ("wrong", how many of those pixels differ)."""
    known = mask[0, 0] == 1
    want = image[0][:, known]
    n_known = int(known.sum())
    for k in range(out.shape[0]):
        got = out[k][:, known]
        if not torch.equal(got, want):
            differ = int((got != want).any(dim=0).sum())  # NaN != NaN counts too
            return "wrong", (f"{differ} of the {n_known} known pixels differ from the input (sample {k}); the "
                             "composite must keep them exactly")
    return "ok", f"all {n_known} known pixels equal the input exactly"


class _Unavailable(Exception):
    """The provider cannot run on this device (check_backend's message)."""


def _build(size: int, provider: str, device: torch.device, seed: int):
    """The checks ``inpaint-fast inpaint`` makes, the network it builds and the completion it runs;
    returns (run, image, mask) with ``run()`` one completion (K = 1, the command's defaults)."""
    from inpaint_fast.inpaint import check_kernel_limits, inpaint_pic
    from inpaint_fast.models.pic import PIC
    from inpaint_fast.training.run import check_backend, check_size

    from inpaint_fast.training.errors import UsageError

    try:
        check_backend(provider, "pic", device)
    except UsageError as exc:
        raise _Unavailable(str(exc)) from exc
    check_size("pic", size, training=False)
    check_kernel_limits("pic", size, device, provider, batch=1)
    torch.manual_seed(seed)
    net = PIC(backend=provider).to(device).eval()  # load_model's construction, random weights
    image, mask = synthetic_inputs(size, seed)
    image, mask = image.to(device), mask.to(device)

    def run() -> torch.Tensor:
        return inpaint_pic(net, image, mask, size=size, samples=1, seed=seed, deterministic=False)

    return run, image, mask


def measure_completion(size: int, provider: str, device: "torch.device | str", seed: int = 0,
                       reps: int = 1) -> Result:
    """One (size, provider) as a Result (see the module docstring); failures are recorded, never
    raised. Module level and picklable, for :func:`~inpaint_fast.bench.memory_limit.run_limited`."""
    from inpaint_fast.training.errors import UsageError

    device = torch.device(device)
    res = Result(KERNEL, provider, MODE, DTYPE, shape(size), items=1)
    run = None
    try:
        run, image, mask = _build(size, provider, device, seed)
        first = {}

        def checked_run() -> None:
            first["out"] = run()

        res.peak_mb = peak_memory_mb(checked_run, device)
        res.status, res.note = known_pixels_status(first.pop("out").cpu(), image.cpu(), mask.cpu())
        if res.status == "ok":
            res.timing = time_steps(run, device, reps)
            res.note += (f"; {reps} timed run{'s' if reps > 1 else ''} after one untimed run (the check, "
                         "warm-up and peak memory)")
    except _Unavailable as exc:
        res.status, res.note = "unavailable", str(exc)[:300]
    except UsageError as exc:  # a size the command itself would refuse
        res.status, res.note = "unsupported", str(exc)[:300]
    except Exception as exc:  # noqa: BLE001 - recorded in the CSV, the sweep goes on
        res.status, res.note = failure_status(exc)
        res.timing = None
    finally:
        run = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return res


def run_completion_bench(sizes: Sequence[int], providers: Sequence[str], device: torch.device, *, reps: int = 1,
                         seed: int = 0, memory_limit_gib: Optional[float] = None, progress=None) -> List[Result]:
    """Every (size, provider) through :func:`measure_completion`, in a capped child process each when
    ``memory_limit_gib`` is given (every row's note then states the limit); speedups over the
    ``reference`` provider where both were timed. ``progress``: a tqdm bar, advanced per result."""
    if reps < 1:
        raise ValueError(f"reps: expected 1 or more, got {reps}")
    results: List[Result] = []
    for size in sizes:
        for provider in providers:
            if progress is not None:
                progress.set_postfix_str(f"{KERNEL} {provider} {shape(size)}", refresh=True)
            args = (size, provider, str(device), seed, reps)
            if memory_limit_gib is None:
                res = measure_completion(*args)
            else:
                try:
                    res = run_limited(measure_completion, args, memory_limit_gib)
                except ChildFailed as exc:
                    res = Result(KERNEL, provider, MODE, DTYPE, shape(size), items=1, status=exc.status,
                                 note=exc.note)
                res.note = "; ".join(filter(None, [res.note, limit_note(memory_limit_gib)]))
            results.append(res)
            if progress is not None:
                progress.update(1)
    attach_speedups(results)
    return results
