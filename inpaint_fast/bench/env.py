"""Where a measurement was taken: device name, library versions, commit, time."""

from __future__ import annotations

import datetime
import functools
import os
import platform
import subprocess

import torch

__all__ = ["device_name", "environment"]


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
    """``torch.cuda.get_device_name`` on CUDA; the CPU model and torch's thread count on CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{_cpu_model()} ({torch.get_num_threads()} threads)"


@functools.lru_cache(maxsize=None)
def _commit() -> str:
    """``git rev-parse --short HEAD`` of the checkout this package lives in, or "unknown"."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


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
