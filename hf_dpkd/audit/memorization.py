"""Memorization: greedy continuation agreement (Zhang et al. 2025).

The model is prompted with the control-code prefix and the first `prompt_tokens` tokens of the text, decodes
greedily, and the score of a record is the fraction of positions where the first `num_tokens` generated
tokens equal the true continuation. The memorization gap is the member mean minus the non-member mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from hf_dpkd.audit.metrics import (
    DEFAULT_CONFIDENCE,
    DEFAULT_NUM_RESAMPLES,
    bootstrap_counts,
    percentile_interval,
)
from hf_dpkd.audit.scoring import Record, _pad_token_id, as_records, encode_record


def _split(tokenizer, records: list[Record], prompt_tokens: int, num_tokens: int):
    items, skipped = [], []
    for i, (prefix, text) in enumerate(records):
        ctx, txt = encode_record(tokenizer, prefix, text)
        if len(txt) <= prompt_tokens:
            skipped.append(i)
            continue
        items.append((i, ctx + txt[:prompt_tokens], txt[prompt_tokens : prompt_tokens + num_tokens]))
    return items, skipped


@torch.no_grad()
def greedy_agreement(
    model: torch.nn.Module,
    tokenizer,
    records: Sequence[Record] | Sequence[str],
    prompt_tokens: int = 32,
    num_tokens: int = 32,
    batch_size: int = 8,
    show_progress: bool = True,
    desc: str = "memorization",
) -> tuple[np.ndarray, list[int]]:
    """Per-record exact-match fraction of the greedy continuation over the first `num_tokens` positions
    (fewer when the true continuation is shorter). Returns (scores, indices of skipped records): a record
    whose text has at most `prompt_tokens` tokens has no continuation to compare and is skipped."""
    if prompt_tokens < 0:
        raise ValueError(f"prompt_tokens={prompt_tokens} must be >= 0")
    if num_tokens <= 0:
        raise ValueError(f"num_tokens={num_tokens} must be > 0; the protocol uses 32")
    if batch_size <= 0:
        raise ValueError(f"batch_size={batch_size} must be > 0")
    items, skipped = _split(tokenizer, as_records(records), prompt_tokens, num_tokens)
    pad_id = _pad_token_id(tokenizer)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    scores = np.empty(len(items), dtype=np.float64)
    try:
        for start in tqdm(
            range(0, len(items), batch_size), desc=desc, disable=not show_progress, leave=False
        ):
            batch = items[start : start + batch_size]
            width = max(len(p) for _, p, _ in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for i, (_, prompt, _) in enumerate(batch):  # left padding: generation continues at the right
                ids[i, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
                mask[i, width - len(prompt) :] = 1
            out = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                do_sample=False,
                num_beams=1,
                max_new_tokens=max(len(t) for _, _, t in batch),
                pad_token_id=pad_id,
            )
            gen = out[:, width:].cpu().tolist()
            for i, (_, _, true) in enumerate(batch):
                g = gen[i][: len(true)]
                g += [-1] * (len(true) - len(g))  # stopped early (EOS): the rest counts as mismatch
                scores[start + i] = float(np.mean([a == b for a, b in zip(g, true)]))
    finally:
        model.train(was_training)
    return scores, skipped


def memorization_gap(
    model: torch.nn.Module,
    tokenizer,
    members: Sequence[Record] | Sequence[str],
    non_members: Sequence[Record] | Sequence[str],
    prompt_tokens: int = 32,
    num_tokens: int = 32,
    batch_size: int = 8,
    show_progress: bool = True,
    confidence: float = DEFAULT_CONFIDENCE,
    num_resamples: int = DEFAULT_NUM_RESAMPLES,
    seed: int = 0,
) -> dict:
    """Member mean, non-member mean and gap (members - non-members) of the greedy agreement, with the gap's
    bootstrap interval over records ("gap_interval"; `num_resamples=0` leaves it out)."""
    mem, mem_skip = greedy_agreement(
        model,
        tokenizer,
        members,
        prompt_tokens,
        num_tokens,
        batch_size,
        show_progress,
        "memorization members",
    )
    non, non_skip = greedy_agreement(
        model,
        tokenizer,
        non_members,
        prompt_tokens,
        num_tokens,
        batch_size,
        show_progress,
        "memorization non-members",
    )
    if mem.size == 0 or non.size == 0:
        raise ValueError(
            f"no member ({mem.size}) or no non-member ({non.size}) text is longer than "
            f"prompt_tokens={prompt_tokens}; lower prompt_tokens"
        )
    result = {
        "member_mean": float(mem.mean()),
        "non_member_mean": float(non.mean()),
        "gap": float(mem.mean() - non.mean()),
        "prompt_tokens": prompt_tokens,
        "num_tokens": num_tokens,
        "num_members": int(mem.size),
        "num_non_members": int(non.size),
        "skipped_members": len(mem_skip),
        "skipped_non_members": len(non_skip),
        "member_scores": mem.tolist(),
        "non_member_scores": non.tolist(),
    }
    if num_resamples:
        mc, nc = bootstrap_counts(mem.size, non.size, num_resamples, seed)
        result["gap_interval"] = percentile_interval(mc @ mem / mem.size - nc @ non / non.size, confidence)
        result["confidence"] = confidence
    return result
