"""Privacy accounting: epsilon of a composition, noise calibration, and the PrivacyLedger.

Every differentially private release computed from the private corpus (the control-code histogram,
DP-SGD of the teacher, DP-SGD of a DPKD student, ...) is one entry of a :class:`PrivacyLedger`.
The ledger composes all entries with one accountant, so the epsilon it reports is the total cost of
everything the run released. Epsilon is always recomputed from the recorded (noise, rate, steps);
it is never copied from a target.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hf_dpkd._io import atomic_write_text

ACCOUNTANTS = ("prv", "rdp", "gdp")
#: Mechanism name of fixed-size uniform subsampling (``poisson_sampling=False``).
UNIFORM = "uniform_subsampled_gaussian"
LEDGER_FILENAME = "privacy_ledger.json"
#: Bisection stops once the calibrated epsilon is within this relative distance below the target.
CALIBRATION_RTOL = 1e-3
_MAX_NOISE_MULTIPLIER = 1e4


@dataclass
class Release:
    """One DP release over the private data: a (Poisson-subsampled) Gaussian mechanism run `steps` times.

    A plain Gaussian mechanism (e.g. the control-code histogram) has ``sample_rate=1`` and ``steps=1``;
    its ``noise_multiplier`` is the noise std divided by the L2 sensitivity.
    """

    name: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    mechanism: str = "subsampled_gaussian"
    meta: dict[str, Any] = field(default_factory=dict)

    def history_entry(self) -> tuple:
        entry = (float(self.noise_multiplier), float(self.sample_rate), int(self.steps))
        # Fixed-size (non-Poisson) subsampling is a different mechanism; only GDP accounts it.
        return entry + (UNIFORM,) if self.mechanism == UNIFORM else entry


def _check_accountant(accountant: str) -> None:
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant={accountant!r} is not supported; use one of {', '.join(ACCOUNTANTS)}.")


def _check_delta(delta: float) -> None:
    if not (0.0 < delta < 1.0):
        raise ValueError(f"delta={delta!r} must lie strictly between 0 and 1 (e.g. target_delta=1e-6).")


def _gdp_epsilon(history: list[tuple], delta: float) -> float:
    """mu-GDP composition: mu adds in quadrature; subsampled steps use Opacus' CLT mu."""
    from opacus.accountants.analysis import gdp

    mu_sq = 0.0
    for sigma, q, steps, *mech in history:
        if steps == 0:
            continue
        if mech and mech[0] == UNIFORM:
            mu = gdp.compute_mu_uniform(steps=steps, noise_multiplier=sigma, sample_rate=q)
        elif q >= 1.0:
            mu = math.sqrt(steps) / sigma  # exact for the (unsubsampled) Gaussian mechanism
        else:
            mu = gdp.compute_mu_poisson(steps=steps, noise_multiplier=sigma, sample_rate=q)
        mu_sq += mu * mu
    if mu_sq == 0.0:
        return 0.0
    return float(gdp.eps_from_mu(mu=math.sqrt(mu_sq), delta=delta))


def compute_epsilon(history: list[tuple], delta: float, accountant: str = "prv") -> float:
    """Epsilon at `delta` of the composition of `history` entries (noise_multiplier, sample_rate, steps).

    An entry may carry a 4th element, the mechanism name ``UNIFORM`` for fixed-size subsampling.
    """
    _check_accountant(accountant)
    _check_delta(delta)
    history = [(float(h[0]), float(h[1]), int(h[2]), *h[3:]) for h in history if int(h[2]) > 0]
    if not history:
        return 0.0
    if accountant != "gdp" and any(len(h) > 3 and h[3] == UNIFORM for h in history):
        raise ValueError(
            "poisson_sampling=False (fixed-size uniform subsampling) is only accounted by accountant='gdp'; "
            "set poisson_sampling=True (recommended) or accountant='gdp'."
        )
    for sigma, q, *_ in history:
        if sigma <= 0:
            return math.inf
        if not 0 < q <= 1:
            raise ValueError(f"sample_rate={q!r} must lie in (0, 1].")
    if accountant == "gdp":
        return _gdp_epsilon(history, delta)
    if accountant == "rdp":
        from opacus.accountants import RDPAccountant

        acc = RDPAccountant()
    else:
        from opacus.accountants import PRVAccountant

        acc = PRVAccountant()
    acc.history = [h[:3] for h in history]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(acc.get_epsilon(delta=delta))


def calibrate_noise_multiplier(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "prv",
    prior_history: list[tuple] | tuple = (),
    mechanism: str = "subsampled_gaussian",
) -> float:
    """Smallest noise multiplier (up to CALIBRATION_RTOL) such that prior releases plus `steps` of
    Poisson-subsampled Gaussian at `sample_rate` compose to at most `target_epsilon` at `delta`."""
    if target_epsilon <= 0:
        raise ValueError(f"target_epsilon={target_epsilon!r} must be > 0.")
    if steps <= 0:
        raise ValueError(f"steps={steps!r} must be > 0 to calibrate noise.")
    prior = list(prior_history)
    prior_eps = compute_epsilon(prior, delta, accountant) if prior else 0.0
    if prior_eps >= target_epsilon:
        raise ValueError(
            f"The privacy ledger already spends epsilon={prior_eps:.4g} >= target_epsilon={target_epsilon}; "
            "raise target_epsilon (it is the total budget of the ledger) or start from a fresh ledger."
        )

    def eps(sigma: float) -> float:
        entry = (sigma, sample_rate, steps) + ((UNIFORM,) if mechanism == UNIFORM else ())
        return compute_epsilon(prior + [entry], delta, accountant)

    lo, hi = 0.0, 1.0
    while eps(hi) > target_epsilon:
        lo, hi = hi, hi * 2
        if hi > _MAX_NOISE_MULTIPLIER:
            raise ValueError(
                f"target_epsilon={target_epsilon} is unreachable with sample_rate={sample_rate:.4g} over "
                f"{steps} steps; raise target_epsilon, or train fewer steps / with a smaller batch."
            )
    while True:
        e_hi = eps(hi)
        if target_epsilon - e_hi <= CALIBRATION_RTOL * target_epsilon or hi - lo < 1e-6:
            return hi
        mid = (lo + hi) / 2
        if eps(mid) > target_epsilon:
            lo = mid
        else:
            hi = mid


