"""Progress of ``inpaint-fast bench``: a tqdm bar on a terminal, plain lines anywhere else.

A bar redraws itself with carriage returns, which a log (CI, ``make bench | tee``) keeps as one
garbled line, or drops entirely when only stdout is captured. So the bar is used only when both
stdout and stderr are terminals; otherwise every finished (case, mode) prints one flushed line on
stdout, next to the table it precedes:

    [3/24] short_long_attention fwd fp32 B1-C128-Cq32-Cp128-N1024: reference 9.20 ms, cpu 4.20 ms
"""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Dict, Iterator, List, Optional, Sequence, TextIO, Tuple

from .outcome import Result
from .report import format_case_line

__all__ = ["CaseLines", "on_terminal", "progress"]


def on_terminal(*streams: TextIO) -> bool:
    """True when every stream is an interactive terminal."""
    return all(getattr(s, "isatty", None) is not None and s.isatty() for s in streams)


def _by_mode(results: Sequence[Result]) -> List[List[Result]]:
    """``results`` grouped by mode, modes and providers in the order they ran."""
    groups: Dict[str, List[Result]] = {}
    for r in results:
        groups.setdefault(r.mode, []).append(r)
    return list(groups.values())


class CaseLines:
    """``runner.run``'s ``on_case``: one numbered line per (case, mode) on ``stream``, flushed at once
    so a log shows how far a long run got."""

    def __init__(self, total: int, stream: TextIO):
        self.total = total
        self.stream = stream
        self.done = 0

    def __call__(self, results: Sequence[Result]) -> None:
        for group in _by_mode(results):
            self.done += 1
            print(f"[{self.done}/{self.total}] {format_case_line(group)}", file=self.stream, flush=True)


@contextlib.contextmanager
def progress(runs: int, case_modes: int, stdout: Optional[TextIO] = None, stderr: Optional[TextIO] = None
             ) -> Iterator[Tuple[Optional[object], Optional[Callable[[Sequence[Result]], None]]]]:
    """``(bar, on_case)`` for ``runner.run``: a tqdm bar over ``runs`` (case, provider, mode) triples
    on stderr when stdout and stderr are terminals (``on_case`` None), else no bar and
    :class:`CaseLines` over ``case_modes`` lines on stdout. Streams default to sys's at call time."""
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    if not on_terminal(stdout, stderr):
        yield None, CaseLines(case_modes, stdout)
        return
    from tqdm import tqdm

    with tqdm(total=runs, desc="bench", unit="run", file=stderr, leave=False) as bar:
        yield bar, None
