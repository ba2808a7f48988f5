"""ROC metrics of a membership score (higher = more likely a member) and a ROC plot.

Conventions match scikit-learn: ties between a member and a non-member count one half in the AUC, and
TPR at FPR <= t is the largest TPR among the ROC points whose FPR does not exceed t.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from hf_dpkd._io import atomic_write_bytes

DEFAULT_FPR_TARGETS: tuple[float, ...] = (0.25, 0.05, 0.01, 0.001)


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


def membership_metrics(
    member_scores,
    non_member_scores,
    fpr_targets: Sequence[float] = DEFAULT_FPR_TARGETS,
    include_curve: bool = True,
) -> dict:
    """AUC, TPR at each FPR target, the counts, and (optionally) the ROC points for plotting."""
    pos, neg = _check_scores(member_scores, non_member_scores)
    fpr, tpr, _ = roc_curve(pos, neg)
    result: dict = {"auc": roc_auc(pos, neg)}
    for t in fpr_targets:
        result[fpr_key(t)] = tpr_at_fpr(fpr, tpr, t)
    result["num_members"] = int(pos.size)
    result["num_non_members"] = int(neg.size)
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
