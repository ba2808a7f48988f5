"""The run's reports: results.md and results.png (evaluate stage), audit/audit.md and the console's audit
lines (audit stage). Each model's own audit/<model>/audit.md is rendered by hf_dpkd.audit.report, the cards by
hf_dpkd.hub."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from hf_dpkd.reporting import (
    epsilon_cell,
    epsilon_number,
    markdown_table,
    number,
    thousands,
    with_interval,
)


def ci_text(value: float, interval: list[float], digits: int = 3) -> str:
    """A value with its interval at `digits` decimals, e.g. '0.650 [0.611, 0.688]' (the console's audit lines)."""
    return with_interval(value, interval, digits)


def audit_summary_lines(summary: dict[str, Any]) -> list[str]:
    """One line per audited model of audit.json's summary: the verdict, then its loss-attack AUC with the 95%
    interval next to the no-leak model's on the same records (the level to compare with, not 0.5)."""
    lines = []
    for name, row in summary.get("models", {}).items():
        base = summary.get("no_leak", {}).get(row.get("no_leak_model", ""), {})
        attack = "loss" if "loss" in row.get("auc", {}) else next(iter(row.get("auc", {})), None)
        text = f"audit {name}: {row.get('verdict', 'no verdict')}"
        if attack is not None and attack in base.get("auc", {}):
            text += (
                f"; {attack} AUC {ci_text(row['auc'][attack], row['auc_interval'][attack])}"
                f" vs no-leak {row['no_leak_model']} {ci_text(base['auc'][attack], base['auc_interval'][attack])}"
            )
        lines.append(text)
    return lines


def audit_markdown(summary: dict[str, Any]) -> str:
    """One row per audited model and per no-leak model (a public base scored on the same records): epsilon,
    MIA AUC per attack with its interval, the verdict, memorization gap, canary exposure."""
    models = summary["models"]
    if not models:
        return "# Privacy audit\n\nNo model audited.\n"
    no_leak = summary.get("no_leak", {})
    attacks = sorted({a for m in [*models.values(), *no_leak.values()] for a in m["auc"]})
    repeats = sorted({r for m in models.values() for r in m["canary_exposure_by_repeats"]}, key=float)
    conf = summary.get("confidence", 0.95)
    head = [
        "model",
        "epsilon",
        *[f"AUC {a}" for a in attacks],
        "verdict (vs no-leak)",
        "memorization gap",
        *[f"exposure x{r}" for r in repeats],
    ]
    balance = summary.get("matching") or {}
    lines = [
        "# Privacy audit",
        "",
        f"{summary['num_members']} members (private training records) vs {summary['num_non_members']} non-members "
        "(held-out test records matched to the members on control code and length). Each AUC is followed by its "
        f"{conf:.0%} bootstrap interval over records. The no-leak rows are the public base models, which never saw "
        "the private data, scored with the same attacks on the same records: a model is compared with its base, "
        "not with 0.5. Exposure in bits (max log2 #candidates). An audit gives evidence and lower bounds; it "
        "never certifies privacy (see docs/auditing.md).",
        "",
    ]
    if balance:
        lines += [
            f"Members vs non-members: mean length {balance['member_mean_length']:.1f} vs "
            f"{balance['non_member_mean_length']:.1f} characters (standardized difference "
            f"{balance['standardized_length_difference']:+.3f}), control-code distance (total variation) "
            f"{balance['code_total_variation']:.3f}.",
            "",
        ]

    def auc_cells(m: dict[str, Any]) -> list[str]:
        return [ci_text(m["auc"][a], m["auc_interval"][a]) if a in m["auc"] else "" for a in attacks]

    rows = []
    for name, m in models.items():
        verdict = "LEAKS (" + ", ".join(m["flagged_attacks"]) + ")" if m.get("leaks") else "no leak detected"
        cells = [
            name,
            epsilon_number(m["epsilon"]),
            *auc_cells(m),
            f"{verdict} vs {m.get('no_leak_model', '?')}",
            with_interval(m["memorization_gap"], m.get("memorization_gap_interval"), 3),
        ]
        cells += [number(m["canary_exposure_by_repeats"].get(r, float("nan")), 2) for r in repeats]
        rows.append(cells)
    for name, m in no_leak.items():
        rows.append([f"{name} (no-leak)", "public", *auc_cells(m), "", ""] + [""] * len(repeats))
    lines += markdown_table(head, rows)
    lines += ["", f"Verdict rule: {summary.get('rule', '')}"]
    levels = {m.get("canary_no_leak_level") for m in models.values()} - {None}
    if levels:
        lines += [
            "",
            f"A canary is exposed above the no-leak level when a model that never saw it would rank its secret as "
            f"high with probability at most 0.05 / #canaries: an exact exposure above {max(levels):.2f} bits, an "
            "estimated one judged by the pessimistic end of its sampled fraction's interval (a model that never "
            "saw a canary gets 1 bit in the median). Exposed canaries: "
            + ", ".join(f"{n} {m.get('canaries_exposed')}" for n, m in models.items())
            + ".",
        ]
    return "\n".join(lines) + "\n"


def results_markdown(rows: list[dict[str, Any]]) -> str:
    """results.md: one row per method, its epsilon (marked when the GDP accountant only approximates it), test
    perplexity and parameter count."""
    cells = []
    for r in rows:
        eps = epsilon_cell(r["epsilon"])
        if math.isfinite(r["epsilon"]) and not r.get("epsilon_is_upper_bound", True):
            eps = f"≈{eps} (GDP approximation)"
        cells.append([r["label"], eps, number(r["test_perplexity"], 2), thousands(r["num_parameters"])])
    head = ["Method", "epsilon", "Test perplexity", "Parameters"]
    return "\n".join(markdown_table(head, cells, align="lrrr")) + "\n"


def plot_results(rows: list[dict[str, Any]], path: Path) -> None:
    """Bar chart of test perplexity per method, epsilon in the labels."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4))
    ax = fig.add_subplot(1, 1, 1)
    labels = [f"{r['method']}\n(eps={epsilon_number(r['epsilon'])})" for r in rows]
    ax.bar(range(len(rows)), [r["test_perplexity"] for r in rows], color="tab:blue")
    ax.set_xticks(range(len(rows)), labels, fontsize=7)
    ax.set_ylabel("test perplexity (lower is better)")
    ax.set_title("DistilDP and baselines")
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    from hf_dpkd._io import atomic_write_bytes

    atomic_write_bytes(path, buf.getvalue())
