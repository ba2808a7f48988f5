"""The distribution of control codes to generate, released with differential privacy.

The reference implementation of DistilDP reads the exact private histogram of control codes: a leak.
Here the default is the Gaussian mechanism on the counts (each example has exactly one code, so the L2
sensitivity under add/remove of one example is 1), recorded in the PrivacyLedger and composed with
the teacher's DP-SGD. `uniform` and a user-declared `public` distribution cost nothing; `exact` exists
for comparison only and is flagged as NOT private everywhere it goes.

The SET of codes is part of the release too: the histogram runs over a domain declared public (the
cross product of each field's public values), so a code seen only in the private data is not revealed
by its presence. A domain read off the private data is allowed, warned about, and recorded in the ledger
as a NON-private release (a value held by one record is revealed with certainty): every epsilon that
composes that ledger is infinite. The exact histogram is recorded the same way when given a ledger.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import uuid
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
Code = tuple[str, ...]


@dataclass
class ControlCodeDistribution:
    """Codes (tuples of values in `columns` order) with probabilities; `mode` says how it was obtained.

    ``records()`` gives the codes as dicts column -> value. `meta` holds how it was released
    (``leaks_private_data=True`` for the exact private histogram).
    """

    columns: list[str]
    codes: list[Code]
    probs: list[float]
    mode: str
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r} is not a distribution mode; use one of {MODES}.")
        self.columns = [str(c) for c in self.columns]
        if not self.columns:
            raise ValueError("columns=[]: a control-code distribution needs at least one control field.")
        if not self.codes:
            raise ValueError("codes=[]: a control-code distribution needs at least one code.")
        if len(self.codes) != len(self.probs):
            raise ValueError(
                f"{len(self.codes)} codes but {len(self.probs)} probabilities; give one per code."
            )
        codes = []
        for c in self.codes:
            if isinstance(c, Mapping):
                c = [c[col] for col in self.columns]
            if isinstance(c, str) or len(c) != len(self.columns):
                raise ValueError(f"code {c!r} does not have one value per control field {self.columns}.")
            codes.append(tuple(str(v) for v in c))
        if len(set(codes)) != len(codes):
            dup = next(c for c, n in Counter(codes).items() if n > 1)
            raise ValueError(f"code {dup} appears twice; merge its probabilities into one entry.")
        p = np.asarray(self.probs, dtype=float)
        if not np.isfinite(p).all() or np.any(p < 0) or p.sum() <= 0:
            raise ValueError(
                f"probs={list(self.probs)[:8]}...: probabilities must be finite, non-negative and not all zero."
            )
        self.codes = codes
        # normalise once: a saved and reloaded distribution keeps the same floats (and fingerprint)
        self.probs = (p / p.sum() if abs(p.sum() - 1.0) > 1e-9 else p).tolist()
        self.meta = dict(self.meta or {})

    @classmethod
    def from_records(
        cls,
        codes: Sequence[Mapping[str, Any]],
        probs: Sequence[float],
        mode: str,
        meta: dict[str, Any] | None = None,
    ) -> ControlCodeDistribution:
        """Build from codes given as dicts column -> value (columns taken from the first code)."""
        if not codes:
            raise ValueError("codes=[]: a control-code distribution needs at least one code.")
        return cls(list(codes[0]), list(codes), list(probs), mode, meta or {})

    @property
    def leaks_private_data(self) -> bool:
        return bool(self.meta.get("leaks_private_data", False))

    def records(self) -> list[dict[str, str]]:
        """The codes as dicts column -> value."""
        return [dict(zip(self.columns, c)) for c in self.codes]

    def fingerprint(self) -> str:
        """A hash of (columns, codes, probs): resumed generation checks it did not change."""
        return hashlib.sha256(json.dumps([self.columns, self.codes, self.probs]).encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {
            "columns": self.columns,
            "codes": [list(c) for c in self.codes],
            "probs": self.probs,
            "mode": self.mode,
            "meta": self.meta,
        }

    def save(self, path: str | Path) -> Path:
        """Write as JSON, atomically."""
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> ControlCodeDistribution:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(d["columns"], [tuple(c) for c in d["codes"]], d["probs"], d["mode"], d.get("meta", {}))


def _domain_codes(fmt: ControlCodeFormat, domain: Mapping[str, Sequence[Any]]) -> list[Code]:
    """The cross product of each field's values, in field order (values validated by the format)."""
    missing = [c for c in fmt.columns if c not in domain]
    if missing:
        raise ValueError(
            f"domain lacks control field(s) {missing}; give the public list of values of each of {fmt.columns}."
        )
    values = []
    for column in fmt.columns:
        vals = [str(v) for v in domain[column]]
        if not vals:
            raise ValueError(f"domain[{column!r}] is empty: every control field needs at least one value.")
        if len(set(vals)) != len(vals):
            raise ValueError(f"domain[{column!r}]={vals} repeats a value; list each value once.")
        values.append(vals)
    for column, vals in zip(fmt.columns, values):
        for v in vals:
            fmt.check_value(column, v)
    codes = [tuple(combo) for combo in itertools.product(*values)]
    return codes


