"""The logits processors that sample a batch of LEFT-padded prompts as if each were alone.

A processor that bans repeated n-grams without counting the padding (transformers' own looks at the padded
rows, so a padded prompt would be sampled differently from the same prompt unpadded). And the sampler itself
as the last processor (a `TokenSampler`), whose tokens the decode loop takes: on CPU, ``torch.multinomial``
and the top-p warper's sort over a [rows, vocab] batch are the largest costs of a small model's decode step
after its forward, and the samplers draw the same law for a fraction of them.
"""

from __future__ import annotations

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)


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


def draw_categorical(weights: torch.Tensor) -> torch.Tensor:
    """One index per row, drawn with probability proportional to `weights` (>= 0, a positive one per row).

    Inverse CDF: the first i whose cumulative weight exceeds U * total, U ~ Uniform[0, 1), so one random number
    per row instead of one per token (``torch.multinomial`` runs an exponential race over every token): a
    seventh of its CPU cost on a [128, 1,024] batch. A zero weight never moves the cumulative sum, so its
    token is never first past U * total; U * total is kept below the total, so some token always is. Exact up
    to the float32 rounding of the cumulative sum. Random numbers come from torch's global generator, so a
    seeded (forked) generator makes it reproducible.
    """
    cumulative = weights.cumsum(dim=-1)
    total = cumulative[:, -1:]
    target = torch.minimum(torch.rand_like(total) * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cumulative, target, right=True)


class TokenSampler(LogitsProcessor):
    """The last processor: draws each row's next token from what the processors before it left.

    The decode loop calls :meth:`draw` (tokens, shape [rows]); as a processor for ``generate(do_sample=False)``
    it returns scores whose argmax is the drawn token, so ``generate`` is a reference for the loop.
    """

    def draw(self, scores: torch.FloatTensor) -> torch.LongTensor:
        raise NotImplementedError

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        drawn = self.draw(scores)[:, None]
        return torch.full_like(scores, float("-inf")).scatter_(1, drawn, 0.0)


class CategoricalSampler(TokenSampler):
    """Draws from softmax(scores), the law of ``torch.multinomial(softmax(scores), 1)``; tokens the earlier
    processors set to -inf are never drawn."""

    def draw(self, scores: torch.FloatTensor) -> torch.LongTensor:
        scores = scores.float()
        weights = (scores - scores.amax(dim=-1, keepdim=True)).exp_()  # softmax up to its normaliser
        return draw_categorical(weights).squeeze(1)


class TopKTopPSampler(TokenSampler):
    """transformers' top-k, then top-p warper, then CategoricalSampler, on the k best scores only.

    The top-p warper sorts the whole vocabulary at every step (11 ms on a [128, 1,024] batch on one CPU
    thread), though after top-k only k tokens can be left. This runs top-p and the draw on
    ``scores.topk(k)``: the same kept tokens and probabilities, for a sixth of the cost. Where the k-th score
    ties with a score outside the top k (top-k then keeps them all), is -inf (fewer than k tokens allowed) or
    two of the k best tie (top-p's sort orders ties its own way), it runs the three as they are instead.
    """

    def __init__(self, top_k: int, top_p: float = 1.0):
        if top_k <= 0 or not 0 < top_p <= 1:
            raise ValueError(f"top_k={top_k} must be > 0 and top_p={top_p} in (0, 1].")
        self.top_k, self.top_p = top_k, top_p
        self._unfused = [TopKLogitsWarper(top_k=top_k)]
        if top_p < 1.0:
            self._unfused.append(TopPLogitsWarper(top_p=top_p))
        self._unfused.append(CategoricalSampler())

    def draw(self, scores: torch.FloatTensor) -> torch.LongTensor:
        k = min(self.top_k, scores.shape[-1])
        values, indices = scores.float().topk(k, dim=-1)  # descending
        kth = values[:, -1:]
        tied = bool((values[:, 1:] == values[:, :-1]).any())
        if tied or not bool(torch.isfinite(kth).all()) or int((scores >= kth).sum()) != k * scores.shape[0]:
            *warpers, sampler = self._unfused
            for warper in warpers:
                scores = warper(None, scores)
            return sampler.draw(scores)
        weights = (values - values[:, :1]).exp_()  # softmax over the k best up to its normaliser
        if self.top_p < 1.0:  # the top-p warper's rule on the ascending order: drop cum. prob <= 1 - top_p
            ascending = weights.flip(-1)
            drop = ascending.cumsum(dim=-1) <= (1 - self.top_p) * ascending.sum(dim=-1, keepdim=True)
            drop[:, -1] = False  # keep at least one
            weights = weights.masked_fill(drop.flip(-1), 0.0)
        return indices.gather(1, draw_categorical(weights)).squeeze(1)


def sampling_processors(top_k: int, top_p: float, temperature: float) -> LogitsProcessorList:
    """transformers' sampling warpers, in the order `generate(do_sample=True)` applies them, then the sampler:
    ``generate(do_sample=False, logits_processor=...)`` with these samples as ``do_sample=True`` would.
    With top-k, the top-k and top-p warpers and the sampler are one processor (`TopKTopPSampler`)."""
    processors = LogitsProcessorList()
    if temperature != 1.0:
        processors.append(TemperatureLogitsWarper(temperature))
    if top_k:
        processors.append(TopKTopPSampler(top_k, top_p))
        return processors
    if top_p < 1.0:
        processors.append(TopPLogitsWarper(top_p=top_p))
    processors.append(CategoricalSampler())
    return processors
