"""Stage evaluate: test perplexity of every finished model and of the public base models (epsilon 0) in the
paper's protocol, with each one's epsilon from its ledger -> results.json, results.md, results.png."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from hf_dpkd._io import atomic_write_text
from hf_dpkd.hub import DEFAULT_PRIVACY_UNIT
from hf_dpkd.pipeline.constants import METHOD_LABELS
from hf_dpkd.pipeline.loading import load_model_and_tokenizer
from hf_dpkd.pipeline.report import plot_results, results_markdown
from hf_dpkd.privacy.units import unit_name

if TYPE_CHECKING:
    from hf_dpkd.pipeline.context import RunContext


def run(ctx: RunContext) -> dict[str, Any]:
    from hf_dpkd.evaluation import perplexity

    c = ctx.config
    test_texts = list(ctx.data()["test"]["text"])
    rows = []
    models = dict(ctx.model_dirs())
    # The public base models never saw the private data (epsilon 0): the level below which a private
    # method shows that the private data helped.
    public = {f"public_{w}": ctx.base_path(w) for w in ("teacher", "student")}
    models.update({k: v for k, v in public.items() if (v / "config.json").is_file()})
    for name, path in models.items():
        model, tokenizer = load_model_and_tokenizer(path, base=ctx.base_of(name))
        ppl = perplexity(model, tokenizer, test_texts, window=min(128, c.data.max_length))
        ledger = None if name in public else ctx.ledger_for(path)
        eps = ledger.epsilon() if ledger and ledger.releases else (0.0 if name in public else math.inf)
        rows.append(
            {
                "method": name,
                "label": METHOD_LABELS.get(name, name),
                "epsilon": eps,
                "epsilon_is_upper_bound": not (ledger and ledger.approximate),
                "delta": ledger.delta if ledger else None,
                "privacy_unit": (ledger.privacy_unit or DEFAULT_PRIVACY_UNIT) if ledger else None,
                "test_perplexity": ppl["perplexity"],
                "token_weighted_perplexity": ppl["token_weighted_perplexity"],
                "num_parameters": sum(p.numel() for p in model.parameters()),
                "path": str(path),
            }
        )
    results = {
        "rows": rows,
        "config": c.to_dict(),
        "delta": ctx.delta(),
        "privacy_unit": unit_name(c.data.privacy_unit_column)
        if c.data.privacy_unit_column
        else DEFAULT_PRIVACY_UNIT,
        "num_privacy_units": ctx.num_privacy_units(),
    }
    atomic_write_text(ctx.run / "results.json", json.dumps(results, indent=2, default=str))
    atomic_write_text(ctx.run / "results.md", results_markdown(rows))
    plot_results(rows, ctx.run / "results.png")
    return {"methods": [r["method"] for r in rows]}
