"""Privacy units larger than one row (user-level DP): which rows belong to whom, in a batch and a dataset.

With ``DPConfig.privacy_unit_column="user_id"`` the protected record is a user, not a row. DP-SGD then
samples users (each with probability q), clips the SUM of each user's per-row gradients in the logical
batch to C, and accounts with the number of users as N: adding or removing one user changes the clipped
sum by at most C, whatever the number of their rows (Abadi et al.'s argument with the user as the example;
McMahan et al., "Learning differentially private recurrent language models", 2018).

Two objects carry the grouping:

- `UnitIndex` (dataset): the rows of each unit, built once from the unit column. Units are numbered in
  order of first appearance.
- `UnitLayout` (one micro-batch): the unit of each row as consecutive local ids, and the tensor
  operations the clipping engine needs to turn per-row quantities into per-unit ones. A user's rows are
  always in the same micro-batch (the trainer cuts micro-batches at unit boundaries).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class UnitIndex:
    """The rows of every privacy unit of a dataset (``rows[u]``: sorted row indices of unit u)."""

    column: str
    rows: tuple[np.ndarray, ...]
    row_unit: np.ndarray  # [num_rows] the unit of each row

    @classmethod
    def from_values(cls, column: str, values: Sequence) -> UnitIndex:
        if len(values) == 0:
            raise ValueError(f"privacy_unit_column={column!r}: the training dataset is empty.")
        missing = [i for i, v in enumerate(values) if v is None or (isinstance(v, float) and np.isnan(v))]
        if missing:
            raise ValueError(
                f"privacy_unit_column={column!r}: row {missing[0]} (and {len(missing) - 1} more) has no value; "
                "every row must name the person it belongs to (a row without one cannot be protected as "
                "part of anyone). Fill the column or drop those rows."
            )
        keys = [str(v) for v in values]
        first: dict[str, int] = {}
        row_unit = np.empty(len(keys), dtype=np.int64)
        for i, key in enumerate(keys):
            row_unit[i] = first.setdefault(key, len(first))
        order = np.argsort(row_unit, kind="stable")
        bounds = np.cumsum(np.bincount(row_unit, minlength=len(first)))[:-1]
        return cls(column, tuple(np.split(order, bounds)), row_unit)

    @property
    def num_units(self) -> int:
        return len(self.rows)

    @property
    def num_rows(self) -> int:
        return len(self.row_unit)

    def rows_per_unit(self) -> np.ndarray:
        return np.array([len(r) for r in self.rows], dtype=np.int64)


class UnitLayout:
    """The privacy units of one micro-batch: ``index[i]`` is the unit (0..num_units-1) of row i.

    `slot[i]` is the rank of row i among its unit's rows and `max_rows` the largest unit: enough to lay
    each unit's rows side by side along the time axis (`stack`), which turns a per-row gradient formula
    ``g_i = sum_t u_it v_it^T`` into the per-unit one ``g_U = sum_{i in U} sum_t u_it v_it^T``.
    """

    def __init__(self, unit_ids: torch.Tensor):
        if unit_ids.dim() != 1:
            raise ValueError(f"unit ids must be one per row (shape [n]), got shape {tuple(unit_ids.shape)}.")
        _, index, counts = torch.unique(unit_ids, return_inverse=True, return_counts=True)
        self.index = index
        self.num_rows = int(unit_ids.shape[0])
        self.num_units = int(counts.shape[0])
        self.max_rows = int(counts.max()) if self.num_rows else 0
        # slot: rank of each row within its unit, in row order
        order = torch.argsort(index, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        ranks = torch.arange(self.num_rows, device=index.device) - starts.repeat_interleave(counts)
        self.slot = torch.empty_like(index)
        self.slot[order] = ranks

    @property
    def one_row_each(self) -> bool:
        """Every unit holds a single row: per-unit and per-row quantities coincide."""
        return self.num_units == self.num_rows

    def sum_rows(self, x: torch.Tensor) -> torch.Tensor:
        """[n, ...] per-row tensors -> [units, ...] per-unit sums."""
        out = torch.zeros((self.num_units, *x.shape[1:]), dtype=x.dtype, device=x.device)
        return out.index_add_(0, self.index.to(x.device), x)

    def stack(self, x: torch.Tensor) -> torch.Tensor:
        """[n, T, ...] -> [units, max_rows * T, ...]: each unit's rows side by side, zeros where a unit has fewer."""
        out = torch.zeros((self.num_units, self.max_rows, *x.shape[1:]), dtype=x.dtype, device=x.device)
        out[self.index.to(x.device), self.slot.to(x.device)] = x
        return out.reshape(self.num_units, self.max_rows * x.shape[1], *x.shape[2:])

    def per_row(self, per_unit: torch.Tensor) -> torch.Tensor:
        """[units] -> [n]: each row gets its unit's value (e.g. the unit's clipping factor)."""
        return per_unit[self.index.to(per_unit.device)]


#: The batch key under which the trainer carries each row's unit (never given to the model).
UNIT_KEY = "_dp_privacy_unit"


def check_unit_settings(column: str | None, max_rows: int | None, *, cli: bool = False) -> None:
    """The checks of privacy_unit_column / max_rows_per_unit, worded for DPConfig or (`cli`) the pipeline's flags."""

    def arg(name: str, value) -> str:
        if cli:
            return f"--{name} {value!r}" if isinstance(value, str) else f"--{name} {value}"
        return f"{name}={value!r}"

    if column is not None and not str(column).strip():
        raise ValueError(
            f"{arg('privacy_unit_column', '')} names no column; give the column identifying each row's user "
            "(e.g. user_id), or none for row-level DP."
        )
    if max_rows is None:
        return
    if column is None:
        raise ValueError(
            f"{arg('max_rows_per_unit', max_rows)} caps a user's rows per step; it needs "
            f"{'--' if cli else ''}privacy_unit_column (e.g. user_id). Remove it for row-level DP."
        )
    if max_rows < 1:
        raise ValueError(
            f"{arg('max_rows_per_unit', max_rows)}: must be >= 1 (or unset: all of a user's rows)."
        )


def unit_name(column: str) -> str:
    """How the ledger, the report and the cards name a user-level unit."""
    return f"one user, identified by column {column}"


def micro_batch_bounds(
    num_rows: int, max_rows: int, unit_ids: torch.Tensor | None = None
) -> list[tuple[int, int]]:
    """[start, stop) of each physical micro-batch: at most `max_rows` rows, never splitting a unit.

    The rows of a unit are consecutive (the sampler keeps them together). A unit with more than `max_rows`
    rows forms a micro-batch of its own (cap it with max_rows_per_unit to bound memory).
    """
    if unit_ids is None:
        return [(s, min(s + max_rows, num_rows)) for s in range(0, num_rows, max_rows)]
    ids = unit_ids.tolist()
    runs, start = [], 0
    for i in range(1, num_rows + 1):
        if i == num_rows or ids[i] != ids[start]:
            runs.append((start, i))
            start = i
    if len({ids[a] for a, _ in runs}) != len(runs):
        raise ValueError("the rows of a privacy unit are not consecutive in the batch; they must be.")
    bounds: list[tuple[int, int]] = []
    for a, b in runs:
        if bounds and b - bounds[-1][0] <= max_rows:
            bounds[-1] = (bounds[-1][0], b)
        else:
            bounds.append((a, b))
    return bounds
