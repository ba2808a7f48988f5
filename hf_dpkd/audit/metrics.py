"""ROC metrics of a membership score (higher = more likely a member), their bootstrap intervals, and a ROC plot.

Conventions match scikit-learn: ties between a member and a non-member count one half in the AUC, and
TPR at FPR <= t is the largest TPR among the ROC points whose FPR does not exceed t.

Intervals are percentile bootstrap intervals over records: each resample draws the members and the
non-members with replacement, each group in its own number (stratified), and recomputes the metric. With
100 + 100 records an AUC near 0.5 has a standard error of about 0.04, so a single AUC is never read alone.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from hf_dpkd._io import atomic_write_bytes

DEFAULT_FPR_TARGETS: tuple[float, ...] = (0.25, 0.05, 0.01, 0.001)
DEFAULT_CONFIDENCE = 0.95
DEFAULT_NUM_RESAMPLES = 1000
#: Bound on the resamples x distinct scores held in memory at once (float64 arrays of this many entries).
_CHUNK_ENTRIES = 1_000_000


def _check_scores(member_scores, non_member_scores) -> tuple[np.ndarray, np.ndarray]:
    pos = np.asarray(member_scores, dtype=np.float64).ravel()
    neg = np.asarray(non_member_scores, dtype=np.float64).ravel()
    for name, arr in (("member_scores", pos), ("non_member_scores", neg)):
        if arr.size == 0:
            raise ValueError(f"{name} is empty; a ROC curve needs at least one member and one non-member")
        if not np.all(np.isfinite(arr)):
            bad = int(np.flatnonzero(~np.isfinite(arr))[0])
            raise ValueError(f"{name}[{bad}]={arr[bad]} is not finite; drop records with no scored tokens")
    return pos, neg


def roc_curve(member_scores, non_member_scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) for "member if score >= threshold", one point per distinct score,
    starting at (0, 0) with threshold +inf."""
    pos, neg = _check_scores(member_scores, non_member_scores)
    scores = np.concatenate([pos, neg])
    labels = np.concatenate([np.ones(pos.size), np.zeros(neg.size)])
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    # Last index of each group of equal scores: the ROC moves one point per distinct threshold.
    last = np.r_[np.flatnonzero(np.diff(scores) != 0), scores.size - 1]
    tp = np.cumsum(labels)[last]
    fp = (last + 1) - tp
    tpr = np.r_[0.0, tp / pos.size]
    fpr = np.r_[0.0, fp / neg.size]
    thresholds = np.r_[np.inf, scores[last]]
    return fpr, tpr, thresholds


def roc_auc(member_scores, non_member_scores) -> float:
    """Area under the ROC curve = P(member score > non-member score) + P(tie) / 2."""
    fpr, tpr, _ = roc_curve(member_scores, non_member_scores)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """Largest TPR among ROC points with FPR <= target (0 if none)."""
    if not 0.0 <= target <= 1.0:
        raise ValueError(f"target={target} must be a false positive rate in [0, 1]")
    ok = np.asarray(fpr) <= target
    return float(np.max(np.asarray(tpr)[ok])) if ok.any() else 0.0


def fpr_key(target: float) -> str:
    """Stable result key, e.g. 0.001 -> 'tpr@fpr=0.1%'."""
    return f"tpr@fpr={target * 100:g}%"


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence} must be in (0, 1); 0.95 gives 95% intervals")


