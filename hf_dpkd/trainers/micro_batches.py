"""The physical micro-batches of one Poisson batch: rows ordered by length, each micro-batch cut to its own
longest row.

Why: the collator pads a whole Poisson batch to its longest row, so every micro-batch carried that padding
(on the demo 1.56x the real tokens); ordered by length, each micro-batch pads only to its own longest row
(1.12x; benchmarks/micro_batch_padding.py: 0.66x the step time). Neither the update nor the guarantee
changes: the clipped per-example gradients are summed, in any order, and trailing padding columns hold no
label and are never seen by a real token of a causal LM. Only columns that are padding in every row of a
micro-batch are cut, so left-padded batches keep their shape.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from hf_dpkd.privacy.units import micro_batch_bounds


def real_lengths(attention_mask: torch.Tensor) -> torch.Tensor:
    """Per row, one past its last real (mask 1) position: the columns a row needs. Shape [B]."""
    positions = torch.arange(1, attention_mask.shape[1] + 1, device=attention_mask.device)
    return (attention_mask.ne(0) * positions).amax(dim=1) if attention_mask.numel() else positions[:0]


def length_order(lengths: torch.Tensor, unit_ids: torch.Tensor | None = None) -> torch.Tensor:
    """A permutation of the rows by length; the rows of one privacy unit stay together, ordered by the
    unit's longest row (micro-batches never split a unit)."""
    if unit_ids is None:
        return torch.argsort(lengths, stable=True)
    ids = unit_ids.tolist()
    runs, start = [], 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or ids[i] != ids[start]:
            runs.append((start, i))
            start = i
    runs.sort(key=lambda run: int(lengths[run[0] : run[1]].max()))
    return torch.tensor([i for a, b in runs for i in range(a, b)], dtype=torch.long)


def micro_batches(
    inputs: dict[str, Any], max_rows: int, unit_ids: torch.Tensor | None = None
) -> Iterator[tuple[dict[str, Any], torch.Tensor | None]]:
    """(micro-batch, its unit ids) for each physical micro-batch of the logical batch `inputs`.

    Every tensor with the batch's [rows, columns] as its first two dimensions is reordered and cut with the
    rows; tensors with the rows only are reordered; anything else is passed as is. Without an attention mask
    the rows keep their order and their columns.
    """
    n = inputs["input_ids"].shape[0]
    mask = inputs.get("attention_mask")
    if mask is None or n == 0:
        order, lengths = None, None
    else:
        lengths = real_lengths(mask)
        order = length_order(lengths, unit_ids)
        lengths = lengths[order]
        if unit_ids is not None:
            unit_ids = unit_ids[order.to(unit_ids.device)]
    width = inputs["input_ids"].shape[1] if inputs["input_ids"].dim() > 1 else None
    for start, stop in micro_batch_bounds(n, max_rows, unit_ids):
        rows = order[start:stop] if order is not None else slice(start, stop)
        keep = max(1, int(lengths[start:stop].max())) if lengths is not None else width
        micro = {}
        for key, value in inputs.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == n:
                value = value[rows.to(value.device) if order is not None else rows]
                if value.dim() > 1 and value.shape[1] == width and keep is not None:
                    value = value[:, :keep]
            micro[key] = value
        yield micro, (unit_ids[start:stop] if unit_ids is not None else None)
