"""Write an audit's results as audit.json (everything), audit.md (tables) and roc.png (atomic writes).

`results` is a dict with any of these sections, each the return value of the matching function:
"membership" (run_membership_inference), "memorization" (memorization_gap), "blocks" (per_block_mope),
"canaries" (canary_exposures), "empirical_epsilon" (one_run_audit / audit_epsilon), and "meta" (free-form
strings and numbers: model, data, claimed epsilon, ...).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from hf_dpkd._io import atomic_write_text
from hf_dpkd.audit.metrics import plot_roc

DISCLAIMER = (
    "An audit gives evidence and lower bounds: a high AUC, exposure or empirical epsilon shows leakage, "
    "but low numbers never certify privacy. The privacy guarantee is the DP accountant's upper bound."
)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj


def _fmt(x) -> str:
    if isinstance(x, bool) or x is None:
        return str(x)
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        return f"{x:.4f}" if abs(x) < 1e4 else f"{x:.3g}"
    return str(x)


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return lines + [""]


def render_markdown(results: dict) -> str:
    """The human-readable report: one table per section present in `results`."""
    out = ["# Privacy audit", "", f"> {DISCLAIMER}", ""]
    meta = results.get("meta")
    if meta:
        out += ["## Setup", ""] + _table(["key", "value"], [[k, v] for k, v in meta.items()])
    mia = results.get("membership")
    if mia:
        keys = [k for k in next(iter(mia.values())) if k.startswith("tpr@fpr=")]
        out += [
            "## Membership inference",
            "",
            "Score higher = more likely a training member; 0.5 AUC = chance.",
            "",
        ]
        out += _table(
            [
                "attack",
                "AUC",
                *[k.upper().replace("TPR@FPR=", "TPR@") for k in keys],
                "members",
                "non-members",
            ],
            [
                [a, r["auc"], *[r[k] for k in keys], r["num_members"], r["num_non_members"]]
                for a, r in mia.items()
            ],
        )
        notes = sorted({r["note"] for r in mia.values() if r.get("note")})
        out += [f"Note: {n}." for n in notes] + ([""] if notes else [])
    mem = results.get("memorization")
    if mem:
        out += [
            "## Memorization",
            "",
            f"Greedy continuation of prefix + {mem['prompt_tokens']} text tokens; exact-match fraction of the "
            f"first {mem['num_tokens']} generated tokens.",
            "",
        ]
        out += _table(
            ["member mean", "non-member mean", "gap", "members", "non-members"],
            [
                [
                    mem["member_mean"],
                    mem["non_member_mean"],
                    mem["gap"],
                    mem["num_members"],
                    mem["num_non_members"],
                ]
            ],
        )
    blocks = results.get("blocks")
    if blocks:
        out += ["## Per-block risk (MoPe, one block perturbed)", ""]
        out += _table(
            ["block", "module", "AUC", "member mean", "non-member mean"],
            [
                [b["block"], b["path"], b["auc"], b["member_mean"], b["non_member_mean"]]
                for b in blocks["blocks"]
            ],
        )
    can = results.get("canaries")
    if can:
        out += ["## Canary exposure", "", "exposure = log2(#candidates) - log2(rank of the secret).", ""]
        out += _table(
            ["repeats", "canaries", "mean", "min", "max"],
            [[k, v["count"], v["mean"], v["min"], v["max"]] for k, v in can["by_repeats"].items()],
        )
        out += _table(
            ["canary", "repeats", "method", "rank", "exposure", "max"],
            [
                [c["name"], c["repeats"], c["method"], c["rank"], c["exposure"], c["max_exposure"]]
                for c in can["canaries"]
            ],
        )
    eps = results.get("empirical_epsilon")
    if eps:
        out += ["## Empirical epsilon (one training run)", ""]
        out += _table(
            ["lower bound", "delta", "confidence", "canaries", "guesses", "correct"],
            [
                [
                    eps["epsilon_lower_bound"],
                    eps["delta"],
                    eps["confidence"],
                    eps["num_canaries"],
                    eps["num_guesses"],
                    eps["num_correct"],
                ]
            ],
        )
        claimed = (meta or {}).get("claimed_epsilon")
        if claimed is not None:
            verdict = "EXCEEDS" if eps["epsilon_lower_bound"] > float(claimed) else "does not exceed"
            out += [f"The lower bound {verdict} the claimed epsilon {claimed}.", ""]
    return "\n".join(out)


def write_audit_report(results: dict, output_dir: str | Path) -> dict[str, Path]:
    """Write audit.json, audit.md and (when membership results carry ROC curves) roc.png."""
    if not isinstance(results, dict) or not results:
        raise ValueError("results must be a non-empty dict of audit sections (e.g. {'membership': ...})")
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": atomic_write_text(out_dir / "audit.json", json.dumps(_jsonable(results), indent=2) + "\n"),
        "markdown": atomic_write_text(out_dir / "audit.md", render_markdown(results)),
    }
    curves = {a: r["roc"] for a, r in (results.get("membership") or {}).items() if "roc" in r}
    if curves:
        paths["roc"] = plot_roc(curves, out_dir / "roc.png")
    return paths
