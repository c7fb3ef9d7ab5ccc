"""torchrun / DistributedDataParallel plumbing for the trainer.

``torchrun --nproc_per_node G inpaint-fast train ...`` (or ``python -m torch.distributed.run``)
sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; :func:`init_distributed` reads
them and starts the process group (NCCL on CUDA, Gloo on CPU). Without them the run is a single
process and every helper here degrades to a no-op.

DDP reduces gradients through hooks that fire in ``backward``; it expects every parameter it
tracks to receive a gradient in each backward that follows a synchronised forward. Two things
in PIC break that rule and are handled here rather than with ``find_unused_parameters=True``
(which walks the autograd graph after every forward):

* parameters that never take part in the forward (the inner ResBlock of the discriminators'
  attention) are found once with :func:`unused_parameters` and excluded from DDP;
* a frozen discriminator used inside the generator's loss is called under ``no_sync()``
  (see :func:`no_sync`), so DDP does not wait for gradients that will never come.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional

import torch
import torch.distributed as dist
from torch import nn

from .errors import UsageError

__all__ = [
    "DistInfo",
    "DDPWrapper",
    "all_gather_object",
    "all_reduce_mean",
    "barrier",
    "broadcast_object",
    "init_distributed",
    "no_sync",
    "parse_device",
    "shutdown_distributed",
    "unused_parameters",
    "wrap_ddp",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job.

    rank: 0..world_size-1 (global); local_rank: index on this node (picks the GPU);
    device: the device this process trains on; backend: "nccl" / "gloo", None when not distributed.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: Optional[str] = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise RuntimeError(f"environment variable {name}={value!r} is not an integer") from exc


_DEVICE = re.compile(r"^(cpu|cuda)(?::(\d+))?$")


def parse_device(text: Optional[str], option: str = "--device") -> torch.device:
    """The device a ``--device`` value names: "cpu", "cuda" or "cuda:K"; None = cuda if available.

    Raises :class:`UsageError` naming ``option`` for any other text (torch's own parser would
    list every device type it knows), for CUDA without a usable GPU, and for a K past the last GPU.
    """
    if text is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    match = _DEVICE.match(text.strip())
    if match is None or (match.group(1) == "cpu" and match.group(2) is not None):
        raise UsageError(f"{option}: expected cpu, cuda or cuda:K (K = GPU index), got {text!r}")
    if match.group(1) == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UsageError(f"{option}: {text!r} needs a GPU, but torch.cuda.is_available() is False (none visible, or "
                         f"torch {torch.__version__} is a CPU-only build); use {option} cpu")
    index = None if match.group(2) is None else int(match.group(2))
    if index is not None and index >= torch.cuda.device_count():
        raise UsageError(f"{option}: {text!r}, but only {torch.cuda.device_count()} GPU(s) are visible; "
                         f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    return torch.device("cuda", index) if index is not None else torch.device("cuda")


def init_distributed(device: Optional[str] = None, *, timeout_s: float = 1800.0) -> DistInfo:
    """Start the process group when launched by torchrun, pick the device, return a :class:`DistInfo`.

    Args:
        device: "cpu", "cuda" or "cuda:K" (a specific GPU; only without torchrun), or None for
            CUDA when available, else CPU. Under torchrun with CUDA, each process takes GPU
            ``LOCAL_RANK``.
        timeout_s: collective timeout.
    Raises UsageError (:func:`parse_device`) for a bad or unusable device, RuntimeError when the
    torchrun environment is inconsistent.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < world_size:
        raise RuntimeError(f"RANK={rank} is outside [0, WORLD_SIZE={world_size})")
    want = parse_device(device)
    if want.type == "cuda":
        if world_size > 1:
            if local_rank >= torch.cuda.device_count():
                raise RuntimeError(f"LOCAL_RANK={local_rank}, but only {torch.cuda.device_count()} GPU(s) are visible")
            want = torch.device("cuda", local_rank)
        elif want.index is None:
            want = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(want)
    if world_size == 1:
        return DistInfo(device=want)
    backend = "nccl" if want.type == "cuda" else "gloo"
    if not dist.is_initialized():
        kwargs: Dict[str, Any] = {"backend": backend, "timeout": datetime.timedelta(seconds=timeout_s)}
        if want.type == "cuda":
            kwargs["device_id"] = want  # binds NCCL to this GPU (avoids a barrier on GPU 0)
        try:
            dist.init_process_group(**kwargs)
        except TypeError:  # torch without device_id
            kwargs.pop("device_id", None)
            dist.init_process_group(**kwargs)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=want, backend=backend)


