"""Canary exposure (Carlini et al. 2019, "The Secret Sharer").

A canary is a text with a random secret slot, e.g. "my PIN is {secret}" with the secret made of 4 digits
separated by spaces, planted `repeats` times in the training data. The model ranks every candidate secret
by the log-likelihood of the filled-in text (given the control-code prefix); with rank 1 = most likely,

    exposure = log2(|candidate space|) - log2(rank of the true secret).

Exposure is at most log2 |space| (the secret is the model's top candidate) and about 1 for a secret the
model knows nothing about (median rank = half the space).

Exact: every candidate is scored (use for spaces up to `exact_limit`, e.g. 10^4 to 10^5).
Estimated (larger spaces): `num_samples` candidates are drawn uniformly; the fraction p of candidates that
beat the secret is estimated two ways, and rank = 1 + (|space| - 1) * p:
- "empirical": p = (#samples beating the secret) / num_samples. Unbiased, but cannot resolve exposures
  above about log2(num_samples) (p = 0 gives the maximum).
- "skewnorm" (the paper's extrapolation, the reported value): fit a skew-normal distribution to the sampled
  log-likelihoods (maximum likelihood) and take p = its upper tail at the secret's log-likelihood. This
  extrapolates past the samples and is only as good as the fit in the far tail: treat large estimated
  exposures as approximate.

The no-leak level is known exactly: the secret is drawn uniformly, so for a model that never saw the canary
its rank is uniform over the candidates and P(exposure >= e) = 2^-e (median 1 bit; 4.3 bits or more happens
5% of the time). `no_leak_p_value` = rank / |space| is that probability; a canary is `exposed` when it is
below (1 - confidence) / (number of canaries) (Bonferroni). An estimated exposure also carries the exact
binomial interval of the sampled fraction (`exposure_empirical_interval`), and its p-value uses the
interval's pessimistic end.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from hf_dpkd.audit.metrics import DEFAULT_CONFIDENCE, binomial_interval
from hf_dpkd.audit.scoring import score_records

SLOT = "{secret}"


@dataclass(frozen=True)
class Canary:
    """A planted secret. `template` holds the slot "{secret}" once; the secret is `length` symbols from
    `alphabet` joined by `separator` (e.g. "3 1 4 1"); `prefix` is the control-code prompt (context only);
    `repeats` is how many times it was inserted in the training data."""

    secret: str
    template: str = "My secret number is {secret}."
    prefix: str = ""
    alphabet: tuple[str, ...] = tuple("0123456789")
    separator: str = " "
    repeats: int = 1
    name: str = ""
    symbols: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.template.count(SLOT) != 1:
            raise ValueError(f"template={self.template!r} must contain {SLOT} exactly once")
        alphabet = tuple(self.alphabet)
        if len(set(alphabet)) != len(alphabet) or len(alphabet) < 2:
            raise ValueError(f"alphabet={alphabet!r} must hold at least two distinct symbols")
        object.__setattr__(self, "alphabet", alphabet)
        symbols = tuple(self.secret.split(self.separator)) if self.separator else tuple(self.secret)
        bad = [s for s in symbols if s not in alphabet]
        if bad or not symbols:
            raise ValueError(
                f"secret={self.secret!r} splits (separator={self.separator!r}) into {list(symbols)}, and "
                f"{bad or 'nothing'} is not in alphabet={list(alphabet)}; pass a secret made of alphabet symbols"
            )
        if self.repeats < 0:
            raise ValueError(f"repeats={self.repeats} must be >= 0 (0 = a control canary never inserted)")
        object.__setattr__(self, "symbols", symbols)

    @property
    def length(self) -> int:
        return len(self.symbols)

    @property
    def space_size(self) -> int:
        """Number of candidate secrets, ``len(alphabet) ** length``."""
        return len(self.alphabet) ** self.length

    def render(self, symbols: Sequence[str] | None = None) -> str:
        """The canary text with `symbols` (default: the true secret) in the slot."""
        return self.template.replace(SLOT, self.separator.join(self.symbols if symbols is None else symbols))

    @property
    def text(self) -> str:
        return self.render()

    @classmethod
    def from_dict(cls, meta: Mapping) -> Canary:
        """Build from metadata (e.g. what a corpus that plants canaries records). Accepts the field names,
        plus "format" for template and "candidate_alphabet" for alphabet."""
        meta = dict(meta)
        for alias, name in (("format", "template"), ("candidate_alphabet", "alphabet")):
            if alias in meta and name not in meta:
                meta[name] = meta.pop(alias)
        allowed = {"secret", "template", "prefix", "alphabet", "separator", "repeats", "name"}
        unknown = set(meta) - allowed
        if unknown:
            raise ValueError(f"canary metadata has unknown keys {sorted(unknown)}; known: {sorted(allowed)}")
        if "alphabet" in meta:
            meta["alphabet"] = tuple(meta["alphabet"])
        return cls(**meta)


def _loglik(model, tokenizer, canary: Canary, candidates: Sequence[Sequence[str]], batch_size, show_progress):
    records = [(canary.prefix, canary.render(c)) for c in candidates]
    scored = score_records(
        model, tokenizer, records, batch_size, None, False, show_progress, desc=f"canary {canary.name or ''}"
    )
    return np.array([s.token_logprobs.sum() for s in scored], dtype=np.float64)


def _exposure(space: int, rank: float) -> float:
    return math.log2(space) - math.log2(rank)


@torch.no_grad()
def canary_exposure(
    model: torch.nn.Module,
    tokenizer,
    canary: Canary,
    method: str = "auto",
    exact_limit: int = 100_000,
    num_samples: int = 5_000,
    seed: int = 0,
    batch_size: int = 64,
    show_progress: bool = True,
) -> dict:
    """Exposure of one canary: exact enumeration when the space has at most `exact_limit` candidates
    (method "auto" or "exact"), else estimated from `num_samples` sampled candidates ("estimate")."""
    if method not in ("auto", "exact", "estimate"):
        raise ValueError(f"method={method!r} must be 'auto', 'exact' or 'estimate'")
    space = canary.space_size
    if method == "exact" and space > exact_limit:
        raise ValueError(
            f"method='exact' would score {space} candidates > exact_limit={exact_limit}; raise exact_limit "
            "or use method='estimate'"
        )
    secret_ll = float(_loglik(model, tokenizer, canary, [canary.symbols], 1, False)[0])
    base = {
        "name": canary.name,
        "repeats": canary.repeats,
        "space_size": space,
        "max_exposure": math.log2(space),
        "secret_loglik": secret_ll,
    }
    if method == "exact" or (method == "auto" and space <= exact_limit):
        cands = [c for c in itertools.product(canary.alphabet, repeat=canary.length) if c != canary.symbols]
        ll = _loglik(model, tokenizer, canary, cands, batch_size, show_progress)
        rank = 1 + int(np.sum(ll > secret_ll))
        exposure = _exposure(space, rank)
        return {
            **base,
            "method": "exact",
            "rank": rank,
            "exposure": exposure,
            "exposure_interval": [exposure, exposure],  # every candidate scored: no sampling error
            "no_leak_p_value": rank / space,
        }

    if num_samples < 2:
        raise ValueError(f"num_samples={num_samples} must be >= 2 to estimate exposure")
    from scipy import stats

    rng = np.random.default_rng(seed)
    cands = []
    while len(cands) < num_samples:
        c = tuple(canary.alphabet[i] for i in rng.integers(0, len(canary.alphabet), canary.length))
        if c != canary.symbols:
            cands.append(c)
    ll = _loglik(model, tokenizer, canary, cands, batch_size, show_progress)
    beating = int(np.sum(ll > secret_ll))
    p_emp = beating / num_samples
    p_lo, p_hi = binomial_interval(beating, num_samples, DEFAULT_CONFIDENCE)
    a, loc, scale = stats.skewnorm.fit(ll)
    p_fit = float(stats.skewnorm.sf(secret_ll, a, loc, scale))
    rank_emp = 1 + (space - 1) * p_emp
    rank_fit = 1 + (space - 1) * p_fit
    return {
        **base,
        "method": "estimate",
        "num_samples": num_samples,
        "rank": rank_fit,
        "exposure": _exposure(space, rank_fit),
        "rank_empirical": rank_emp,
        "exposure_empirical": _exposure(space, rank_emp),
        # the sampled fraction's exact 95% interval: a higher fraction means a worse rank, a lower exposure
        "exposure_empirical_interval": [
            _exposure(space, 1 + (space - 1) * p_hi),
            _exposure(space, 1 + (space - 1) * p_lo),
        ],
        "no_leak_p_value": (1 + (space - 1) * p_hi) / space,
        "empirical_resolution": math.log2(num_samples),
        "skewnorm": {"a": float(a), "loc": float(loc), "scale": float(scale)},
    }


def canary_exposures(
    model: torch.nn.Module,
    tokenizer,
    canaries: Sequence[Canary],
    method: str = "auto",
    exact_limit: int = 100_000,
    num_samples: int = 5_000,
    seed: int = 0,
    batch_size: int = 64,
    show_progress: bool = True,
    confidence: float = DEFAULT_CONFIDENCE,
) -> dict:
    """Exposure of every canary, mean/min/max exposure per repetition count ("by_repeats"), and the no-leak
    level ("no_leak": the exposure a model that never saw the canaries exceeds with probability
    (1 - confidence) / (number of canaries); canaries above it are flagged `exposed`)."""
    if not canaries:
        raise ValueError("canaries is empty; pass at least one Canary")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence} must be in (0, 1); 0.95 is the usual level")
    per = [
        canary_exposure(
            model, tokenizer, c, method, exact_limit, num_samples, seed + i, batch_size, show_progress
        )
        for i, c in enumerate(canaries)
    ]
    level = (1.0 - confidence) / len(per)
    for r in per:
        r["exposed"] = bool(r["no_leak_p_value"] <= level)
    by: dict[int, list[dict]] = {}
    for r in per:
        by.setdefault(r["repeats"], []).append(r)
    summary = {
        str(k): {
            "count": len(v),
            "mean": float(np.mean([r["exposure"] for r in v])),
            "min": float(np.min([r["exposure"] for r in v])),
            "max": float(np.max([r["exposure"] for r in v])),
            "exposed": sum(r["exposed"] for r in v),
        }
        for k, v in sorted(by.items())
    }
    no_leak = {
        "median_exposure": 1.0,
        "level": math.log2(1.0 / level),
        "confidence": confidence,
        "rule": (
            "a canary is exposed when a model that never saw it would rank its secret this high with probability "
            f"<= {level:.3g} ((1 - {confidence}) / {len(per)} canaries): exposure above "
            f"{math.log2(1.0 / level):.2f} bits"
        ),
    }
    return {
        "canaries": per,
        "by_repeats": summary,
        "no_leak": no_leak,
        "exposed": sum(r["exposed"] for r in per),
    }


def compare_exposures(results: dict, no_leak_results: dict, no_leak_name: str = "no-leak model") -> dict:
    """`results` of `canary_exposures` with the exposure a model that never saw the canaries gives the same
    canaries (`no_leak_results`, same canaries in the same order): "no_leak_exposure" per canary and
    "no_leak_mean" per repetition count. Any single value of it is one draw of the known no-leak
    distribution; it shows that nothing about the secrets themselves makes them easy to guess."""
    mine, theirs = results["canaries"], no_leak_results["canaries"]
    if [c["name"] for c in mine] != [c["name"] for c in theirs]:
        raise ValueError(
            f"the two results cover different canaries ({[c['name'] for c in mine]} vs "
            f"{[c['name'] for c in theirs]}); score the same canaries with both models"
        )
    out = {**results, "canaries": [], "by_repeats": {}}
    for c, base in zip(mine, theirs):
        out["canaries"].append({**c, "no_leak_exposure": base["exposure"]})
    for key, group in results["by_repeats"].items():
        base = [b["exposure"] for b in theirs if str(b["repeats"]) == key]
        out["by_repeats"][key] = {**group, "no_leak_mean": float(np.mean(base))}
    out["no_leak"] = {**results.get("no_leak", {}), "model": no_leak_name}
    return out
