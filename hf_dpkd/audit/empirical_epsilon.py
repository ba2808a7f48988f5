"""Empirical lower bound on epsilon from ONE training run (Steinke, Nasr, Jagielski 2023, arXiv 2305.08846).

Protocol:
1. `make_audit_canaries(m)`: m random canary texts, each with an independent fair coin `included`.
2. `insert_audit_canaries(dataset, canaries)`: add the included ones to the training set; train as usual.
3. `score_audit_canaries(model, tokenizer, canaries)`: membership score per canary (higher = more likely
   included): -loss, or reference loss - loss.
4. `one_run_audit(scores, included, num_positive, num_negative)`: guess "included" for the `num_positive`
   highest scores, "excluded" for the `num_negative` lowest, abstain on the rest; count the correct guesses
   v out of r and turn them into a lower bound on epsilon at confidence 1 - beta.

The bound (paper, Theorem 5.2 and its Appendix D algorithm): if the training algorithm is (eps, delta)-DP
with respect to adding/removing one example, the number W of correct guesses satisfies, for every v,

    P[W >= v] <= f(v) + 2 m delta * max_{1 <= i <= v} (f(v - i) - f(v)) / i,
    f(u) = P[Binomial(r, q) >= u],  q = e^eps / (1 + e^eps).

With delta = 0 this is the pure-DP statement P[W >= v] <= f(v) (Theorem 3.1). The right-hand side at the
observed v is a p-value for the hypothesis "the algorithm is (eps, delta)-DP"; the reported lower bound is
the largest eps below which every hypothesis is rejected at level beta. An audit only ever proves a LOWER
bound: a small value is not evidence of privacy.

The bound is itself a confidence statement, and its no-leak level is 0: a model that never saw the canaries
guesses right half the time, and gets a bound above 0 with probability at most beta. The report adds the
guess accuracy v / r with its exact binomial interval (chance = 0.5), and, given a model that never saw the
canaries, the same audit of that model on the same canaries (`audit_epsilon(..., no_leak_model=...)`).
"""

from __future__ import annotations

import math
import string
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy import stats

from hf_dpkd.audit.metrics import binomial_interval
from hf_dpkd.audit.scoring import record_losses


@dataclass(frozen=True)
class AuditCanary:
    """One audit canary: `prefix` (control-code prompt, context only) + `text`; `included` is its coin."""

    index: int
    text: str
    included: bool
    prefix: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def make_audit_canaries(
    m: int,
    seed: int = 0,
    num_words: int = 8,
    min_word_length: int = 3,
    max_word_length: int = 7,
    prefix: str = "",
    alphabet: str = string.ascii_lowercase,
) -> list[AuditCanary]:
    """m canaries of `num_words` random words over `alphabet`, each included with probability 1/2
    independently (the analysis requires exactly 1/2). Deterministic in `seed`."""
    if m <= 0:
        raise ValueError(
            f"m={m} must be > 0; the audit needs canaries (hundreds to thousands give tight bounds)"
        )
    if num_words <= 0 or not 1 <= min_word_length <= max_word_length:
        raise ValueError(
            f"num_words={num_words}, word lengths [{min_word_length}, {max_word_length}] must be "
            "positive with min <= max"
        )
    if len(set(alphabet)) < 2:
        raise ValueError(f"alphabet={alphabet!r} needs at least two distinct characters")
    rng = np.random.default_rng(seed)
    chars = np.array(sorted(set(alphabet)))
    canaries, seen = [], set()
    while len(canaries) < m:
        lengths = rng.integers(min_word_length, max_word_length + 1, size=num_words)
        text = " ".join("".join(rng.choice(chars, size=n)) for n in lengths)
        if text in seen:
            continue
        seen.add(text)
        canaries.append(text)
    included = rng.random(m) < 0.5
    return [AuditCanary(i, t, bool(inc), prefix) for i, (t, inc) in enumerate(zip(canaries, included))]


def insert_audit_canaries(
    dataset,
    canaries: Sequence[AuditCanary],
    text_column: str = "text",
    control_values: Mapping[str, object] | None = None,
    shuffle: bool = True,
    seed: int = 0,
):
    """Return `dataset` (a `datasets.Dataset`) with one row per INCLUDED canary added.

    The canary text goes in `text_column`; every other column takes `control_values[column]` (use the
    control fields that make the trainer build the canary's `prefix`), or None when not given. Each
    included canary is added once: the audited unit is one example.
    """
    from datasets import Dataset, concatenate_datasets

    if text_column not in dataset.column_names:
        raise ValueError(
            f"text_column={text_column!r} is not a column of the dataset ({dataset.column_names}); "
            "pass the column that holds the training text"
        )
    control_values = dict(control_values or {})
    extra = set(control_values) - set(dataset.column_names)
    if extra:
        raise ValueError(
            f"control_values has columns {sorted(extra)} not in the dataset {dataset.column_names}"
        )
    rows = [c for c in canaries if c.included]
    if not rows:
        return dataset
    data = {
        col: [c.text for c in rows] if col == text_column else [control_values.get(col)] * len(rows)
        for col in dataset.column_names
    }
    added = Dataset.from_dict(data, features=dataset.features)
    out = concatenate_datasets([dataset, added])
    return out.shuffle(seed=seed) if shuffle else out


