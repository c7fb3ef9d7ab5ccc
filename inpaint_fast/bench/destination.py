"""Where benchmark results are written, and when the committed results file must not be.

The repository's ``benchmarks/results/benchmarks.csv`` is tracked: it holds the reference rows
the README's tables and plots are made from. A user's ``inpaint-fast bench`` (``make bench``) must
not rewrite it, so by default results go to ``bench-results/benchmarks.csv`` under the current
directory (git-ignored); ``--save`` chooses the committed file explicitly, ``--csv PATH`` any file,
``--no-csv`` none. Timings taken while other processes compete for the CPUs are 10-100x off, so
they go into the committed file only with ``--force``, whichever flag named it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional, Sequence

# By default under the current directory, outside the repository's tracked files (.gitignore
# lists bench-results/); the committed reference results relative to the repository root.
DEFAULT_CSV = os.path.join("bench-results", "benchmarks.csv")
COMMITTED_CSV = os.path.join("benchmarks", "results", "benchmarks.csv")

__all__ = [
    "COMMITTED_CSV",
    "DEFAULT_CSV",
    "DESTINATION_FLAGS",
    "Destination",
    "choose_destination",
    "is_committed_csv",
    "is_repository_root",
    "refuse_noisy_reference",
    "sweep_argv",
    "with_default_destination",
]

DESTINATION_FLAGS = ("--csv", "--save", "--no-csv")


@dataclass(frozen=True)
class Destination:
    """A results CSV, the flag that chose it (for messages; "default" when none did), and whether
    it is a repository's committed results file."""

    path: str
    option: str
    committed: bool


def is_repository_root(directory: str) -> bool:
    """Whether ``directory`` is a checkout of this repository (it has the package and the results folder)."""
    return os.path.isfile(os.path.join(directory, "inpaint_fast", "__init__.py")) and os.path.isdir(
        os.path.join(directory, os.path.dirname(COMMITTED_CSV))
    )


def is_committed_csv(path: str) -> bool:
    """Whether ``path`` is some checkout's ``benchmarks/results/benchmarks.csv`` (through any
    relative path or symlink)."""
    real = os.path.realpath(path)
    root = real
    for _ in COMMITTED_CSV.split(os.sep):
        root = os.path.dirname(root)
    return real == os.path.join(root, COMMITTED_CSV) and is_repository_root(root)


def _chosen_flags(save: bool, csv: Optional[str], no_csv: bool) -> List[str]:
    return [flag for flag, given in zip(DESTINATION_FLAGS, (csv is not None, save, no_csv)) if given]


def choose_destination(save: bool, csv: Optional[str], no_csv: bool, cwd: str = ".") -> Optional[Destination]:
    """The CSV that ``--save`` / ``--csv PATH`` / ``--no-csv`` (at most one) choose, None for
    ``--no-csv``; raises ValueError, naming the flag, for a choice that cannot be honoured."""
    chosen = _chosen_flags(save, csv, no_csv)
    if len(chosen) > 1:
        raise ValueError(f"{chosen[0]}: not allowed with {' and '.join(chosen[1:])}; expected one of "
                         f"{', '.join(DESTINATION_FLAGS)} (they choose where results go)")
    if no_csv:
        return None
    if save:
        if not is_repository_root(cwd):
            raise ValueError(f"--save: writes the committed {COMMITTED_CSV} of the repository and so runs only "
                             f"from the repository root (the folder holding inpaint_fast/ and "
                             f"{os.path.dirname(COMMITTED_CSV)}/); {os.path.abspath(cwd)} is not one: run from "
                             "there, or pass --csv PATH")
        path = os.path.join(cwd, COMMITTED_CSV) if cwd != "." else COMMITTED_CSV
        return Destination(path, "--save", committed=True)
    if csv is not None:
        if not csv:
            raise ValueError("--csv: expected a file path, got ''")
        return Destination(csv, "--csv", committed=is_committed_csv(csv))
    path = os.path.join(cwd, DEFAULT_CSV) if cwd != "." else DEFAULT_CSV
    return Destination(path, "default", committed=is_committed_csv(path))


def refuse_noisy_reference(dest: Optional[Destination], busy: int, cpus: Optional[int], force: bool) -> None:
    """Raise ValueError when ``busy`` other processes would make the timings bound for a committed
    results file noisy, unless ``force``."""
    if dest is None or not dest.committed or not busy or force:
        return
    raise ValueError(
        f"{dest.option}: {busy} other process(es) are running on this machine's {cpus} CPUs, so the timings "
        f"would be noisy and must not replace the reference rows of the committed {dest.path}; rerun on a quiet "
        "machine, write them elsewhere with --csv PATH, or pass --force to write them anyway"
    )


def with_default_destination(argv: Sequence[str], path: str) -> List[str]:
    """``argv`` with ``--csv path`` in front, unless it already chooses where results go
    (``--csv``, ``--save`` or ``--no-csv``): what the sweep scripts in ``benchmarks/`` pass on."""
    for arg in argv:
        if arg.split("=", 1)[0] in DESTINATION_FLAGS:
            return list(argv)
    return ["--csv", path, *argv]


def sweep_argv(op: str, argv: Sequence[str], committed_csv: str) -> List[str]:
    """The ``inpaint-fast bench`` arguments of a sweep script in benchmarks/ for ``op``: those
    scripts refresh the reference results, so they name the committed CSV (from any directory)
    unless ``argv`` chooses where to write."""
    return ["bench", "--op", op, *with_default_destination(argv, committed_csv)]
