"""Audit numbers with their uncertainty and their no-leak level: bootstrap intervals against a slow reference
and a known distribution, the paired comparison with a model that never saw the data, matched non-members,
exact binomial intervals, and the canary no-leak level."""

import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from hf_dpkd.audit.matching import match_non_members, record_balance
from hf_dpkd.audit.metrics import (
    binomial_interval,
    bootstrap_counts,
    bootstrap_intervals,
    fpr_key,
    membership_metrics,
    paired_auc_difference,
    percentile_interval,
    resampled_metrics,
)
from hf_dpkd.audit.mia import LEAK_RULE, compare_with_no_leak, membership_verdict
from hf_dpkd.audit.report import render_markdown

TARGETS = (0.25, 0.05, 0.01, 0.001)


# -- the vectorised bootstrap against the obvious one ------------------------------------------------
def test_counts_are_stratified_resamples_with_replacement():
    mc, nc = bootstrap_counts(7, 5, num_resamples=400, seed=3)
    assert mc.shape == (400, 7) and nc.shape == (400, 5)
    assert (mc.sum(axis=1) == 7).all() and (nc.sum(axis=1) == 5).all()
    # each record appears Binomial(n, 1/n) times: mean 1, variance 1 - 1/n
    assert mc.mean() == pytest.approx(1.0, abs=0.05) and mc.var() == pytest.approx(1 - 1 / 7, abs=0.08)
    again = bootstrap_counts(7, 5, num_resamples=400, seed=3)
    assert (again[0] == mc).all() and (again[1] == nc).all()  # seeded
    assert not (bootstrap_counts(7, 5, num_resamples=400, seed=4)[0] == mc).all()


@pytest.mark.parametrize("tied", [False, True])
def test_resampled_metrics_equal_each_resample_scored_by_sklearn(tied):
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(0.4, 1.0, 61), rng.normal(0.0, 1.0, 43)
    if tied:  # heavy ties, also across the groups
        pos, neg = np.round(pos * 2) / 2, np.round(neg * 2) / 2
    mc, nc = bootstrap_counts(pos.size, neg.size, num_resamples=60, seed=1)
    fast = resampled_metrics(pos, neg, mc, nc, TARGETS)
    for b in range(60):
        p, n = np.repeat(pos, mc[b]), np.repeat(neg, nc[b])  # the resample, built record by record
        y = np.r_[np.ones(p.size), np.zeros(n.size)]
        assert fast["auc"][b] == pytest.approx(roc_auc_score(y, np.r_[p, n]), abs=1e-12)
        slow = membership_metrics(p, n, TARGETS, include_curve=False, num_resamples=0)
        for t in TARGETS:
            assert fast[fpr_key(t)][b] == pytest.approx(slow[fpr_key(t)], abs=1e-12), (b, t)


def test_pairwise_auc_reference_on_a_resample():
    """Pure-python pairwise AUC (ties one half) on the resample that the counts describe."""
    rng = np.random.default_rng(5)
    pos, neg = rng.integers(0, 6, 15).astype(float), rng.integers(0, 6, 12).astype(float)
    mc, nc = bootstrap_counts(15, 12, num_resamples=5, seed=2)
    fast = resampled_metrics(pos, neg, mc, nc, ())["auc"]
    for b in range(5):
        won = sum(
            mc[b, i] * nc[b, j] * (1.0 if pos[i] > neg[j] else 0.5 if pos[i] == neg[j] else 0.0)
            for i in range(15)
            for j in range(12)
        )
        assert fast[b] == pytest.approx(won / (15 * 12), abs=1e-12)


def test_memory_chunking_does_not_change_the_values(monkeypatch):
    import hf_dpkd.audit.metrics as metrics

    rng = np.random.default_rng(2)
    pos, neg = rng.normal(1, 1, 80), rng.normal(0, 1, 70)
    counts = bootstrap_counts(80, 70, 50, seed=0)
    whole = resampled_metrics(pos, neg, *counts)
    monkeypatch.setattr(metrics, "_CHUNK_ENTRIES", 1000)  # 6 resamples at a time
    chunked = resampled_metrics(pos, neg, *counts)
    for k in whole:
        np.testing.assert_array_equal(whole[k], chunked[k])


