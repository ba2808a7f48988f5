"""The privacy statement of a card: its markdown section and its machine-readable YAML metadata.

The markdown is rendered from ``templates/privacy_statement.md`` (package data) with Jinja's default
settings, as ``huggingface_hub``'s ``ModelCard.from_template`` renders the cards that embed it.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import jinja2

from hf_dpkd.privacy.accounting import PrivacyLedger
from hf_dpkd.reporting import markdown_table, significant

#: The YAML metadata key of the cards that carries the machine-readable guarantee.
CARD_PRIVACY_KEY = "differential_privacy"
#: What one protected record is when nothing says otherwise (row-level DP).
DEFAULT_PRIVACY_UNIT = "one training example (one text)"

_ACCOUNTANT_NAMES = {
    "prv": "PRV (privacy random variables, Gopi, Lee & Wutschitz 2021; Opacus implementation)",
    "rdp": "RDP (Renyi differential privacy, Mironov 2017; Opacus implementation)",
    "gdp": "GDP (Gaussian differential privacy with the central-limit approximation for subsampled steps, "
    "Dong, Roth & Su 2019; an approximation, not an upper bound)",
}


def template(name: str) -> str:
    """The text of the card template `name` shipped in ``hf_dpkd/hub/templates/``."""
    return resources.files("hf_dpkd.hub").joinpath("templates", name).read_text(encoding="utf-8")


def _ledger_epsilon(ledger: PrivacyLedger) -> float:
    if ledger.delta is None:
        raise ValueError(
            "ledger.delta is None: a guarantee needs the delta at which epsilon is reported; "
            "create the ledger with PrivacyLedger(delta=...) (e.g. default_delta(num_examples))."
        )
    return ledger.epsilon()


def _releases_table(ledger: PrivacyLedger) -> str:
    """One row per release composed into the guarantee: what the accountant was given, and its details."""
    rows = [
        [
            r.name,
            r.mechanism,
            significant(r.noise_multiplier, 6),
            significant(r.sample_rate, 6),
            str(r.steps),
            ", ".join(f"{key}={value!s}" for key, value in sorted(r.meta.items(), key=lambda kv: kv[0])),
        ]
        for r in ledger.releases
    ]
    head = ["release", "mechanism", "noise multiplier σ", "sample rate q", "steps", "details"]
    return "\n".join(markdown_table(head, rows))


def privacy_metadata(ledger: PrivacyLedger | None, *, privacy_unit: str) -> dict[str, Any]:
    """The machine-readable guarantee stored under :data:`CARD_PRIVACY_KEY` in a card's YAML metadata."""
    if ledger is None:
        return {"epsilon": None, "delta": None, "guarantee": "none: not differentially private"}
    return {
        "epsilon": _ledger_epsilon(ledger),
        "delta": ledger.delta,
        "epsilon_is_upper_bound": not ledger.approximate,
        "non_private_releases": [r.name for r in ledger.non_private_releases],
        "accountant": ledger.accountant,
        "privacy_unit": privacy_unit,
        "releases": [r.name for r in ledger.releases],
    }


def privacy_statement(ledger: PrivacyLedger | None, *, privacy_unit: str = DEFAULT_PRIVACY_UNIT) -> str:
    """Markdown stating the (epsilon, delta) guarantee of `ledger`, its releases, and what it does not cover.

    Epsilon is recomputed by ``ledger.epsilon()`` from the recorded (noise, rate, steps), never copied
    from a target. ``ledger=None`` yields a loud "NOT differentially private" statement.
    """
    fields: dict[str, Any] = {"ledger": ledger}
    if ledger is not None:
        if not privacy_unit or not privacy_unit.strip():
            raise ValueError(f"privacy_unit={privacy_unit!r} must name what one protected record is.")
        fields.update(
            epsilon=_ledger_epsilon(ledger),
            accountant=_ACCOUNTANT_NAMES.get(ledger.accountant, ledger.accountant),
            privacy_unit=privacy_unit,
            releases_table=_releases_table(ledger),
        )
    return jinja2.Template(template("privacy_statement.md")).render(**fields)
