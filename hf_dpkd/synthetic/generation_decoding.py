"""What `generate` needs to sample a batch of LEFT-padded prompts as if each were alone.

A logits processor that bans repeated n-grams without counting the padding, and a stopping criterion
that gives each row its own length budget (its prompt plus text, padding not counted). transformers'
own versions look at the padded rows, so a padded prompt would be sampled differently from the same
prompt unpadded.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor, StoppingCriteria


class BatchedNoRepeatNGramLogitsProcessor(LogitsProcessor):
    """transformers' NoRepeatNGramLogitsProcessor, aware of left padding.

    A token is banned if emitting it would repeat an n-gram already in the sequence: every window whose
    first n-1 tokens equal the last n-1 tokens bans its last token. `pad_lengths` (left padding per row)
    excludes the windows that touch padding, so a padded row bans exactly what its unpadded prompt bans
    (the library's processor would, e.g. for n=1, ban the pad token, which is often also eos).
    """

    def __init__(self, ngram_size: int, pad_lengths: torch.Tensor | None = None):
        if ngram_size <= 0:
            raise ValueError(f"ngram_size={ngram_size} must be > 0.")
        self.n = ngram_size
        self.pad_lengths = pad_lengths

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        n, length = self.n, input_ids.shape[1]
        if length < n:
            return scores
        windows = input_ids.unfold(1, n, 1)  # [B, length - n + 1, n]
        last = input_ids[:, length - n + 1 :]  # [B, n - 1]
        match = (windows[:, :, :-1] == last[:, None, :]).all(-1)
        if self.pad_lengths is not None:
            starts = torch.arange(windows.shape[1], device=input_ids.device)
            match &= starts[None, :] >= self.pad_lengths.to(input_ids.device)[:, None]
        vocab = scores.shape[-1]  # non-matching windows write into a spare column past the vocabulary
        banned = scores.new_zeros((scores.shape[0], vocab + 1), dtype=torch.bool)
        banned.scatter_(1, torch.where(match, windows[:, :, -1].clamp(max=vocab), vocab), True)
        return scores.masked_fill(banned[:, :vocab], float("-inf"))


class RowLengthBudget(StoppingCriteria):
    """Stop each row once it holds `max_length` tokens of its OWN prompt + text (left padding not counted)."""

    def __init__(self, ends: torch.Tensor):
        self.ends = ends

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        return input_ids.shape[1] >= self.ends.to(input_ids.device)
