"""Membership inference attacks on a causal LM (Zhang et al. 2025 protocol).

Every attack maps a record to a membership score where HIGHER means "more likely a training member":
- loss:            -mean NLL of the text tokens
- zlib:            -(mean NLL) / (zlib-compressed byte length of the text)
- min_k:           mean of the lowest k% token log-probs (Min-K%, k = 20%)
- min_k_plus_plus: Min-K% of the per-token z-scores (logp - mu) / sigma (Min-K%++)
- reference:       reference loss - target loss (a reference model never saw the private data)
- mope:            mean over n Gaussian weight perturbations of (perturbed loss - loss); training members
                   sit in sharper minima, so their loss rises more (MoPe)
"""

from __future__ import annotations

import copy
import zlib
from collections.abc import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from hf_dpkd.audit.metrics import DEFAULT_FPR_TARGETS, membership_metrics
from hf_dpkd.audit.scoring import Record, TextScores, as_records, record_losses, score_records

ATTACKS: tuple[str, ...] = ("loss", "zlib", "min_k", "min_k_plus_plus", "reference", "mope")


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
) -> dict[str, dict]:
    """Run each attack on members vs non-members; return attack -> {auc, tpr@fpr=25%, ..., roc}.

    `attacks=None` runs every attack, 'reference' only when a reference model is given. With
    `return_scores`, each entry also holds the raw member and non-member scores.
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
        reference_tokenizer=reference_tokenizer,
        min_k_fraction=min_k_fraction,
        mope_sigma=mope_sigma,
        mope_num_perturbations=mope_num_perturbations,
        seed=seed,
        batch_size=batch_size,
        max_length=max_length,
        show_progress=show_progress,
    )
    mem = compute_membership_scores(model, tokenizer, members, argument="members", **common)
    non = compute_membership_scores(model, tokenizer, non_members, argument="non_members", **common)
    results: dict[str, dict] = {}
    for attack in attacks:
        entry = membership_metrics(mem[attack], non[attack], fpr_targets, include_curves)
        if return_scores:
            entry["scores"] = {"members": mem[attack].tolist(), "non_members": non[attack].tolist()}
        results[attack] = entry
    return results


__all__ = [
    "ATTACKS",
    "compute_membership_scores",
    "min_k_plus_plus_score",
    "min_k_score",
    "mope_scores",
    "perturbed_losses",
    "run_membership_inference",
    "zlib_length",
]
