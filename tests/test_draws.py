"""`--repeats N`: independent DP draws of the private stages, aggregated as mean and standard deviation."""

import json
import math
import statistics

import pytest

from hf_dpkd.draws import aggregate, draws_markdown
from hf_dpkd.run_config import parse_run_config
from tests.pipeline_runs import run_quick


def _results(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"rows": rows}))
    return path


def _row(method, ppl, eps=2.0):
    return {
        "method": method,
        "label": method.upper(),
        "epsilon": eps,
        "test_perplexity": ppl,
        "num_parameters": 10,
    }


def test_aggregate_is_the_mean_and_sample_std_of_each_method(tmp_path):
    files = [
        _results(tmp_path / f"d{k}" / "results.json", [_row("a", a), _row("b", b, math.inf)])
        for k, (a, b) in enumerate([(10.0, 30.0), (12.0, 31.0), (14.0, 35.0)])
    ]
    summary = aggregate(files)
    rows = {r["method"]: r for r in summary["rows"]}
    assert summary["draws"] == 3
    assert rows["a"]["test_perplexity_mean"] == pytest.approx(12.0)
    assert rows["a"]["test_perplexity_std"] == pytest.approx(2.0)  # sample std (n - 1)
    assert rows["b"]["test_perplexity_std"] == pytest.approx(statistics.stdev([30.0, 31.0, 35.0]))
    assert rows["b"]["test_perplexities"] == [30.0, 31.0, 35.0]
    text = draws_markdown(summary)
    assert "12.00 ± 2.00" in text and "inf (not private)" in text and "10.00, 12.00, 14.00" in text


def test_bad_repeats_are_refused_before_any_work():
    with pytest.raises(ValueError, match=r"--repeats 0: must be >= 1"):
        parse_run_config(["--repeats", "0"])
    with pytest.raises(ValueError, match=r"--repeats 3 measures several draws; push from a single-draw run"):
        parse_run_config(["--repeats", "3", "--push_student", "me/student"])


def test_repeats_draw_fresh_noise_and_share_the_data_stage(tmp_path):
    run = tmp_path / "run"
    done = run_quick(
        run, "--repeats", "2", "--stages", "data,students,evaluate", "--methods", "dp_sgd_student"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "±" in done.stdout
    summary = json.loads((run / "results.json").read_text())
    rows = {r["method"]: r for r in summary["rows"]}
    assert set(rows) == {"dp_sgd_student", "public_teacher", "public_student"}
    row = rows["dp_sgd_student"]
    assert summary["draws"] == 2
    first, second = row["test_perplexities"]
    assert first != second  # each draw has its own secret seed: fresh DP noise
    seeds = [
        json.loads((run / "draws" / f"draw-{k}" / "secrets" / "dp_seed.json").read_text()) for k in (1, 2)
    ]
    assert seeds[0] != seeds[1]
    for k in (1, 2):  # the deterministic data stage ran once and is shared
        assert (run / "draws" / f"draw-{k}" / "data").resolve() == (run / "data").resolve()
    assert row["test_perplexity_mean"] == pytest.approx((first + second) / 2)
    # the public base models come from the shared data stage: the same in every draw
    assert rows["public_student"]["test_perplexity_std"] == 0.0
    assert (run / "results.png").stat().st_size > 0


def test_sweep_plot_reads_every_epsilon_and_draws_references_apart(tmp_path):
    import subprocess
    import sys

    from tests.pipeline_runs import ROOT

    for eps, ppl in ((0.5, 60.0), (2, 40.0), (8, 30.0)):
        _results(
            tmp_path / f"eps_{eps}" / "results.json",
            [_row("dp_sgd_student", ppl, eps), _row("ref", 9.0, math.inf), _row("public_student", 90.0, 0.0)],
        )
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "plot_sweep.py"), str(tmp_path)], timeout=120
    )
    assert done.returncode == 0
    table = (tmp_path / "results.md").read_text()
    assert "| dp_sgd_student | 60.00 ± 0.00 | 40.00 ± 0.00 | 30.00 ± 0.00 | |" in table
    # rows without DP training (non-private: inf; public base models: 0) are references, not curves
    assert "| ref | | | | 9.00 ± 0.00 (non-private) |" in table
    assert "| public_student | | | | 90.00 ± 0.00 (no private data) |" in table
    assert (tmp_path / "results.png").stat().st_size > 0
