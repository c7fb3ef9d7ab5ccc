"""The correctness gate: a provider's result must match the reference before it is timed.

The gate runs the provider once (forward, and backward when a requested mode has one) on the same
inputs as the oracle (the eager reference in ``inpaint_fast.reference``, run in fp64) and compares
every output, every input gradient and every in-place updated buffer (see :func:`compare` for the
tolerance). A provider that is wrong is reported as ``wrong`` and not timed; one that cannot run
says why (``unavailable``, ``unsupported``, ``oom``, ``error``; see :func:`.outcome.failure_status`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Dict, Iterable, Optional, Sequence, Tuple

import torch

from .op_bench import DTYPES, Case, Inputs, OpBench, Provider, ProviderFn
from .outcome import failure_status
from .passes import input_grads, random_grad_outputs

__all__ = ["Oracle", "compare", "evaluate", "gate", "make_oracle", "tolerance"]


def tolerance(dtype: torch.dtype) -> float:
    """Relative tolerance of the gate for ``dtype`` (see :func:`compare`)."""
    if dtype == torch.float64:
        return 1e-7
    if dtype == torch.float32:
        # TF32 (matmul precision "high"/"medium") on either side widens fp32's error ~100x. Read
        # through the helper that works with both of PyTorch's TF32 APIs (the legacy getter raises
        # once the new one set TF32).
        from inpaint_fast.triton_kernels import fp32_matmul_allows_tf32

        return 1e-2 if fp32_matmul_allows_tf32() else 1e-3
    if dtype == torch.float16:
        return 1e-2
    return 4e-2  # bfloat16


def _to_fp64(inputs: Inputs) -> Inputs:
    """The floating-point tensors of ``inputs`` as fp64 leaves (the oracle runs on these)."""
    kwargs = {}
    for name, v in inputs.kwargs.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            v = v.detach().double().requires_grad_(v.requires_grad)
        kwargs[name] = v
    return replace(inputs, kwargs=kwargs)


def evaluate(fn: ProviderFn, inputs: Inputs, with_grad: bool, output_names: Sequence[str], seed: int = 0):
    """Everything the gate compares: outputs, input gradients, updated state (name -> tensor)."""
    got: Dict[str, Optional[torch.Tensor]] = {}
    with torch.set_grad_enabled(with_grad):
        outs = fn(**inputs.kwargs)
    if not isinstance(outs, (tuple, list)):
        outs = (outs,)
    for name, o in zip(output_names, outs):
        got[name] = None if o is None else o.detach()
    if with_grad:
        grads = input_grads(outs, random_grad_outputs(outs, seed), inputs)
        for name, g in zip(inputs.grad, grads):
            got["grad_" + name] = g
    for name in inputs.state:
        got[name] = inputs.kwargs[name].detach().clone()
    return got


@dataclass
class Oracle:
    """What providers are checked against: the reference run in fp64 on the same inputs, and the
    max abs error of the reference itself run in the case's dtype (its "own error", per tensor)."""

    values: Dict[str, Optional[torch.Tensor]]
    baseline: Dict[str, float] = field(default_factory=dict)


def _max_abs(t: torch.Tensor) -> float:
    return t.detach().abs().max().item() if t.numel() else 0.0


def make_oracle(bench: OpBench, case: Case, device: torch.device, variant: str, with_grad: bool,
                seed: int = 0) -> Oracle:
    """Run the reference for ``case`` (see :class:`Oracle`)."""
    inputs = bench.make_inputs(case, device, variant, seed)
    values = evaluate(bench.oracle(), _to_fp64(inputs), with_grad, bench.output_names, seed)
    baseline = {}
    if DTYPES[case.dtype] != torch.float64:
        same_dtype = evaluate(bench.oracle(), inputs, with_grad, bench.output_names, seed)
        for name, want in values.items():
            got = same_dtype.get(name)
            if want is not None and got is not None:
                baseline[name] = _max_abs(got.double() - want)
    return Oracle(values, baseline)


