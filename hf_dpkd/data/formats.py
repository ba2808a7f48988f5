"""The dataset formats trl users have, tokenized for DPTrainer: a ``text`` column, or ``prompt`` / ``completion``.

Follows trl's SFT conventions so a trl dataset trains the same way here: eos ends every sequence, and a
prompt/completion row is the tokenized prompt + completion with the prompt's tokens labelled -100
(completion-only loss), the completion starting where the tokenized prompt stops being a prefix of the
tokenized whole. trl's own tokenization is a method of its SFTTrainer, not a function DPTrainer could call.
Each row stays one row (no packing): the privacy unit of DP-SGD is one row.
"""

from __future__ import annotations

from typing import Any

TEXT = "text"
PROMPT, COMPLETION = "prompt", "completion"
#: A longer sequence is cut to this many tokens when neither DPConfig.max_length nor the tokenizer says less.
DEFAULT_MAX_LENGTH = 1024


def dataset_format(columns: list[str], argument: str = "train_dataset") -> str:
    """'tokenized' (input_ids), 'prompt_completion' or 'text'; a ValueError naming the columns otherwise."""
    if "input_ids" in columns:
        return "tokenized"
    if PROMPT in columns and COMPLETION in columns:
        return "prompt_completion"
    if TEXT in columns:
        return TEXT
    hint = " ('messages' is trl's conversational format: apply the chat template into a 'text' column)"
    raise ValueError(
        f"{argument} has columns {list(columns)}: DPTrainer needs tokenized rows ('input_ids', with a data_collator "
        "for them), a 'text' column, or 'prompt' and 'completion' columns (completion-only loss); rename the "
        f"columns to one of these{hint if 'messages' in columns else ''}."
    )


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def tokenize_lm_dataset(
    dataset,
    tokenizer,
    max_length: int | None = None,
    argument: str = "train_dataset",
    keep: tuple[str, ...] = (),
):
    """`dataset` ('text' or 'prompt'/'completion' columns) as input_ids / attention_mask / labels rows.

    The labels of the prompt's tokens are -100; eos is appended when the tokenizer has one. Sequences are cut to
    `max_length` (default: the tokenizer's limit, at most 1024). A tokenized dataset is returned as it is.
    Columns in `keep` (e.g. the privacy unit column of user-level DP) stay next to the tokens.
    """
    kind = dataset_format(list(dataset.column_names), argument)
    if kind == "tokenized":
        return dataset
    limit = getattr(tokenizer, "model_max_length", None) or DEFAULT_MAX_LENGTH
    max_length = max_length or min(int(limit), DEFAULT_MAX_LENGTH)
    eos = tokenizer.eos_token_id

    def ids_of(text: str) -> list[int]:
        return list(tokenizer(text)["input_ids"])

    def encode(batch: dict[str, list[Any]]) -> dict[str, list[list[int]]]:
        out: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "labels": []}
        n = len(batch[TEXT if kind == TEXT else PROMPT])
        for i in range(n):
            if kind == TEXT:
                ids, start = ids_of(str(batch[TEXT][i])), 0
            else:
                prompt = str(batch[PROMPT][i])
                ids = ids_of(prompt + str(batch[COMPLETION][i]))
                start = _common_prefix(ids_of(prompt), ids)
            if eos is not None and (not ids or ids[-1] != eos):
                ids.append(eos)
            ids = ids[:max_length]
            labels = [-100] * min(start, len(ids)) + ids[start:]
            out["input_ids"].append(ids)
            out["attention_mask"].append([1] * len(ids))
            out["labels"].append(labels)
        return out

    removed = [c for c in dataset.column_names if c not in keep]
    return dataset.map(encode, batched=True, remove_columns=removed, desc="tokenizing")


class PaddingCollator:
    """Right-pads input_ids (with the pad token, else eos), attention_mask (0) and labels (-100) to the longest row.

    The pad id never reaches the loss (masked and labelled -100), so a tokenizer without a pad token is not changed.
    """

    def __init__(self, tokenizer):
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = 0 if pad is None else int(pad)

    def __call__(self, rows: list[dict[str, Any]]):
        import torch

        width = max((len(r["input_ids"]) for r in rows), default=0)
        fill = {"input_ids": self.pad_id, "attention_mask": 0, "labels": -100}
        return {
            key: torch.tensor(
                [list(r[key]) + [value] * (width - len(r[key])) for r in rows], dtype=torch.long
            )
            for key, value in fill.items()
        }
