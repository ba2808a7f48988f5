"""The distribution of control codes to generate, released with differential privacy.

The reference implementation of DistilDP reads the exact private histogram of control codes: a leak.
Here the default is the Gaussian mechanism on the counts (each example has exactly one code, so the L2
sensitivity under add/remove of one example is 1), recorded in the PrivacyLedger and composed with
the teacher's DP-SGD. `uniform` and a user-declared public distribution cost nothing; `exact` exists for
comparison only and is flagged as NOT private everywhere it goes.
"""

from __future__ import annotations

import itertools
import json
import logging
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hf_dpkd._io import atomic_write_text
from hf_dpkd.privacy.accounting import PrivacyLedger
from hf_dpkd.synthetic.control_codes import ControlCodeFormat

logger = logging.getLogger(__name__)
MODES = ("dp", "uniform", "public", "exact")


@dataclass
class ControlCodeDistribution:
    """Codes (tuples of values, in `columns` order) with probabilities; `mode` says how it was obtained."""

    columns: list[str]
    codes: list[tuple[str, ...]]
    probs: list[float]
    mode: str
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r}; use one of {MODES}.")
        if not self.codes:
            raise ValueError("A control-code distribution needs at least one code.")
        if len(self.codes) != len(self.probs):
            raise ValueError(f"{len(self.codes)} codes but {len(self.probs)} probabilities.")
        p = np.asarray(self.probs, dtype=float)
        if np.any(p < 0) or not np.isfinite(p).all() or p.sum() <= 0:
            raise ValueError("Control-code probabilities must be finite, non-negative and not all zero.")
        self.probs = (p / p.sum()).tolist()
        self.codes = [tuple(str(v) for v in c) for c in self.codes]

    @property
    def leaks_private_data(self) -> bool:
        return bool(self.meta.get("leaks_private_data", False))

    def records(self) -> list[dict[str, str]]:
        return [dict(zip(self.columns, c)) for c in self.codes]

    def save(self, path: str | Path) -> Path:
        data = {
            "columns": self.columns,
            "codes": [list(c) for c in self.codes],
            "probs": self.probs,
            "mode": self.mode,
            "meta": self.meta,
        }
        return atomic_write_text(path, json.dumps(data, indent=2))

    @classmethod
    def load(cls, path: str | Path) -> ControlCodeDistribution:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(d["columns"], [tuple(c) for c in d["codes"]], d["probs"], d["mode"], d.get("meta", {}))


def _domain_codes(fmt: ControlCodeFormat, domain: Mapping[str, Sequence[str]]) -> list[tuple[str, ...]]:
    missing = [c for c in fmt.columns if c not in domain]
    if missing:
        raise ValueError(
            f"domain lacks control field(s) {missing}; give the public list of values of each field."
        )
    for column in fmt.columns:
        if not domain[column]:
            raise ValueError(f"domain[{column!r}] is empty: every control field needs at least one value.")
    return [tuple(str(v) for v in combo) for combo in itertools.product(*(domain[c] for c in fmt.columns))]


def _data_domain(dataset, fmt: ControlCodeFormat) -> dict[str, list[str]]:
    warnings.warn(
        "The control-code domain (the set of possible values) is read off the private data and is NOT covered "
        "by the DP guarantee; pass `domain=` with publicly known values to cover it.",
        stacklevel=3,
    )
    return {c: sorted({str(v) for v in dataset[c]}) for c in fmt.columns}


def private_counts(dataset, fmt: ControlCodeFormat) -> Counter:
    """Exact counts of each code in the private data (never released as such)."""
    columns = [dataset[c] for c in fmt.columns]
    return Counter(tuple(str(v) for v in row) for row in zip(*columns))


def dp_control_code_distribution(
    dataset,
    fmt: ControlCodeFormat,
    noise_multiplier: float,
    ledger: PrivacyLedger,
    *,
    domain: Mapping[str, Sequence[str]] | None = None,
    seed: int | None = None,
    name: str = "control_code_histogram",
) -> ControlCodeDistribution:
    """Gaussian-mechanism histogram of the codes over `domain`; negatives clipped to 0, renormalised.

    The release (noise_multiplier, sample rate 1, 1 step) is recorded in `ledger` under `name`.
    """
    if not noise_multiplier > 0:
        raise ValueError(f"noise_multiplier={noise_multiplier} must be > 0 for the DP histogram (e.g. 10).")
    if len(dataset) == 0:
        raise ValueError("The private dataset is empty: there is no histogram to release.")
    from_private = domain is None
    domain = _data_domain(dataset, fmt) if from_private else domain
    codes = _domain_codes(fmt, domain)
    counts = private_counts(dataset, fmt)
    unknown = set(counts) - set(codes)
    if unknown:
        raise ValueError(
            f"The data has codes outside the declared domain, e.g. {sorted(unknown)[0]}; extend `domain`."
        )
    rng = np.random.default_rng(seed)
    noisy = np.array([counts.get(c, 0) for c in codes], dtype=float) + rng.normal(
        0.0, noise_multiplier, len(codes)
    )
    clipped = np.clip(noisy, 0.0, None)
    meta: dict[str, Any] = {
        "noise_multiplier": noise_multiplier,
        "domain_from_private_data": from_private,
        "release": name,
    }
    if clipped.sum() <= 0:
        logger.warning(
            "Every noisy count was <= 0; falling back to the uniform distribution over the domain."
        )
        clipped = np.ones(len(codes))
        meta["fallback"] = "uniform"
    ledger.record(
        name,
        noise_multiplier=noise_multiplier,
        sample_rate=1.0,
        steps=1,
        mechanism="gaussian",
        sensitivity=1.0,
        num_codes=len(codes),
    )
    return ControlCodeDistribution(fmt.columns, codes, clipped.tolist(), "dp", meta)


def uniform_distribution(
    fmt: ControlCodeFormat, domain: Mapping[str, Sequence[str]]
) -> ControlCodeDistribution:
    """Every code of the (public) domain equally likely: no privacy cost."""
    codes = _domain_codes(fmt, domain)
    return ControlCodeDistribution(fmt.columns, codes, [1.0] * len(codes), "uniform", {})


def public_distribution(
    fmt: ControlCodeFormat, codes: Sequence[Sequence[str]], probs: Sequence[float]
) -> ControlCodeDistribution:
    """A distribution the user declares public (e.g. from public statistics): no privacy cost."""
    return ControlCodeDistribution(fmt.columns, [tuple(c) for c in codes], list(probs), "public", {})


def exact_private_distribution(dataset, fmt: ControlCodeFormat) -> ControlCodeDistribution:
    """The exact private histogram. NOT private: for comparisons only; flagged in meta and warned about."""
    logger.warning(
        "control_code_distribution='exact' releases the EXACT private histogram of control codes: this is NOT "
        "differentially private and is not in the privacy ledger. Use 'dp' (default) or 'uniform'."
    )
    counts = private_counts(dataset, fmt)
    codes = sorted(counts)
    return ControlCodeDistribution(
        fmt.columns, codes, [counts[c] for c in codes], "exact", {"leaks_private_data": True}
    )


def allocate_prompts(
    distribution: ControlCodeDistribution, num_prompts: int, seed: int = 0
) -> list[tuple[str, ...]]:
    """`num_prompts` codes drawn i.i.d. from the distribution (a multinomial draw, deterministic in `seed`)."""
    if num_prompts <= 0:
        raise ValueError(f"num_prompts={num_prompts} must be > 0.")
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(distribution.codes), size=num_prompts, p=np.asarray(distribution.probs))
    return [distribution.codes[i] for i in idx]
