"""Per-token log-probabilities of a record's text given its control-code prefix.

Every audit statistic is computed on the TEXT tokens only: the prefix (the control-code prompt) is
context, and its tokens never enter a score. `prefix + text` is tokenized in one call, exactly as a training
example is, and split at the prefix's end by character offsets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

Record = tuple[str, str]
"""One audited example: (prefix, text). The prefix is context only; scores cover the text tokens."""


@dataclass
class TextScores:
    """Scores of one record's text tokens (arrays of length `num_tokens`).

    `token_logprobs[j]` is log p(text token j | prefix, text tokens < j). `mu` and `sigma` are the mean and
    standard deviation of log p(v) under the model's own next-token distribution at that position
    (mu = sum_v p_v log p_v, sigma = sqrt(sum_v p_v log^2 p_v - mu^2)); Min-k%++ needs them.
    """

    token_ids: np.ndarray
    token_logprobs: np.ndarray
    mu: np.ndarray | None = None
    sigma: np.ndarray | None = None

    @property
    def num_tokens(self) -> int:
        return int(self.token_logprobs.shape[0])

    @property
    def loss(self) -> float:
        """Mean negative log-likelihood of the text tokens (nats per token); NaN when there is none."""
        return float(-self.token_logprobs.mean()) if self.num_tokens else float("nan")


def as_records(records: Sequence[Record] | Sequence[str], argument: str = "records") -> list[Record]:
    """Accept (prefix, text) pairs or bare texts (empty prefix); check the types early."""
    out: list[Record] = []
    for i, r in enumerate(records):
        if isinstance(r, str):
            out.append(("", r))
        elif isinstance(r, (tuple, list)) and len(r) == 2 and all(isinstance(x, str) for x in r):
            out.append((r[0], r[1]))
        else:
            raise TypeError(
                f"{argument}[{i}]={r!r:.80} is not a (prefix, text) pair of strings nor a string; "
                "pass records as [(prefix, text), ...] or [text, ...]"
            )
    return out


def _model_max_length(model: torch.nn.Module) -> int | None:
    cfg = getattr(model, "config", None)
    for name in ("n_positions", "max_position_embeddings", "n_ctx", "seq_length"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def encode_record(
    tokenizer, prefix: str, text: str, max_length: int | None = None
) -> tuple[list[int], list[int]]:
    """Token ids of (context, text), tokenized as training tokenizes them: `prefix + text` in one call.

    With a fast tokenizer the split uses character offsets: text tokens are those starting at or after
    the end of the prefix (a token straddling the boundary counts as context). Slow tokenizers fall back
    to tokenizing the two parts separately. With an empty prefix the context is the BOS token when the
    tokenizer has one, so the first text token is scored too. The text is cut to fit `max_length`.
    """
    if prefix and getattr(tokenizer, "is_fast", False):
        enc = tokenizer(prefix + text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        cut = next((i for i, (start, _) in enumerate(offsets) if start >= len(prefix)), len(ids))
        ctx, txt = ids[:cut], ids[cut:]
    else:
        ctx = tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else []
        txt = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ctx and getattr(tokenizer, "bos_token_id", None) is not None:
        ctx = [tokenizer.bos_token_id]
    if max_length is not None:
        if len(ctx) >= max_length:
            raise ValueError(
                f"prefix {prefix[:60]!r} has {len(ctx)} tokens, which leaves no room for text within "
                f"max_length={max_length}; shorten the prefix or raise max_length"
            )
        txt = txt[: max_length - len(ctx)]
    return list(ctx), list(txt)


def _pad_token_id(tokenizer) -> int:
    for name in ("pad_token_id", "eos_token_id", "unk_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return 0


@torch.no_grad()
def score_records(
    model: torch.nn.Module,
    tokenizer,
    records: Sequence[Record] | Sequence[str],
    batch_size: int = 8,
    max_length: int | None = None,
    distribution_stats: bool = True,
    show_progress: bool = True,
    desc: str = "scoring",
) -> list[TextScores]:
    """Batched log-probabilities of each record's text tokens given its prefix (right padding, no grad).

    With `distribution_stats`, also return the per-position mean/std of the log-probability under the
    model's own distribution (for Min-k%++). Records are batched by length (little padding) and returned in
    their input order.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size={batch_size} must be > 0")
    recs = as_records(records)
    max_length = max_length or _model_max_length(model)
    encoded = [encode_record(tokenizer, p, t, max_length) for p, t in recs]
    # batches of similar lengths: a batch costs its longest sequence, so sorting removes most of the padding
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]) + len(encoded[i][1]))
    pad_id = _pad_token_id(tokenizer)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[TextScores | None] = [None] * len(encoded)
    try:
        starts = range(0, len(encoded), batch_size)
        for start in tqdm(starts, desc=desc, disable=not show_progress, leave=False):
            where = order[start : start + batch_size]
            batch = [encoded[i] for i in where]
            seqs = [c + t for c, t in batch]
            width = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for i, s in enumerate(seqs):
                ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
                mask[i, : len(s)] = 1
            ids, mask = ids.to(device), mask.to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits
            # Position k predicts token k+1: keep the predictions of tokens 1..width-1.
            logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            target = ids[:, 1:]
            tok_logp = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
            if distribution_stats:
                p = logp.exp()
                mu = (p * logp).sum(-1)
                # centred second moment: E[lp^2] - mu^2 would subtract two numbers ~200x larger than it
                sigma = (p * (logp - mu.unsqueeze(-1)).square()).sum(-1).sqrt()
            for i, (ctx, txt) in enumerate(batch):
                lo, hi = len(ctx) - 1, len(ctx) - 1 + len(txt)
                if len(ctx) == 0:  # no context and no BOS: the first text token cannot be scored
                    lo = 0
                    txt = txt[1:]
                    hi = len(txt)
                out[where[i]] = TextScores(
                    token_ids=np.asarray(txt, dtype=np.int64),
                    token_logprobs=tok_logp[i, lo:hi].double().cpu().numpy(),
                    mu=mu[i, lo:hi].double().cpu().numpy() if distribution_stats else None,
                    sigma=sigma[i, lo:hi].double().cpu().numpy() if distribution_stats else None,
                )
    finally:
        model.train(was_training)
    return out  # every slot filled, in input order


def record_losses(
    model: torch.nn.Module,
    tokenizer,
    records: Sequence[Record] | Sequence[str],
    batch_size: int = 8,
    max_length: int | None = None,
    show_progress: bool = True,
    desc: str = "loss",
) -> np.ndarray:
    """Mean NLL of each record's text tokens (nats/token), one float per record."""
    scores = score_records(
        model, tokenizer, records, batch_size, max_length, False, show_progress=show_progress, desc=desc
    )
    return np.array([s.loss for s in scores], dtype=np.float64)