# -- coverage on a known distribution ------------------------------------------------------------------
def test_interval_covers_the_true_auc_about_95_percent_of_the_time():
    """Members N(d, 1), non-members N(0, 1): the true AUC is Phi(d / sqrt 2). 200 repeated audits of 150 + 150
    records; the 95% interval must cover the truth in 90%..99% of them (binomial sd of the rate: 1.5%)."""
    d, n, reps = 0.5, 150, 200
    truth = stats.norm.cdf(d / math.sqrt(2))
    rng = np.random.default_rng(12345)
    covered = widths = 0
    for rep in range(reps):
        pos, neg = rng.normal(d, 1.0, n), rng.normal(0.0, 1.0, n)
        lo, hi = bootstrap_intervals(pos, neg, (), confidence=0.95, num_resamples=500, seed=rep)["auc"]
        covered += lo <= truth <= hi
        widths += hi - lo
    assert 0.90 <= covered / reps <= 0.99, covered / reps
    # about 0.12 wide for 150 + 150 records at AUC 0.64 (standard error 0.03)
    assert 0.10 < widths / reps < 0.16


def test_paired_difference_covers_zero_for_two_models_that_see_the_same_thing():
    """Two models whose scores are the same record difficulty plus independent noise: true difference 0."""
    rng = np.random.default_rng(7)
    reps, covered = 100, 0
    for rep in range(reps):
        easy_m, easy_n = rng.normal(0.3, 1, 120), rng.normal(0, 1, 120)  # the samples differ in difficulty
        a = (easy_m + rng.normal(0, 0.5, 120), easy_n + rng.normal(0, 0.5, 120))
        b = (easy_m + rng.normal(0, 0.5, 120), easy_n + rng.normal(0, 0.5, 120))
        res = paired_auc_difference(*a, *b, confidence=0.95, num_resamples=400, seed=rep)
        covered += res["interval"][0] <= 0 <= res["interval"][1]
    assert 0.88 <= covered / reps <= 1.0, covered / reps


def test_paired_interval_is_narrower_than_the_separate_ones():
    rng = np.random.default_rng(0)
    easy_m, easy_n = rng.normal(0.3, 1, 200), rng.normal(0, 1, 200)
    model = (easy_m + 0.4 + rng.normal(0, 0.3, 200), easy_n + rng.normal(0, 0.3, 200))
    base = (easy_m + rng.normal(0, 0.3, 200), easy_n + rng.normal(0, 0.3, 200))
    paired = paired_auc_difference(*model, *base, num_resamples=1000)
    lo_m, hi_m = bootstrap_intervals(*model, ())["auc"]
    lo_b, hi_b = bootstrap_intervals(*base, ())["auc"]
    width = paired["interval"][1] - paired["interval"][0]
    assert width < 0.6 * math.hypot(hi_m - lo_m, hi_b - lo_b)
    assert paired["interval"][0] > 0  # the model adds membership signal on top of the records' difficulty


def test_bootstrap_bad_inputs():
    with pytest.raises(ValueError, match="num_resamples=0 must be >= 1"):
        bootstrap_counts(3, 3, 0)
    with pytest.raises(ValueError, match="confidence=95 must be in"):
        bootstrap_intervals([1.0], [0.0], confidence=95)
    with pytest.raises(ValueError, match="counts cover 3 members and 2 non-members, but the scores hold 2"):
        resampled_metrics([1.0, 2.0], [0.0, 1.0], *bootstrap_counts(3, 2, 4))
    with pytest.raises(
        ValueError, match="the no-leak model has 2 and 1; score both models on the same records"
    ):
        paired_auc_difference([1.0, 2.0], [0.0, 1.0], [1.0, 2.0], [0.0])
    assert percentile_interval(np.arange(101.0), 0.9) == pytest.approx([5.0, 95.0])


# -- exact binomial interval ----------------------------------------------------------------------------
def test_binomial_interval_matches_scipy_and_coverage():
    lo, hi = binomial_interval(7, 20, 0.95)
    ref = stats.binomtest(7, 20).proportion_ci(confidence_level=0.95, method="exact")
    assert (lo, hi) == pytest.approx((ref.low, ref.high), abs=1e-10)
    assert binomial_interval(0, 10)[0] == 0.0 and binomial_interval(10, 10)[1] == 1.0
    with pytest.raises(ValueError, match="successes=4 and trials=3"):
        binomial_interval(4, 3)


