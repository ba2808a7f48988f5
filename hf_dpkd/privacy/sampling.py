"""Poisson sampling of logical batches, as the accountant assumes.

Each logical step includes every example of this process' shard independently with probability q, so
the logical batch size varies (and can be 0). A logical batch is handed to the Trainer as
`num_parts` consecutive pieces (one per gradient-accumulation slot); DPTrainer further splits each piece
into physical micro-batches. Splitting never changes which examples form the logical batch.

The batch of step s in epoch e is a pure function of (seed, epoch, step, rank): a resumed run or a
Trainer that fast-forwards the dataloader sees exactly the batches an uninterrupted run sees, with no
sampler state to checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


class PoissonBatchSampler(Sampler[list[int]]):
    """Yields `steps_per_epoch * num_parts` index lists per epoch: the parts of Poisson-sampled batches.

    With ``poisson=False`` every step instead draws exactly ``round(q * shard_size)`` distinct examples
    uniformly at random (fixed-size uniform subsampling; only accounted by the "gdp" accountant).
    """

    def __init__(
        self,
        num_examples: int,
        sample_rate: float,
        steps_per_epoch: int,
        *,
        num_parts: int = 1,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        poisson: bool = True,
    ):
        if num_examples <= 0:
            raise ValueError(f"num_examples={num_examples} must be > 0: the training dataset is empty.")
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample_rate={sample_rate} must lie in (0, 1].")
        if steps_per_epoch <= 0 or num_parts <= 0:
            raise ValueError("steps_per_epoch and num_parts must be positive.")
        self.num_examples = num_examples
        self.sample_rate = sample_rate
        self.steps_per_epoch = steps_per_epoch
        self.num_parts = num_parts
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.poisson = poisson
        self.epoch = 0
        # Each example belongs to exactly one rank; every rank samples its shard at rate q, so every
        # example is in the global logical batch with probability q.
        self.shard = np.arange(rank, num_examples, world_size, dtype=np.int64)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.steps_per_epoch * self.num_parts

    def logical_batch(self, step: int, epoch: int | None = None) -> np.ndarray:
        """The indices of logical batch `step` of `epoch` on this rank (a pure function of its arguments)."""
        epoch = self.epoch if epoch is None else epoch
        rng = np.random.default_rng([self.seed, epoch, step, self.rank, 0x5EED])
        if self.poisson:
            mask = rng.random(len(self.shard)) < self.sample_rate
            return self.shard[mask]
        size = min(len(self.shard), int(round(self.sample_rate * len(self.shard))))
        return np.sort(rng.choice(self.shard, size=size, replace=False))

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.steps_per_epoch):
            batch = self.logical_batch(step)
            for part in np.array_split(batch, self.num_parts):
                yield part.tolist()