#: Ledger name of the non-private release of a control-code domain read off the private data.
DOMAIN_RELEASE = "control_code_domain"
DOMAIN_REASON = "the set of control-code values was read off the private training data"
#: Ledger name of the non-private release of the exact private histogram.
EXACT_RELEASE = "control_code_histogram_exact"


def _data_domain(dataset, fmt: ControlCodeFormat) -> dict[str, list[str]]:
    message = (
        "The control-code domain (the set of possible values) is read off the private data and is NOT covered "
        "by the DP guarantee: it is recorded as a non-private release, so the ledger's epsilon is infinite. "
        "Declare it public with `domain=` (or ControlCodeFormat(domain=...))."
    )
    logger.warning(message)
    warnings.warn(message, UserWarning, stacklevel=3)
    return {c: sorted({str(v) for v in dataset[c]}) for c in fmt.columns}


def record_domain_release(ledger: PrivacyLedger, columns: Sequence[str], name: str = DOMAIN_RELEASE):
    """Record in `ledger` that the values of `columns` were read off the private data (NOT private)."""
    return ledger.record_non_private(name, reason=DOMAIN_REASON, columns=list(columns))


def _check_columns(dataset, fmt: ControlCodeFormat) -> None:
    names = list(getattr(dataset, "column_names", None) or dataset.keys())
    missing = [c for c in fmt.columns if c not in names]
    if missing:
        raise ValueError(f"The dataset lacks control field column(s) {missing} (it has {names}).")


def private_counts(dataset, fmt: ControlCodeFormat, unit_column: str | None = None) -> Counter:
    """Exact counts of each code in the private data (never released as such).

    With `unit_column` (user-level DP) each user's k rows count 1/k each: a user adds at most 1 in total,
    so the counts' L2 sensitivity to adding or removing a whole user is still 1."""
    _check_columns(dataset, fmt)
    columns = [dataset[c] for c in fmt.columns]
    codes = [tuple(str(v) for v in row) for row in zip(*columns)]
    if unit_column is None:
        return Counter(codes)
    from hf_dpkd.privacy.units import UnitIndex

    names = list(getattr(dataset, "column_names", None) or dataset.keys())
    if unit_column not in names:
        raise ValueError(
            f"privacy_unit_column={unit_column!r} is not a column of the private data (it has {names})."
        )
    index = UnitIndex.from_values(unit_column, dataset[unit_column])
    weight = 1.0 / index.rows_per_unit()[index.row_unit]
    out: Counter = Counter()
    for code, w in zip(codes, weight):
        out[code] += float(w)
    return out


