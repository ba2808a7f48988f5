"""Stage histogram: the distribution of control codes to generate from, released with DP (the run's first
ledger entry), uniform over a public domain, or exact (a non-private release, epsilon infinite)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from datasets import Dataset

from hf_dpkd.privacy.accounting import PrivacyLedger

if TYPE_CHECKING:
    from hf_dpkd.pipeline.context import RunContext

logger = logging.getLogger(__name__)


def run(ctx: RunContext) -> dict[str, Any]:
    from hf_dpkd.privacy import histogram

    c = ctx.config
    mode = c.data.control_code_distribution
    ledger = PrivacyLedger(accountant=c.pipeline.accountant, delta=ctx.delta())
    train = ctx.data()["train"]
    # Every mode: a domain not declared public is read off the data and recorded as NOT private.
    domain, domain_release = _code_domain(ctx, train, ledger)
    if mode == "dp":
        dist = histogram.dp_control_code_distribution(
            train,
            ctx.fmt(),
            c.data.histogram_noise_multiplier,
            ledger,
            domain=domain,
            seed=None,  # fresh noise: a seed from the recipe would make the released noise removable
            privacy_unit_column=c.data.privacy_unit_column,
        )
    elif mode == "uniform":
        dist = histogram.uniform_distribution(ctx.fmt(), domain)  # free over a public domain
    else:
        print(
            "WARNING: --control_code_distribution exact releases the EXACT private control-code histogram: "
            "NOT differentially private; it is recorded in the privacy ledger, so every epsilon that depends "
            "on it (teacher, synthetic data, students trained on it) is infinite.",
            flush=True,
        )
        dist = histogram.exact_private_distribution(train, ctx.fmt(), ledger=ledger)
    if domain_release is not None:
        dist.meta.update(domain_from_private_data=True, domain_release=domain_release)
        histogram_release = ledger.get(dist.meta.get("release", ""))
        if mode == "dp" and histogram_release is not None:
            histogram_release.meta["domain_from_private_data"] = True
    out = ctx.run / "histogram"
    out.mkdir(parents=True, exist_ok=True)
    dist.save(out / "control_codes.json")
    ledger.save(out)
    return {
        "mode": mode,
        "epsilon_so_far": ledger.epsilon() if ledger.releases else 0.0,
        "non_private_releases": [r.name for r in ledger.non_private_releases],
    }


def _code_domain(
    ctx: RunContext, dataset: Dataset, ledger: PrivacyLedger
) -> tuple[dict[str, list[str]], str | None]:
    """The domain of every control column, and the name of the non-private release when some were read off.

    Declared columns (info's ``domain``) must hold every value of the training data. A column without a
    declared domain is read off the private data: a value held by one record is revealed with certainty,
    so that is recorded in `ledger` as a NON-private release and the run's epsilon becomes infinite.
    """
    from hf_dpkd.privacy.histogram import record_domain_release

    info = ctx.info()
    declared, source = info.get("domain") or {}, info.get("domain_source") or {}
    domain: dict[str, list[str]] = {}
    missing = []
    for col in ctx.fmt().columns:
        if col not in declared:
            missing.append(col)
            continue
        domain[col] = [str(v) for v in declared[col]]
        outside = sorted({str(v) for v in dataset[col]} - set(domain[col]))
        if outside:
            where = (
                "--control_domain" if source.get(col) == "--control_domain" else "the dataset's public domain"
            )
            raise ValueError(
                f"{len(outside)} value(s) of control column {col!r} in the training data are outside its "
                f"declared domain ({where}), e.g. {outside[0]!r}: pass --control_domain listing every value the "
                "column can take (a JSON file {column: [values]} or 'column=v1|v2')."
            )
    if not missing:
        return domain, None
    message = (
        f"The control-code values of {missing} are read off the PRIVATE training data: a value held by one "
        "record is revealed with certainty. This is recorded in the privacy ledger as a non-private release: "
        "the run's epsilon (teacher, synthetic data and students built on them) is INFINITE. Pass "
        "--control_domain (a JSON file {column: [values]} or 'column=v1|v2;column2=a|b') declaring the public "
        "values to fix it."
    )
    logger.warning(message)
    print(f"WARNING: {message}", flush=True)
    for col in missing:
        domain[col] = sorted({str(v) for v in dataset[col]})
    return domain, record_domain_release(ledger, missing).name
