"""How close synthetic text is to real text: the quality report written next to every generated dataset.

Distances to real held-out text (n-gram Jensen-Shannon divergence, length Wasserstein-1), diversity
(distinct-n, self-BLEU), fluency (perplexity of a reference model that never saw the private data) and
control-code fidelity (does the text read as the code it was generated for, according to a model's
conditional likelihood). Size-dependent numbers (distinct-n, self-BLEU, JS) are computed on equally
sized seeded samples of both sides, so the real column is the yardstick for the synthetic one.

PRIVACY: the real texts are private held-out text, so a report with a real side is computed from private
data and is NOT covered by the differential-privacy guarantee: it stays local (``quality.json`` and
``quality.md`` are never pushed) and enters a dataset card only when the user opts in.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
import random
from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from hf_dpkd._io import atomic_write_text
from hf_dpkd.synthetic.control_codes import ControlCodeFormat

JSON_FILE = "quality.json"
MARKDOWN_FILE = "quality.md"
PRIVACY_NOTE = (
    "Computed against PRIVATE held-out text (the real side): these numbers are NOT covered by the "
    "differential-privacy guarantee. They are written locally and never pushed unless you opt in."
)

Tokenize = Callable[[str], Sequence[Hashable]]


def whitespace_tokenize(text: str) -> list[str]:
    """The default tokenization: whitespace-separated words."""
    return text.split()


def _ngrams(tokens: Sequence[Hashable], n: int) -> list[tuple]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def _check_n(n: int, name: str = "n") -> None:
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"{name}={n!r} must be an int >= 1 (the n-gram order).")


def _counts(texts: Sequence[str], tokenize: Tokenize, n: int) -> Counter:
    counts: Counter = Counter()
    for text in texts:
        counts.update(_ngrams(list(tokenize(text)), n))
    return counts


# ---------------------------------------------------------------------------------------------------
# Distribution distances
# ---------------------------------------------------------------------------------------------------
def ngram_js_divergence(
    a_texts: Sequence[str], b_texts: Sequence[str], tokenize: Tokenize = whitespace_tokenize, n: int = 1
) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) between the n-gram frequencies of two text sets.

    n-grams never span two texts. 0 means the same relative frequencies, 1 disjoint vocabularies. A finite
    sample gives JS > 0 even for one distribution, so compare reports made with the same sample size.
    """
    _check_n(n)
    p, q = _counts(a_texts, tokenize, n), _counts(b_texts, tokenize, n)
    for name, counts, texts in (("a_texts", p, a_texts), ("b_texts", q, b_texts)):
        if not counts:
            raise ValueError(
                f"{name} ({len(texts)} texts) has no {n}-gram: pass non-empty texts of at least {n} tokens."
            )
    p_total, q_total = sum(p.values()), sum(q.values())
    js = 0.0
    for gram in p.keys() | q.keys():
        pi, qi = p[gram] / p_total, q[gram] / q_total
        m = (pi + qi) / 2
        if pi:
            js += 0.5 * pi * math.log2(pi / m)
        if qi:
            js += 0.5 * qi * math.log2(qi / m)
    return min(max(js, 0.0), 1.0)


def text_lengths(texts: Sequence[str], tokenize: Tokenize = whitespace_tokenize) -> list[int]:
    """Number of tokens of each text."""
    return [len(tokenize(t)) for t in texts]


def length_stats(texts: Sequence[str], tokenize: Tokenize = whitespace_tokenize) -> dict[str, float]:
    """Mean, population std, min, 10/50/90% quantiles (linear interpolation) and max of the token lengths."""
    lengths = sorted(text_lengths(texts, tokenize))
    if not lengths:
        raise ValueError("texts is empty: no length to describe.")
    mean = sum(lengths) / len(lengths)

    def quantile(q: float) -> float:
        pos = q * (len(lengths) - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, len(lengths) - 1)
        return lengths[lo] + (lengths[hi] - lengths[lo]) * (pos - lo)

    return {
        "mean": mean,
        "std": math.sqrt(sum((x - mean) ** 2 for x in lengths) / len(lengths)),
        "min": float(lengths[0]),
        "p10": quantile(0.1),
        "p50": quantile(0.5),
        "p90": quantile(0.9),
        "max": float(lengths[-1]),
    }


