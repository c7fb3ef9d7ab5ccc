"""One measurement in a child process whose memory is capped (the benchmarks' ``--memory-limit GIB``).

:func:`run_limited` runs ``target(*args)`` in a ``spawn``-ed child process (``target`` must be a
module-level function of an importable module, its arguments and result picklable), caps the
child's memory with ``setrlimit(RLIMIT_DATA)`` before it calls ``target``, and returns what the
child returned. An allocation over the cap then fails inside the child like any other
allocation failure: torch raises ``DefaultCPUAllocator: can't allocate memory`` (older torch: ``not
enough memory``), Python ``MemoryError``; :func:`.outcome.failure_status` records both as ``oom``. The
parent's memory and the rest of the machine are untouched, so a sweep survives a provider that
needs more than the machine has (PIC's reference path materialises N×N attention maps: 16 GiB
each at 2048² inference), instead of the kernel's OOM killer ending the whole benchmark.

Why RLIMIT_DATA: since Linux 4.7 it counts every private writable mapping (heap, the anonymous
``mmap`` s that glibc's ``malloc`` and torch's CPU allocator use for large blocks, thread stacks),
i.e. the memory a process can actually touch, and not the address space that shared libraries
and reserved-but-inaccessible regions take (``RLIMIT_AS`` would count those: importing torch alone
maps ~0.6 GiB of address space against ~0.2 GiB of data). Measured on this machine (Linux 6.18,
torch 2.13 CPU): under a 1.5 GiB RLIMIT_DATA a 1 GiB tensor is allocated and filled, a 2 GiB one
fails with ``RuntimeError: [enforce fail at alloc_cpu.cpp:127] ... DefaultCPUAllocator: can't
allocate memory: you tried to allocate 2147483648 bytes. Error code 12``; ``VmData`` tracked
``VmRSS`` within 2% over whole PIC training steps. RLIMIT_DATA is not the resident set: memory that
is allocated but never touched counts too, so the cap is an upper bound on what the child could
use, not a measurement (the row's ``peak_mb`` is). The cap is per process and counts host memory only
(CUDA device memory is not in it): it is meant for CPU runs.

A child that dies without answering (killed by a signal: the OOM killer's SIGKILL, a segfault in
a library that did not check an allocation) becomes :class:`ChildFailed` naming the signal or the
exit status; the caller records it and goes on.
"""

from __future__ import annotations

import math
import multiprocessing
import signal
import sys
from typing import Any, Callable, Optional, Sequence, Tuple

from .outcome import failure_status

__all__ = ["RLIMIT", "ChildFailed", "data_in_use_gib", "limit_note", "limit_warning",
           "run_limited"]

RLIMIT = "RLIMIT_DATA"
# torch's CPU allocator and Python's messages for an allocation that failed.
class ChildFailed(RuntimeError):
    """The measuring child process ended without returning a result; ``status``/``note`` say how."""

    def __init__(self, status: str, note: str) -> None:
        super().__init__(note)
        self.status, self.note = status, note


def limit_note(gib: float) -> str:
    """What every row measured under a cap says: ``memory limit 20 GiB (RLIMIT_DATA)``."""
    return f"memory limit {gib:g} GiB ({RLIMIT})"


def _set_limit(limit_bytes: Optional[int]) -> None:
    """Set the soft RLIMIT_DATA to ``limit_bytes`` (None: back to the hard limit)."""
    import resource

    which = getattr(resource, RLIMIT)
    _, hard = resource.getrlimit(which)
    if limit_bytes is None or (hard != resource.RLIM_INFINITY and hard < limit_bytes):
        limit_bytes = hard
    resource.setrlimit(which, (limit_bytes, hard))


def data_in_use_gib() -> float:
    """This process's ``VmData`` (what RLIMIT_DATA counts) in GiB, NaN where /proc is unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmData:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return math.nan


def limit_warning(limit_gib: float) -> str:
    """A warning line when a cap of ``limit_gib`` does not protect this machine (it is not below
    ``MemAvailable``: the kernel's OOM killer may strike before the cap does), else ''."""
    try:
        with open("/proc/meminfo") as f:
            info = {k: int(v.split()[0]) for k, _, v in (line.partition(":") for line in f) if v.strip()}
    except (OSError, ValueError):
        return ""
    available = info.get("MemAvailable", 0) / 2**20
    if available and limit_gib >= available:
        return (f"warning: --memory-limit {limit_gib:g} GiB is not below this machine's available memory "
                f"({available:.1f} GiB): the OOM killer may end a provider before the cap does")
    return ""


def _child_main(conn, target: Callable, args: Sequence[Any], limit_bytes: int) -> None:
    """The child's entry point (module level, so ``spawn`` can pickle it). Unpickling ``target`` has
    imported its module (and torch) already: the cap applies from here on, to the call only."""
    try:
        _set_limit(limit_bytes)
        value = target(*args)
        message: Tuple[str, Any] = ("ok", value)
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent
        message = ("failed", failure_status(exc))
    try:
        _set_limit(None)  # the reply must not fail for want of memory the measurement used
    except (OSError, ValueError):
        pass
    try:
        conn.send(message)
    except Exception as exc:  # noqa: BLE001 - e.g. a result that does not pickle
        conn.send(("failed", ("error", f"the result could not be sent back: {type(exc).__name__}: {exc}"[:300])))
    finally:
        conn.close()


def _death_note(exitcode: Optional[int]) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (the kernel's OOM killer sends it when the machine runs out of memory)" \
            if -exitcode == signal.SIGKILL else ""
        return f"the measuring process was killed by {name}{hint}"
    return f"the measuring process exited with status {exitcode} without a result"


def run_limited(target: Callable, args: Sequence[Any], limit_gib: float, *, timeout_s: Optional[float] = None) -> Any:
    """``target(*args)`` in a spawned child whose RLIMIT_DATA is ``limit_gib`` GiB; returns its result.

    Raises :class:`ChildFailed` when the child raised (``status`` from :func:`.outcome.failure_status`), died
    without answering (``error``, the signal named) or ran past ``timeout_s`` (``error``).
    """
    if sys.platform != "linux":
        raise ChildFailed("unavailable", f"--memory-limit needs Linux ({RLIMIT}); this is {sys.platform}")
    if not (limit_gib > 0 and math.isfinite(limit_gib)):
        raise ValueError(f"memory limit: expected a positive number of GiB, got {limit_gib!r}")
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child_main, args=(send, target, tuple(args), int(limit_gib * 2**30)), daemon=True)
    child.start()
    send.close()  # the child holds the only writer: recv() sees EOF if it dies
    message = None
    finished = False
    try:
        if timeout_s is None or receive.poll(timeout_s):
            try:
                message = receive.recv()
            except EOFError:
                message = None
            finished = True
        else:
            message = ("failed", ("error", f"no result within {timeout_s:g} s; the measuring process was stopped"))
    finally:
        if not finished:  # a timeout, or the parent interrupted: do not wait for the child
            child.terminate()
        child.join(30)
        if child.is_alive():
            child.kill()
            child.join()
        receive.close()
    if message is None:
        raise ChildFailed("error", _death_note(child.exitcode))
    kind, value = message
    if kind == "ok":
        return value
    raise ChildFailed(*value)
