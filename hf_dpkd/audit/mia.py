"""Membership inference attacks on a causal LM (Zhang et al. 2025 protocol).

Every attack maps a record to a membership score where HIGHER means "more likely a training member":
- loss:            -mean NLL of the text tokens
- zlib:            -(mean NLL) / (zlib-compressed byte length of the text)
- min_k:           mean of the lowest k% token log-probs (Min-K%, k = 20%)
- min_k_plus_plus: Min-K% of the per-token z-scores (logp - mu) / sigma (Min-K%++)
- reference:       reference loss - target loss (a reference model never saw the private data)
- mope:            mean over n Gaussian weight perturbations of (perturbed loss - loss); training members
                   sit in sharper minima, so their loss rises more (MoPe)

An AUC is read against the NO-LEAK level, not against 0.5: the same attack on the same records scored by a
model that never saw the private data (the public base). Members and non-members always differ a little in
difficulty, and the public base sees that difference too; only what the model adds on top is a leak.
"""

from __future__ import annotations

import copy
import zlib
from collections.abc import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from hf_dpkd.audit.metrics import (
    DEFAULT_CONFIDENCE,
    DEFAULT_FPR_TARGETS,
    DEFAULT_NUM_RESAMPLES,
    membership_metrics,
    paired_auc_difference,
)
from hf_dpkd.audit.scoring import Record, TextScores, as_records, record_losses, score_records

ATTACKS: tuple[str, ...] = ("loss", "zlib", "min_k", "min_k_plus_plus", "reference", "mope")

LEAK_RULE = (
    "A model leaks when, for at least one attack, the paired bootstrap interval of AUC(model) - AUC(no-leak "
    "model), both scored on the same members and non-members, lies entirely above 0. With k attacks each "
    "interval is at confidence 1 - (1 - c) / k (Bonferroni, c = the report's confidence), so a model that "
    "reveals no more than the no-leak model is flagged with probability at most about (1 - c) / 2."
)


def min_k_score(token_logprobs: np.ndarray, k: float = 0.2) -> float:
    """Mean of the lowest int(k * n) values (at least one): Min-K% on a token log-prob vector."""
    if not 0.0 < k <= 1.0:
        raise ValueError(f"k={k} must be a fraction in (0, 1]; use 0.2 for Min-20%")
    x = np.sort(np.asarray(token_logprobs, dtype=np.float64))
    if x.size == 0:
        return float("nan")
    n = max(1, int(x.size * k))
    return float(x[:n].mean())


def min_k_plus_plus_score(
    token_logprobs: np.ndarray, mu: np.ndarray, sigma: np.ndarray, k: float = 0.2, eps: float = 1e-12
) -> float:
    """Min-K% of the standardised log-probs (logp - mu) / sigma (Min-K%++)."""
    z = (np.asarray(token_logprobs) - np.asarray(mu)) / np.maximum(np.asarray(sigma), eps)
    return min_k_score(z, k)


def zlib_length(text: str) -> int:
    """Length in bytes of the zlib-compressed UTF-8 text (the zlib entropy proxy)."""
    return len(zlib.compress(text.encode("utf-8")))


def _check_scored(scores: Sequence[TextScores], argument: str) -> None:
    for i, s in enumerate(scores):
        if s.num_tokens == 0:
            raise ValueError(
                f"{argument}[{i}] has no text tokens to score; drop records with empty text "
                "(or a prefix that fills max_length)"
            )


