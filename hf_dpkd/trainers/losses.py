"""Distillation losses over the vocabulary, computed in chunks of the sequence.

Every function returns per-sequence SUMS over the masked positions plus the token counts, so callers
form token means (CE and KD over the same positions), per-example losses (DP-SGD) or
`num_items_in_batch` normalisation from the same numbers. Only `chunk_size` positions of float32
log-softmax (student and teacher) exist at a time: peak memory does not scale with batch*seq*vocab twice.

Divergences follow trl's generalized JSD convention: beta = 0 is KL(teacher || student) ("forward",
the paper's), beta = 1 is KL(student || teacher) ("reverse"), 0 < beta < 1 the generalized JSD with the
mixture M = beta * teacher + (1 - beta) * student.

The causal-LM helpers at the end (`dp_forward_kwargs`, `causal_lm_labels`, `per_sequence_nll`) build the
per-example losses of DP-SGD: one example's value never depends on another example of the batch.
"""

from __future__ import annotations

import inspect
import math
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

KdLoss = Literal["forward_kl", "reverse_kl", "jsd"]
KD_LOSSES: tuple[str, ...] = get_args(KdLoss)


def _divergence(s_logp: torch.Tensor, t_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-position divergence [..] between teacher and student log-probs [.., V]."""
    if beta == 0.0:
        return (t_logp.exp() * (t_logp - s_logp)).sum(-1)
    if beta == 1.0:
        return (s_logp.exp() * (s_logp - t_logp)).sum(-1)
    m_logp = torch.logsumexp(torch.stack([s_logp + math.log1p(-beta), t_logp + math.log(beta)]), dim=0)
    kl_t = (t_logp.exp() * (t_logp - m_logp)).sum(-1)
    kl_s = (s_logp.exp() * (s_logp - m_logp)).sum(-1)
    return beta * kl_t + (1 - beta) * kl_s


def kd_beta(kind: str, jsd_beta: float = 0.5) -> float:
    if kind not in KD_LOSSES:
        raise ValueError(f"kd_loss={kind!r} is not supported; use one of {KD_LOSSES}.")
    return {"forward_kl": 0.0, "reverse_kl": 1.0}.get(kind, jsd_beta)


def _chunks(length: int, chunk_size: int | None):
    step = length if not chunk_size or chunk_size <= 0 else chunk_size
    for start in range(0, length, step):
        yield slice(start, min(length, start + step))


def kd_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    *,
    beta: float = 0.0,
    temperature: float = 1.0,
    chunk_size: int | None = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-sequence sum of the divergence over masked positions [B], token counts [B]); no t^2 factor."""
    if not temperature > 0:
        raise ValueError(f"temperature={temperature} must be > 0.")
    total = student_logits.new_zeros(student_logits.shape[0], dtype=torch.float32)
    for sl in _chunks(student_logits.shape[1], chunk_size):
        s = F.log_softmax(student_logits[:, sl].float() / temperature, dim=-1)
        t = F.log_softmax(teacher_logits[:, sl].float() / temperature, dim=-1)
        total = total + (_divergence(s, t, beta) * mask[:, sl]).sum(1)
    return total, mask.sum(1)


def kd_divergence_topk(
    student_logits: torch.Tensor,
    teacher_topk_indices: torch.Tensor,
    teacher_topk_logprobs: torch.Tensor,
    mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int | None = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward KL against a cached top-k teacher: the kept mass is renormalised, the tail is dropped.

    With k = vocab size (log-probs at temperature 1) it equals :func:`kd_divergence` at beta 0. Only the
    forward KL is defined this way: reverse KL and JSD need the whole teacher distribution.
    """
    total = student_logits.new_zeros(student_logits.shape[0], dtype=torch.float32)
    for sl in _chunks(student_logits.shape[1], chunk_size):
        s = F.log_softmax(student_logits[:, sl].float() / temperature, dim=-1)
        s_k = s.gather(-1, teacher_topk_indices[:, sl].long())
        t_k = F.log_softmax(teacher_topk_logprobs[:, sl].float() / temperature, dim=-1)  # renormalised top-k
        total = total + ((t_k.exp() * (t_k - s_k)).sum(-1) * mask[:, sl]).sum(1)
    return total, mask.sum(1)


def cross_entropy_sums(
    logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, chunk_size: int | None = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-sequence sum of NLL over masked positions [B], counts [B]), chunked like the KD terms."""
    total = logits.new_zeros(logits.shape[0], dtype=torch.float32)
    for sl in _chunks(logits.shape[1], chunk_size):
        lp = F.log_softmax(logits[:, sl].float(), dim=-1)
        nll = -lp.gather(-1, targets[:, sl].clamp(min=0).unsqueeze(-1)).squeeze(-1)
        total = total + (nll * mask[:, sl]).sum(1)
    return total, mask.sum(1)


class _CrossEntropyAndForwardKl(torch.autograd.Function):
    """Per-sequence sums of the student's NLL and of KL(teacher || student) at temperature T, in one pass per
    chunk, with the closed-form gradient: d NLL / d logits = softmax(s) - onehot(target),
    d KL / d logits = (softmax(s / T) - softmax(t / T)) / T.

    Autograd through :func:`cross_entropy_sums` and :func:`kd_divergence` keeps a log-softmax of each chunk for
    each loss and several [rows, chunk, vocab] intermediates for the backward; this keeps only the two
    log-sum-exps per position and recomputes the softmaxes in the backward, so it reads and writes the
    vocabulary-sized tensors about half as often, and holds none of them between forward and backward.
    """

    @staticmethod
    def forward(ctx, student_logits, teacher_logits, targets, mask, temperature, chunk_size):
        rows, length = student_logits.shape[:2]
        ce = student_logits.new_zeros(rows, dtype=torch.float32)
        kd = torch.zeros_like(ce)
        lse = student_logits.new_empty((rows, length), dtype=torch.float32)
        lse_t = torch.empty_like(lse)
        targets = targets.clamp(min=0)
        for sl in _chunks(length, chunk_size):
            s = student_logits[:, sl].float()
            lse[:, sl] = torch.logsumexp(s, dim=-1)
            nll = lse[:, sl] - s.gather(-1, targets[:, sl].unsqueeze(-1)).squeeze(-1)
            s_t = s / temperature if temperature != 1.0 else s
            lse_t[:, sl] = torch.logsumexp(s_t, dim=-1) if temperature != 1.0 else lse[:, sl]
            t = teacher_logits[:, sl].float()
            t_logp = F.log_softmax(t / temperature if temperature != 1.0 else t, dim=-1)
            # sum_v p_t (log p_t - log p_s), with log p_s = s_t - lse_t and sum_v p_t = 1
            div = (t_logp.exp() * (t_logp - s_t)).sum(-1) + lse_t[:, sl]
            ce = ce + (nll * mask[:, sl]).sum(1)
            kd = kd + (div * mask[:, sl]).sum(1)
        ctx.save_for_backward(student_logits, teacher_logits, targets, mask, lse, lse_t)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        return ce, kd

    @staticmethod
    def backward(ctx, grad_ce, grad_kd):
        student_logits, teacher_logits, targets, mask, lse, lse_t = ctx.saved_tensors
        temperature = ctx.temperature
        grad = torch.empty_like(student_logits)
        for sl in _chunks(student_logits.shape[1], ctx.chunk_size):
            s = student_logits[:, sl].float()
            w_ce = grad_ce[:, None] * mask[:, sl]  # [rows, chunk]
            w_kd = grad_kd[:, None] * mask[:, sl] / temperature
            p_s = (s - lse[:, sl, None]).exp_()
            if temperature == 1.0:
                g = p_s.mul_((w_ce + w_kd)[..., None])
            else:
                g = p_s.mul_(w_ce[..., None])
                g += (s / temperature - lse_t[:, sl, None]).exp_().mul_(w_kd[..., None])
            t = teacher_logits[:, sl].float()
            g -= F.softmax(t / temperature if temperature != 1.0 else t, dim=-1).mul_(w_kd[..., None])
            g.scatter_add_(-1, targets[:, sl].unsqueeze(-1), -w_ce.unsqueeze(-1))
            grad[:, sl] = g
        return grad, None, None, None, None, None


def cross_entropy_and_forward_kl_sums(
    student_logits: torch.Tensor,
    targets: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int | None = 64,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(:func:`cross_entropy_sums`' NLL sums, :func:`kd_divergence`'s forward-KL sums, token counts), both
    from one pass over the vocabulary-sized logits per chunk and a closed-form backward; no gradient flows to
    the teacher's logits."""
    if not temperature > 0:
        raise ValueError(f"temperature={temperature} must be > 0.")
    ce, kd = _CrossEntropyAndForwardKl.apply(
        student_logits, teacher_logits.detach(), targets, mask.float(), float(temperature), chunk_size
    )
    return ce, kd, mask.sum(1)


def resolve_layer_map(spec, student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """(student hidden-state index, teacher hidden-state index) pairs; index 0 is the embeddings,
    i is the output of block i. 'last' maps the final states, 'uniform' spreads the student's blocks."""
    if spec in (None, "last"):
        pairs = [(student_layers, teacher_layers)]
    elif spec == "uniform":
        pairs = [(i, round(i * teacher_layers / student_layers)) for i in range(1, student_layers + 1)]
    else:
        if isinstance(spec, str):
            spec = [tuple(int(x) for x in p.split(":")) for p in spec.split(",") if p.strip()]
        pairs = [(int(s), int(t)) for s, t in spec]
    for s, t in pairs:
        if not (0 <= s <= student_layers and 0 <= t <= teacher_layers):
            raise ValueError(
                f"layer_map pair ({s}, {t}) is out of range: the student has hidden states 0..{student_layers}, "
                f"the teacher 0..{teacher_layers}."
            )
    return pairs


class HiddenProjections(nn.Module):
    """Learned linear maps student hidden size -> teacher hidden size, one per mapped layer pair."""

    def __init__(self, pairs: list[tuple[int, int]], student_dim: int, teacher_dim: int):
        super().__init__()
        self.pairs = pairs
        self.maps = nn.ModuleList(
            [
                nn.Identity() if student_dim == teacher_dim else nn.Linear(student_dim, teacher_dim)
                for _ in pairs
            ]
        )


def hidden_alignment_sums(
    student_hidden: tuple[torch.Tensor, ...],
    teacher_hidden: tuple[torch.Tensor, ...],
    mask: torch.Tensor,
    projections: HiddenProjections,
    kind: str = "mse",
) -> torch.Tensor:
    """Per-sequence sum over masked positions of the mean over mapped layers of MSE (per dim) or 1 - cosine."""
    if kind not in ("mse", "cosine"):
        raise ValueError(f"hidden_loss={kind!r}; use 'mse' or 'cosine'.")
    total = mask.new_zeros(mask.shape[0], dtype=torch.float32)
    for (s_idx, t_idx), proj in zip(projections.pairs, projections.maps):
        hs = proj(student_hidden[s_idx].float())
        ht = teacher_hidden[t_idx].float()
        if kind == "mse":
            per_pos = ((hs - ht) ** 2).mean(-1)
        else:
            per_pos = 1 - F.cosine_similarity(hs, ht, dim=-1)
        total = total + (per_pos * mask).sum(1)
    return total / len(projections.pairs)


# -- causal-LM inputs and the per-example NLL ------------------------------------------------------
def dp_forward_kwargs(model: nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Forward kwargs for a causal LM under per-sample hooks: contiguous ids and per-row position_ids [B, T].

    Opacus needs a batch dimension on every input of a layer with trainable parameters; GPT-2 would
    otherwise broadcast a [1, T] position tensor into its position embedding.
    """
    kwargs: dict[str, torch.Tensor] = {"input_ids": inputs["input_ids"].contiguous()}
    attention_mask = inputs.get("attention_mask")
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask
    if _accepts_position_ids(model):
        if attention_mask is not None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        else:
            b, t = kwargs["input_ids"].shape
            position_ids = torch.arange(t, device=kwargs["input_ids"].device).expand(b, t)
        kwargs["position_ids"] = position_ids.contiguous()
    return kwargs


def _accepts_position_ids(model: nn.Module) -> bool:
    forward = getattr(model, "forward", None)
    inner = getattr(model, "_module", None)  # Opacus wrapper
    if inner is not None:
        forward = inner.forward
    try:
        params = inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return False
    return "position_ids" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def causal_lm_labels(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """`labels` if the collator made them, else input_ids with padding masked (-100)."""
    labels = inputs.get("labels")
    if labels is not None:
        return labels
    labels = inputs["input_ids"].clone()
    if inputs.get("attention_mask") is not None:
        labels[inputs["attention_mask"] == 0] = -100
    return labels


def per_sequence_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token NLL of each sequence over its own non-masked tokens: shape [B].

    One sample's value never depends on another sample (unlike HF's batch-mean `labels=` loss). The labels
    are shifted (the last position gets -100), not the logits: slicing [B, T-1, V] logits would copy them
    and scatter their gradient back into a zero [B, T, V] tensor, the largest tensors of the step.
    """
    shift_labels = F.pad(labels[:, 1:], (0, 1), value=-100)
    nll = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(),
        shift_labels.reshape(-1),
        ignore_index=-100,
        reduction="none",
    ).view(shift_labels.shape)
    counts = (shift_labels != -100).sum(dim=1).clamp(min=1)
    return nll.sum(dim=1) / counts
