"""Model-free quality metrics of text sets: distances between two sets and the diversity of one.

Pure functions of the texts' tokens (n-gram counts, lengths), with no model and no file: n-gram
Jensen-Shannon divergence and length Wasserstein-1 between synthetic and real text, distinct-n and
self-BLEU within a set. Kept apart from the model-based scores (:mod:`.quality_model_metrics`) and the
report that combines them (:mod:`.quality`), so each can be read and tested on its own.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections import Counter
from collections.abc import Callable, Hashable, Sequence

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
    terms = []
    for gram in p.keys() | q.keys():
        pi, qi = p[gram] / p_total, q[gram] / q_total
        m = (pi + qi) / 2
        if pi:
            terms.append(0.5 * pi * math.log2(pi / m))
        if qi:
            terms.append(0.5 * qi * math.log2(qi / m))
    # fsum is exactly rounded, so the result does not depend on the set's (hash-seeded) iteration order
    js = math.fsum(terms)
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


def sample_indices(size: int, k: int, seed: int) -> list[int]:
    """Sorted indices of `k` of `size` items drawn with `seed` (all of them when k >= size)."""
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
    picked = [texts[i] for i in sample_indices(len(texts), sample or len(texts), seed)]
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
