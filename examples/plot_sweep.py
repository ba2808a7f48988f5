"""Plot test perplexity against epsilon from the run directories of an epsilon sweep.

    python examples/plot_sweep.py runs/sweep      # reads runs/sweep/eps_*/results.json

Each run directory holds a results.json written by `examples/run_dpkd.py` (one draw, or `--repeats N`
draws: mean and standard deviation). Writes runs/sweep/results.png (log-x, one line per method, error
bars = standard deviation over the draws) and runs/sweep/results.md.
"""

from __future__ import annotations

import io
import json
import math
import sys
from pathlib import Path


def load_sweep(root: Path) -> dict[str, list[tuple[float, float, float]]]:
    """method -> [(epsilon, mean test perplexity, std)] sorted by epsilon; non-private rows are skipped."""
    curves: dict[str, list[tuple[float, float, float]]] = {}
    for results in sorted(root.glob("eps_*/results.json")):
        for row in json.loads(results.read_text())["rows"]:
            if not math.isfinite(row["epsilon"]):
                continue
            mean = row.get("test_perplexity_mean", row.get("test_perplexity"))
            std = row.get("test_perplexity_std", 0.0)
            eps = float(results.parent.name.removeprefix("eps_"))
            curves.setdefault(row["method"], []).append((eps, mean, std))
    if not curves:
        raise SystemExit(f"no eps_*/results.json under {root}: run recipes/epsilon_sweep.sh first")
    return {m: sorted(points) for m, points in curves.items()}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    root = Path(argv[0] if argv else "runs/sweep")
    curves = load_sweep(root)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot(1, 1, 1)
    for method, points in curves.items():
        eps, mean, std = zip(*points)
        ax.errorbar(eps, mean, yerr=std, marker="o", capsize=3, label=method)
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
        "| method | " + " | ".join(f"eps {e:g}" for e in epsilons) + " |",
        "|---|" + "---:|" * len(epsilons),
    ]
    for method, points in curves.items():
        by_eps = {e: (m, s) for e, m, s in points}
        cells = [f"{by_eps[e][0]:.2f} ± {by_eps[e][1]:.2f}" if e in by_eps else "" for e in epsilons]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    (root / "results.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {root / 'results.png'} and {root / 'results.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
