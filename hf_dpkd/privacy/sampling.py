"""Poisson sampling of logical batches, as the accountant assumes.

Each logical step includes every example of this process' shard independently with probability q, so
the logical batch size varies (and can be 0). A logical batch is handed to the Trainer as
`num_parts` consecutive pieces (one per gradient-accumulation slot); DPTrainer further splits each piece
into physical micro-batches. Splitting never changes which examples form the logical batch.

The batch of step s in epoch e is a pure function of (seed, epoch, step, rank): a resumed run or a
Trainer that fast-forwards the dataloader sees exactly the batches an uninterrupted run sees, with no
sampler state to checkpoint.

User-level DP (`units`): the Poisson draw is over privacy units (users), and a sampled unit brings all
its rows (or `max_rows_per_unit` of them, drawn at random each step), kept next to each other so that the
trainer never splits a unit across micro-batches. Splitting into parts also happens between units.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler

from hf_dpkd.privacy.units import UnitIndex


class PoissonBatchSampler(Sampler[list[int]]):
    """Yields `steps_per_epoch * num_parts` index lists per epoch: the parts of Poisson-sampled batches.

    With ``poisson=False`` every step instead draws exactly ``round(q * shard_size)`` distinct examples
    uniformly at random (fixed-size uniform subsampling; only accounted by the "gdp" accountant).
    With `units`, `num_examples` is the number of units and the draw is over units (see the module doc).
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
        units: UnitIndex | None = None,
        max_rows_per_unit: int | None = None,
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
        if units is not None and units.num_units != num_examples:
            raise ValueError(f"num_examples={num_examples} must be the number of units ({units.num_units}).")
        if max_rows_per_unit is not None and max_rows_per_unit < 1:
            raise ValueError(f"max_rows_per_unit={max_rows_per_unit} must be >= 1 (or None: all rows).")
        self.units = units
        self.max_rows_per_unit = max_rows_per_unit
        self.epoch = 0
        # Each example belongs to exactly one rank; every rank samples its shard at rate q, so every
        # example is in the global logical batch with probability q.
        self.shard = np.arange(rank, num_examples, world_size, dtype=np.int64)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.steps_per_epoch * self.num_parts

    def logical_batch(self, step: int, epoch: int | None = None) -> np.ndarray:
        """The indices of logical batch `step` of `epoch` on this rank (a pure function of its arguments).

        With units: the sampled units' row indices, concatenated unit after unit."""
        if self.units is None:
            return self._draw(self._rng(step, epoch))
        return np.concatenate(self._unit_rows(step, epoch) or [np.zeros(0, dtype=np.int64)])

    def _rng(self, step: int, epoch: int | None) -> np.random.Generator:
        epoch = self.epoch if epoch is None else epoch
        return np.random.default_rng([self.seed, epoch, step, self.rank, 0x5EED])

    def _draw(self, rng: np.random.Generator) -> np.ndarray:
        if self.poisson:
            mask = rng.random(len(self.shard)) < self.sample_rate
            return self.shard[mask]
        size = min(len(self.shard), int(round(self.sample_rate * len(self.shard))))
        return np.sort(rng.choice(self.shard, size=size, replace=False))

    def _unit_rows(self, step: int, epoch: int | None) -> list[np.ndarray]:
        """The row indices of each sampled unit."""
        rng = self._rng(step, epoch)
        drawn = self._draw(rng)
        out = []
        for unit in drawn:
            rows = self.units.rows[unit]
            if self.max_rows_per_unit is not None and len(rows) > self.max_rows_per_unit:
                rows = np.sort(rng.choice(rows, size=self.max_rows_per_unit, replace=False))
            out.append(rows)
        return out

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.steps_per_epoch):
            if self.units is None:
                batch = self.logical_batch(step)
                for part in np.array_split(batch, self.num_parts):
                    yield part.tolist()
                continue
            units = self._unit_rows(step, None)
            for part in np.array_split(np.arange(len(units)), self.num_parts):
                yield [int(r) for u in part for r in units[u]]
