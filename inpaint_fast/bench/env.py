"""Where a measurement was taken: device name, library versions, commit, time."""

from __future__ import annotations

import datetime
import functools
import os
import platform
import subprocess
import time

import torch

__all__ = ["busy_cpus", "device_name", "environment"]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


def device_name(device: torch.device) -> str:
    """``torch.cuda.get_device_name`` on CUDA; on the CPU its model, the vector instruction set
    ATen's kernels and ours run with (``torch.backends.cpu.get_cpu_capability()``: AVX512, AVX2,
    ...) and torch's thread count, e.g. "AMD EPYC (AVX2, 2 threads)". The same model name covers
    CPUs with and without AVX-512 (virtual machines report "AMD EPYC" for several generations),
    and the two run different code, so their rows must not share a name. Rows written before the
    instruction set was recorded read "MODEL (N threads)"."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{_cpu_model()} ({torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads)"


def _git(*args: str) -> "subprocess.CompletedProcess[str] | None":
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None


@functools.lru_cache(maxsize=None)
def _commit() -> str:
    """``git rev-parse --short HEAD`` of the checkout this package lives in, with ``-dirty`` when
    tracked files differ from it (the numbers then belong to no commit), or "unknown"."""
    out = _git("rev-parse", "--short", "HEAD")
    if out is None or out.returncode != 0 or not out.stdout.strip():
        return "unknown"
    status = _git("status", "--porcelain", "--untracked-files=no")
    dirty = status is not None and status.returncode == 0 and bool(status.stdout.strip())
    return out.stdout.strip() + ("-dirty" if dirty else "")


def _triton_version() -> str:
    try:
        import triton
    except Exception:  # noqa: BLE001 - absent or broken: record nothing
        return ""
    return getattr(triton, "__version__", "")


def environment(device: torch.device) -> dict:
    """The columns of a result row that describe the machine and the code."""
    return {
        "device_name": device_name(device),
        "torch_version": torch.__version__,
        "triton_version": _triton_version(),
        "cuda_version": torch.version.cuda or "",
        "commit": _commit(),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def busy_cpus(samples: int = 5, interval_s: float = 0.05) -> int:
    """How many other runnable tasks share the CPUs right now: the least of a few /proc/loadavg
    samples (a short-lived task seen once is not a competitor), minus this process; 0 where
    /proc is unavailable."""
    counts = []
    for _ in range(samples):
        try:
            with open("/proc/loadavg") as f:
                counts.append(int(f.read().split()[3].split("/")[0]) - 1)
        except (OSError, IndexError, ValueError):
            return 0
        time.sleep(interval_s)
    return max(min(counts), 0)