def dp_control_code_distribution(
    dataset,
    fmt: ControlCodeFormat,
    noise_multiplier: float,
    ledger: PrivacyLedger,
    *,
    domain: Mapping[str, Sequence[str]] | None = None,
    seed: int | None = None,
    name: str = "control_code_histogram",
    privacy_unit_column: str | None = None,
) -> ControlCodeDistribution:
    """Gaussian-mechanism histogram of the codes over a public domain, recorded in `ledger` as `name`.

    Each count gets N(0, noise_multiplier^2) noise (L2 sensitivity 1: one example has one code), negative
    counts are clipped to 0 and the result renormalised (uniform if every noisy count is <= 0). The
    domain is `domain`, else `fmt.domain`, else read off the data: warned about, and recorded in `ledger`
    as the non-private release ``control_code_domain``, which makes the ledger's epsilon infinite.
    `seed` makes the noise reproducible: only for tests, since anyone knowing it can remove the noise.
    `privacy_unit_column` (user-level DP): each user's k rows are counted with weight 1/k (sensitivity 1
    per user), and the release names that unit in the ledger.
    """
    if not isinstance(noise_multiplier, int | float) or not noise_multiplier > 0:
        raise ValueError(f"noise_multiplier={noise_multiplier!r} must be > 0 for the DP histogram (e.g. 10).")
    if len(dataset) == 0:
        raise ValueError("The private dataset is empty: there is no histogram to release.")
    domain = domain if domain is not None else fmt.domain
    from_private = domain is None
    if from_private:
        _check_columns(dataset, fmt)
        domain = _data_domain(dataset, fmt)
    codes = _domain_codes(fmt, domain)
    counts = private_counts(dataset, fmt, privacy_unit_column)
    unknown = sorted(set(counts) - set(codes))
    if unknown:
        raise ValueError(
            f"{len(unknown)} code(s) of the data are outside the declared domain, e.g. {unknown[0]}; add their "
            "values to `domain` (the domain must list every value the data can hold)."
        )
    if seed is not None:
        logger.warning(
            "dp_control_code_distribution(seed=%s): the histogram noise is reproducible from the seed; anyone who "
            "knows it can remove the noise. Use seed=None outside tests.",
            seed,
        )
    rng = np.random.default_rng(seed)
    exact = np.array([counts.get(c, 0) for c in codes], dtype=float)
    noisy = exact + rng.normal(0.0, float(noise_multiplier), len(codes))
    clipped = np.clip(noisy, 0.0, None)
    meta: dict[str, Any] = {
        "noise_multiplier": float(noise_multiplier),
        "sensitivity": 1.0,
        "release": name,
        "domain_from_private_data": from_private,
        "seeded_noise": seed is not None,
        "noisy_counts": noisy.tolist(),  # the DP release itself; probs are post-processing of it
    }
    unit: dict[str, Any] = {}
    if privacy_unit_column is not None:
        from hf_dpkd.privacy.units import unit_name

        unit = {
            "privacy_unit": unit_name(privacy_unit_column),
            "user_bounding": "each user's k rows counted with weight 1/k (a user adds at most 1 to the counts)",
        }
        meta.update(unit)
    if clipped.sum() <= 0:
        logger.warning(
            "Every noisy control-code count was <= 0 (noise_multiplier=%s over %d codes); falling back to the "
            "uniform distribution over the domain.",
            noise_multiplier,
            len(codes),
        )
        clipped = np.ones(len(codes))
        meta["fallback"] = "uniform"
    ledger.record(
        name,
        noise_multiplier=float(noise_multiplier),
        sample_rate=1.0,
        steps=1,
        mechanism="gaussian",
        sensitivity=1.0,
        num_codes=len(codes),
        domain_from_private_data=from_private,
        **unit,
        # fresh noise: each call is a distinct release, even with the same settings (see PrivacyLedger.compose)
        **({"noise_draw": uuid.uuid4().hex} if seed is None else {"noise_seed": seed}),
    )
    if from_private:
        meta["domain_release"] = record_domain_release(ledger, fmt.columns).name
    return ControlCodeDistribution(fmt.columns, codes, clipped.tolist(), "dp", meta)


