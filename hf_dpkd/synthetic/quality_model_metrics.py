"""Model-based quality metrics: how fluent synthetic text is and whether it reads as its control code.

Reference-model perplexity (a model that never saw the private data) and control-code fidelity (the
conditional likelihood of each text under every candidate code's prompt). They need a model and a
tokenizer, unlike the count-based metrics of :mod:`.quality_text_metrics`; :mod:`.quality` runs them
when the report is given a model.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from hf_dpkd.synthetic.control_codes import ControlCodeFormat
from hf_dpkd.synthetic.quality_text_metrics import sample_indices


def reference_perplexity(
    model, tokenizer, texts: Sequence[str], *, window: int = 128, batch_size: int = 16
) -> dict[str, float]:
    """Perplexity of a reference model that never saw the private data (e.g. the public base model).

    :func:`hf_dpkd.evaluation.perplexity`'s protocol (texts joined by a blank line, non-overlapping windows)
    with the last, shorter window kept, reported token-weighted: ``{"perplexity", "num_tokens"}``.
    """
    from hf_dpkd.evaluation import _max_positions, perplexity

    limit = _max_positions(model)
    window = min(window, limit) if limit else window
    result = perplexity(
        model,
        tokenizer,
        list(texts),
        window=window,
        batch_size=batch_size,
        keep_remainder=True,
        show_progress=False,
    )
    return {"perplexity": result["token_weighted_perplexity"], "num_tokens": result["num_tokens"]}


def _pad_id(tokenizer) -> int:
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return value
    return 0


def conditional_log_likelihoods(
    model,
    tokenizer,
    fmt: ControlCodeFormat,
    texts: Sequence[str],
    codes: Sequence[tuple[str, ...]],
    *,
    batch_size: int = 64,
    max_text_tokens: int | None = None,
) -> tuple[list[list[float]], list[int]]:
    """log p(text | prompt of code) for every text and code, and the number of scored tokens of each text.

    The prompt and the text are tokenized separately and concatenated, so every code scores exactly the
    same target tokens: the first `max_text_tokens` (None: all) that fit the model's positions after the
    longest prompt. Sequences are right-padded (positions of the real tokens do not move) and batched by
    length.
    """
    from hf_dpkd.evaluation import _max_positions

    prompts = [list(tokenizer(fmt.format_prompt(fmt.record_of(c)))["input_ids"]) for c in codes]
    limit = _max_positions(model)
    longest = max(map(len, prompts))
    if limit is not None and longest >= limit:
        raise ValueError(
            f"The longest control-code prompt has {longest} tokens, no room in {limit} positions."
        )
    room = [x for x in (None if limit is None else limit - longest, max_text_tokens) if x is not None]
    targets = []
    for text in texts:
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        targets.append(ids[: min(room)] if room else ids)
    jobs = [(t, c) for t in range(len(texts)) for c in range(len(codes)) if targets[t]]
    jobs.sort(key=lambda job: len(prompts[job[1]]) + len(targets[job[0]]))
    scores = [[0.0] * len(codes) for _ in texts]
    device = next(model.parameters()).device
    pad = _pad_id(tokenizer)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(jobs), batch_size):
                chunk = jobs[start : start + batch_size]
                seqs = [prompts[c] + targets[t] for t, c in chunk]
                width = max(map(len, seqs))
                ids = torch.full((len(seqs), width), pad, dtype=torch.long)
                mask = torch.zeros((len(seqs), width), dtype=torch.long)
                for row, seq in enumerate(seqs):
                    ids[row, : len(seq)] = torch.tensor(seq)
                    mask[row, : len(seq)] = 1
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
                logp = F.log_softmax(logits[:, :-1], dim=-1)
                token_logp = logp.gather(-1, ids[:, 1:, None].to(device))[..., 0].double().cpu()
                for row, (t, c) in enumerate(chunk):
                    first = len(prompts[c])  # position of the first text token
                    scores[t][c] = token_logp[row, first - 1 : first - 1 + len(targets[t])].sum().item()
    finally:
        model.train(was_training)
    return scores, [len(t) for t in targets]


def _candidate_codes(fmt: ControlCodeFormat, records: Sequence[Mapping[str, Any]]) -> list[tuple[str, ...]]:
    if fmt.domain is not None:
        return list(itertools.product(*(fmt.domain[c] for c in fmt.columns)))
    return sorted({fmt.code_of(r) for r in records})


def control_code_fidelity(
    model,
    tokenizer,
    fmt: ControlCodeFormat,
    records: Sequence[Mapping[str, Any]],
    *,
    codes: Sequence[Sequence[str]] | None = None,
    max_records: int = 64,
    max_text_tokens: int | None = 48,
    seed: int = 0,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Does each synthetic text read as its own control code? Scored by `model`'s conditional likelihood.

    For up to `max_records` records (seeded sample), log p(text | code) of the text's first
    `max_text_tokens` tokens (enough to tell a code; bounds the cost) under every candidate code
    (`codes`, default: the format's declared domain, else the codes of the records). ``accuracy``: share of
    records whose own code has the highest likelihood (ties share the credit, so a model that ignores the
    prompt scores ``chance`` = 1 / number of codes); ``field_accuracy``: the same per control field;
    ``mean_margin_per_token``: mean of (log p under the own code - best other code) / text tokens, in nats
    (> 0: the own code is preferred). Use the DP teacher (post-processing) or a public model.
    """
    candidates = [
        tuple(str(v) for v in c) for c in (codes if codes is not None else _candidate_codes(fmt, records))
    ]
    candidates = list(dict.fromkeys(candidates))
    if len(candidates) < 2:
        raise ValueError(
            f"codes={candidates!r}: control-code fidelity needs at least 2 candidate codes to tell apart."
        )
    if not isinstance(max_records, int) or max_records < 1:
        raise ValueError(f"max_records={max_records!r} must be an int >= 1 (records scored).")
    if max_text_tokens is not None and (not isinstance(max_text_tokens, int) or max_text_tokens < 1):
        raise ValueError(f"max_text_tokens={max_text_tokens!r} must be an int >= 1, or None for whole texts.")
    picked = [records[i] for i in sample_indices(len(records), max_records, seed)]
    index = {c: k for k, c in enumerate(candidates)}
    own = []
    for r in picked:
        code = fmt.code_of(r)
        if code not in index:
            raise ValueError(
                f"A record has the control code {code!r}, which is not among the {len(candidates)} candidate codes; "
                "pass codes= holding every code of the records (e.g. the distribution's codes)."
            )
        own.append(index[code])
    scores, num_tokens = conditional_log_likelihoods(
        model,
        tokenizer,
        fmt,
        [r["text"] for r in picked],
        candidates,
        batch_size=batch_size,
        max_text_tokens=max_text_tokens,
    )
    credit, margins, scored = 0.0, [], 0
    field_credit = dict.fromkeys(fmt.columns, 0.0)
    for k, row in enumerate(scores):
        if not num_tokens[k]:
            continue  # an empty text reads as nothing
        scored += 1
        best = max(row)
        winners = [c for c, s in enumerate(row) if math.isclose(s, best, rel_tol=1e-9, abs_tol=1e-6)]
        credit += (own[k] in winners) / len(winners)
        for f, column in enumerate(fmt.columns):
            field_credit[column] += sum(candidates[w][f] == candidates[own[k]][f] for w in winners) / len(
                winners
            )
        other = max(s for c, s in enumerate(row) if c != own[k])
        margins.append((row[own[k]] - other) / num_tokens[k])
    if not scored:
        raise ValueError("Every sampled record has an empty text: nothing to score.")
    return {
        "accuracy": credit / scored,
        "chance": 1 / len(candidates),
        "field_accuracy": {column: v / scored for column, v in field_credit.items()},
        "mean_margin_per_token": sum(margins) / len(margins),
        "num_records": scored,
        "num_codes": len(candidates),
        "max_text_tokens": max_text_tokens,
    }