# -- the verdict against the no-leak model ------------------------------------------------------------------
def _entry(mem, non):
    e = membership_metrics(mem, non, include_curve=False)
    e["scores"] = {"members": list(mem), "non_members": list(non)}
    return e


def test_compare_with_no_leak_flags_only_what_the_model_adds():
    rng = np.random.default_rng(1)
    easy_m, easy_n = rng.normal(0.4, 1, 300), rng.normal(0, 1, 300)  # a no-leak AUC of about 0.61
    base = {
        a: _entry(easy_m + rng.normal(0, 0.3, 300), easy_n + rng.normal(0, 0.3, 300))
        for a in ("loss", "zlib")
    }
    same = {
        a: _entry(easy_m + rng.normal(0, 0.3, 300), easy_n + rng.normal(0, 0.3, 300))
        for a in ("loss", "zlib")
    }
    leaky = {
        "loss": _entry(easy_m + 0.5 + rng.normal(0, 0.3, 300), easy_n + rng.normal(0, 0.3, 300)),
        "zlib": _entry(easy_m + rng.normal(0, 0.3, 300), easy_n + rng.normal(0, 0.3, 300)),
    }
    quiet = compare_with_no_leak(same, base, no_leak_name="base")
    assert quiet["loss"]["auc"] > 0.57  # away from 0.5, as the user saw ...
    assert membership_verdict(quiet)["leaks"] is False  # ... but no higher than the model that never saw them
    loud = compare_with_no_leak(leaky, base, no_leak_name="base")
    verdict = membership_verdict(loud)
    assert verdict["leaks"] is True and verdict["flagged_attacks"] == ["loss"]
    assert verdict["per_attack_confidence"] == pytest.approx(1 - 0.05 / 2) and verdict["rule"] == LEAK_RULE
    row = loud["loss"]
    # the no-leak row is the base's metrics on the same records, with its own intervals
    assert row["no_leak"]["auc"] == base["loss"]["auc"] and row["no_leak"]["num_members"] == 300
    assert row["no_leak"]["intervals"] == base["loss"]["intervals"]
    assert row["vs_no_leak"]["difference"] == pytest.approx(row["auc"] - base["loss"]["auc"])
    md = render_markdown({"meta": {"model": "teacher"}, "membership": loud})
    assert "| loss | no-leak: base | " in md and "| loss | teacher | " in md and "**yes**" in md
    assert "LEAKS: membership signal above the no-leak level (base) for loss" in md
    with pytest.raises(ValueError, match=r"no_leak_results has no \['zlib'\]"):
        compare_with_no_leak(leaky, {"loss": base["loss"]})
    bare = {a: {k: v for k, v in e.items() if k != "scores"} for a, e in base.items()}
    with pytest.raises(ValueError, match="run it with return_scores=True"):
        compare_with_no_leak(leaky, bare)


# -- matched non-members ------------------------------------------------------------------------------------
def test_matching_keeps_codes_and_lengths_and_reports_the_rest():
    rng = np.random.default_rng(0)
    codes = [f"code {i}\n\n" for i in range(5)]
    members = [(codes[i % 5], "x" * int(rng.integers(5, 50))) for i in range(40)]
    # the pool is longer on average and has one code under-represented
    pool = [(codes[i % 4], "y" * int(rng.integers(5, 200))) for i in range(400)] + [(codes[4], "z" * 30)] * 3
    random_pick = [pool[i] for i in rng.choice(len(pool), 40, replace=False)]
    before = record_balance(members, random_pick)
    matched, report = match_non_members(members, pool, seed=0)
    assert len(matched) == 40
    assert (
        report["num_code_matched"] == 40 - 5 and report["pool_size"] == 403
    )  # 8 members of code 4, 3 in the pool
    assert abs(report["standardized_length_difference"]) < 0.1 < abs(before["standardized_length_difference"])
    assert report["code_total_variation"] == pytest.approx(5 / 40)
    same_code = sum(m[0] == n[0] for m, n in zip(members, matched))
    assert same_code == 35
    again, _ = match_non_members(members, pool, seed=0)
    assert again == matched
    with pytest.raises(ValueError, match="pool has 3 records for 40 members"):
        match_non_members(members, pool[:3])


