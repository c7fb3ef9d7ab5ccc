"""Training checkpoints: atomic writes, exact-resume state, and finding the latest one.

A checkpoint is one ``torch.save`` file (a dict) under ``OUT/checkpoints/step_<step>.pt``. It is
written with :func:`~inpaint_fast.training.files.atomic_write` (a temporary file in the same
folder, fsync'ed, moved into place with ``os.replace``, the folder fsync'ed), so a crash or an
exception while saving never leaves a partial ``step_*.pt`` behind: either the old set of
checkpoints or the new one is on disk. The files get the permissions ``open()`` would give them
(0666 less the umask). A process killed mid-save leaves its hidden temporary file, which
:func:`remove_partial_checkpoints` deletes on resume.

Everything in it loads with ``torch.load(weights_only=True)``: RNG states of numpy and Python
are converted to tensors and plain tuples first.
"""

from __future__ import annotations

import os
import random
import re
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from .errors import MissingFileError, UsageError
from .files import atomic_write, remove_partial_writes

__all__ = [
    "CHECKPOINT_FORMAT",
    "atomic_save",
    "capture_rng_state",
    "checkpoint_dir",
    "checkpoint_path",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "prune_checkpoints",
    "read_torch_file",
    "remove_partial_checkpoints",
    "restore_rng_state",
]

CHECKPOINT_FORMAT = "inpaint_fast.train/1"
# Why torch.load(weights_only=True) fails on a file a user passed, in words (torch's own message is
# not passed on: see read_torch_file).
UNREADABLE = ("torch.load cannot read it: the file is empty, damaged, not written by torch.save, or holds more "
              "than tensors and plain containers")
_NAME = re.compile(r"^step_(\d+)\.pt$")


def checkpoint_dir(out_dir: str) -> str:
    """Where a run writing to ``out_dir`` keeps its checkpoints."""
    return os.path.join(out_dir, "checkpoints")


def checkpoint_path(out_dir: str, step: int) -> str:
    """``OUT/checkpoints/step_<step, 8 digits>.pt``."""
    return os.path.join(checkpoint_dir(out_dir), f"step_{step:08d}.pt")


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save(obj)`` to ``path`` so that ``path`` is either absent/old or complete (see
    :func:`~inpaint_fast.training.files.atomic_write`: on any exception, a full disk included,
    nothing but the error is left behind)."""
    # torch.save into a Python file object: given a path, torch's own writer reports a full disk as a
    # RuntimeError of its C++ zip writer instead of the OSError(ENOSPC) the trainer turns into advice
    atomic_write(path, lambda f: torch.save(obj, f))


def remove_partial_checkpoints(out_dir: str) -> List[str]:
    """Delete the temporary files of checkpoint saves that were killed midway; returns their paths."""
    return remove_partial_writes(checkpoint_dir(out_dir), _NAME)


def list_checkpoints(out_dir: str) -> List[tuple]:
    """``[(step, path), ...]`` of the complete checkpoints of a run, sorted by step."""
    folder = checkpoint_dir(out_dir)
    if not os.path.isdir(folder):
        return []
    found = []
    for name in os.listdir(folder):
        m = _NAME.match(name)
        if m:
            found.append((int(m.group(1)), os.path.join(folder, name)))
    return sorted(found)


def latest_checkpoint(out_dir: str) -> Optional[str]:
    """Path of the highest-step checkpoint under ``out_dir``, or None when there is none."""
    found = list_checkpoints(out_dir)
    return found[-1][1] if found else None


def prune_checkpoints(out_dir: str, keep: int) -> None:
    """Delete all but the ``keep`` newest checkpoints (``keep <= 0`` keeps everything)."""
    if keep <= 0:
        return
    for _, path in list_checkpoints(out_dir)[:-keep]:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def load_checkpoint(path: str, map_location: Any = "cpu", *, mmap: bool = False) -> Dict[str, Any]:
    """Load a file written by :func:`atomic_save` (``weights_only=True``).

    ``mmap=True`` maps the tensors instead of reading them (cheap when only metadata is needed).
    Raises FileNotFoundError naming ``path`` when it does not exist.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint: no file at {path!r}")
    return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)


def read_torch_file(path: str, option: str, *, expected: str, map_location: Any = "cpu",
                    mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` for a file the user named with ``option``.

    Raises :class:`MissingFileError` when there is no file and :class:`UsageError` when torch
    cannot read it; both messages name ``option`` and end with ``expected`` (what to pass
    instead). torch's own message is left out on purpose: for a file that unpickles to more than
    tensors it advises ``weights_only=False``, which would run arbitrary code from the file.
    """
    if not os.path.isfile(path):
        raise MissingFileError(f"{option}: no file at {path!r}; {expected}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:  # a damaged file fails in many ways (UnpicklingError, EOFError, RuntimeError, ...)
        raise UsageError(f"{option}: {path!r} is not a readable checkpoint ({UNREADABLE}); {expected}") from exc


# ---------------------------------------------------------------------------------------------
# RNG state


def capture_rng_state() -> Dict[str, Any]:
    """The state of every RNG the training step may draw from, in a weights_only-safe form.

    Keys: ``torch`` (CPU generator, uint8 tensor), ``cuda`` (list of per-device states, present
    only when CUDA is initialised), ``numpy`` and ``python``.
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: Dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`. CUDA states are restored only when both sides have them."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