def perturbed_losses(
    model: torch.nn.Module,
    tokenizer,
    records: Sequence[Record] | Sequence[str],
    sigma: float = 0.01,
    num_perturbations: int = 10,
    seed: int = 0,
    parameter_filter: Callable[[str, torch.nn.Parameter], bool] | None = None,
    batch_size: int = 8,
    max_length: int | None = None,
    show_progress: bool = True,
) -> np.ndarray:
    """Losses [num_perturbations, num_records] of copies of `model` whose selected parameters get
    N(0, sigma^2) noise. A deep copy is perturbed; the caller's model is never modified. Seeded."""
    if sigma <= 0:
        raise ValueError(f"sigma={sigma} must be > 0; the MoPe default is 0.01")
    if num_perturbations <= 0:
        raise ValueError(f"num_perturbations={num_perturbations} must be > 0; the MoPe default is 10")
    recs = as_records(records)
    work = copy.deepcopy(model)
    named = [(n, p) for n, p in work.named_parameters() if parameter_filter is None or parameter_filter(n, p)]
    if not named:
        raise ValueError("parameter_filter selected no parameter to perturb; check the filter")
    originals = [p.detach().clone() for _, p in named]
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out = np.empty((num_perturbations, len(recs)), dtype=np.float64)
    iterator = tqdm(range(num_perturbations), desc="MoPe", disable=not show_progress, leave=False)
    with torch.no_grad():
        for j in iterator:
            for (_, p), p0 in zip(named, originals):
                noise = torch.randn(p.shape, generator=gen, dtype=torch.float32) * sigma
                p.copy_(p0 + noise.to(device=p.device, dtype=p.dtype))
            out[j] = record_losses(work, tokenizer, recs, batch_size, max_length, show_progress=False)
    del work
    return out


def mope_scores(
    model: torch.nn.Module,
    tokenizer,
    records: Sequence[Record] | Sequence[str],
    base_losses: np.ndarray | None = None,
    sigma: float = 0.01,
    num_perturbations: int = 10,
    seed: int = 0,
    parameter_filter: Callable[[str, torch.nn.Parameter], bool] | None = None,
    batch_size: int = 8,
    max_length: int | None = None,
    show_progress: bool = True,
) -> np.ndarray:
    """MoPe statistic per record: mean over perturbed copies of (perturbed loss - unperturbed loss)."""
    if base_losses is None:
        base_losses = record_losses(model, tokenizer, records, batch_size, max_length, show_progress=False)
    losses = perturbed_losses(
        model,
        tokenizer,
        records,
        sigma,
        num_perturbations,
        seed,
        parameter_filter,
        batch_size,
        max_length,
        show_progress,
    )
    return (losses - np.asarray(base_losses)[None, :]).mean(axis=0)


def compute_membership_scores(
    model: torch.nn.Module,
    tokenizer,
    records: Sequence[Record] | Sequence[str],
    attacks: Sequence[str] = ("loss", "zlib", "min_k", "min_k_plus_plus"),
    reference_model: torch.nn.Module | None = None,
    reference_tokenizer=None,
    min_k_fraction: float = 0.2,
    mope_sigma: float = 0.01,
    mope_num_perturbations: int = 10,
    seed: int = 0,
    batch_size: int = 8,
    max_length: int | None = None,
    show_progress: bool = True,
    argument: str = "records",
) -> dict[str, np.ndarray]:
    """Membership score (higher = member) of every record under each attack. MoPe uses `seed`, so
    calls on members and on non-members perturb the weights identically."""
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown:
        raise ValueError(f"attacks={list(attacks)} has unknown {unknown}; choose from {list(ATTACKS)}")
    if "reference" in attacks and reference_model is None:
        raise ValueError(
            "attacks includes 'reference' but reference_model=None; pass a model that never saw the "
            "private data (e.g. the public pretrained base) or drop 'reference'"
        )
    recs = as_records(records, argument)
    need_stats = "min_k_plus_plus" in attacks
    scored = score_records(
        model, tokenizer, recs, batch_size, max_length, need_stats, show_progress, desc=f"scoring {argument}"
    )
    _check_scored(scored, argument)
    losses = np.array([s.loss for s in scored])
    out: dict[str, np.ndarray] = {}
    for attack in attacks:
        if attack == "loss":
            out[attack] = -losses
        elif attack == "zlib":
            out[attack] = -losses / np.array([max(1, zlib_length(t)) for _, t in recs], dtype=np.float64)
        elif attack == "min_k":
            out[attack] = np.array([min_k_score(s.token_logprobs, min_k_fraction) for s in scored])
        elif attack == "min_k_plus_plus":
            out[attack] = np.array(
                [min_k_plus_plus_score(s.token_logprobs, s.mu, s.sigma, min_k_fraction) for s in scored]
            )
        elif attack == "reference":
            if reference_model is model:  # the no-leak row of the reference itself: no second pass
                ref_losses = losses
            else:
                ref_losses = record_losses(
                    reference_model,
                    reference_tokenizer or tokenizer,
                    recs,
                    batch_size,
                    max_length,
                    show_progress,
                    desc=f"reference {argument}",
                )
            out[attack] = ref_losses - losses
        elif attack == "mope":
            out[attack] = mope_scores(
                model,
                tokenizer,
                recs,
                losses,
                mope_sigma,
                mope_num_perturbations,
                seed,
                None,
                batch_size,
                max_length,
                show_progress,
            )
    return out