def score_audit_canaries(
    model: torch.nn.Module,
    tokenizer,
    canaries: Sequence[AuditCanary],
    reference_model: torch.nn.Module | None = None,
    batch_size: int = 8,
    max_length: int | None = None,
    show_progress: bool = True,
) -> np.ndarray:
    """Membership score per canary, higher = more likely included: -loss, or reference loss - loss."""
    records = [(c.prefix, c.text) for c in canaries]
    losses = record_losses(model, tokenizer, records, batch_size, max_length, show_progress, "canaries")
    if reference_model is None:
        return -losses
    ref = record_losses(
        reference_model, tokenizer, records, batch_size, max_length, show_progress, "reference"
    )
    return ref - losses


def audit_guesses(scores: Sequence[float], num_positive: int, num_negative: int = 0) -> np.ndarray:
    """+1 ("included") for the `num_positive` highest scores, -1 for the `num_negative` lowest, 0 (abstain)
    for the rest. Ties are broken by index, so the guesses depend on the scores only."""
    s = np.asarray(scores, dtype=np.float64)
    if num_positive < 0 or num_negative < 0 or num_positive + num_negative > s.size:
        raise ValueError(
            f"num_positive={num_positive} and num_negative={num_negative} must be >= 0 with a sum "
            f"<= the number of canaries ({s.size})"
        )
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or inf; every canary needs a finite score")
    order = np.argsort(-s, kind="stable")
    guesses = np.zeros(s.size, dtype=np.int64)
    guesses[order[:num_positive]] = 1
    if num_negative:
        guesses[order[s.size - num_negative :]] = -1
    return guesses


def _check_mrv(m: int, r: int, v: int) -> None:
    if not (0 <= v <= r <= m):
        raise ValueError(f"need 0 <= v <= r <= m, got m={m} canaries, r={r} guesses, v={v} correct")


def audit_p_value(m: int, r: int, v: int, epsilon: float, delta: float = 0.0) -> float:
    """Upper bound on P[at least v of r guesses correct] for an (epsilon, delta)-DP algorithm auditing
    m canaries (the paper's Theorem 5.2; Theorem 3.1 when delta = 0). Small = evidence against the claim."""
    _check_mrv(m, r, v)
    if epsilon < 0 or not 0.0 <= delta <= 1.0:
        raise ValueError(f"epsilon={epsilon} must be >= 0 and delta={delta} in [0, 1]")
    q = 1.0 / (1.0 + math.exp(-epsilon))  # accuracy of epsilon-DP randomized response
    tail = float(stats.binom.sf(v - 1, r, q))  # f(v) = P[Binomial(r, q) >= v]
    if delta == 0.0 or v == 0:
        return min(1.0, tail)
    # (f(v - i) - f(v)) = P[v - i <= B <= v - 1] for i = 1..v: cumulative pmf from v - 1 downwards.
    window = np.cumsum(stats.binom.pmf(np.arange(v - 1, -1, -1), r, q))
    slope = float(np.max(window / np.arange(1, v + 1)))
    return min(1.0, tail + 2.0 * m * delta * slope)


def epsilon_lower_bound(
    m: int,
    r: int,
    v: int,
    delta: float = 0.0,
    beta: float = 0.05,
    epsilon_max: float = 50.0,
    tol: float = 1e-6,
) -> float:
    """Largest eps such that every (eps', delta) with eps' <= eps is rejected at level beta: with
    probability >= 1 - beta (over the canary coins) the audited algorithm is not (eps', delta)-DP for
    any eps' below the returned value. 0 when nothing is rejected."""
    _check_mrv(m, r, v)
    if not 0.0 < beta < 1.0:
        raise ValueError(f"beta={beta} must be in (0, 1); 0.05 means 95% confidence")

    def rejected(eps: float) -> bool:
        return audit_p_value(m, r, v, eps, delta) <= beta

    if not rejected(0.0):
        return 0.0
    # Find the first eps that is not rejected. The pure-DP p-value is increasing in eps (binomial tails
    # are stochastically ordered in q); with delta > 0 scan a grid first so a non-monotone p-value can
    # never make us skip a non-rejected eps.
    lo, hi = 0.0, None
    step = epsilon_max if delta == 0.0 else 0.05
    eps = 0.0
    while eps < epsilon_max:
        nxt = min(eps + step, epsilon_max)
        if not rejected(nxt):
            lo, hi = eps, nxt
            break
        eps = nxt
    if hi is None:
        return epsilon_max
    while hi - lo > tol:
        mid = (lo + hi) / 2
        if rejected(mid):
            lo = mid
        else:
            hi = mid
    return lo