def wasserstein_1(a: Sequence[float], b: Sequence[float]) -> float:
    """Wasserstein-1 (earth mover's) distance between two empirical distributions: the integral of |F_a - F_b|.

    In the values' unit: how far, on average, the mass of one sample must move to become the other.
    """
    if not a or not b:
        raise ValueError(f"wasserstein_1 needs two non-empty samples (got {len(a)} and {len(b)} values).")
    a, b = sorted(a), sorted(b)
    points = sorted(set(a) | set(b))
    dist = 0.0
    for left, right in itertools.pairwise(points):
        fa = bisect.bisect_right(a, left) / len(a)
        fb = bisect.bisect_right(b, left) / len(b)
        dist += abs(fa - fb) * (right - left)
    return dist


def length_distance(
    a_texts: Sequence[str], b_texts: Sequence[str], tokenize: Tokenize = whitespace_tokenize
) -> float:
    """Wasserstein-1 distance (in tokens) between the token-length distributions of two text sets.

    Chosen over the KS statistic because it says by how many tokens the lengths differ, not only whether.
    """
    return wasserstein_1(text_lengths(a_texts, tokenize), text_lengths(b_texts, tokenize))


# ---------------------------------------------------------------------------------------------------
# Diversity
# ---------------------------------------------------------------------------------------------------
def distinct_n(texts: Sequence[str], n: int = 1, tokenize: Tokenize = whitespace_tokenize) -> float:
    """Distinct-n: unique n-grams / total n-grams over all texts (1 = no n-gram repeats; low = repetitive)."""
    _check_n(n)
    counts = _counts(texts, tokenize, n)
    total = sum(counts.values())
    if not total:
        raise ValueError(f"texts ({len(texts)} texts) has no {n}-gram: pass texts of at least {n} tokens.")
    return len(counts) / total


def _sample_indices(size: int, k: int, seed: int) -> list[int]:
    if k >= size:
        return list(range(size))
    return sorted(random.Random(seed).sample(range(size), k))


def self_bleu(
    texts: Sequence[str],
    n_max: int = 4,
    sample: int | None = 500,
    seed: int = 0,
    tokenize: Tokenize = whitespace_tokenize,
) -> float:
    """Mean sentence BLEU of each text against all the others as references (high = texts alike).

    `sample` texts (seeded, None for all) are drawn and each is scored against the other drawn ones, so the
    value depends on the sample size: compare sets with equal `sample`. Sentence BLEU with uniform weights
    up to `n_max`, multi-reference clipping and the closest-reference-length brevity penalty, smoothed as
    BLEU+1 (Lin and Och, 2004): +1 on numerator and denominator of the n >= 2 precisions. A text sharing
    no word with the others scores 0; a set of copies scores 1. Cost is linear in the number of n-grams
    (per n-gram, the two largest counts over the texts give the max over "all but this text").
    """
    _check_n(n_max, "n_max")
    if sample is not None and (not isinstance(sample, int) or sample < 2):
        raise ValueError(f"sample={sample!r} must be an int >= 2 (texts drawn), or None for all texts.")
    picked = [texts[i] for i in _sample_indices(len(texts), sample or len(texts), seed)]
    if len(picked) < 2:
        raise ValueError(
            f"self_bleu needs at least 2 texts (got {len(picked)}): each is scored against the others."
        )
    tokens = [list(tokenize(t)) for t in picked]
    counts = [[Counter(_ngrams(toks, n)) for n in range(1, n_max + 1)] for toks in tokens]
    # per order and n-gram: (largest count, index of the text holding it, second largest count)
    top: list[dict[tuple, list]] = [{} for _ in range(n_max)]
    for i, per_order in enumerate(counts):
        for order, counter in enumerate(per_order):
            for gram, c in counter.items():
                best = top[order].get(gram)
                if best is None:
                    top[order][gram] = [c, i, 0]
                elif c > best[0]:
                    top[order][gram] = [c, i, best[0]]
                elif c > best[2]:
                    best[2] = c
    lengths = sorted(len(t) for t in tokens)
    scores = []
    for i, per_order in enumerate(counts):
        length = len(tokens[i])
        if length == 0:
            scores.append(0.0)
            continue
        log_p = 0.0
        for order, counter in enumerate(per_order):
            matches = 0
            for gram, c in counter.items():
                best, holder, second = top[order][gram]
                matches += min(c, best if holder != i else second)
            total = sum(counter.values())
            if order == 0:
                if matches == 0:
                    log_p = -math.inf
                    break
                log_p += math.log(matches / total)
            else:
                log_p += math.log((matches + 1) / (total + 1))
        if log_p == -math.inf:
            scores.append(0.0)
            continue
        ref = _closest_other_length(lengths, length)
        brevity = 1.0 if length > ref else math.exp(1 - ref / length)
        scores.append(brevity * math.exp(log_p / n_max))
    return sum(scores) / len(scores)