def compare(got: dict, oracle: Oracle, dtype: torch.dtype, names: Optional[Iterable[str]] = None,
            judged_at: Optional[Dict[str, str]] = None) -> Tuple[bool, str]:
    """(ok, note): every tensor must satisfy, with S the largest magnitude among the tensors,

        max|got - want| <= max(tol·max|want|, tol·1e-3·S, 2·(max abs error of the reference
                               itself in this dtype))           tol = :func:`tolerance`(dtype)

    ``want`` is the fp64 oracle. The third term is FlashAttention's acceptance rule ("no worse
    than twice the error of the PyTorch reference in the same dtype"); it matters for fp16/bf16
    and where a value is tiny next to the others. The second lets such values be noise even where
    the reference happens to be exact.

    ``judged_at`` maps outputs that are 0 in exact arithmetic (:meth:`OpBench.zero_in_exact_arithmetic`)
    to the output whose magnitude replaces their own in the first term: their values are pure
    rounding noise of terms that size, in the reference too (PyTorch's CPU BatchNorm happens to sum
    in double, so its noise is unusually small), so they must be small next to it, nothing more.
    """
    tol = tolerance(dtype)
    judged_at = judged_at or {}
    want_all = {k: v for k, v in oracle.values.items() if names is None or k in names}
    big = max((_max_abs(w) for w in want_all.values() if w is not None), default=0.0)
    worst, worst_name, failures = 0.0, "", []
    for name, w in want_all.items():
        g = got.get(name)
        if w is None and g is None:
            continue
        if w is None or g is None:
            w = torch.zeros_like(g) if w is None else w
            g = torch.zeros_like(w) if g is None else g
        if g.shape != w.shape:
            failures.append(f"{name}: shape {tuple(g.shape)} != {tuple(w.shape)}")
            continue
        w64 = w.detach().to("cpu", torch.float64)
        err = _max_abs(g.detach().to("cpu", torch.float64) - w64)
        scale = _max_abs(w64)
        if name in judged_at and oracle.values.get(judged_at[name]) is not None:
            scale = max(scale, _max_abs(oracle.values[judged_at[name]].detach().to("cpu", torch.float64)))
        allowed = max(tol * scale, tol * 1e-3 * big, 2 * oracle.baseline.get(name, 0.0))
        if not math.isfinite(err):  # NaN or inf anywhere fails
            err = math.inf
        if not err <= allowed:
            failures.append(f"{name}: max err {err:.3g} > allowed {allowed:.3g} (max |ref| {scale:.3g})")
        ratio = err / allowed if allowed > 0 else (0.0 if err == 0 else math.inf)
        if ratio > worst or not worst_name:
            worst, worst_name = ratio, name
    if failures:
        return False, "; ".join(failures[:3]) + ("; ..." if len(failures) > 3 else "")
    return True, f"worst: {worst_name} at {worst:.2g} of the allowed error" if worst_name else "nothing to compare"


def gate(bench: OpBench, case: Case, variant: str, provider: Provider, oracle: Optional[Oracle], oracle_note: str,
         need_fwd: bool, need_grad: bool, device: torch.device, seed: int = 0):
    """Build the provider and check it against the oracle (:func:`compare`).

    Returns ``(fn, verdict)``, verdict = {"fwd": (status, note), "grad": (status, note)}: "fwd"
    judges the outputs and updated buffers (for ``fwd`` modes), "grad" those and the input
    gradients (for modes with a backward). A provider whose backward fails (FlexAttention on CPU)
    is still checked, and timed, forward-only. The reference provider is not checked: it is the
    computation the oracle (and its fp16/bf16 error baseline) comes from.
    """
    try:
        fn = provider.build(case, device)
    except Exception as exc:  # noqa: BLE001
        failed = failure_status(exc)
        return None, {"fwd": failed, "grad": failed}
    if oracle is None:
        return fn, {"fwd": ("unverified", oracle_note), "grad": ("unverified", oracle_note)}
    if provider.name == "reference" and provider.build is bench.providers()["reference"].build:
        return fn, {"fwd": ("ok", ""), "grad": ("ok", "")}
    dtype = DTYPES[case.dtype]
    forward_names = [k for k in oracle.values if not k.startswith("grad_")]
    verdict = {}
    for with_grad in ([True] if need_grad else []) + ([False] if need_fwd else []):
        if not with_grad and "fwd" in verdict:
            break  # already judged from the run with gradients
        try:
            got = evaluate(fn, bench.make_inputs(case, device, variant, seed), with_grad, bench.output_names, seed)
        except Exception as exc:  # noqa: BLE001 - any failure is reported, never raised
            verdict["grad" if with_grad else "fwd"] = failure_status(exc)
            continue
        judged_at = bench.zero_in_exact_arithmetic(variant)
        ok, note = compare(got, oracle, dtype, forward_names, judged_at)
        verdict["fwd"] = ("ok" if ok else "wrong", note)
        if with_grad:
            ok_all, note_all = compare(got, oracle, dtype, judged_at=judged_at)
            verdict["grad"] = ("ok" if ok_all else "wrong", note_all)
    verdict.setdefault("fwd", ("error", "not checked"))
    verdict.setdefault("grad", ("error", "not checked"))
    return fn, verdict
