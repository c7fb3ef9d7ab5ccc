"""The runner: for every case and provider, gate it (:mod:`.gate`), then time each mode.

Each mode is timed with :mod:`.timing` (warm-up excluded), then its peak memory is measured once.
Results come back as :class:`.outcome.Result` objects, speedups over the case's ``reference``
provider attached; :mod:`.rows` turns them into CSV rows.

With a ``ceiling`` (a :class:`.ceilings.GemmCeiling`, as ``inpaint-fast bench`` passes on the
CPU), a burst of the GEMM ceiling runs before every timed result, whose ``ceiling_burst``
records it, so that each result can be set against the ceiling measured right around it; once
all op results are in, the caller takes the ceiling's result (``ceiling.result()``) and attaches
the rates to the results (``ceiling.attach(results)``).
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .gate import gate, make_oracle
from .op_bench import Case, Inputs, OpBench, Provider
from .outcome import Result, attach_speedups, failure_status
from .passes import make_callable
from .timing import Timing, TimingConfig, peak_memory_mb, time_fn

__all__ = ["run"]


def run(
    bench: OpBench,
    cases: Sequence[Case],
    modes: Sequence[str],
    providers: Sequence[str],
    device: torch.device,
    config: TimingConfig = TimingConfig(),
    *,
    extra_providers: Optional[Dict[str, Provider]] = None,
    progress=None,
    on_case: Optional[Callable[[List[Result]], None]] = None,
    seed: int = 0,
    ceiling=None,
) -> List[Result]:
    """Gate, then time and measure, every (case, provider, mode). ``progress`` (a tqdm bar or
    None) advances once per (case, provider, mode). ``on_case`` (or None) is called with the
    results of every provider and mode of one case (one fusion-block variant at a time) as soon
    as they are measured, speedups over the case's reference included, so a caller can save
    them case by case (a run cut off later keeps what it measured).
    ``extra_providers`` adds providers that are not in the op's registry (tests inject a wrong
    one this way). ``ceiling``: a :class:`.ceilings.GemmCeiling` to sample before every timed
    result, or None."""
    registry = dict(bench.providers())
    registry.update(extra_providers or {})
    unknown = [p for p in providers if p not in registry]
    if unknown:
        raise ValueError(f"unknown provider(s) {unknown} for {bench.kernel}; known: {sorted(registry)}")
    by_variant: Dict[str, List[Tuple[str, str]]] = {}
    for mode in modes:
        variant, pass_ = bench.split_mode(mode)
        by_variant.setdefault(variant, []).append((mode, pass_))

    results: List[Result] = []
    for case in cases:
        for variant, vmodes in by_variant.items():
            need_fwd = any(p == "fwd" for _, p in vmodes)
            need_grad = any(p != "fwd" for _, p in vmodes)
            oracle, oracle_note = None, ""
            first = len(results)
            try:
                oracle = make_oracle(bench, case, device, variant, need_grad, seed)
            except Exception as exc:  # noqa: BLE001 - recorded; the providers are still timed
                oracle_note = "reference could not run to check it: " + failure_status(exc)[1]
            for name in providers:
                if progress is not None:
                    progress.set_postfix_str(f"{bench.kernel} {name} {case.shape}: checking", refresh=True)
                fn, verdict = gate(bench, case, variant, registry[name], oracle, oracle_note, need_fwd, need_grad,
                                    device, seed)
                for mode, pass_ in vmodes:
                    if progress is not None:
                        progress.set_postfix_str(f"{bench.kernel} {name} {mode} {case.shape}", refresh=True)
                    status, note = verdict["fwd" if pass_ == "fwd" else "grad"]
                    res = Result(bench.kernel, name, mode, case.dtype, case.shape, status, note)
                    if status in ("ok", "unverified"):
                        if ceiling is not None:
                            if progress is not None:
                                progress.set_postfix_str(f"GEMM ceiling before {bench.kernel} {name} {mode} "
                                                         f"{case.shape}", refresh=True)
                            res.ceiling_burst = ceiling.sample()
                        _measure(res, bench, case, fn, variant, pass_, device, config, seed)
                    results.append(res)
                    if progress is not None:
                        progress.update(1)
            attach_speedups(results[first:])  # the reference of this case ran in this case
            if on_case is not None:
                on_case(results[first:])
    return results


def _measure(res: Result, bench: OpBench, case: Case, fn, variant: str, pass_: str, device, config, seed) -> None:
    """Fill in ``res``'s timing, peak memory and work counts (or its failure)."""
    try:
        res.timing, res.peak_mb = _time_and_peak(fn, bench.make_inputs(case, device, variant, seed), pass_, device,
                                                 config, seed)
        res.flops, res.nbytes = bench.flops(case, pass_), bench.bytes(case, pass_)
    except Exception as exc:  # noqa: BLE001
        res.status, res.note = failure_status(exc)
        res.timing = None
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the inputs and graph of this measurement are gone by now


def _time_and_peak(fn, inputs: Inputs, pass_: str, device, config, seed) -> Tuple[Timing, float]:
    call = make_callable(fn, inputs, pass_, seed)
    return time_fn(call, device, config), peak_memory_mb(call, device)
