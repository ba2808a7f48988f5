"""Prompt token ids for control codes, the eos/pad ids and the model's number of positions.

Every shard and the input checks tokenize the same prompts and need the same ids. A batch of left-padded
prompts of different lengths does not need splitting to fit the positions: each row's positions start at its
own first token (generation_loop), so they end at max_length - 1 whatever the padding.
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
