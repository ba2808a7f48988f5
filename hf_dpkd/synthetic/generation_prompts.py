"""Prompt token ids for control codes, and batches of them that fit the model's positions.

Every shard and the input checks tokenize the same prompts and need the same eos/pad ids; a batch of
left-padded prompts of different lengths may decode past the model's last position, so such a batch is
split by prompt length.
"""

from __future__ import annotations

from hf_dpkd.synthetic.control_codes import ControlCodeFormat


def prompt_ids(tokenizer, fmt: ControlCodeFormat, codes) -> dict[tuple[str, ...], list[int]]:
    """Token ids of the prompt of each distinct code in `codes`."""
    out = {}
    for code in dict.fromkeys(codes):
        out[code] = list(tokenizer(fmt.format_prompt(fmt.record_of(code)))["input_ids"])
    return out


def special_ids(tokenizer) -> tuple[int, int]:
    """(eos id, pad id), each standing in for the other when the tokenizer lacks it."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    if eos is None and pad is None:
        raise ValueError("The tokenizer has neither an eos nor a pad token; set tokenizer.eos_token first.")
    return (pad if eos is None else eos), (eos if pad is None else pad)


def position_limit(model) -> int | None:
    """The model's number of positions (None when its config does not say)."""
    limit = getattr(model.config, "n_positions", None) or getattr(
        model.config, "max_position_embeddings", None
    )
    return limit if isinstance(limit, int) else None


def fit_positions(batch: list[int], ids, codes, max_length: int, limit: int | None) -> list[list[int]]:
    """`batch`, or its runs of equal prompt length when left padding would run past the model's positions.

    A batch decodes until its shortest prompt has max_length tokens, so its longest-prompt rows reach
    position width + max_length - shortest - 1 (their extra tokens are discarded, but the forward still
    sees them): past `limit`, the position embedding has no row for them.
    """
    lengths = [len(ids[codes[i]]) for i in batch]
    if limit is None or max(lengths) + max_length - min(lengths) <= limit:
        return [batch]
    groups: dict[int, list[int]] = {}
    for i, n in zip(batch, lengths):
        groups.setdefault(n, []).append(i)
    return list(groups.values())
