"""``OUT/metrics.jsonl``: one JSON object per logged step, kept consistent with the checkpoints.

Rows are appended (and fsync'ed) as the run logs them, but a checkpoint is written only every K
steps, so a run that dies leaves rows past its last checkpoint — and, killed inside a write or
stopped by a full disk, a last line without its newline. A resumed run redoes the steps after its
checkpoint, so :func:`trim` first drops their rows and a half-written last line (rewriting the
file atomically); the log of a resumed run then holds every step once, as an uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

from .errors import UsageError
from .files import atomic_write, remove_partial_writes

__all__ = ["FILE_NAME", "Trimmed", "append", "metrics_path", "read", "remove_partial", "trim"]

FILE_NAME = "metrics.jsonl"


def metrics_path(out_dir: str) -> str:
    return os.path.join(out_dir, FILE_NAME)


def append(path: str, row: Dict[str, Any]) -> None:
    """Append ``row`` as one line. It is fsync'ed so that no row up to a checkpoint's step can be
    lost while the checkpoint (written after it, and fsync'ed itself) survives a power cut."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _parse(line: str, number: int, path: str) -> Dict[str, Any]:
    try:
        row = json.loads(line)
    except ValueError:
        row = None
    if not (isinstance(row, dict) and isinstance(row.get("step"), int)):
        raise UsageError(f"--resume: line {number} of {path} is not a metrics row ({line.strip()[:60]!r}); "
                         "inpaint-fast train writes one JSON object with an integer 'step' per line: "
                         "fix or delete that line")
    return row


def _rows(text: str, path: str) -> Tuple[List[Tuple[str, Dict[str, Any]]], bool]:
    lines = text.splitlines(keepends=True)
    torn = False
    if lines and not lines[-1].endswith("\n"):
        try:  # a prefix of a JSON object is never valid JSON, so a line that parses is complete
            json.loads(lines[-1])
            lines[-1] += "\n"
        except ValueError:
            torn = True
            lines.pop()
    rows = [(line, _parse(line, n, path)) for n, line in enumerate(lines, 1) if line.strip()]
    return rows, torn


def _text(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def read(path: str) -> Tuple[List[Tuple[str, Dict[str, Any]]], bool]:
    """``([(line, row), ...], torn)``: the complete rows of the log (each line ending in a newline)
    and whether its last line was half-written (no newline and not valid JSON: left out).

    Raises UsageError naming the line for any other line that is not a row.
    """
    return _rows(_text(path), path)


@dataclass(frozen=True)
class Trimmed:
    """What :func:`trim` did: rows kept and dropped, and whether a half-written last line went."""

    kept: int
    dropped: int
    torn: bool


def trim(path: str, step: int) -> Trimmed:
    """Keep only the rows of steps ``<= step`` (the checkpoint a run resumes from; 0 for a fresh
    start) and no half-written line; rewrites the file (atomically) only when that changes it."""
    if not os.path.isfile(path):
        return Trimmed(0, 0, False)
    text = _text(path)
    rows, torn = _rows(text, path)
    kept = [line for line, row in rows if row["step"] <= step]
    if "".join(kept) != text:
        atomic_write(path, lambda f: f.write("".join(kept).encode("utf-8")))
    return Trimmed(len(kept), len(rows) - len(kept), torn)


def remove_partial(out_dir: str) -> List[str]:
    """Delete the temporary files of a :func:`trim` that was killed midway; returns their paths."""
    return remove_partial_writes(out_dir, re.compile(rf"^{re.escape(FILE_NAME)}$"))
