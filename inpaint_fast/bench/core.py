"""What every op's benchmark shares: cases, providers, the correctness gate and the runner.

An op's benchmark (``short_long_attention.py``, ``fusion_block.py`` next to this file) is an
:class:`OpBench`: it turns a :class:`Sweep` into :class:`Case` objects, makes seeded inputs for a
case, names its providers (implementations) and says how many FLOPs or bytes a case moves.
:func:`run` then does, for every case and provider:

1. **gate** — run the provider once (forward, and backward when a requested mode has one) on the
   same inputs as the oracle (the eager reference in ``inpaint_fast.reference``, run in fp64)
   and compare every output, every input gradient and every in-place updated buffer (see
   :func:`compare` for the tolerance). A provider that is wrong is
   reported as ``wrong`` and not timed; one that cannot run says why (``unavailable``,
   ``unsupported``, ``oom``, ``error``).
2. **time** each mode (:mod:`.timing`; warm-up excluded), then measure its peak memory once.

Modes: ``fwd`` is an inference forward (under ``torch.no_grad``); ``bwd`` is the backward alone, of
a graph built once beforehand (``retain_graph=True``); ``fwd+bwd`` is forward and backward of one
training step. Backward runs ``torch.autograd.grad`` on every differentiable input with fixed
random output gradients, so nothing accumulates into ``.grad`` between runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from ..backends import KERNEL_BACKENDS
from .timing import Timing, TimingConfig, peak_memory_mb, time_fn

__all__ = [
    "DTYPES",
    "PASSES",
    "Case",
    "Inputs",
    "OpBench",
    "Provider",
    "Result",
    "Sweep",
    "Unavailable",
    "compare",
    "evaluate",
    "gate",
    "make_callable",
    "make_oracle",
    "one_of",
    "results_to_rows",
    "run",
    "tolerance",
]

PASSES = ("fwd", "bwd", "fwd+bwd")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}


def one_of(names: Iterable[str]) -> str:
    """``"a, b or c"``: the choices of an option, as its error messages list them."""
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


class Unavailable(Exception):
    """A provider cannot serve a case; the message says why. ``status`` is the CSV status."""

    def __init__(self, reason: str, status: str = "unavailable"):
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class Sweep:
    """What to run for one op. ``batch=None`` lets the op choose per size; ``levels`` are the
    fusion block's DFNet levels; ``channels`` the attention's (Cq, C, Cp) triples (Cp = 0: no
    ``pre``, PIC's discriminator mode)."""

    sizes: Tuple[int, ...]
    dtypes: Tuple[str, ...]
    modes: Tuple[str, ...]
    batch: Optional[int] = None
    levels: Tuple[int, ...] = ()
    channels: Tuple[Tuple[int, int, int], ...] = ()  # attention: (Cq, C, Cp) triples; () = PIC's


@dataclass(frozen=True)
class Case:
    """One problem: op, dtype and shape (the mode is chosen separately)."""

    kernel: str
    dtype: str
    shape: str
    params: Tuple[Tuple[str, int], ...]

    def param(self, name: str) -> int:
        return dict(self.params)[name]


@dataclass
class Inputs:
    """Keyword arguments of one op call, and which of them the gate and the backward look at."""

    kwargs: dict
    grad: Tuple[str, ...] = ()  # differentiable inputs: gradients taken in backward modes
    state: Tuple[str, ...] = ()  # buffers the op updates in place (BatchNorm running stats)


ProviderFn = Callable[..., tuple]  # fn(**inputs.kwargs) -> tuple of outputs (None allowed)


@dataclass(frozen=True)
class Provider:
    """An implementation. ``build`` returns the callable or raises :class:`Unavailable`."""

    name: str
    build: Callable[[Case, torch.device], ProviderFn]
    default_on: Tuple[str, ...] = ("cpu", "cuda")  # device types where it is in the default set
    quick: bool = True  # in the default set of --quick too (compile-heavy ones are not)


class OpBench:
    """Base class of one op's benchmark; subclasses fill in the class attributes and methods."""

    kernel: str = ""
    aliases: Tuple[str, ...] = ()
    variants: Tuple[str, ...] = ("",)  # mode prefixes, e.g. ("eval", "train")
    output_names: Tuple[str, ...] = ()

    # -- to implement --------------------------------------------------------------------------
    def default_sweep(self, device: torch.device, quick: bool) -> Sweep:
        raise NotImplementedError

    def cases(self, sweep: Sweep, device: torch.device) -> List[Case]:
        """The cases of ``sweep``. A bad value raises ValueError naming the ``inpaint-fast bench``
        option it comes from (``--sizes``, ``--dtype``, ``--levels``, ``--channels``): sweeps are
        built from those options, and the message is what the user sees."""
        raise NotImplementedError

    def make_inputs(self, case: Case, device: torch.device, variant: str, seed: int = 0) -> Inputs:
        raise NotImplementedError

    def providers(self) -> Dict[str, Provider]:
        raise NotImplementedError

    def oracle(self) -> ProviderFn:
        raise NotImplementedError

    def flops(self, case: Case, pass_: str) -> Optional[float]:
        return None

    def bytes(self, case: Case, pass_: str) -> Optional[float]:
        return None

    def zero_in_exact_arithmetic(self, variant: str) -> Dict[str, str]:
        """Outputs that are 0 in exact arithmetic for ``variant``, each mapped to the output whose
        magnitude they are judged at: every implementation returns rounding noise for them (a conv
        bias followed by a training-mode BatchNorm has a zero gradient), so comparing that noise
        with the reference's would judge luck, not correctness (see :func:`compare`)."""
        return {}

    # -- shared ---------------------------------------------------------------------------------
    @property
    def modes(self) -> Tuple[str, ...]:
        return tuple(f"{v}-{p}" if v else p for v in self.variants for p in PASSES)

    def split_mode(self, mode: str) -> Tuple[str, str]:
        for v in self.variants:
            if v and mode.startswith(v + "-"):
                return v, mode[len(v) + 1 :]
        return "", mode

    def resolve_modes(self, tokens: Iterable[str]) -> Tuple[str, ...]:
        """Expand mode tokens for this op: ``fwd`` means every variant's forward, ``train-fwd``
        is exact; a variant prefix this op does not have is dropped (``eval-fwd`` is the
        attention's ``fwd``). Unknown tokens raise ValueError."""
        out: List[str] = []
        for tok in tokens:
            head, _, tail = tok.partition("-")
            prefix, rest = (head, tail) if head in ("eval", "train") else ("", tok)
            if rest not in PASSES:
                raise ValueError(f"unknown mode {tok!r}; expected {one_of(PASSES)}, optionally prefixed eval- or "
                                 "train-")
            if prefix and prefix in self.variants:
                wanted = [f"{prefix}-{rest}"]
            else:
                wanted = [f"{v}-{rest}" if v else rest for v in self.variants]
            out += [m for m in wanted if m not in out]
        return tuple(out)

    def default_providers(self, device: torch.device, quick: bool) -> Tuple[str, ...]:
        import inpaint_fast

        ours = set(inpaint_fast.available_backends(device, op=self.kernel)) & set(KERNEL_BACKENDS)
        names = []
        for name, p in self.providers().items():
            if name in KERNEL_BACKENDS:
                if name in ours:
                    names.append(name)
            elif device.type in p.default_on and (p.quick or not quick):
                names.append(name)
        return tuple(names)


def tolerance(dtype: torch.dtype) -> float:
    """Relative tolerance of the gate for ``dtype`` (see :func:`compare`)."""
    if dtype == torch.float64:
        return 1e-7
    if dtype == torch.float32:
        # TF32 (matmul precision "high"/"medium") on either side widens fp32's error ~100x. Read
        # through the helper that works with both of PyTorch's TF32 APIs (the legacy getter raises
        # once the new one set TF32).
        from inpaint_fast.triton import fp32_matmul_allows_tf32

        return 1e-2 if fp32_matmul_allows_tf32() else 1e-3
    if dtype == torch.float16:
        return 1e-2
    return 4e-2  # bfloat16


# ---------------------------------------------------------------------------------------------
# The callables that get timed


def _grad_outputs(outs: Sequence[Optional[torch.Tensor]], seed: int) -> List[Optional[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed + 7919)
    return [
        None if o is None else torch.randn(o.shape, generator=g, dtype=torch.float32).to(o.device, o.dtype)
        for o in outs
    ]


def _backward(outs, grad_outs, inputs: Inputs, retain_graph: bool = False):
    pairs = [(o, g) for o, g in zip(outs, grad_outs) if o is not None and o.requires_grad]
    wrt = [inputs.kwargs[n] for n in inputs.grad]
    return torch.autograd.grad(
        [o for o, _ in pairs], wrt, [g for _, g in pairs], retain_graph=retain_graph, allow_unused=True
    )


def make_callable(fn: ProviderFn, inputs: Inputs, pass_: str, seed: int = 0) -> Callable[[], object]:
    """The zero-argument callable that does one ``pass_`` of ``fn`` on ``inputs``."""
    kwargs = inputs.kwargs
    if pass_ == "fwd":

        def forward():
            with torch.no_grad():
                return fn(**kwargs)

        return forward
    if pass_ == "fwd+bwd":
        grad_outs = None

        def step():
            nonlocal grad_outs
            outs = fn(**kwargs)
            if grad_outs is None:
                grad_outs = _grad_outputs(outs, seed)
            return _backward(outs, grad_outs, inputs)

        return step
    if pass_ == "bwd":
        outs = fn(**kwargs)
        grad_outs = _grad_outputs(outs, seed)
        return lambda: _backward(outs, grad_outs, inputs, retain_graph=True)
    raise ValueError(f"unknown pass {pass_!r}")


# ---------------------------------------------------------------------------------------------
# The correctness gate


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
        grads = _backward(outs, _grad_outputs(outs, seed), inputs)
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


def make_oracle(bench: "OpBench", case: Case, device: torch.device, variant: str, with_grad: bool,
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


# ---------------------------------------------------------------------------------------------
# The runner


@dataclass
class Result:
    """One (provider, case, mode) outcome."""

    kernel: str
    provider: str
    mode: str
    dtype: str
    shape: str
    status: str = "ok"
    note: str = ""
    timing: Optional[Timing] = None
    peak_mb: float = math.nan
    flops: Optional[float] = None
    nbytes: Optional[float] = None
    speedup: Optional[Tuple[float, float, float]] = field(default=None)
    items: Optional[int] = None  # images per call (end-to-end steps): adds an images_per_s metric


def _is_oom(exc: BaseException) -> bool:
    oom_types = (MemoryError, getattr(torch, "OutOfMemoryError", MemoryError))
    return isinstance(exc, oom_types) or "out of memory" in str(exc).lower()


def _failure(exc: BaseException) -> Tuple[str, str]:
    """(status, note) for an exception raised by a provider."""
    if isinstance(exc, Unavailable):
        return exc.status, str(exc)
    import inpaint_fast

    if isinstance(exc, getattr(inpaint_fast, "BackendError", ())):  # the op's own "cannot serve this"
        return "unavailable", str(exc)
    if _is_oom(exc):
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return "oom", "out of memory"
    first = (str(exc).strip().splitlines() or [""])[0]
    status = "unsupported" if isinstance(exc, NotImplementedError) else "error"
    return status, f"{type(exc).__name__}: {first}"[:300]


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
) -> List[Result]:
    """Gate, then time and measure, every (case, provider, mode). ``progress`` (a tqdm bar or
    None) advances once per (case, provider, mode). ``on_case`` (or None) is called with the
    results of every provider and mode of one case (one fusion-block variant at a time) as soon
    as they are measured, speedups over the case's reference included, so a caller can save
    them case by case (a run cut off later keeps what it measured).
    ``extra_providers`` adds providers that are not in the op's registry (tests inject a wrong
    one this way)."""
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
                oracle_note = "reference could not run to check it: " + _failure(exc)[1]
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
                        _measure(res, bench, case, fn, variant, pass_, device, config, seed)
                    results.append(res)
                    if progress is not None:
                        progress.update(1)
            _attach_speedups(results[first:])  # the reference of this case ran in this case
            if on_case is not None:
                on_case(results[first:])
    return results


def _attach_speedups(results: Sequence[Result]) -> None:
    """Speedup of every timed result over the ``reference`` provider's median time for the same
    (kernel, mode, dtype, shape): (ref_p50/p80, ref_p50/p50, ref_p50/p20)."""
    ref = {
        (r.kernel, r.mode, r.dtype, r.shape): r.timing.p50
        for r in results
        if r.provider == "reference" and r.timing is not None
    }
    for r in results:
        ref_ms = ref.get((r.kernel, r.mode, r.dtype, r.shape))
        if ref_ms is not None and r.timing is not None:
            r.speedup = (ref_ms / r.timing.p80, ref_ms / r.timing.p50, ref_ms / r.timing.p20)


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
        failed = _failure(exc)
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
            verdict["grad" if with_grad else "fwd"] = _failure(exc)
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


def _measure(res: Result, bench: OpBench, case: Case, fn, variant: str, pass_: str, device, config, seed) -> None:
    """Fill in ``res``'s timing, peak memory and work counts (or its failure)."""
    try:
        res.timing, res.peak_mb = _time_and_peak(fn, bench.make_inputs(case, device, variant, seed), pass_, device,
                                                 config, seed)
        res.flops, res.nbytes = bench.flops(case, pass_), bench.bytes(case, pass_)
    except Exception as exc:  # noqa: BLE001
        res.status, res.note = _failure(exc)
        res.timing = None
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the inputs and graph of this measurement are gone by now


def _time_and_peak(fn, inputs: Inputs, pass_: str, device, config, seed) -> Tuple[Timing, float]:
    call = make_callable(fn, inputs, pass_, seed)
    return time_fn(call, device, config), peak_memory_mb(call, device)


def results_to_rows(results: Sequence[Result], env: dict) -> List[dict]:
    """CSV rows (see :mod:`.results`) for ``results``, with ``env`` (:func:`.env.environment`)."""
    rows = []
    for r in results:
        base = dict(kernel=r.kernel, provider=r.provider, mode=r.mode, dtype=r.dtype, shape=r.shape,
                    status=r.status, note=r.note, **env)
        t = r.timing
        if t is None:
            rows.append(dict(base, metric="ms"))
            continue
        rows.append(dict(base, metric="ms", p20=t.p20, p50=t.p50, p80=t.p80))
        if r.flops:
            rows.append(dict(base, metric="tflops", p20=r.flops / t.p80 / 1e9, p50=r.flops / t.p50 / 1e9,
                             p80=r.flops / t.p20 / 1e9))
        if r.nbytes:
            rows.append(dict(base, metric="gbps", p20=r.nbytes / t.p80 / 1e6, p50=r.nbytes / t.p50 / 1e6,
                             p80=r.nbytes / t.p20 / 1e6))
        if r.items:
            rows.append(dict(base, metric="images_per_s", p20=r.items / t.p80 * 1e3, p50=r.items / t.p50 * 1e3,
                             p80=r.items / t.p20 * 1e3))
        rows.append(dict(base, metric="peak_mb", p50=r.peak_mb))
        if r.speedup is not None:
            rows.append(dict(base, metric="speedup_vs_reference", p20=r.speedup[0], p50=r.speedup[1],
                             p80=r.speedup[2]))
    return rows


def with_sweep_overrides(sweep: Sweep, **overrides) -> Sweep:
    """``sweep`` with the non-None overrides applied."""
    return replace(sweep, **{k: v for k, v in overrides.items() if v is not None})
