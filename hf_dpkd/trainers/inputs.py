"""What DPTrainer and DistillationTrainer accept as data: trl's text formats, Poisson batches (possibly empty
parts), and a check for packed rows (which change what one row protects)."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch.utils.data import DataLoader
from transformers import Trainer

from hf_dpkd.privacy.units import UNIT_KEY

PACKED_ROWS_NOTE = (
    " (the rows look packed into fixed-length blocks: one text may span several rows and is then protected "
    "only at about k·ε for k rows)"
)


def rows_look_packed(dataset, sample: int = 64) -> bool:
    """Whether tokenized rows look like run_clm-style packed blocks: equal lengths, no padding, labels == inputs."""
    columns = getattr(dataset, "column_names", None) or []
    if "input_ids" not in columns or len(dataset) < 2:
        return False
    rows = dataset.select(range(min(sample, len(dataset))))
    lengths = {len(x) for x in rows["input_ids"]}
    if len(lengths) != 1 or next(iter(lengths)) < 16:
        return False
    if "attention_mask" in columns and any(0 in m for m in rows["attention_mask"]):
        return False
    if "labels" in columns and any(list(a) != list(b) for a, b in zip(rows["labels"], rows["input_ids"])):
        return False
    return True


class EpochDataLoader(DataLoader):
    """A DataLoader whose `set_epoch` reaches the Poisson batch sampler (the Trainer calls it each epoch)."""

    def set_epoch(self, epoch: int) -> None:
        self.batch_sampler.set_epoch(epoch)


class EmptySafeCollator:
    """Collates a (possibly empty) part of a Poisson batch; an empty part becomes a zero-row batch."""

    def __init__(self, collator, dataset):
        self.collator = collator
        self.dataset = dataset
        self._template: dict[str, Any] | None = None

    def __call__(self, features: list) -> dict[str, Any]:
        if features:
            units = [f[UNIT_KEY] for f in features] if UNIT_KEY in features[0] else None
            if units is None:
                return self.collator(features)
            batch = self.collator([{k: v for k, v in f.items() if k != UNIT_KEY} for f in features])
            batch[UNIT_KEY] = torch.tensor(units, dtype=torch.long)
            return batch
        if self._template is None:
            self._template = self([self.dataset[0]])
        return {k: (v[:0] if isinstance(v, torch.Tensor) else v) for k, v in self._template.items()}


def with_trl_formats(args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The Trainer's arguments by name, with a train / eval dataset in one of trl's formats ('text', or 'prompt' and
    'completion': completion-only loss) tokenized by the processing_class, and a label-padding collator when none
    was given. Without a collator, a dataset in none of the formats is refused with its columns named."""
    from datasets import Dataset

    from hf_dpkd.data.formats import PaddingCollator, dataset_format, tokenize_lm_dataset

    names = list(inspect.signature(Trainer.__init__).parameters)[1:]
    kwargs = {**dict(zip(names, args)), **kwargs}
    tokenizer, collator = kwargs.get("processing_class"), kwargs.get("data_collator")
    formatted = False
    for key in ("train_dataset", "eval_dataset"):
        given = kwargs.get(key)
        parts = dict(given) if isinstance(given, dict) else {None: given}
        for name, dataset in parts.items():
            if not isinstance(dataset, Dataset) or "input_ids" in dataset.column_names:
                continue  # tokenized, or not a map-style datasets.Dataset: the caller's rows
            columns = dataset.column_names
            argument = key if name is None else f"{key}[{name!r}]"
            try:
                dataset_format(columns, argument)
            except ValueError:
                if collator is not None:
                    continue  # the caller's collator knows its own rows
                raise
            if tokenizer is None:
                raise ValueError(
                    f"{argument} holds raw text (columns {columns}); pass processing_class=<tokenizer> so DPTrainer "
                    "can tokenize it."
                )
            unit_column = getattr(kwargs.get("args"), "privacy_unit_column", None)
            parts[name] = tokenize_lm_dataset(
                dataset,
                tokenizer,
                getattr(kwargs.get("args"), "max_length", None),
                argument,
                keep=(unit_column,) if unit_column else (),
            )
            formatted = True
        kwargs[key] = parts if isinstance(given, dict) else parts[None]
    if formatted and collator is None:
        kwargs["data_collator"] = PaddingCollator(tokenizer)
    return kwargs
