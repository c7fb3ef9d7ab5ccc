"""A DistributedSampler that can start in the middle of an epoch (exact resume).

The order of an epoch is PyTorch's DistributedSampler order: a permutation drawn from
``seed + epoch``, padded or trimmed to a multiple of the world size, then every
``world_size``-th index from ``rank``. :meth:`ResumableSampler.set_start` skips the first
``start`` indices of this rank's share, so a run resumed after ``k`` batches of an epoch sees
exactly the batches an uninterrupted run would have seen next.
"""

from __future__ import annotations

from typing import Iterator, Optional, Sized

from torch.utils.data import DistributedSampler

__all__ = ["ResumableSampler"]


class ResumableSampler(DistributedSampler):
    """DistributedSampler (``num_replicas``/``rank`` given explicitly, so it works without a
    process group) with a start offset.

    Args:
        dataset: anything with ``len``.
        num_replicas, rank: the world size and this process's rank.
        shuffle: permute every epoch (from ``seed + epoch``).
        seed: the base seed, identical on all ranks.
        drop_last: drop the tail so all ranks get the same number of indices (no repeats).
    """

    def __init__(self, dataset: Sized, *, num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = True):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        self.start = 0

    def set_start(self, start: int) -> None:
        """Skip the first ``start`` indices of this rank's share of the current epoch (0..len)."""
        if not 0 <= start <= self.num_samples:
            raise ValueError(f"start: expected 0..{self.num_samples}, got {start}")
        self.start = start

    def __iter__(self) -> Iterator[int]:
        it = super().__iter__()
        for i, index in enumerate(it):
            if i >= self.start:
                yield index

    def __len__(self) -> int:
        return self.num_samples - self.start

    def full_length(self) -> Optional[int]:
        """Indices per epoch for this rank, ignoring the start offset."""
        return self.num_samples
