"""ROC metrics of the audit against scikit-learn (the obviously-correct reference), ties included."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from hf_dpkd.audit.metrics import fpr_key, membership_metrics, plot_roc, roc_auc, roc_curve, tpr_at_fpr


def _sk_tpr_at_fpr(pos, neg, target):
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    fpr, tpr, _ = sk_roc_curve(y, np.r_[pos, neg], drop_intermediate=False)
    return float(tpr[fpr <= target].max())


def test_known_values():
    pos, neg = [0.9, 0.8, 0.4], [0.7, 0.3, 0.2, 0.1]
    # pairs won: 0.9, 0.8 beat all 4; 0.4 beats 3 -> 11 / 12
    assert roc_auc(pos, neg) == pytest.approx(11 / 12)
    fpr, tpr, thr = roc_curve(pos, neg)
    assert fpr[0] == 0 and tpr[0] == 0 and np.isinf(thr[0])
    assert tpr_at_fpr(fpr, tpr, 0.0) == pytest.approx(2 / 3)
    assert tpr_at_fpr(fpr, tpr, 0.25) == pytest.approx(1.0)


def test_perfect_and_inverted_and_ties():
    assert roc_auc([2.0, 3.0], [0.0, 1.0]) == 1.0
    assert roc_auc([0.0, 1.0], [2.0, 3.0]) == 0.0
    assert roc_auc([1.0, 1.0], [1.0, 1.0]) == pytest.approx(0.5)  # all tied -> chance


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("tied", [False, True])
def test_against_sklearn_random(seed, tied):
    rng = np.random.default_rng(seed)
    n_pos, n_neg = rng.integers(5, 300, size=2)
    pos = rng.normal(0.5, 1.0, n_pos)
    neg = rng.normal(0.0, 1.0, n_neg)
    if tied:  # heavy ties, also across the two groups
        pos, neg = np.round(pos * 2) / 2, np.round(neg * 2) / 2
    y = np.r_[np.ones(n_pos), np.zeros(n_neg)]
    assert roc_auc(pos, neg) == pytest.approx(roc_auc_score(y, np.r_[pos, neg]), abs=1e-12)
    fpr, tpr, thr = roc_curve(pos, neg)
    sk_fpr, sk_tpr, sk_thr = sk_roc_curve(y, np.r_[pos, neg], drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    np.testing.assert_allclose(thr[1:], sk_thr[1:])
    m = membership_metrics(pos, neg)
    for t in (0.25, 0.05, 0.01, 0.001, 0.0, 1.0):
        assert tpr_at_fpr(fpr, tpr, t) == pytest.approx(_sk_tpr_at_fpr(pos, neg, t))
    for t in (0.25, 0.05, 0.01, 0.001):
        assert m[fpr_key(t)] == pytest.approx(_sk_tpr_at_fpr(pos, neg, t))


def test_metric_keys_and_curve():
    m = membership_metrics([1.0, 2.0, 3.0], [0.0, 0.5])
    assert set(m) >= {"auc", "tpr@fpr=25%", "tpr@fpr=5%", "tpr@fpr=1%", "tpr@fpr=0.1%", "roc"}
    assert m["num_members"] == 3 and m["num_non_members"] == 2
    assert "note" in m  # 0.1% is unresolvable with 2 non-members
    assert len(m["roc"]["fpr"]) == len(m["roc"]["tpr"])


def test_bad_inputs():
    with pytest.raises(ValueError, match="member_scores is empty"):
        roc_auc([], [1.0])
    with pytest.raises(ValueError, match=r"non_member_scores\[1\]=nan is not finite"):
        roc_auc([1.0], [0.0, float("nan")])
    with pytest.raises(ValueError, match="target=1.5 must be"):
        tpr_at_fpr(np.array([0.0, 1.0]), np.array([0.0, 1.0]), 1.5)
    with pytest.raises(ValueError, match="curves is empty"):
        plot_roc({}, "unused.png")


def test_plot_roc_writes_png(tmp_path):
    rng = np.random.default_rng(0)
    m1 = membership_metrics(rng.normal(1, 1, 50), rng.normal(0, 1, 50))
    fpr, tpr, _ = roc_curve(rng.normal(0, 1, 40), rng.normal(0, 1, 40))
    path = plot_roc({"loss": m1["roc"], "chance-ish": (fpr, tpr)}, tmp_path / "sub" / "roc.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert not list((tmp_path / "sub").glob(".*.tmp"))


def test_write_audit_report(tmp_path):
    import json

    from hf_dpkd.audit.report import write_audit_report

    rng = np.random.default_rng(1)
    results = {
        "meta": {"model": "tiny", "claimed_epsilon": 1.0},
        "membership": {
            "loss": membership_metrics(rng.normal(1, 1, 30), rng.normal(0, 1, 30)),
            "zlib": membership_metrics(rng.normal(0, 1, 30), rng.normal(0, 1, 30)),
        },
        "memorization": {
            "member_mean": 0.5,
            "non_member_mean": 0.25,
            "gap": 0.25,
            "prompt_tokens": 8,
            "num_tokens": 32,
            "num_members": 3,
            "num_non_members": 3,
        },
        "canaries": {
            "canaries": [
                {
                    "name": "pin",
                    "repeats": 4,
                    "method": "exact",
                    "rank": 2,
                    "exposure": 12.3,
                    "max_exposure": 13.3,
                }
            ],
            "by_repeats": {"4": {"count": 1, "mean": 12.3, "min": 12.3, "max": 12.3}},
        },
        "empirical_epsilon": {
            "epsilon_lower_bound": np.float64(2.5),
            "delta": 0.0,
            "confidence": 0.95,
            "num_canaries": 80,
            "num_guesses": 40,
            "num_correct": 39,
            "scores": np.arange(3.0),
        },
    }
    paths = write_audit_report(results, tmp_path / "audit")
    data = json.loads(paths["json"].read_text())
    assert data["membership"]["loss"]["auc"] == pytest.approx(results["membership"]["loss"]["auc"])
    assert data["empirical_epsilon"]["scores"] == [0.0, 1.0, 2.0]
    md = paths["markdown"].read_text()
    assert "| loss | " in md and "EXCEEDS the claimed epsilon 1.0" in md and "never certify privacy" in md
    assert "| 4 | 1 | 12.3000 |" in md
    assert paths["roc"].read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="results must be a non-empty dict"):
        write_audit_report({}, tmp_path)