def shutdown_distributed(info: DistInfo) -> None:
    """Destroy the process group (no-op when not distributed)."""
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """All ranks wait for each other (no-op when not distributed)."""
    if info.distributed:
        if info.backend == "nccl":
            dist.barrier(device_ids=[info.device.index])
        else:
            dist.barrier()


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank (``obj`` itself when not distributed). A collective: no rank
    returns before rank 0 has called it, so it also orders work rank 0 does first."""
    if not info.distributed:
        return obj
    box = [obj if info.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(obj: Any, info: DistInfo) -> List[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (``[obj]`` when not distributed)."""
    if not info.distributed:
        return [obj]
    out: List[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_mean(values: Dict[str, float], info: DistInfo) -> Dict[str, float]:
    """Mean over ranks of a dict of floats with the same keys on every rank."""
    if not info.distributed or not values:
        return dict(values)
    keys = list(values)  # the same code on every rank gives the same order
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64,
                     device=info.device if info.backend == "nccl" else "cpu")
    dist.all_reduce(t)
    t /= info.world_size
    return {k: float(v) for k, v in zip(keys, t.tolist())}


class DDPWrapper(nn.parallel.DistributedDataParallel):
    """DistributedDataParallel that forwards unknown attribute look-ups to the wrapped module,
    so a model's methods that read ``self.net_G.some_attribute`` keep working after wrapping."""

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def wrap_ddp(module: nn.Module, info: DistInfo, *, ignore: Iterable[str] = (),
             find_unused_parameters: bool = False) -> nn.Module:
    """Wrap ``module`` in DDP (returned unchanged when not distributed or without trainable params).

    Args:
        ignore: names (as in ``module.named_parameters()``) of parameters DDP must neither
            broadcast-check nor reduce, e.g. those that never run.
        find_unused_parameters: passed to DDP; leave False when ``ignore`` covers the unused ones.
    """
    if not info.distributed or not any(p.requires_grad for p in module.parameters()):
        return module
    ignore = sorted(set(ignore))
    if ignore:
        nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, ignore)
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return DDPWrapper(module, device_ids=device_ids, find_unused_parameters=find_unused_parameters)


@contextlib.contextmanager
def no_sync(*modules: nn.Module) -> Iterator[None]:
    """Run the body with gradient synchronisation off for every DDP module given (others ignored)."""
    with contextlib.ExitStack() as stack:
        for m in modules:
            if isinstance(m, nn.parallel.DistributedDataParallel):
                stack.enter_context(m.no_sync())
        yield


def unused_parameters(model: nn.Module, closure: Callable[[], torch.Tensor]) -> List[str]:
    """Names of ``model``'s trainable parameters that get no gradient from ``closure()``'s loss.

    ``closure`` runs a representative forward and returns a scalar loss; this function calls
    ``backward`` on it. The model's parameters, buffers (spectral-norm vectors, BN statistics),
    ``.grad`` fields and the global RNG states are restored afterwards, so the probe leaves no
    trace on training.
    """
    saved = copy.deepcopy(model.state_dict())
    grads = {n: p.grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = None
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        loss = closure()
        loss.backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    for n, p in model.named_parameters():
        p.grad = grads[n]
    model.load_state_dict(saved)
    return unused
