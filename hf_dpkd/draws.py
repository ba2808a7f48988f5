"""Independent DP draws of one run: the private stages repeated with fresh noise, reported as mean and std.

Every DP run draws fresh noise (a secret seed per run directory), so the ordering of methods in one run
can be luck. ``--repeats N`` runs the deterministic data stage once in the run directory (the corpus, the
public tokenizer and base models), then N sub-runs ``draws/draw-K`` that share it and repeat every private
stage (histogram, teacher, generation, students, evaluation), each with its own secret seed. The run
directory's results.json / results.md / results.png then hold the mean and standard deviation of each
method's test perplexity over the draws, and every draw's numbers.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
from pathlib import Path
from typing import Any

from hf_dpkd._io import atomic_write_bytes, atomic_write_text
from hf_dpkd.reporting import epsilon_cell, markdown_table, mean_std, number, thousands
from hf_dpkd.run_config import RunConfig

#: Stages repeated in every draw (the data stage is shared; audit and push are single-run stages).
DRAW_STAGES = ("histogram", "teacher", "generate", "students", "evaluate")
SHARED = ("data", "base")


def _with(config: RunConfig, **pipeline: Any) -> RunConfig:
    return dataclasses.replace(config, pipeline=dataclasses.replace(config.pipeline, **pipeline))


def draw_dir(run_dir: str | Path, k: int) -> Path:
    return Path(run_dir) / "draws" / f"draw-{k}"


def _prepare_draw(run: Path, draw: Path) -> None:
    """A sub-run that links the shared data stage (relative links: the run directory can be moved)."""
    (draw / "stages").mkdir(parents=True, exist_ok=True)
    for name in SHARED:
        link = draw / name
        if not link.exists():
            os.symlink(os.path.relpath(run / name, draw), link)
    marker = draw / "stages" / "data.json"
    if not marker.is_file():
        atomic_write_text(marker, (run / "stages" / "data.json").read_text())


def run_draws(config: RunConfig) -> dict[str, Any]:
    """Run `config.pipeline.repeats` independent draws of the private stages; write and return the summary."""
    from hf_dpkd.pipeline import Pipeline

    run = Path(config.pipeline.run_dir)
    repeats = config.pipeline.repeats
    Pipeline(_with(config, stages=["data"], repeats=1)).run_stages()
    stages = [s for s in config.stage_list if s in DRAW_STAGES]
    for k in range(1, repeats + 1):
        draw = draw_dir(run, k)
        _prepare_draw(run, draw)
        print(f"==> draw {k}/{repeats} ({draw})", flush=True)
        Pipeline(_with(config, run_dir=str(draw), stages=stages, repeats=1)).run_stages()
    summary = aggregate([draw_dir(run, k) / "results.json" for k in range(1, repeats + 1)])
    summary["config"] = config.to_dict()
    atomic_write_text(run / "results.json", json.dumps(summary, indent=2, default=str))
    atomic_write_text(run / "results.md", draws_markdown(summary))
    plot_draws(summary, run / "results.png")
    return summary


def aggregate(result_files: list[Path]) -> dict[str, Any]:
    """Mean and sample standard deviation of each method's test perplexity over the draws' results.json."""
    per_method: dict[str, dict[str, Any]] = {}
    for path in result_files:
        for row in json.loads(Path(path).read_text())["rows"]:
            entry = per_method.setdefault(
                row["method"],
                {
                    "method": row["method"],
                    "label": row["label"],
                    "num_parameters": row["num_parameters"],
                    "epsilons": [],
                    "test_perplexities": [],
                },
            )
            entry["epsilons"].append(row["epsilon"])
            entry["test_perplexities"].append(row["test_perplexity"])
    rows = []
    for entry in per_method.values():
        ppl = entry["test_perplexities"]
        entry["draws"] = len(ppl)
        entry["test_perplexity_mean"] = statistics.fmean(ppl)
        entry["test_perplexity_std"] = statistics.stdev(ppl) if len(ppl) > 1 else 0.0
        entry["epsilon"] = max(entry["epsilons"])  # equal across draws (calibration is deterministic)
        rows.append(entry)
    return {"draws": len(result_files), "rows": rows}


def draws_markdown(summary: dict[str, Any]) -> str:
    """The run directory's results.md over the draws: each method's mean ± std, and every draw's number."""
    rows = [
        [
            r["label"],
            epsilon_cell(r["epsilon"]),
            mean_std(r["test_perplexity_mean"], r["test_perplexity_std"]),
            ", ".join(number(x, 2) for x in r["test_perplexities"]),
            thousands(r["num_parameters"]),
        ]
        for r in summary["rows"]
    ]
    head = ["Method", "epsilon", "Test perplexity", "Draws", "Parameters"]
    lines = [
        f"Test perplexity over {summary['draws']} independent DP draws (mean ± sample standard deviation; "
        "every draw's numbers in results.json).",
        "",
        *markdown_table(head, rows, align="lrrlr"),
    ]
    return "\n".join(lines) + "\n"


def plot_draws(summary: dict[str, Any], path: Path) -> None:
    """Bar chart of the mean test perplexity per method, with the standard deviation as error bars."""
    import io

    from matplotlib.figure import Figure

    rows = summary["rows"]
    fig = Figure(figsize=(8, 4))
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(
        range(len(rows)),
        [r["test_perplexity_mean"] for r in rows],
        yerr=[r["test_perplexity_std"] for r in rows],
        capsize=4,
        color="tab:blue",
    )
    ax.set_xticks(range(len(rows)), [r["method"] for r in rows], fontsize=7)
    ax.set_ylabel("test perplexity (lower is better)")
    ax.set_title(f"DistilDP and baselines, {summary['draws']} DP draws (mean ± std)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    atomic_write_bytes(path, buf.getvalue())