def _attack_metrics(
    mem: dict[str, np.ndarray],
    non: dict[str, np.ndarray],
    attacks: Sequence[str],
    fpr_targets: Sequence[float],
    include_curves: bool,
    confidence: float,
    num_resamples: int,
    seed: int,
) -> dict[str, dict]:
    results: dict[str, dict] = {}
    for attack in attacks:
        entry = membership_metrics(
            mem[attack], non[attack], fpr_targets, include_curves, confidence, num_resamples, seed
        )
        entry["scores"] = {"members": mem[attack].tolist(), "non_members": non[attack].tolist()}
        results[attack] = entry
    return results


def compare_with_no_leak(
    results: dict[str, dict],
    no_leak_results: dict[str, dict],
    confidence: float = DEFAULT_CONFIDENCE,
    num_resamples: int = DEFAULT_NUM_RESAMPLES,
    seed: int = 0,
    no_leak_name: str = "no-leak model",
) -> dict[str, dict]:
    """Each attack's entry of `results` plus "no_leak" (the same metrics for a model that never saw the
    private data) and "vs_no_leak" (AUC difference, its paired interval at the per-attack level of
    `LEAK_RULE`, and "leaks"). Both arguments come from `run_membership_inference(..., return_scores=True)`
    on the same members and non-members, in the same order."""
    if num_resamples < 1:
        raise ValueError(f"num_resamples={num_resamples} must be >= 1 to compare with the no-leak model")
    missing = [a for a in results if a not in no_leak_results]
    if missing:
        raise ValueError(
            f"no_leak_results has no {missing} (it has {list(no_leak_results)}); score the no-leak model with "
            "the same attacks"
        )
    for name, res in (("results", results), ("no_leak_results", no_leak_results)):
        bare = [a for a in results if "scores" not in res[a]]
        if bare:
            raise ValueError(f"{name} for {bare} has no per-record scores; run it with return_scores=True")
    level = 1.0 - (1.0 - confidence) / len(results)
    out: dict[str, dict] = {}
    for attack, entry in results.items():
        base = no_leak_results[attack]
        diff = paired_auc_difference(
            entry["scores"]["members"],
            entry["scores"]["non_members"],
            base["scores"]["members"],
            base["scores"]["non_members"],
            level,
            num_resamples,
            seed,
        )
        out[attack] = {
            **entry,
            "no_leak": {k: v for k, v in base.items() if k not in ("scores", "roc")},
            "vs_no_leak": {
                "no_leak_model": no_leak_name,
                **diff,
                "family_confidence": confidence,
                "num_attacks": len(results),
                "leaks": bool(diff["interval"][0] > 0),
            },
        }
    return out


