"""What an op's benchmark is: its sweep, cases, inputs, providers and modes (:class:`OpBench`).

An op's benchmark (``short_long_attention.py``, ``fusion_block.py`` next to this file) is an
:class:`OpBench`: it turns a :class:`Sweep` into :class:`Case` objects, makes seeded inputs for a
case, names its providers (implementations) and says how many FLOPs or bytes a case moves.
:func:`.runner.run` gates (:mod:`.gate`) and times every provider on every case.

Modes: ``fwd`` is an inference forward (under ``torch.no_grad``); ``bwd`` is the backward alone, of
a graph built once beforehand (``retain_graph=True``); ``fwd+bwd`` is forward and backward of one
training step (:mod:`.passes` builds the callable of each).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch

from ..backends import KERNEL_BACKENDS

__all__ = [
    "DTYPES",
    "PASSES",
    "Case",
    "Inputs",
    "OpBench",
    "Provider",
    "ProviderFn",
    "Sweep",
    "Unavailable",
    "one_of",
    "with_sweep_overrides",
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
        with the reference's would judge luck, not correctness (see :func:`.gate.compare`)."""
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


def with_sweep_overrides(sweep: Sweep, **overrides) -> Sweep:
    """``sweep`` with the non-None overrides applied."""
    return replace(sweep, **{k: v for k, v in overrides.items() if v is not None})