def _closest_other_length(sorted_lengths: list[int], own: int) -> int:
    """The reference length closest to `own` among `sorted_lengths` without one copy of `own` (ties: shorter)."""
    lo = bisect.bisect_left(sorted_lengths, own)
    hi = bisect.bisect_right(sorted_lengths, own)
    if hi - lo >= 2:
        return own
    candidates = [sorted_lengths[j] for j in (lo - 1, hi) if 0 <= j < len(sorted_lengths)]
    return min(candidates, key=lambda x: (abs(x - own), x))


# ---------------------------------------------------------------------------------------------------
# Model-based metrics
# ---------------------------------------------------------------------------------------------------
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
    picked = [records[i] for i in _sample_indices(len(records), max_records, seed)]
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


# ---------------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------------
def _hf_tokenize(tokenizer, texts: Sequence[str]) -> Tokenize:
    """`tokenizer`'s token ids (no special tokens), computed once for `texts` in one batch call."""
    unique = list(dict.fromkeys(texts))
    ids = tokenizer(unique, add_special_tokens=False)["input_ids"] if unique else []
    cache = dict(zip(unique, (list(x) for x in ids)))

    def tokenize(text: str) -> list[int]:
        if text not in cache:
            cache[text] = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        return cache[text]

    return tokenize


