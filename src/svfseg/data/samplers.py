"""Samplers and seed derivation that make every episode independent of workers, batch size and world size.

Training keys are ``(epoch, index)`` tuples: the epoch travels with each key, so a dataset copy inside a
persistent worker needs no epoch attribute, and a sample is a pure function of ``(seed, epoch, index)``.
A mid-epoch resume starts the epoch after the positions already consumed (:meth:`EpisodeSampler.set_start`),
so the remaining keys are exactly those the uninterrupted run would have drawn.
Evaluation indexes a fixed episode table; :class:`ShardedEvalSampler` gives rank ``r`` the indices
``r::world_size`` with no padding, so every episode is evaluated exactly once (the
``DistributedSampler`` pads by repeating indices, which biases evaluation).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler

# Distinct spawn-key domains, so that e.g. the epoch-e shuffle never shares a stream with a sample.
DOMAIN_TRAIN_SAMPLE = 1
DOMAIN_SHUFFLE = 2
DOMAIN_EVAL_TABLE = 3
DOMAIN_TRAIN_STEP = 4  # per-batch torch seed (dropout) of svfseg.lightning.checkpointing.StepSeed

EpisodeKey = tuple[int, int]


def seed_sequence(seed: int, domain: int, *keys: int) -> np.random.SeedSequence:
    """A ``SeedSequence`` for one purpose (``domain``) and one position (``keys``, e.g. epoch and index)."""
    for name, value in (("seed", seed), ("domain", domain), *((f"key {i}", k) for i, k in enumerate(keys))):
        if int(value) < 0:
            raise ValueError(f"{name}={value} must be a non-negative integer (numpy SeedSequence entropy)")
    return np.random.SeedSequence(int(seed), spawn_key=(int(domain), *(int(k) for k in keys)))


def step_seed(seed: int, epoch: int, batch_idx: int, rank: int = 0) -> int:
    """The torch seed of one training batch on one rank (dropout masks): a pure function of its position,
    so a resumed run draws the masks the uninterrupted run drew, whatever else consumed the global RNG."""
    state = seed_sequence(seed, DOMAIN_TRAIN_STEP, epoch, batch_idx, rank).generate_state(1, np.uint64)
    return int(state[0])


def _check_rank(rank: int, world_size: int) -> None:
    if world_size < 1:
        raise ValueError(f"world_size={world_size} must be >= 1")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")


class EpisodeSampler(Sampler[EpisodeKey]):
    """Training sampler yielding ``(epoch, index)`` keys for this rank.

    With ``shuffle`` the order is a permutation drawn from ``(seed, epoch)``. Across ranks the order is split
    like ``DistributedSampler``: ``drop_last`` drops the tail that does not divide evenly, otherwise the
    order is padded by repeating its head. Call :meth:`set_epoch` before each epoch (Lightning does so for
    training loaders).
    """

    def __init__(
        self,
        n: int,
        *,
        shuffle: bool,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
    ) -> None:
        _check_rank(rank, world_size)
        if n < 1:
            raise ValueError(f"EpisodeSampler needs at least one item, got n={n}")
        if drop_last and n < world_size:
            raise ValueError(
                f"n={n} items cannot give each of world_size={world_size} ranks one item with drop_last"
            )
        self.n, self.shuffle, self.seed = int(n), bool(shuffle), int(seed)
        self.rank, self.world_size, self.drop_last = int(rank), int(world_size), bool(drop_last)
        self.epoch = 0
        self.start: tuple[int, int] | None = None
        self.num_samples = self.n // self.world_size if drop_last else math.ceil(self.n / self.world_size)
        self.total_size = self.num_samples * self.world_size

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch={epoch} must be >= 0")
        self.epoch = int(epoch)

    def set_start(self, epoch: int, consumed: int) -> None:
        """Begin epoch ``epoch`` after its first ``consumed`` all-rank positions (a mid-epoch resume).

        ``consumed`` counts positions of the padded/dropped all-rank order (batches done x batch size x
        world size); rank ``r`` owns positions ``r, r + world_size, ...`` and skips those below
        ``consumed``. Other epochs are untouched, so the start needs no reset. ``len()`` keeps the full
        epoch length: Lightning's restored batch counter continues from the batches already done.
        """
        if epoch < 0 or consumed < 0:
            raise ValueError(f"set_start(epoch={epoch}, consumed={consumed}): both must be >= 0")
        if consumed > self.total_size:
            raise ValueError(
                f"set_start: consumed={consumed} exceeds the {self.total_size} positions of an epoch "
                f"(n={self.n}, world_size={self.world_size}); the checkpoint was written for other data"
            )
        self.start = (int(epoch), int(consumed))

    def skipped(self) -> int:
        """How many of this rank's keys the current epoch skips (0 unless resuming inside it)."""
        if self.start is None or self.start[0] != self.epoch:
            return 0
        return max(0, math.ceil((self.start[1] - self.rank) / self.world_size))

    def order(self) -> np.ndarray:
        """The full (all-rank) index order of the current epoch, before padding/dropping."""
        if not self.shuffle:
            return np.arange(self.n)
        rng = np.random.default_rng(seed_sequence(self.seed, DOMAIN_SHUFFLE, self.epoch))
        return rng.permutation(self.n)

    def __iter__(self) -> Iterator[EpisodeKey]:
        order = self.order()
        if self.total_size > self.n:
            reps = math.ceil(self.total_size / self.n)
            order = np.tile(order, reps)
        order = order[: self.total_size]
        first = self.rank + self.skipped() * self.world_size
        for i in order[first : self.total_size : self.world_size]:
            yield (self.epoch, int(i))

    def __len__(self) -> int:
        return self.num_samples


class ShardedEvalSampler(Sampler[int]):
    """Evaluation sampler: indices ``rank::world_size``, no padding, so each episode is counted exactly once.

    Ranks may get different counts; the metric must therefore sync only in ``compute()``, never per step.
    """

    def __init__(self, n: int, rank: int = 0, world_size: int = 1) -> None:
        _check_rank(rank, world_size)
        if n < 0:
            raise ValueError(f"n={n} must be >= 0")
        self.n, self.rank, self.world_size = int(n), int(rank), int(world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))