def one_run_audit(
    scores: Sequence[float],
    included: Sequence[bool],
    num_positive: int | Sequence[int],
    num_negative: int | Sequence[int] = 0,
    delta: float = 0.0,
    beta: float = 0.05,
) -> dict:
    """Guess, count, bound. `num_positive`/`num_negative` may be lists (paired element-wise) to try several
    guess counts: the best bound is reported with beta divided by the number of tries (Bonferroni), so
    picking the best one does not void the confidence level."""
    s = np.asarray(scores, dtype=np.float64)
    inc = np.asarray(included, dtype=bool)
    if s.shape != inc.shape:
        raise ValueError(f"scores has {s.size} entries but included has {inc.size}; one each per canary")
    pos = [num_positive] if isinstance(num_positive, int) else list(num_positive)
    neg = [num_negative] * len(pos) if isinstance(num_negative, int) else list(num_negative)
    if len(pos) != len(neg) or not pos:
        raise ValueError(
            f"num_positive ({len(pos)} values) and num_negative ({len(neg)} values) must pair up, non-empty"
        )
    level = beta / len(pos)
    truth = np.where(inc, 1, -1)
    tries = []
    for kp, kn in zip(pos, neg):
        g = audit_guesses(s, kp, kn)
        r, v = int(np.count_nonzero(g)), int(np.sum(g == truth))
        eps = epsilon_lower_bound(s.size, r, v, delta, level)
        tries.append(
            {"num_positive": kp, "num_negative": kn, "num_guesses": r, "num_correct": v, "epsilon": eps}
        )
    best = max(tries, key=lambda t: t["epsilon"])
    r, v = best["num_guesses"], best["num_correct"]
    return {
        "epsilon_lower_bound": best["epsilon"],
        "delta": delta,
        "confidence": 1.0 - beta,
        "num_canaries": int(s.size),
        "num_included": int(inc.sum()),
        "num_guesses": r,
        "num_correct": v,
        # chance = 0.5: what a model that never saw the canaries scores
        "guess_accuracy": v / r if r else float("nan"),
        "guess_accuracy_interval": binomial_interval(v, r, 1.0 - beta) if r else [0.0, 1.0],
        "num_positive": best["num_positive"],
        "num_negative": best["num_negative"],
        "tries": tries,
        "note": "empirical LOWER bound on epsilon; it never certifies privacy",
    }


def audit_epsilon(
    model: torch.nn.Module,
    tokenizer,
    canaries: Sequence[AuditCanary],
    num_positive: int | Sequence[int],
    num_negative: int | Sequence[int] = 0,
    delta: float = 0.0,
    beta: float = 0.05,
    reference_model: torch.nn.Module | None = None,
    batch_size: int = 8,
    max_length: int | None = None,
    show_progress: bool = True,
    no_leak_model: torch.nn.Module | None = None,
    no_leak_tokenizer=None,
) -> dict:
    """Score the canaries on a trained model and run `one_run_audit`; `claimed_epsilon` comparisons are
    the caller's (a bound above the claim means the claim is false, with confidence 1 - beta). With
    `no_leak_model` (never trained on any canary), the same audit of that model is added as "no_leak"."""
    included = [c.included for c in canaries]
    scores = score_audit_canaries(
        model, tokenizer, canaries, reference_model, batch_size, max_length, show_progress
    )
    result = one_run_audit(scores, included, num_positive, num_negative, delta, beta)
    result["scores"] = scores.tolist()
    result["score"] = "reference_calibrated_loss" if reference_model is not None else "loss"
    if no_leak_model is not None:
        base_scores = score_audit_canaries(
            no_leak_model,
            no_leak_tokenizer or tokenizer,
            canaries,
            reference_model,
            batch_size,
            max_length,
            show_progress,
        )
        base = one_run_audit(base_scores, included, num_positive, num_negative, delta, beta)
        keep = (
            "epsilon_lower_bound",
            "num_guesses",
            "num_correct",
            "guess_accuracy",
            "guess_accuracy_interval",
        )
        result["no_leak"] = {k: base[k] for k in keep}
    return result
