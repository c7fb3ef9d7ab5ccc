"""Benchmark harness of inpaint_fast: what ``inpaint-fast bench`` and ``benchmarks/`` run.

It lives in the package (not in ``benchmarks/``) so the installed ``inpaint-fast`` command can
use it. Modules, one job each:

* :mod:`.timing` — ms quantiles (CUDA: ``triton.testing.do_bench`` or CUDA events; CPU:
  ``torch.utils.benchmark``) and peak memory (CUDA allocator stats; CPU peak RSS);
* :mod:`.op_bench` — what an op's benchmark is: sweeps, cases, inputs, providers, modes;
* :mod:`.passes` — the callable of one ``fwd`` / ``bwd`` / ``fwd+bwd`` pass of a provider;
* :mod:`.gate` — the correctness gate: a provider must match the fp64 reference to be timed;
* :mod:`.runner` — gate, then time, every (case, provider, mode); :mod:`.outcome` — the
  :class:`Result` of each, and the status of a failure; :mod:`.rows` — their CSV rows;
* :mod:`.short_long_attention`, :mod:`.fusion_block` — each op's cases, inputs, providers and
  FLOP / byte counts;
* :mod:`.results` — the CSV schema and its upsert; :mod:`.env` — device, versions, commit,
  competing processes;
* :mod:`.destination` — which CSV a run writes (never the committed one unless asked);
* :mod:`.report` — the console table; :mod:`.progress` — a bar on a terminal, lines in a log.

The repository's ``benchmarks/`` folder holds the full per-op sweeps, the results CSV, the plots,
the README table renderer and the pytest-benchmark micro-benchmarks, all built on this package.
"""

from .fusion_block import FusionBlockBench
from .op_bench import Case, Inputs, OpBench, Provider, Sweep, Unavailable
from .outcome import Result
from .rows import results_to_rows
from .runner import run
from .short_long_attention import ShortLongAttentionBench
from .timing import Timing, TimingConfig

__all__ = [
    "OPS",
    "Case",
    "FusionBlockBench",
    "Inputs",
    "OpBench",
    "Provider",
    "Result",
    "ShortLongAttentionBench",
    "Sweep",
    "Timing",
    "TimingConfig",
    "Unavailable",
    "get_op",
    "results_to_rows",
    "run",
]

OPS = {b.kernel: b for b in (ShortLongAttentionBench(), FusionBlockBench())}


def get_op(name: str) -> OpBench:
    """The op benchmark for a kernel name or alias (``attention``, ``fusion_block``, ...)."""
    for bench in OPS.values():
        if name == bench.kernel or name in bench.aliases:
            return bench
    raise KeyError(f"unknown op {name!r}; expected one of {sorted(a for b in OPS.values() for a in b.aliases)}")