def membership_verdict(results: dict[str, dict]) -> dict | None:
    """The verdict of `LEAK_RULE` over the attacks of `compare_with_no_leak` (None without a no-leak model):
    {"leaks", "flagged_attacks", "no_leak_model", "confidence", "per_attack_confidence", "rule", "summary"}."""
    tested = {a: r["vs_no_leak"] for a, r in results.items() if "vs_no_leak" in r}
    if not tested:
        return None
    flagged = [a for a, t in tested.items() if t["leaks"]]
    first = next(iter(tested.values()))
    if flagged:
        summary = f"LEAKS: membership signal above the no-leak level ({first['no_leak_model']}) for {', '.join(flagged)}"
    else:
        summary = f"no leak detected above the no-leak level ({first['no_leak_model']}); this does not certify privacy"
    return {
        "leaks": bool(flagged),
        "flagged_attacks": flagged,
        "no_leak_model": first["no_leak_model"],
        "confidence": first["family_confidence"],
        "per_attack_confidence": first["confidence"],
        "rule": LEAK_RULE,
        "summary": summary,
    }


def run_membership_inference(
    model: torch.nn.Module,
    tokenizer,
    members: Sequence[Record] | Sequence[str],
    non_members: Sequence[Record] | Sequence[str],
    attacks: Sequence[str] | None = None,
    reference_model: torch.nn.Module | None = None,
    reference_tokenizer=None,
    min_k_fraction: float = 0.2,
    mope_sigma: float = 0.01,
    mope_num_perturbations: int = 10,
    seed: int = 0,
    batch_size: int = 8,
    max_length: int | None = None,
    fpr_targets: Sequence[float] = DEFAULT_FPR_TARGETS,
    include_curves: bool = True,
    return_scores: bool = False,
    show_progress: bool = True,
    no_leak_model: torch.nn.Module | None = None,
    no_leak_tokenizer=None,
    confidence: float = DEFAULT_CONFIDENCE,
    num_resamples: int = DEFAULT_NUM_RESAMPLES,
    no_leak_name: str = "no-leak model",
) -> dict[str, dict]:
    """Run each attack on members vs non-members; return attack -> {auc, tpr@fpr=25%, ..., intervals, roc}.

    `attacks=None` runs every attack, 'reference' only when a reference model is given. Every metric comes
    with a bootstrap interval over records (`confidence`, `num_resamples`, seeded by `seed`). With
    `no_leak_model` (a model that never saw the private data, e.g. the public base), that model is scored
    with the same attacks on the same records and each entry gains "no_leak" and "vs_no_leak"
    (`compare_with_no_leak`; `membership_verdict` reads them). With `return_scores`, each entry also holds
    the raw member and non-member scores.
    """
    if attacks is None:
        attacks = [a for a in ATTACKS if a != "reference" or reference_model is not None]
    if not members or not non_members:
        raise ValueError(
            f"members ({len(members)}) and non_members ({len(non_members)}) must both be non-empty"
        )
    common = dict(
        attacks=attacks,
        reference_model=reference_model,
        reference_tokenizer=reference_tokenizer or tokenizer,
        min_k_fraction=min_k_fraction,
        mope_sigma=mope_sigma,
        mope_num_perturbations=mope_num_perturbations,
        seed=seed,
        batch_size=batch_size,
        max_length=max_length,
        show_progress=show_progress,
    )
    metric_args = (attacks, fpr_targets, include_curves, confidence, num_resamples, seed)
    mem = compute_membership_scores(model, tokenizer, members, argument="members", **common)
    non = compute_membership_scores(model, tokenizer, non_members, argument="non_members", **common)
    results = _attack_metrics(mem, non, *metric_args)
    if no_leak_model is not None:
        base_tok = no_leak_tokenizer or tokenizer
        base_mem = compute_membership_scores(no_leak_model, base_tok, members, argument="members", **common)
        base_non = compute_membership_scores(
            no_leak_model, base_tok, non_members, argument="non_members", **common
        )
        no_leak = _attack_metrics(base_mem, base_non, *metric_args)
        results = compare_with_no_leak(results, no_leak, confidence, num_resamples, seed, no_leak_name)
    if not return_scores:
        for entry in results.values():
            entry.pop("scores")
    return results


__all__ = [
    "ATTACKS",
    "LEAK_RULE",
    "compare_with_no_leak",
    "compute_membership_scores",
    "membership_verdict",
    "min_k_plus_plus_score",
    "min_k_score",
    "mope_scores",
    "perturbed_losses",
    "run_membership_inference",
    "zlib_length",
]
