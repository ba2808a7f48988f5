"""Per-block membership risk: MoPe with only one transformer block perturbed at a time.

Zhang et al. (2025) found that membership risk differs a lot between blocks; this recomputes the MoPe
statistic with Gaussian noise on one block's parameters and reports the attack AUC per block.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from hf_dpkd.audit.metrics import DEFAULT_FPR_TARGETS, membership_metrics
from hf_dpkd.audit.mia import mope_scores
from hf_dpkd.audit.scoring import Record, as_records, record_losses


def find_transformer_blocks(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList]:
    """(dotted path, ModuleList) of the model's transformer blocks, found generically: the longest
    ModuleList whose entries are all the same class (GPT-2 `transformer.h`, Llama `model.layers`, ...).
    PEFT wrappers work too, since the search walks every submodule."""
    best: tuple[str, torch.nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > 0:
            if len({type(m) for m in module}) == 1 and any(True for _ in module[0].parameters()):
                if best is None or len(module) > len(best[1]):
                    best = (name, module)
    if best is None:
        raise ValueError(
            f"{type(model).__name__} has no list of transformer blocks (a ModuleList of identical "
            "layers); per-block MoPe needs one"
        )
    return best


def per_block_mope(
    model: torch.nn.Module,
    tokenizer,
    members: Sequence[Record] | Sequence[str],
    non_members: Sequence[Record] | Sequence[str],
    sigma: float = 0.01,
    num_perturbations: int = 10,
    seed: int = 0,
    batch_size: int = 8,
    max_length: int | None = None,
    fpr_targets: Sequence[float] = DEFAULT_FPR_TARGETS,
    show_progress: bool = True,
) -> dict:
    """For each block i: MoPe scores with only block i perturbed, and the attack's AUC / TPR at FPR."""
    path, blocks = find_transformer_blocks(model)
    mem, non = as_records(members, "members"), as_records(non_members, "non_members")
    mem_base = record_losses(model, tokenizer, mem, batch_size, max_length, show_progress=False)
    non_base = record_losses(model, tokenizer, non, batch_size, max_length, show_progress=False)
    out = []
    for i in range(len(blocks)):
        head = f"{path}.{i}." if path else f"{i}."

        def in_block(name: str, _p: torch.nn.Parameter, head: str = head) -> bool:
            return name.startswith(head)

        kwargs = dict(
            sigma=sigma,
            num_perturbations=num_perturbations,
            seed=seed + i,
            parameter_filter=in_block,
            batch_size=batch_size,
            max_length=max_length,
            show_progress=show_progress,
        )
        m = mope_scores(model, tokenizer, mem, mem_base, **kwargs)
        n = mope_scores(model, tokenizer, non, non_base, **kwargs)
        entry = membership_metrics(m, n, fpr_targets, include_curve=False)
        entry.update(
            block=i,
            path=f"{path}.{i}" if path else str(i),
            member_mean=float(np.mean(m)),
            non_member_mean=float(np.mean(n)),
        )
        out.append(entry)
    return {"block_list": path, "sigma": sigma, "num_perturbations": num_perturbations, "blocks": out}
