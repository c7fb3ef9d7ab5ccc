"""What the end-to-end benchmark scripts (benchmarks/bench_train_step.py, benchmarks/bench_completion.py)
do around their sweep: announce the device, warn about a busy CPU or a memory limit the machine
cannot give, refuse noisy timings for the committed CSV (before the run), and afterwards print
the table and one summary line per timed result, and upsert the rows.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, Optional, Sequence, Tuple

import torch

from .outcome import Result

__all__ = ["begin", "finish"]


def begin(device: torch.device, csv: str, no_csv: bool, force: bool,
          memory_limit_gib: Optional[float]) -> Tuple[dict, int]:
    """(environment, number of busy CPUs) for the run; ValueError if the destination refuses it."""
    from .destination import Destination, is_committed_csv, refuse_noisy_reference
    from .env import busy_cpus, environment

    env = environment(device)
    print(f"device: {env['device_name']} | torch {env['torch_version']} | commit {env['commit']}", flush=True)
    busy = busy_cpus() if device.type == "cpu" else 0
    if busy:
        print(f"warning: {busy} other process(es) are running on this machine's {os.cpu_count()} CPUs; "
              "CPU timings will be slow and noisy", file=sys.stderr)
    if memory_limit_gib is not None:
        from .memory_limit import limit_warning

        warning = limit_warning(memory_limit_gib)
        if warning:
            print(warning, file=sys.stderr)
    dest = None if no_csv else Destination(csv, "--csv", is_committed_csv(csv))
    refuse_noisy_reference(dest, busy, os.cpu_count(), force)  # noisy timings must not replace committed rows
    return env, busy


def finish(results: Sequence[Result], env: dict, busy: int, csv: str, no_csv: bool,
           summary: Callable[[Result], str], seconds: float) -> int:
    """Prints and saves ``results``; the exit status (1 if a provider was wrong)."""
    from .report import format_table
    from .results import upsert_rows
    from .rows import results_to_rows

    if busy:  # keep the caveat with the numbers
        for r in results:
            r.note = "; ".join(filter(None, [r.note, f"{busy} other processes were running at the start"]))
    print(format_table(results))
    for r in results:
        if r.timing is not None:
            print(summary(r))
    print(f"{len(results)} results in {seconds:.1f} s")
    if not no_csv:
        n = upsert_rows(csv, results_to_rows(results, env))
        print(f"results upserted into {csv} ({n} rows)")
    return 1 if any(r.status == "wrong" for r in results) else 0