def bootstrap_counts(
    num_members: int, num_non_members: int, num_resamples: int = DEFAULT_NUM_RESAMPLES, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """How many times each record appears in each of `num_resamples` stratified bootstrap resamples.

    Members and non-members are each drawn with replacement in their own number, so every resample keeps the
    audit's two sample sizes. Returns integer arrays [num_resamples, num_members] and
    [num_resamples, num_non_members] whose rows sum to the group sizes. Same seed, same resamples: scoring
    two models with the same counts gives a paired comparison on the same records.
    """
    if num_resamples < 1:
        raise ValueError(f"num_resamples={num_resamples} must be >= 1; 1000 gives stable 95% intervals")
    for name, n in (("num_members", num_members), ("num_non_members", num_non_members)):
        if n < 1:
            raise ValueError(f"{name}={n} must be >= 1; a bootstrap needs records to resample")
    rng = np.random.default_rng(seed)

    def draw(n: int) -> np.ndarray:
        rows = np.arange(num_resamples)[:, None] * n
        picks = rng.integers(0, n, size=(num_resamples, n)) + rows
        return np.bincount(picks.ravel(), minlength=num_resamples * n).reshape(num_resamples, n)

    return draw(num_members), draw(num_non_members)


def resampled_metrics(
    member_scores,
    non_member_scores,
    member_counts: np.ndarray,
    non_member_counts: np.ndarray,
    fpr_targets: Sequence[float] = DEFAULT_FPR_TARGETS,
) -> dict[str, np.ndarray]:
    """AUC and TPR at each FPR target of every resample given by record multiplicities (`bootstrap_counts`).

    Equal to `membership_metrics` on the resampled score arrays, without building them: the scores are
    ranked once, and each resample only re-weights the distinct scores, so 1000 resamples of 1000 + 1000
    records take a fraction of a second. Returns {"auc": [R], "tpr@fpr=...": [R], ...}.
    """
    pos, neg = _check_scores(member_scores, non_member_scores)
    mc = np.asarray(member_counts, dtype=np.float64)
    nc = np.asarray(non_member_counts, dtype=np.float64)
    if mc.ndim != 2 or nc.ndim != 2 or mc.shape[0] != nc.shape[0]:
        raise ValueError(
            f"member_counts {mc.shape} and non_member_counts {nc.shape} must be [resamples, records] arrays "
            "with the same number of resamples; build them with bootstrap_counts"
        )
    if mc.shape[1] != pos.size or nc.shape[1] != neg.size:
        raise ValueError(
            f"counts cover {mc.shape[1]} members and {nc.shape[1]} non-members, but the scores hold {pos.size} "
            f"and {neg.size}; resample the same records that were scored"
        )
    for t in fpr_targets:
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"target={t} must be a false positive rate in [0, 1]")
    uniq, inverse = np.unique(np.concatenate([pos, neg]), return_inverse=True)
    width = uniq.size
    # position of each record's score in DECREASING order of the distinct scores (the ROC's threshold order)
    where_pos = width - 1 - inverse[: pos.size]
    where_neg = width - 1 - inverse[pos.size :]
    num = mc.shape[0]
    out = {"auc": np.empty(num), **{fpr_key(t): np.empty(num) for t in fpr_targets}}
    step = max(1, _CHUNK_ENTRIES // width)
    for lo in range(0, num, step):
        c, d = mc[lo : lo + step], nc[lo : lo + step]
        rows = np.arange(c.shape[0])[:, None] * width
        size = c.shape[0] * width
        # weight of each distinct score among the resampled members (P) and non-members (N)
        p = np.bincount((where_pos + rows).ravel(), weights=c.ravel(), minlength=size).reshape(-1, width)
        n = np.bincount((where_neg + rows).ravel(), weights=d.ravel(), minlength=size).reshape(-1, width)
        tp, fp = np.cumsum(p, axis=1), np.cumsum(n, axis=1)
        # each non-member beats nobody above it, ties with the members at its score (one half)
        out["auc"][lo : lo + step] = ((tp - p / 2) * n).sum(axis=1) / (pos.size * neg.size)
        tpr, fpr = tp / pos.size, fp / neg.size
        for t in fpr_targets:
            # FPR and TPR never decrease along the curve: the best TPR with FPR <= t is the last such point
            k = np.sum(fpr <= t, axis=1)
            best = tpr[np.arange(k.size), np.maximum(k - 1, 0)]
            out[fpr_key(t)][lo : lo + step] = np.where(k > 0, best, 0.0)
    return out


def percentile_interval(values, confidence: float = DEFAULT_CONFIDENCE) -> list[float]:
    """[lower, upper]: the (1 - confidence) / 2 and (1 + confidence) / 2 quantiles of bootstrap values."""
    _check_confidence(confidence)
    lo, hi = np.quantile(np.asarray(values, dtype=np.float64), [(1 - confidence) / 2, (1 + confidence) / 2])
    return [float(lo), float(hi)]


def bootstrap_intervals(
    member_scores,
    non_member_scores,
    fpr_targets: Sequence[float] = DEFAULT_FPR_TARGETS,
    confidence: float = DEFAULT_CONFIDENCE,
    num_resamples: int = DEFAULT_NUM_RESAMPLES,
    seed: int = 0,
) -> dict[str, list[float]]:
    """Percentile bootstrap interval (over records, stratified) of the AUC and of each TPR at FPR target:
    {"auc": [lo, hi], "tpr@fpr=1%": [lo, hi], ...}."""
    _check_confidence(confidence)
    pos, neg = _check_scores(member_scores, non_member_scores)
    counts = bootstrap_counts(pos.size, neg.size, num_resamples, seed)
    values = resampled_metrics(pos, neg, *counts, fpr_targets=fpr_targets)
    return {k: percentile_interval(v, confidence) for k, v in values.items()}


def paired_auc_difference(
    member_scores,
    non_member_scores,
    no_leak_member_scores,
    no_leak_non_member_scores,
    confidence: float = DEFAULT_CONFIDENCE,
    num_resamples: int = DEFAULT_NUM_RESAMPLES,
    seed: int = 0,
) -> dict:
    """AUC of a model minus the AUC of a model that never saw the private data, on the SAME records, with a
    paired bootstrap interval: every resample of the records is scored under both models, so what the two
    samples share (some records are simply easy) cancels. {"difference", "interval", "confidence"}."""
    _check_confidence(confidence)
    pos, neg = _check_scores(member_scores, non_member_scores)
    base_pos, base_neg = _check_scores(no_leak_member_scores, no_leak_non_member_scores)
    if (pos.size, neg.size) != (base_pos.size, base_neg.size):
        raise ValueError(
            f"the model has {pos.size} member and {neg.size} non-member scores but the no-leak model has "
            f"{base_pos.size} and {base_neg.size}; score both models on the same records"
        )
    counts = bootstrap_counts(pos.size, neg.size, num_resamples, seed)
    diff = (
        resampled_metrics(pos, neg, *counts, fpr_targets=())["auc"]
        - resampled_metrics(base_pos, base_neg, *counts, fpr_targets=())["auc"]
    )
    return {
        "difference": roc_auc(pos, neg) - roc_auc(base_pos, base_neg),
        "interval": percentile_interval(diff, confidence),
        "confidence": confidence,
    }


def binomial_interval(successes: int, trials: int, confidence: float = DEFAULT_CONFIDENCE) -> list[float]:
    """Exact (Clopper-Pearson) interval of a success probability from `successes` out of `trials`."""
    from scipy import stats

    _check_confidence(confidence)
    if not 0 <= successes <= trials or trials < 1:
        raise ValueError(
            f"successes={successes} and trials={trials} need 0 <= successes <= trials, trials >= 1"
        )
    alpha = 1.0 - confidence
    lo = 0.0 if successes == 0 else float(stats.beta.ppf(alpha / 2, successes, trials - successes + 1))
    hi = (
        1.0
        if successes == trials
        else float(stats.beta.ppf(1 - alpha / 2, successes + 1, trials - successes))
    )
    return [lo, hi]


def membership_metrics(
    member_scores,
    non_member_scores,
    fpr_targets: Sequence[float] = DEFAULT_FPR_TARGETS,
    include_curve: bool = True,
    confidence: float = DEFAULT_CONFIDENCE,
    num_resamples: int = DEFAULT_NUM_RESAMPLES,
    seed: int = 0,
) -> dict:
    """AUC, TPR at each FPR target, the counts, (optionally) the ROC points for plotting, and with
    `num_resamples` > 0 the bootstrap interval of every metric ("intervals": {"auc": [lo, hi], ...})."""
    pos, neg = _check_scores(member_scores, non_member_scores)
    fpr, tpr, _ = roc_curve(pos, neg)
    result: dict = {"auc": roc_auc(pos, neg)}
    for t in fpr_targets:
        result[fpr_key(t)] = tpr_at_fpr(fpr, tpr, t)
    result["num_members"] = int(pos.size)
    result["num_non_members"] = int(neg.size)
    if num_resamples:
        result["intervals"] = bootstrap_intervals(pos, neg, fpr_targets, confidence, num_resamples, seed)
        result["confidence"] = confidence
        result["num_resamples"] = int(num_resamples)
    if min(pos.size, neg.size) * min(fpr_targets, default=1.0) < 1:
        result["note"] = (
            f"FPR targets below 1/{neg.size} cannot be resolved with {neg.size} non-members; "
            "those TPRs are at FPR 0"
        )
    if include_curve:
        result["roc"] = {"fpr": fpr.tolist(), "tpr": tpr.tolist()}
    return result


def plot_roc(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]] | Mapping[str, Sequence[float]]],
    path: str | Path,
    title: str = "Membership inference ROC",
) -> Path:
    """Write a PNG with each curve on linear and log-log axes. `curves` maps a name to (fpr, tpr) or to
    {"fpr": [...], "tpr": [...]} (the `roc` entry of `membership_metrics`)."""
    from matplotlib.figure import Figure  # no pyplot: renders off-screen (Agg) whatever the backend

    if not curves:
        raise ValueError("curves is empty; pass {name: (fpr, tpr)} with at least one curve")
    fig = Figure(figsize=(10, 4.5))
    ax_lin, ax_log = fig.subplots(1, 2)
    for name, curve in curves.items():
        fpr, tpr = (curve["fpr"], curve["tpr"]) if isinstance(curve, Mapping) else curve
        fpr, tpr = np.asarray(fpr, dtype=float), np.asarray(tpr, dtype=float)
        if fpr.shape != tpr.shape:
            raise ValueError(f"curve {name!r}: fpr has shape {fpr.shape} but tpr has {tpr.shape}")
        auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))
        ax_lin.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})", drawstyle="steps-post")
        # zero rates sit on the axis edge of the log plot instead of vanishing
        ax_log.plot(np.clip(fpr, 1e-3, 1), np.clip(tpr, 1e-3, 1), label=name, drawstyle="steps-post")
    for ax in (ax_lin, ax_log):
        ax.plot([0, 1], [0, 1], "k--", linewidth=0.8, label="chance")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
    ax_log.set_xscale("log")
    ax_log.set_yscale("log")
    ax_log.set_xlim(1e-3, 1)
    ax_log.set_ylim(1e-3, 1)
    ax_lin.legend(loc="lower right", fontsize=8)
    ax_lin.set_title(title)
    ax_log.set_title("log scale (low-FPR regime)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return atomic_write_bytes(path, buf.getvalue())