def default_delta(num_examples: int) -> float:
    """Default delta for `num_examples` privacy units: N^-1.1, strictly below 1/N as DP requires."""
    if num_examples <= 1:
        raise ValueError(f"Cannot choose a default target_delta for a dataset of {num_examples} examples.")
    return float(num_examples) ** -1.1


class PrivacyLedger:
    """The composed privacy cost of every DP release of one run over one private dataset.

    Saved as JSON (``privacy_ledger.json``) next to each artifact and reloaded on resume, so later
    stages add to the same budget. `delta` is the delta at which the total epsilon is reported.
    """

    def __init__(
        self, accountant: str = "prv", delta: float | None = None, releases: list[Release] | None = None
    ):
        _check_accountant(accountant)
        if delta is not None:
            _check_delta(delta)
        self.accountant = accountant
        self.delta = delta
        self.releases: list[Release] = list(releases or [])

    # -- recording -------------------------------------------------------------------------------
    def record(
        self,
        name: str,
        noise_multiplier: float,
        sample_rate: float,
        steps: int = 1,
        mechanism: str = "subsampled_gaussian",
        **meta: Any,
    ) -> Release:
        """Add a release, or replace the one with the same name (a resumed or continued stage)."""
        release = Release(
            name, float(noise_multiplier), float(sample_rate), int(steps), mechanism, dict(meta)
        )
        for i, existing in enumerate(self.releases):
            if existing.name == name:
                self.releases[i] = release
                return release
        self.releases.append(release)
        return release

    def compose(self, other: PrivacyLedger) -> PrivacyLedger:
        """A ledger with the releases of both: the cost of using artifacts protected by either one.

        A release found in both (every field equal, as when a teacher's ledger was copied to the synthetic
        data it generated) is one release, counted once; any other release is added, renamed with a suffix
        if its name is taken. Releases with fresh noise carry a draw id, so two draws never look equal;
        DP-SGD releases are equal only when seed, settings and data size are, i.e. the same training run.
        """
        out = PrivacyLedger(self.accountant, self.delta, [Release(**asdict(r)) for r in self.releases])
        seen = [asdict(r) for r in self.releases]
        for r in other.releases:
            if asdict(r) in seen:
                continue
            name, k = r.name, 2
            while out.get(name) is not None:
                name, k = f"{r.name}#{k}", k + 1
            out.releases.append(Release(**{**asdict(r), "name": name}))
        return out

    def get(self, name: str) -> Release | None:
        return next((r for r in self.releases if r.name == name), None)

    def remove(self, name: str) -> None:
        self.releases = [r for r in self.releases if r.name != name]

    # -- reporting -------------------------------------------------------------------------------
    def history(self, exclude: str | None = None) -> list[tuple]:
        return [r.history_entry() for r in self.releases if r.name != exclude]

    def epsilon(self, delta: float | None = None) -> float:
        """Total epsilon of all releases at `delta` (default: the ledger's delta)."""
        delta = self.delta if delta is None else delta
        if delta is None:
            raise ValueError("The ledger has no delta; pass delta= or set ledger.delta.")
        return compute_epsilon(self.history(), delta, self.accountant)

    def report(self) -> dict[str, Any]:
        return {
            "epsilon": self.epsilon() if self.delta is not None else None,
            "delta": self.delta,
            "accountant": self.accountant,
            "releases": [asdict(r) for r in self.releases],
        }

    # -- persistence -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "accountant": self.accountant,
            "delta": self.delta,
            "releases": [asdict(r) for r in self.releases],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrivacyLedger:
        return cls(
            accountant=data.get("accountant", "prv"),
            delta=data.get("delta"),
            releases=[Release(**r) for r in data.get("releases", [])],
        )

    def save(self, path: str | Path) -> Path:
        """Write atomically; a directory gets ``privacy_ledger.json`` inside it."""
        path = Path(path)
        if path.is_dir() or path.suffix != ".json":
            path = path / LEDGER_FILENAME
        payload = self.to_dict()
        if self.delta is not None and self.releases:
            payload["epsilon"] = self.epsilon()
        atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> PrivacyLedger:
        path = Path(path)
        if path.is_dir():
            path = path / LEDGER_FILENAME
        if not path.is_file():
            raise FileNotFoundError(
                f"No privacy ledger at {str(path)!r}: give a folder written by DPTrainer or by the pipeline's DP "
                f"stages (they hold {LEDGER_FILENAME}), or the path of that file."
            )
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))

    @classmethod
    def load_or_new(
        cls, path: str | Path | None, accountant: str = "prv", delta: float | None = None
    ) -> PrivacyLedger:
        if path is not None:
            p = Path(path)
            if (p / LEDGER_FILENAME).is_file() or (p.suffix == ".json" and p.is_file()):
                return cls.load(p)
        return cls(accountant=accountant, delta=delta)

    def __repr__(self) -> str:
        names = ", ".join(r.name for r in self.releases)
        return f"PrivacyLedger(accountant={self.accountant!r}, delta={self.delta}, releases=[{names}])"
