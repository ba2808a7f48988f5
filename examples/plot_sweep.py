"""Plot test perplexity against epsilon from the run directories of an epsilon sweep.

    python examples/plot_sweep.py runs/sweep      # reads runs/sweep/eps_*/results.json

Each run directory holds a results.json written by `examples/run_dpkd.py` (one draw, or `--repeats N`
draws: mean and standard deviation). Writes runs/sweep/results.png (log-x, one line per DP method, error
bars = standard deviation over the draws; models trained without DP, non-private or public-only, as
dashed horizontal lines) and runs/sweep/results.md.
"""

from __future__ import annotations

import io
import json
import math
import sys
from pathlib import Path


def load_sweep(
    root: Path,
) -> tuple[dict[str, list[tuple[float, float, float]]], dict[str, tuple[float, float, str]]]:
    """(curves, references): method -> [(epsilon, mean test perplexity, std)] sorted by epsilon for the DP
    methods, and method -> (mean, std, kind) for the rows without DP training (epsilon inf: non-private;
    epsilon 0: a public base model that never saw the private data), which do not depend on epsilon."""
    curves: dict[str, list[tuple[float, float, float]]] = {}
    references: dict[str, tuple[float, float, str]] = {}
    for results in sorted(root.glob("eps_*/results.json")):
        for row in json.loads(results.read_text())["rows"]:
            mean = row.get("test_perplexity_mean", row.get("test_perplexity"))
            std = row.get("test_perplexity_std", 0.0)
            if not math.isfinite(row["epsilon"]) or row["epsilon"] == 0:
                kind = "non-private" if not math.isfinite(row["epsilon"]) else "no private data"
                references.setdefault(row["method"], (mean, std, kind))
                continue
            eps = float(results.parent.name.removeprefix("eps_"))
            curves.setdefault(row["method"], []).append((eps, mean, std))
    if not curves:
        raise SystemExit(f"no eps_*/results.json under {root}: run recipes/epsilon_sweep.sh first")
    return {m: sorted(points) for m, points in curves.items()}, references


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    root = Path(argv[0] if argv else "runs/sweep")
    curves, references = load_sweep(root)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot(1, 1, 1)
    for method, points in curves.items():
        eps, mean, std = zip(*points)
        ax.errorbar(eps, mean, yerr=std, marker="o", capsize=3, label=method)
    for k, (method, (mean, _, kind)) in enumerate(references.items()):
        ax.axhline(
            mean, linestyle="--", linewidth=1, color=f"C{(len(curves) + k) % 10}", label=f"{method} ({kind})"
        )
    ax.set_xscale("log")
    ax.set_xlabel("epsilon (log scale)")
    ax.set_ylabel("test perplexity (lower is better)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    (root / "results.png").write_bytes(buf.getvalue())
    epsilons = sorted({e for points in curves.values() for e, _, _ in points})
    lines = [
        "| method | " + " | ".join(f"eps {e:g}" for e in epsilons) + " | without DP |",
        "|---|" + "---:|" * (len(epsilons) + 1),
    ]
    for method, points in curves.items():
        by_eps = {e: (m, s) for e, m, s in points}
        cells = [f"{by_eps[e][0]:.2f} ± {by_eps[e][1]:.2f}" if e in by_eps else "" for e in epsilons]
        lines.append(f"| {method} | " + " | ".join(cells) + " | |")
    for method, (mean, std, kind) in references.items():
        lines.append(f"| {method} |" + " |" * len(epsilons) + f" {mean:.2f} ± {std:.2f} ({kind}) |")
    (root / "results.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {root / 'results.png'} and {root / 'results.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
