"""DistillationConfig and DistillationTrainer: hard labels, soft labels and hidden states, off- or on-policy.

    loss = alpha_ce * CE + alpha_kd * t^2 * D(teacher_t || student_t) + alpha_hidden * H

CE and D are token means over the same positions (labels != -100, padding and masked prompt tokens
excluded) and respect `num_items_in_batch` under gradient accumulation. This is an ordinary Trainer with
no privacy code: the students trained on synthetic data from a DP teacher need none (post-processing).
Distillation with DP-SGD on private data (DPKD, DP-OPD) is `DPDistillationTrainer` in dp_distillation.py.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Literal

import torch
from transformers import Trainer, TrainingArguments

from hf_dpkd.trainers.inputs import with_trl_formats
from hf_dpkd.trainers.losses import (
    KD_LOSSES,
    HiddenProjections,
    KdLoss,
    causal_lm_labels,
    cross_entropy_and_forward_kl_sums,
    cross_entropy_sums,
    dp_forward_kwargs,
    hidden_alignment_sums,
    kd_beta,
    kd_divergence,
    kd_divergence_topk,
    resolve_layer_map,
)
from hf_dpkd.trainers.teacher_placement import place_teacher

TOPK_INDICES, TOPK_LOGPROBS = "teacher_topk_indices", "teacher_topk_logprobs"


@dataclass
class DistillationConfig(TrainingArguments):
    """TrainingArguments + distillation settings (no privacy: see DPDistillationConfig for DPKD / DP-OPD)."""

    alpha_ce: float = field(
        default=0.6, metadata={"help": "Weight of the hard-label CE (paper: 1 - lambda = 0.6)."}
    )
    alpha_kd: float = field(
        default=0.4, metadata={"help": "Weight of the soft-label divergence (paper: lambda = 0.4)."}
    )
    temperature: float = field(
        default=1.0, metadata={"help": "Distillation temperature t (the KD term is scaled by t^2)."}
    )
    kd_loss: KdLoss = field(default="forward_kl", metadata={"help": "forward_kl (paper), reverse_kl or jsd."})
    jsd_beta: float = field(
        default=0.5, metadata={"help": "Mixture weight of the generalized JSD (kd_loss='jsd')."}
    )
    alpha_hidden: float = field(default=0.0, metadata={"help": "Weight of the hidden-state alignment term."})
    hidden_loss: Literal["mse", "cosine"] = field(
        default="mse", metadata={"help": "Hidden alignment: 'mse' or 'cosine'."}
    )
    layer_map: str = field(
        default="last",
        metadata={
            "help": "Student->teacher hidden states: 'last', 'uniform', or pairs 's:t,s:t' (0 = embeddings)."
        },
    )
    loss_chunk_size: int = field(
        default=64, metadata={"help": "Sequence positions per chunk of the vocabulary losses."}
    )
    on_policy_ratio: float = field(
        default=0.0,
        metadata={"help": "Share of steps trained on the student's own rollouts scored by the teacher."},
    )
    on_policy_max_new_tokens: int = field(
        default=48, metadata={"help": "Tokens sampled per on-policy rollout."}
    )
    on_policy_temperature: float = field(
        default=1.0, metadata={"help": "Sampling temperature of the rollouts."}
    )

    def __post_init__(self):
        super().__post_init__()
        if min(self.alpha_ce, self.alpha_kd, self.alpha_hidden) < 0:
            raise ValueError(
                f"alpha_ce={self.alpha_ce}, alpha_kd={self.alpha_kd}, alpha_hidden={self.alpha_hidden}: weights must be >= 0."
            )
        if self.alpha_ce + self.alpha_kd + self.alpha_hidden == 0:
            raise ValueError(
                "alpha_ce, alpha_kd and alpha_hidden are all 0: nothing to train; e.g. alpha_ce=0.6, alpha_kd=0.4."
            )
        if not self.temperature > 0:
            raise ValueError(f"temperature={self.temperature} must be > 0 (paper: 1.0).")
        if self.kd_loss not in KD_LOSSES:
            raise ValueError(f"kd_loss={self.kd_loss!r} is not supported; use one of {KD_LOSSES}.")
        if not 0 <= self.jsd_beta <= 1:
            raise ValueError(f"jsd_beta={self.jsd_beta} must lie in [0, 1].")
        if self.hidden_loss not in ("mse", "cosine"):
            raise ValueError(f"hidden_loss={self.hidden_loss!r}; use 'mse' or 'cosine'.")
        if not 0 <= self.on_policy_ratio <= 1:
            raise ValueError(f"on_policy_ratio={self.on_policy_ratio} must lie in [0, 1].")


class DistillationTrainer(Trainer):
    """Trains `model` (the student) against a frozen `teacher_model` that is never saved with it."""

    model_card_kind = "student"

    def __init__(self, model=None, teacher_model=None, args: DistillationConfig | None = None, **kw):
        if teacher_model is None:
            raise ValueError(
                "DistillationTrainer needs teacher_model= (a causal LM sharing the student's vocabulary)."
            )
        if args is None or not isinstance(args, DistillationConfig):
            raise TypeError("DistillationTrainer needs args=DistillationConfig(...).")
        self._check_vocab(model, teacher_model)
        self._teacher_source = getattr(getattr(teacher_model, "config", None), "_name_or_path", "") or ""
        self.projections: HiddenProjections | None = None
        if args.alpha_hidden > 0:
            s_cfg, t_cfg = model.config, teacher_model.config
            pairs = resolve_layer_map(args.layer_map, s_cfg.num_hidden_layers, t_cfg.num_hidden_layers)
            self.projections = HiddenProjections(pairs, s_cfg.hidden_size, t_cfg.hidden_size)
        super().__init__(**with_trl_formats((), {"model": model, "args": args, **kw}))
        self.teacher = place_teacher(teacher_model, self)
        if self.projections is not None:
            self.projections.to(self.args.device)
        self.loss_is_scaled_for_ga = True  # compute_loss divides by num_items_in_batch itself
        self._policy_rng = random.Random(args.seed)

    @staticmethod
    def _check_vocab(student, teacher) -> None:
        # ds_shape: the full shape of a parameter partitioned by ZeRO-3 (its .shape is then empty)
        s = getattr(w := student.get_output_embeddings().weight, "ds_shape", w.shape)[0]
        t = getattr(w := teacher.get_output_embeddings().weight, "ds_shape", w.shape)[0]
        if s != t:
            raise ValueError(
                f"Teacher and student vocabularies differ (teacher {t} rows, student {s} rows): soft labels need one "
                "tokenizer. Use a student built for the teacher's tokenizer (resize_token_embeddings to match)."
            )

    # -- optimizer: the projections train with the student, outside its checkpoint ---------------------
    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        if self.projections is not None and not any(
            p is q for g in optimizer.param_groups for p in g["params"] for q in self.projections.parameters()
        ):
            params = [p for p in self.projections.parameters() if p.requires_grad]
            if params:
                optimizer.add_param_group({"params": params, "weight_decay": 0.0})
        return optimizer

    # -- the loss -------------------------------------------------------------------------------------
    def _loss_terms(self, model, inputs, need_hidden: bool):
        """Per-sequence sums (ce, kd, hidden) and token counts; the teacher runs without gradients."""
        args = self.args
        labels = causal_lm_labels(inputs)
        fwd = dp_forward_kwargs(model, inputs)
        out = model(**fwd, output_hidden_states=need_hidden)
        targets = labels[:, 1:]
        mask = (targets != -100).float()
        s_logits = out.logits[:, :-1]
        beta = kd_beta(args.kd_loss, args.jsd_beta)
        cached_kd = args.alpha_kd > 0 and TOPK_INDICES in inputs
        t_out = None
        if not cached_kd and (args.alpha_kd > 0 or need_hidden):
            with torch.no_grad():
                t_out = self.teacher(
                    **dp_forward_kwargs(self.teacher, inputs), output_hidden_states=need_hidden
                )
        if args.alpha_kd > 0 and not cached_kd and beta == 0.0:  # the paper's loss: CE and forward KL fused
            ce, kd, counts = cross_entropy_and_forward_kl_sums(
                s_logits,
                targets,
                t_out.logits[:, :-1],
                mask,
                temperature=args.temperature,
                chunk_size=args.loss_chunk_size,
            )
            return ce, kd, *self._hidden_sums(out, t_out, inputs, need_hidden, counts), counts, out
        ce, counts = cross_entropy_sums(s_logits, targets, mask, args.loss_chunk_size)
        kd = torch.zeros_like(ce)
        if cached_kd:
            kd, _ = kd_divergence_topk(
                s_logits,
                inputs[TOPK_INDICES][:, :-1],
                inputs[TOPK_LOGPROBS][:, :-1],
                mask,
                temperature=args.temperature,
                chunk_size=args.loss_chunk_size,
            )
        elif args.alpha_kd > 0:
            kd, _ = kd_divergence(
                s_logits,
                t_out.logits[:, :-1],
                mask,
                beta=beta,
                temperature=args.temperature,
                chunk_size=args.loss_chunk_size,
            )
        hidden, hidden_counts = self._hidden_sums(out, t_out, inputs, need_hidden, counts)
        return ce, kd, hidden, counts, hidden_counts, out

    def _hidden_sums(self, out, t_out, inputs, need_hidden: bool, counts):
        """(per-sequence hidden-state alignment sums, their position counts); zeros over `counts` without it."""
        if not need_hidden:
            return torch.zeros_like(counts, dtype=torch.float32), counts
        pos = inputs.get("attention_mask", torch.ones_like(inputs["input_ids"])).float()
        hidden = hidden_alignment_sums(
            out.hidden_states, t_out.hidden_states, pos, self.projections, self.args.hidden_loss
        )
        return hidden, pos.sum(1)

    def _combine(self, ce, kd, hidden):
        a = self.args
        return a.alpha_ce * ce + a.alpha_kd * a.temperature**2 * kd, a.alpha_hidden * hidden

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        need_hidden = self.projections is not None
        ce, kd, hidden, counts, hidden_counts, out = self._loss_terms(model, inputs, need_hidden)
        token_terms, hidden_term = self._combine(ce, kd, hidden)
        denom = num_items_in_batch if num_items_in_batch is not None else counts.sum()
        loss = token_terms.sum() / torch.as_tensor(denom, device=ce.device).clamp(min=1)
        if need_hidden:
            loss = loss + hidden_term.sum() / hidden_counts.sum().clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes
        return (loss, out) if return_outputs else loss

    # -- on-policy ----------------------------------------------------------------------------------
    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.args.on_policy_ratio > 0 and self._policy_rng.random() < self.args.on_policy_ratio:
            return self._on_policy_step(model, inputs)
        return super().training_step(model, inputs, num_items_in_batch)

    def _on_policy_step(self, model, inputs):
        """Student rollouts from the batch prompts, trained on the teacher's token distributions (GKD-style).

        The prompts are the control-code prefixes (positions before the first label != -100, or before the
        first prompt-end token run); no private record is read when the teacher is DP: post-processing.
        """
        inputs = self._prepare_inputs(inputs)
        prompts = self._prompts(inputs)
        unwrapped = self.accelerator.unwrap_model(model)
        tok = self.processing_class
        pad_id = tok.pad_token_id if tok is not None and tok.pad_token_id is not None else 0
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad_id, dtype=torch.long, device=self.args.device)
        attn = torch.zeros_like(ids)
        for i, p in enumerate(prompts):  # left padding
            ids[i, width - len(p) :] = p
            attn[i, width - len(p) :] = 1
        unwrapped.eval()
        with torch.no_grad():
            gen = unwrapped.generate(
                input_ids=ids,
                attention_mask=attn,
                do_sample=True,
                temperature=self.args.on_policy_temperature,
                max_new_tokens=self.args.on_policy_max_new_tokens,
                pad_token_id=pad_id,
                eos_token_id=getattr(tok, "eos_token_id", None),
            )
        model.train()
        new_attn = torch.cat([attn, (gen[:, width:] != pad_id).long()], dim=1)
        labels = gen.clone()
        labels[:, :width] = -100
        labels[new_attn == 0] = -100
        rollout = {"input_ids": gen, "attention_mask": new_attn, "labels": labels}
        with self.compute_loss_context_manager():
            kd, counts = self._rollout_divergence(model, rollout)
            loss = self.args.temperature**2 * kd.sum() / counts.sum().clamp(min=1)
        self.accelerator.backward(loss / self.current_gradient_accumulation_steps)
        return loss.detach() / self.current_gradient_accumulation_steps

    def _rollout_divergence(self, model, rollout) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row divergence sums (teacher vs student, grad through the student) and token counts, over the
        labelled (continuation) tokens of `rollout`; the frozen teacher runs without gradients."""
        args = self.args
        s_logits = model(**dp_forward_kwargs(model, rollout)).logits[:, :-1]
        with torch.no_grad():
            t_logits = self.teacher(**dp_forward_kwargs(self.teacher, rollout)).logits[:, :-1]
        mask = (rollout["labels"][:, 1:] != -100).float()
        return kd_divergence(
            s_logits,
            t_logits,
            mask,
            beta=kd_beta(args.kd_loss, args.jsd_beta),
            temperature=args.temperature,
            chunk_size=args.loss_chunk_size,
        )

    @staticmethod
    def _prompts(inputs) -> list[torch.Tensor]:
        """The prompt of each row: tokens before the first label != -100, else the first quarter of the text."""
        labels = inputs.get("labels")
        ids, attn = inputs["input_ids"], inputs.get("attention_mask", torch.ones_like(inputs["input_ids"]))
        out = []
        for i in range(ids.shape[0]):
            valid = ids[i][attn[i] == 1]
            start = None
            if labels is not None:
                nz = (labels[i] != -100).nonzero()
                start = int(nz[0]) if len(nz) and int(nz[0]) > 0 else None
            if start is None:
                start = max(1, len(valid) // 4)
            out.append(valid[:start])
        return out
