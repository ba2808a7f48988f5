"""Write an audit's results as audit.json (everything), audit.md (tables) and roc.png (atomic writes).

`results` is a dict with any of these sections, each the return value of the matching function:
"membership" (run_membership_inference), "memorization" (memorization_gap), "blocks" (per_block_mope),
"canaries" (canary_exposures), "empirical_epsilon" (one_run_audit / audit_epsilon), "matching"
(record_balance / match_non_members), and "meta" (free-form strings and numbers: model, data, claimed
epsilon, ...). Every metric that has an interval is shown with it, and every section with a no-leak level
(a model that never saw the private data, on the same records) shows that level next to the model's.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from hf_dpkd._io import atomic_write_text
from hf_dpkd.audit.metrics import plot_roc
from hf_dpkd.audit.mia import membership_verdict
from hf_dpkd.reporting import markdown_table, number, with_interval

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


def _table(header: list[str], rows: list[list]) -> list[str]:
    return markdown_table(header, rows) + [""]


def _membership_section(mia: dict, model_label: str) -> list[str]:
    keys = [k for k in next(iter(mia.values())) if k.startswith("tpr@fpr=")]
    first = next(iter(mia.values()))
    conf = first.get("confidence")
    ci = f"{conf:.0%} bootstrap interval over records" if conf else "no interval"
    out = [
        "## Membership inference",
        "",
        f"Score higher = more likely a training member; each value is followed by its {ci} [low, high]. "
        "The no-leak rows score the same members and non-members with a model that never saw the private "
        "data: that level, not 0.5, is what the model is compared with.",
        "",
    ]
    rows = []
    for attack, r in mia.items():
        rows.append(
            [
                attack,
                model_label,
                with_interval(r["auc"], r.get("intervals", {}).get("auc")),
                *[with_interval(r[k], r.get("intervals", {}).get(k)) for k in keys],
                r["num_members"],
                r["num_non_members"],
            ]
        )
        base = r.get("no_leak")
        if base:
            rows.append(
                [
                    attack,
                    f"no-leak: {r['vs_no_leak']['no_leak_model']}",
                    with_interval(base["auc"], base.get("intervals", {}).get("auc")),
                    *[with_interval(base[k], base.get("intervals", {}).get(k)) for k in keys],
                    base["num_members"],
                    base["num_non_members"],
                ]
            )
    out += _table(
        [
            "attack",
            "model",
            "AUC",
            *[k.upper().replace("TPR@FPR=", "TPR@") for k in keys],
            "members",
            "non-members",
        ],
        rows,
    )
    notes = sorted({r["note"] for r in mia.values() if r.get("note")})
    out += [f"Note: {n}." for n in notes] + ([""] if notes else [])
    verdict = membership_verdict(mia)
    if verdict is None:
        out += [
            "No model that never saw the private data was scored, so these AUCs have no no-leak level: two "
            "samples of different difficulty give an AUC away from 0.5 without any leak.",
            "",
        ]
        return out
    level = verdict["per_attack_confidence"]
    out += ["### Verdict", "", f"**{verdict['summary']}.**", "", verdict["rule"], ""]
    out += _table(
        ["attack", f"AUC - no-leak AUC [{level:.2%} paired interval]", "leaks"],
        [
            [
                a,
                with_interval(r["vs_no_leak"]["difference"], r["vs_no_leak"]["interval"]),
                "**yes**" if r["vs_no_leak"]["leaks"] else "no",
            ]
            for a, r in mia.items()
            if "vs_no_leak" in r
        ],
    )
    return out


def _canary_section(can: dict) -> list[str]:
    out = ["## Canary exposure", "", "exposure = log2(#candidates) - log2(rank of the secret).", ""]
    no_leak = can.get("no_leak") or {}
    if no_leak:
        out += [
            f"No-leak level: a model that never saw a canary ranks its (uniformly drawn) secret uniformly, so "
            f"its exposure is about {no_leak['median_exposure']:g} bit (median) and exceeds "
            f"{no_leak['level']:.2f} bits with probability {(1 - no_leak['confidence']):g} / "
            f"{len(can['canaries'])}. {no_leak['rule'][0].upper()}{no_leak['rule'][1:]}.",
            "",
        ]
    measured = "model" in no_leak
    head = ["repeats", "canaries", "mean", "min", "max", "exposed"]
    out += _table(
        head + ([f"no-leak mean ({no_leak['model']})"] if measured else []),
        [
            [k, v["count"], v["mean"], v["min"], v["max"], v.get("exposed", "")]
            + ([v.get("no_leak_mean")] if measured else [])
            for k, v in can["by_repeats"].items()
        ],
    )
    rows = []
    for c in can["canaries"]:
        interval = c.get("exposure_interval")
        row = [c["name"], c["repeats"], c["method"], c["rank"], with_interval(c["exposure"], interval)]
        row += (
            [with_interval(c["exposure_empirical"], c["exposure_empirical_interval"])]
            if "exposure_empirical" in c
            else [""]
        )
        row += [c["max_exposure"], c.get("no_leak_p_value", ""), c.get("exposed", "")]
        rows.append(row + ([c.get("no_leak_exposure")] if measured else []))
    out += _table(
        [
            "canary",
            "repeats",
            "method",
            "rank",
            "exposure",
            "sampled estimate [95%]",
            "max",
            "no-leak p",
            "exposed",
        ]
        + (["no-leak exposure"] if measured else []),
        rows,
    )
    return out


def _epsilon_section(eps: dict, claimed) -> list[str]:
    out = [
        "## Empirical epsilon (one training run)",
        "",
        f"A lower bound at confidence {eps['confidence']:g}: a model that never saw the canaries scores 0 "
        f"(above 0 with probability at most {1 - eps['confidence']:.2g}) and guesses right half the time.",
        "",
    ]
    acc = eps.get("guess_accuracy")
    rows = [
        [
            "model",
            eps["epsilon_lower_bound"],
            eps["num_guesses"],
            eps["num_correct"],
            with_interval(acc, eps.get("guess_accuracy_interval")) if acc is not None else "",
        ]
    ]
    base = eps.get("no_leak")
    if base:
        rows.append(
            [
                "no-leak model",
                base["epsilon_lower_bound"],
                base["num_guesses"],
                base["num_correct"],
                with_interval(base["guess_accuracy"], base["guess_accuracy_interval"]),
            ]
        )
    out += [f"delta = {number(eps['delta'])}, {eps['num_canaries']} canaries.", ""]
    out += _table(["model", "lower bound", "guesses", "correct", "accuracy [exact interval]"], rows)
    if claimed is not None:
        verdict = "EXCEEDS" if eps["epsilon_lower_bound"] > float(claimed) else "does not exceed"
        out += [f"The lower bound {verdict} the claimed epsilon {claimed}.", ""]
    return out


def render_markdown(results: dict) -> str:
    """The human-readable report: one table per section present in `results`."""
    out = ["# Privacy audit", "", f"> {DISCLAIMER}", ""]
    meta = results.get("meta")
    if meta:
        out += ["## Setup", ""] + _table(["key", "value"], [[k, v] for k, v in meta.items()])
    balance = results.get("matching")
    if balance:
        out += [
            "## Members vs non-members",
            "",
            "How far apart the two samples are before any model looks at them (text length in characters; "
            "|standardized difference| < 0.1 is negligible; code distance 0 = same control-code mix).",
            "",
        ]
        out += _table(
            ["member mean length", "non-member mean length", "standardized difference", "code distance (TV)"],
            [
                [
                    balance["member_mean_length"],
                    balance["non_member_mean_length"],
                    balance["standardized_length_difference"],
                    balance["code_total_variation"],
                ]
            ],
        )
    mia = results.get("membership")
    if mia:
        out += _membership_section(mia, str((meta or {}).get("model", "model")))
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
                    with_interval(mem["gap"], mem.get("gap_interval")),
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
                [
                    b["block"],
                    b["path"],
                    with_interval(b["auc"], b.get("intervals", {}).get("auc")),
                    b["member_mean"],
                    b["non_member_mean"],
                ]
                for b in blocks["blocks"]
            ],
        )
    can = results.get("canaries")
    if can:
        out += _canary_section(can)
    eps = results.get("empirical_epsilon")
    if eps:
        out += _epsilon_section(eps, (meta or {}).get("claimed_epsilon"))
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