def test_record_balance_known_values():
    b = record_balance([("a", "xx"), ("a", "xxxx")], [("a", "xx"), ("b", "xx")])
    assert b["member_mean_length"] == 3 and b["non_member_mean_length"] == 2
    assert b["standardized_length_difference"] == pytest.approx(1 / math.sqrt(0.5))
    assert b["code_total_variation"] == pytest.approx(0.5)


# -- the demo: the verdict separates a memorising teacher from the DP one ------------------------------------
def test_demo_non_private_teacher_leaks_and_the_dp_teacher_does_not(quick_run, tmp_path):
    """The `--quick` demo run's data, public base models and DP teacher (epsilon 2), plus a non-private
    reference teacher trained long enough to memorise (the role recipes/demo_full.yaml gives it): 8 epochs in
    batches of 16 (300 steps: nearly the memorisation of 16 epochs in batches of 64, at 70% of its time); then the audit stage on 300 members and 300 non-members matched to them from the 500 test records,
    every attack. The interval rule flags the non-private teacher and not the DP teacher, and the no-leak row
    is the public base teacher scored on the same records. (Measured: loss AUC 0.751 for the non-private
    teacher against 0.499 for the base, paired difference 0.252 [0.178, 0.329]; the DP teacher -0.001
    [-0.010, 0.007]. 16 epochs in batches of 64: 0.300 [0.231, 0.374], 40.6 s of training against 28.6 s on a 2-core AMD EPYC;
    6 epochs in batches of 16: 0.176 [0.097, 0.250], too narrow a margin to keep.)"""
    import json
    import shutil

    from hf_dpkd.pipeline import Pipeline
    from hf_dpkd.run_config import parse_run_config

    run_dir = tmp_path / "run"
    skip = shutil.ignore_patterns("students", "synthetic", "audit", "non_private_teacher")
    shutil.copytree(quick_run[0], run_dir, ignore=skip)
    config = parse_run_config(
        [
            "--quick",
            "--run_dir", str(run_dir),
            "--non_private_epochs", "8",
            "--teacher_batch_size", "16",  # the DP teacher is finished: only the non-private one trains
            "--audit_num_records", "300",
            "--audit_models", "non_private_teacher,teacher",
            "--audit_canary_candidates", "100",
        ]
    )  # fmt: skip
    pipeline = Pipeline(config)
    pipeline.stage_teacher()  # the DP teacher is finished: only the non-private one trains
    pipeline.stage_audit()
    summary = json.loads((run_dir / "audit" / "audit.json").read_text())
    models = summary["models"]
    assert models["non_private_teacher"]["leaks"] is True, models["non_private_teacher"]["auc_minus_no_leak"]
    assert "loss" in models["non_private_teacher"]["flagged_attacks"]
    assert models["teacher"]["leaks"] is False, models["teacher"]["auc_minus_no_leak"]
    assert models["teacher"]["no_leak_model"] == "base/teacher"
    assert set(summary["no_leak"]) == {"base/teacher"}
    assert summary["num_members"] == summary["num_non_members"] == 300
    balance = summary["matching"]
    assert balance["pool_size"] == 500 and balance["num_code_matched"] >= 250
    assert abs(balance["standardized_length_difference"]) < 0.2
    # the no-leak row is the base teacher's own audit of the same records, with its intervals
    report = json.loads((run_dir / "audit" / "teacher" / "audit.json").read_text())
    loss = report["membership"]["loss"]
    assert summary["no_leak"]["base/teacher"]["auc"]["loss"] == loss["no_leak"]["auc"]
    assert loss["no_leak"]["num_members"] == loss["num_members"] == 300
    for name, m in models.items():
        for attack, auc in m["auc"].items():
            lo, hi = m["auc_interval"][attack]
            assert lo <= auc <= hi and hi - lo < 0.2, (name, attack)
    md = (run_dir / "audit" / "audit.md").read_text()
    assert "| base/teacher (no-leak) | public |" in md and "no leak detected vs base/teacher" in md
    assert "LEAKS (loss" in md