def quality_report(
    synthetic_records: Sequence[Mapping[str, Any]],
    real_texts: Sequence[str] | None,
    tokenizer=None,
    *,
    reference_model=None,
    reference_tokenizer=None,
    fidelity_model=None,
    fmt: ControlCodeFormat | None = None,
    codes: Sequence[Sequence[str]] | None = None,
    max_records: int = 500,
    fidelity_records: int = 64,
    fidelity_text_tokens: int | None = 48,
    self_bleu_sample: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """Synthetic records (dicts with ``text`` and the control columns) measured against real held-out text.

    Tokens are `tokenizer`'s ids (whitespace words when None). Up to `max_records` texts of each side are
    drawn (seeded), the same number for both. Model-based metrics run only when their model is given:
    ``reference_perplexity`` (`reference_model`, with `reference_tokenizer`, default `tokenizer`) and
    ``control_code_fidelity`` (`fidelity_model` and `fmt`; `fidelity_records` texts, their first
    `fidelity_text_tokens` tokens). Self-BLEU uses at most `self_bleu_sample` texts per side (its cost and
    value grow with the number of references). `real_texts` None: synthetic-only numbers.
    PRIVATE: with real held-out text, the report is not covered by the guarantee (see the module doc).
    """
    if not isinstance(max_records, int) or max_records < 2:
        raise ValueError(f"max_records={max_records!r} must be an int >= 2 (texts drawn from each side).")
    if hasattr(synthetic_records, "column_names"):  # a datasets.Dataset: read the column at once
        texts = [str(t) for t in synthetic_records["text"]]
    else:
        texts = [str(r["text"]) for r in synthetic_records]
    real = [str(t) for t in real_texts] if real_texts is not None else []
    if len(texts) < 2:
        raise ValueError(f"synthetic_records has {len(texts)} records; the report needs at least 2.")
    if real_texts is not None and len(real) < 2:
        raise ValueError(
            f"real_texts has {len(real)} texts; pass at least 2 (or None for a synthetic-only report)."
        )
    k = min(len(texts), len(real) if real else len(texts), max_records)
    syn_sample = [texts[i] for i in _sample_indices(len(texts), k, seed)]
    real_sample = [real[i] for i in _sample_indices(len(real), k, seed + 1)] if real else []
    tokenize = (
        _hf_tokenize(tokenizer, syn_sample + real_sample) if tokenizer is not None else whitespace_tokenize
    )
    sides = {"synthetic": syn_sample, **({"real": real_sample} if real else {})}
    bleu_k = min(self_bleu_sample, k)

    def per_side(fn: Callable[[list[str]], Any]) -> dict[str, Any]:
        return {side: fn(sample) for side, sample in sides.items()}

    metrics: dict[str, Any] = {
        "length": per_side(lambda s: length_stats(s, tokenize)),
        "distinct_1": per_side(lambda s: distinct_n(s, 1, tokenize)),
        "distinct_2": per_side(lambda s: distinct_n(s, 2, tokenize)),
        "self_bleu": per_side(lambda s: self_bleu(s, 4, bleu_k, seed, tokenize)),
    }
    if real:
        metrics["unigram_js"] = ngram_js_divergence(syn_sample, real_sample, tokenize, 1)
        metrics["bigram_js"] = ngram_js_divergence(syn_sample, real_sample, tokenize, 2)
        metrics["length_wasserstein"] = length_distance(syn_sample, real_sample, tokenize)
    if reference_model is not None:
        ref_tok = reference_tokenizer or tokenizer
        if ref_tok is None:
            raise ValueError(
                "reference_model needs its tokenizer: pass reference_tokenizer= (or tokenizer=)."
            )
        metrics["reference_perplexity"] = per_side(
            lambda s: reference_perplexity(reference_model, ref_tok, s)
        )
    if fidelity_model is not None:
        if fmt is None or tokenizer is None:
            raise ValueError(
                "fidelity_model needs fmt= (the ControlCodeFormat) and tokenizer= (the model's)."
            )
        metrics["control_code_fidelity"] = control_code_fidelity(
            fidelity_model,
            tokenizer,
            fmt,
            synthetic_records,
            codes=codes,
            max_records=fidelity_records,
            max_text_tokens=fidelity_text_tokens,
            seed=seed,
        )
    return {
        "num_synthetic": len(texts),
        "num_real": len(real),
        "sample_size": k,
        "self_bleu_sample": bleu_k,
        "seed": seed,
        "tokens": getattr(tokenizer, "name_or_path", None)
        or ("tokenizer" if tokenizer else "whitespace words"),
        "uses_private_data": bool(real),
        "covered_by_guarantee": not real,
        "metrics": metrics,
    }


def quality_summary(report: Mapping[str, Any]) -> dict[str, float]:
    """A flat dict of the headline numbers (synthetic side; JS and length distance vs real)."""
    m = report["metrics"]
    out: dict[str, float] = {}
    for key in ("unigram_js", "bigram_js", "length_wasserstein"):
        if key in m:
            out[key] = m[key]
    out["distinct_2"] = m["distinct_2"]["synthetic"]
    out["self_bleu"] = m["self_bleu"]["synthetic"]
    if "reference_perplexity" in m:
        out["reference_perplexity"] = m["reference_perplexity"]["synthetic"]["perplexity"]
        if "real" in m["reference_perplexity"]:
            out["reference_perplexity_real"] = m["reference_perplexity"]["real"]["perplexity"]
    if "control_code_fidelity" in m:
        out["control_code_accuracy"] = m["control_code_fidelity"]["accuracy"]
        out["control_code_chance"] = m["control_code_fidelity"]["chance"]
    return out


def _num(x: Any) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.4g}" if math.isfinite(x) else str(x)
    return str(x)


