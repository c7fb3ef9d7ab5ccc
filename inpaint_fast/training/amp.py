"""Mixed precision for a training step: torch.autocast, plus a GradScaler for fp16.

One :class:`Precision` object per run. A task's step uses it as::

    with precision.autocast():
        loss = ...
    precision.backward(loss)
    precision.step(optimizer)          # once per optimizer
    precision.update()                 # once per training step, after every optimizer stepped

With several optimizers in one step (PIC's D and G/E), the one scaler is shared and updated
once at the end: PyTorch's documented pattern for multiple losses and optimizers.
"""

from __future__ import annotations

import contextlib
from typing import Any, Dict, Optional

import torch

__all__ = ["AMP_MODES", "Precision", "cpu_has_native_bf16", "slow_amp_reason"]

AMP_MODES = ("off", "fp16", "bf16")
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}

# /proc/cpuinfo flags of bf16 arithmetic: x86 AVX512-BF16 and AMX-BF16, Arm's BF16 extension.
_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> Optional[bool]:
    """Whether this CPU has bf16 arithmetic instructions; None when ``cpuinfo`` cannot be read.

    Without them oneDNN and ATen emulate bf16 by converting to fp32 and back around every op, so
    bf16 autocast runs slower than plain fp32 instead of faster. ``torch.backends.cpu.
    get_cpu_capability()`` cannot tell: it says "AVX512" for CPUs with and without AVX512-BF16.
    """
    try:
        with open(cpuinfo) as f:
            text = f.read()
    except OSError:
        return None
    flags = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):  # x86 / Arm spelling
            flags.update(value.split())
    return bool(flags & _BF16_FLAGS)


def slow_amp_reason(mode: str, device_type: str) -> Optional[str]:
    """Why ``--amp mode`` would make training slower on ``device_type``, or None."""
    if mode != "bf16" or device_type != "cpu" or cpu_has_native_bf16() is not False:
        return None
    return (f"this CPU has no bf16 instructions (no avx512_bf16 or amx_bf16 in /proc/cpuinfo; ATen capability "
            f"{torch.backends.cpu.get_cpu_capability()}), so bf16 is emulated and training runs slower than fp32 "
            "(about 2x, up to 8x at 256x256); use --amp off here, or a CPU with AVX512-BF16/AMX or a GPU")


class Precision:
    """Autocast + loss scaling for one device.

    Args:
        mode: "off" (fp32), "fp16" (autocast to float16 with a GradScaler) or "bf16" (autocast to
            bfloat16, no scaler: bf16 has fp32's exponent range).
        device_type: "cpu" or "cuda" (``torch.device.type`` of the training device).
    """

    def __init__(self, mode: str = "off", device_type: str = "cpu"):
        if mode not in AMP_MODES:
            raise ValueError(f"amp: expected one of {AMP_MODES}, got {mode!r}")
        self.mode = mode
        self.device_type = device_type
        self.dtype: Optional[torch.dtype] = _DTYPES.get(mode)
        self.scaler: Optional[Any] = torch.amp.GradScaler(device_type) if mode == "fp16" else None

    def autocast(self):
        """A context that runs its body under autocast (a no-op context when mode is "off")."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``, scaled when a GradScaler is in use."""
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer.step()``; with a scaler, unscales first and skips the step on inf/NaN grads."""
        if self.scaler is not None:
            self.scaler.step(optimizer)
        else:
            optimizer.step()

    def update(self) -> None:
        """Adjust the loss scale (fp16 only); call once per training step."""
        if self.scaler is not None:
            self.scaler.update()

    def state_dict(self) -> Dict[str, Any]:
        return {"mode": self.mode, "scaler": self.scaler.state_dict() if self.scaler is not None else None}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
