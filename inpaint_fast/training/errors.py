"""The exceptions that mean "the command line, one of its input files or its output folder is wrong".

``inpaint-fast train`` and ``inpaint-fast inpaint`` print such an error as one line,
``error: --option: what was wrong; what to do``, and exit with status 2. Every other exception
is a bug and keeps its traceback, which is why the command line catches these classes only.

:class:`OutputError`: ``--out`` cannot be written (full disk, read-only file system, no
permission), found up front or in the middle of a run; the message says which checkpoint is intact
and how to continue.

They subclass ValueError (and :class:`MissingFileError` also FileNotFoundError), so Python
callers of :func:`~inpaint_fast.training.run.prepare` or :class:`~inpaint_fast.training.Trainer`
can keep catching the built-in types.
"""

from __future__ import annotations

__all__ = ["MissingFileError", "OutputError", "UsageError"]


class UsageError(ValueError):
    """A bad argument or input file; the message names the option and says what to do."""


class MissingFileError(UsageError, FileNotFoundError):
    """A file or folder an option names does not exist."""


class OutputError(UsageError):
    """``--out`` cannot be written; the message names the file, the cause and what is intact."""
