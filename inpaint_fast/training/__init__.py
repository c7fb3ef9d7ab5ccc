"""Training machinery behind ``inpaint-fast train``.

* :mod:`.loop` — :class:`Trainer` (epochs, progress, metrics, samples, checkpoints, resume) and
  the :class:`TrainTask` interface a model implements;
* :mod:`.tasks` — the PIC and DFNet tasks (the papers' recipes);
* :mod:`.checkpoint` — atomic saves, RNG states, finding the latest checkpoint;
* :mod:`.files` — atomic writes (whole or absent, umask permissions) and their leftovers after a kill;
* :mod:`.metrics_log` — ``metrics.jsonl``, trimmed to the checkpoint a run resumes from;
* :mod:`.distributed` — torchrun / DDP set-up;
* :mod:`.sampling` — a DistributedSampler that resumes mid-epoch;
* :mod:`.amp` — autocast + GradScaler;
* :mod:`.visuals` — sample grids;
* :mod:`.run` — from parsed ``inpaint-fast train`` arguments to a finished run;
* :mod:`.errors` — :class:`UsageError` (and :class:`OutputError`, an unwritable ``--out``), what the
  command line reports as one ``error:`` line.
"""

from .amp import AMP_MODES, Precision
from .checkpoint import atomic_save, latest_checkpoint, load_checkpoint
from .distributed import DistInfo, init_distributed, shutdown_distributed
from .errors import MissingFileError, OutputError, UsageError
from .loop import TrainConfig, Trainer, TrainTask

__all__ = [
    "AMP_MODES",
    "DistInfo",
    "MissingFileError",
    "OutputError",
    "Precision",
    "TrainConfig",
    "TrainTask",
    "Trainer",
    "UsageError",
    "atomic_save",
    "init_distributed",
    "latest_checkpoint",
    "load_checkpoint",
    "shutdown_distributed",
]
