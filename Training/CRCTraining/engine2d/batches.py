"""Resumable distributed batches: PyTorch's ``DistributedSampler`` per epoch, addressed by iteration number.

Epoch ``e`` is a list of dataset indices (all of them, or a task's choice such as HCF's balance sampling).
``DistributedSampler`` shuffles its positions with ``(seed, e)`` and gives rank ``r`` the positions
``r, r + W, r + 2W, ...``; the rank cuts them into batches of ``batch_size / W``. So step ``s`` of the epoch
covers, over all ranks together, exactly the positions ``s B .. (s + 1) B - 1`` of the shuffled epoch, which
is the batch one process with ``batch_size B`` takes: a DDP run computes the gradient of the same global batch.

A batch is a list of keys ``(index, sample seed)``; the sample seed (augmentation, prompts) depends on the
seed, the epoch and the position only, not on the rank or the number of processes. Every batch is a pure
function of its iteration number, so a resumed run sees the batches an uninterrupted one would.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator, List, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DistributedSampler

Key = Tuple[int, int]  # (dataset index, sample seed)


def sample_seed(seed: int, epoch: int, position: int, lap: int = 0) -> int:
    """The random seed of the sample at ``position`` of epoch ``epoch`` (augmentation, points).

    ``lap``: how often the epoch was already gone through to fill the last batch (an epoch shorter than a
    batch repeats its samples; each repeat gets its own augmentation).
    """
    return int(np.random.default_rng([int(seed), int(epoch), int(position), int(lap), 7]).integers(0, 2**31 - 1))


class EpochBatches(torch.utils.data.Sampler):
    """Batch sampler over iterations ``start .. stop - 1`` for one rank (no hidden state: resumable).

    ``epoch_indices(e)``: the dataset indices of epoch ``e``; its length must be the same every epoch.
    ``batch_size``: the global batch, split evenly over ``world_size`` ranks.
    """

    def __init__(self, epoch_indices: Callable[[int], Sequence[int]], batch_size: int, seed: int, rank: int,
                 world_size: int, start: int, stop: int, shuffle: bool = True) -> None:
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} does not split evenly over {world_size} processes")
        self.epoch_indices, self.batch_size, self.seed = epoch_indices, int(batch_size), int(seed)
        self.rank, self.world_size, self.start, self.stop, self.shuffle = rank, world_size, start, stop, shuffle
        self.epoch_length = len(epoch_indices(0))
        if self.epoch_length == 0:
            raise ValueError("an epoch holds no samples")
        self.iterations_per_epoch = math.ceil(self.epoch_length / self.batch_size)
        self._cached: Tuple[int, List[Tuple[int, int]], Sequence[int]] = (-1, [], [])

    @property
    def per_rank(self) -> int:
        return self.batch_size // self.world_size

    def _epoch(self, epoch: int) -> Tuple[List[Tuple[int, int]], Sequence[int]]:
        """This rank's shuffled (position, lap) of ``epoch`` (cyclically filled to whole batches), the epoch's indices."""
        if self._cached[0] != epoch:
            indices = self.epoch_indices(epoch)
            if len(indices) != self.epoch_length:
                raise ValueError(f"epoch {epoch} holds {len(indices)} samples, epoch 0 {self.epoch_length}; "
                                 "the epoch length must not change")
            sampler = DistributedSampler(range(len(indices)), num_replicas=self.world_size, rank=self.rank,
                                         shuffle=self.shuffle, seed=self.seed, drop_last=False)
            sampler.set_epoch(epoch)
            positions = list(sampler)
            needed = self.iterations_per_epoch * self.per_rank
            positions = [(positions[i % len(positions)], i // len(positions)) for i in range(needed)]
            self._cached = (epoch, positions, indices)
        return self._cached[1], self._cached[2]

    def keys(self, iteration: int) -> List[Key]:
        """This rank's part of the global batch of ``iteration``."""
        epoch, step = divmod(int(iteration), self.iterations_per_epoch)
        positions, indices = self._epoch(epoch)
        chosen = positions[step * self.per_rank:(step + 1) * self.per_rank]
        return [(int(indices[p]), sample_seed(self.seed, epoch, p, lap)) for p, lap in chosen]

    def __iter__(self) -> Iterator[List[Key]]:
        for iteration in range(self.start, self.stop):
            yield self.keys(iteration)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)
