"""Writing a run's files so that no crash leaves one half-written under its final name.

:func:`atomic_write` writes to a hidden temporary file next to the target
(``.<name>.<16 hex digits>.tmp``: the same folder, so the rename is atomic), fsyncs it, renames
it over the target and fsyncs the folder. Killed at any point, the target is either absent (or
its old version) or complete, and once the rename has happened a power cut keeps the new file.
The file is created the way ``open(path, "wb")`` creates one — mode 0666 less the umask, so a
user's group can read checkpoints like any other file (``tempfile.mkstemp`` would make it 0600).

A process killed inside a write (SIGKILL, the OOM killer, a power cut) cannot delete its
temporary file; :func:`remove_partial_writes` deletes such leftovers when the run resumes.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
from typing import BinaryIO, Callable, List, Pattern

__all__ = ["atomic_write", "fsync_folder", "partial_path", "remove_partial_writes"]

# ``.<target>.<token>.tmp``; the token is also matched in the 8-character form of tempfile.mkstemp,
# which earlier versions used, so their leftovers are recognised too.
_PARTIAL = re.compile(r"^\.(?P<target>.+)\.[A-Za-z0-9_]{8,}\.tmp$")
# fsync on a folder fails with these where the file system does not sync folders (some FUSE and
# network mounts): the rename is then as durable as that file system makes it.
_NO_FOLDER_SYNC = {errno.EINVAL, errno.ENOTSUP, errno.EBADF}


def partial_path(path: str) -> str:
    """A fresh hidden temporary path next to ``path`` (what :func:`remove_partial_writes` matches)."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}.{secrets.token_hex(8)}.tmp")


def _create(path: str) -> int:
    """Open a new file for writing with mode 0666 less the umask (O_EXCL: never an existing one)."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)


def _discard(path: str) -> None:
    """Delete a temporary file after a failed write. An error here is not raised: the write's own
    error is the one to report, and :func:`remove_partial_writes` clears what is left."""
    try:
        os.unlink(path)
    except OSError:
        pass


def fsync_folder(folder: str) -> None:
    """Make the renames in ``folder`` durable (nothing to do on Windows, which cannot open a folder)."""
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _NO_FOLDER_SYNC:
            raise
    finally:
        os.close(fd)


def atomic_write(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(f)`` on a binary file that becomes ``path`` only once it is complete and on disk.

    On any exception (a full disk included) the temporary file is deleted, ``path`` is left as it
    was, and the exception is re-raised.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = partial_path(path)
    fd = _create(tmp)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _discard(tmp)
        raise
    fsync_folder(folder)


def remove_partial_writes(folder: str, targets: Pattern) -> List[str]:
    """Delete the temporary files that :func:`atomic_write` left in ``folder`` when killed while
    writing a file whose name matches ``targets``; returns their paths. Only for a folder no other
    process is writing to (a run's own output folders, on resume)."""
    if not os.path.isdir(folder):
        return []
    removed = []
    for name in sorted(os.listdir(folder)):
        m = _PARTIAL.match(name)
        if m and targets.match(m.group("target")):
            path = os.path.join(folder, name)
            os.unlink(path)
            removed.append(path)
    return removed