def uniform_distribution(
    fmt: ControlCodeFormat,
    domain: Mapping[str, Sequence[str]] | None = None,
    *,
    dataset=None,
    ledger: PrivacyLedger | None = None,
) -> ControlCodeDistribution:
    """Every code of the public domain (`domain` or `fmt.domain`) equally likely: no privacy cost.

    Without a public domain, `dataset` (the private data) may supply the values, with `ledger`: that is
    NOT private (a value held by one record is revealed), so it is warned about and recorded in `ledger`
    as the non-private release ``control_code_domain`` (the ledger's epsilon becomes infinite). With a
    public domain nothing is recorded.
    """
    domain = domain if domain is not None else fmt.domain
    meta: dict[str, Any] = {}
    if domain is None:
        if dataset is None:
            raise ValueError(
                "uniform_distribution needs the public domain: pass domain={column: [values]} or "
                "ControlCodeFormat(domain=...)."
            )
        if ledger is None:
            raise ValueError(
                "uniform_distribution(dataset=...) reads the domain off the private data, which is NOT private: "
                "pass ledger= to record that release (its epsilon becomes infinite), or declare the domain public "
                "with domain={column: [values]}."
            )
        _check_columns(dataset, fmt)
        domain = _data_domain(dataset, fmt)
        codes = _domain_codes(fmt, domain)
        meta = {
            "domain_from_private_data": True,
            "domain_release": record_domain_release(ledger, fmt.columns).name,
        }
    else:
        codes = _domain_codes(fmt, domain)
    return ControlCodeDistribution(fmt.columns, codes, [1.0] * len(codes), "uniform", meta)


def public_distribution(
    fmt: ControlCodeFormat,
    codes: Sequence[Sequence[str] | Mapping[str, str]],
    probs: Sequence[float],
) -> ControlCodeDistribution:
    """A distribution the user declares public (e.g. from published statistics): no privacy cost.

    Codes are tuples in field order or dicts column -> value. Declaring private frequencies public
    is the user's responsibility; the card says the codes came from a declared-public distribution.
    """
    checked = []
    for c in codes:
        record = dict(c) if isinstance(c, Mapping) else fmt.record_of(c)
        checked.append(fmt.code_of(record))
    return ControlCodeDistribution(fmt.columns, checked, list(probs), "public", {"declared_public": True})


def exact_private_distribution(
    dataset, fmt: ControlCodeFormat, *, ledger: PrivacyLedger | None = None
) -> ControlCodeDistribution:
    """The exact private histogram. NOT private: for comparisons only; flagged in meta and warned about.

    With `ledger`, the release is recorded there as the non-private ``control_code_histogram_exact``:
    the ledger's epsilon, and every epsilon composing it, becomes infinite.
    """
    logger.warning(
        "control-code distribution 'exact' releases the EXACT private histogram of control codes: this is NOT "
        "differentially private%s. Use 'dp' (default), 'uniform' or 'public'.",
        " (recorded in the privacy ledger as a non-private release: epsilon is infinite)"
        if ledger is not None
        else " and is not in the privacy ledger",
    )
    counts = private_counts(dataset, fmt)
    if not counts:
        raise ValueError("The private dataset is empty: there is no histogram to read.")
    codes = sorted(counts)
    for code in codes:
        fmt.code_of(fmt.record_of(code))
    meta: dict[str, Any] = {"leaks_private_data": True}
    if ledger is not None:
        meta["release"] = ledger.record_non_private(
            EXACT_RELEASE,
            reason="the exact histogram of control codes of the private training data was released without noise",
            num_codes=len(codes),
        ).name
    return ControlCodeDistribution(fmt.columns, codes, [counts[c] for c in codes], "exact", meta)


def allocate_prompts(distribution: ControlCodeDistribution, num_prompts: int, seed: int = 0) -> list[Code]:
    """`num_prompts` codes drawn i.i.d. from the distribution: one multinomial draw, deterministic in `seed`.

    A multinomial (rather than largest-remainder) allocation keeps shards independent: the union of
    shards drawn with their own seeds is again a multinomial sample of the distribution.
    """
    if not isinstance(num_prompts, int) or num_prompts <= 0:
        raise ValueError(f"num_prompts={num_prompts!r} must be an int > 0.")
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(distribution.codes), size=num_prompts, p=np.asarray(distribution.probs))
    return [distribution.codes[i] for i in idx]