def quality_markdown(report: Mapping[str, Any]) -> str:
    """A markdown table of the report: one row per metric, synthetic and real columns, which way is better."""
    m = report["metrics"]

    def side(d: Mapping[str, Any] | None, key: str, field: str | None = None) -> str:
        if not d or key not in d:
            return "–"
        return _num(d[key][field] if field else d[key])

    rows: list[tuple[str, str, str, str]] = []
    if "unigram_js" in m:
        rows += [
            (
                "unigram JS divergence",
                _num(m["unigram_js"]),
                "–",
                "lower (0: same word frequencies, 1: disjoint)",
            ),
            (
                "bigram JS divergence",
                _num(m["bigram_js"]),
                "–",
                "lower (0: same bigram frequencies, 1: disjoint)",
            ),
            (
                "length Wasserstein-1 (tokens)",
                _num(m["length_wasserstein"]),
                "–",
                "lower (tokens the lengths differ by)",
            ),
        ]
    length = m["length"]
    rows += [
        (
            "mean length (tokens)",
            side(length, "synthetic", "mean"),
            side(length, "real", "mean"),
            "closer to real",
        ),
        (
            "length std (tokens)",
            side(length, "synthetic", "std"),
            side(length, "real", "std"),
            "closer to real",
        ),
        (
            "distinct-1",
            side(m["distinct_1"], "synthetic"),
            side(m["distinct_1"], "real"),
            "closer to real (low: repetitive)",
        ),
        (
            "distinct-2",
            side(m["distinct_2"], "synthetic"),
            side(m["distinct_2"], "real"),
            "closer to real (low: repetitive)",
        ),
        (
            "self-BLEU-4",
            side(m["self_bleu"], "synthetic"),
            side(m["self_bleu"], "real"),
            "closer to real (high: texts alike)",
        ),
    ]
    if "reference_perplexity" in m:
        ppl = m["reference_perplexity"]
        rows.append(
            (
                "reference-model perplexity",
                side(ppl, "synthetic", "perplexity"),
                side(ppl, "real", "perplexity"),
                "closer to real (high: disfluent; far lower: generic or repetitive)",
            )
        )
    if "control_code_fidelity" in m:
        fid = m["control_code_fidelity"]
        rows.append(
            (
                "control-code accuracy",
                _num(fid["accuracy"]),
                f"chance {_num(fid['chance'])}",
                "higher (text reads as its code)",
            )
        )
        for column, acc in fid["field_accuracy"].items():
            rows.append((f"control-code accuracy: {column}", _num(acc), "–", "higher"))
        rows.append(
            (
                "control-code margin (nats/token)",
                _num(fid["mean_margin_per_token"]),
                "–",
                "higher (> 0: own code preferred)",
            )
        )
    lines = ["| metric | synthetic | real (held-out) | better |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    head = (
        f"{report['num_synthetic']} synthetic texts vs {report['num_real']} real held-out texts; "
        f"{report['sample_size']} of each side drawn (seed {report['seed']}), self-BLEU on "
        f"{report['self_bleu_sample']}; tokens: `{report['tokens']}`."
        if report["num_real"]
        else f"{report['num_synthetic']} synthetic texts, {report['sample_size']} drawn (seed {report['seed']}); "
        "no real text compared."
    )
    if "control_code_fidelity" in m:
        fid = m["control_code_fidelity"]
        read = (
            "whole texts" if fid.get("max_text_tokens") is None else f"first {fid['max_text_tokens']} tokens"
        )
        head += (
            f" Control-code fidelity: {fid['num_records']} synthetic texts ({read}) scored under each of the "
            f"{fid['num_codes']} codes."
        )
    note = (
        f"> [!WARNING]\n> {PRIVACY_NOTE}"
        if report.get("uses_private_data", True)
        else "> No private text was read: every number is post-processing of the synthetic data."
    )
    return "\n".join([note, "", head, "", *lines, ""])


def write_quality_report(report: Mapping[str, Any], folder: str | Path) -> Path:
    """Write ``quality.json`` and ``quality.md`` into `folder` (atomically); returns the JSON path.

    Local files: not in any push pattern of the pipeline or the callback (they hold private-data statistics).
    """
    folder = Path(folder)
    path = atomic_write_text(folder / JSON_FILE, json.dumps(report, indent=2))
    atomic_write_text(folder / MARKDOWN_FILE, "# Synthetic data quality\n\n" + quality_markdown(report))
    return path
