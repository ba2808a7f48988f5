"""DistillationConfig and DistillationTrainer: hard labels, soft labels and hidden states, off- or on-policy.

    loss = alpha_ce * CE + alpha_kd * t^2 * D(teacher_t || student_t) + alpha_hidden * H

CE and D are token means over the same positions (labels != -100, padding and masked prompt tokens
excluded) and respect `num_items_in_batch` under gradient accumulation. Without privacy settings this
is an ordinary Trainer (for students trained on synthetic data: post-processing, no noise). With
`target_epsilon` or `noise_multiplier` it trains with DPTrainer's DP-SGD on private data and adds its
release to the ledger: the DPKD baseline, or with `dp_opd=True` DP-OPD (Khadem et al. 2026): each
example's loss is the divergence on the student's own continuation of that example's prompt, the rollout
inside the clipped per-example computation.
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from hf_dpkd.privacy.accounting import LEDGER_FILENAME, PrivacyLedger
from hf_dpkd.trainers.dp import DPConfig, DPTrainer, causal_lm_labels, dp_forward_kwargs
from hf_dpkd.trainers.losses import (
    KD_LOSSES,
    HiddenProjections,
    cross_entropy_sums,
    hidden_alignment_sums,
    kd_beta,
    kd_divergence,
    kd_divergence_topk,
    resolve_layer_map,
)
from hf_dpkd.trainers.teacher_placement import place_teacher

TOPK_INDICES, TOPK_LOGPROBS = "teacher_topk_indices", "teacher_topk_logprobs"


@dataclass
class DistillationConfig(DPConfig):
    """TrainingArguments + distillation settings (+ optional DP-SGD settings for the DPKD baseline)."""

    _privacy_required: ClassVar[bool] = False

    privacy_release_name: str = field(
        default="dp_distillation",
        metadata={"help": "Name of this DP distillation's entry in the privacy ledger (DPKD baseline)."},
    )
    teacher_is_public: bool = field(
        default=False,
        metadata={
            "help": "With DP-SGD: declare that the teacher never saw the private data (e.g. a public base model), "
            "so its outputs cost nothing. Otherwise the teacher must carry a privacy ledger (its DP-SGD release "
            "on the same data), which is composed into this training's."
        },
    )
    alpha_ce: float = field(
        default=0.6, metadata={"help": "Weight of the hard-label CE (paper: 1 - lambda = 0.6)."}
    )
    alpha_kd: float = field(
        default=0.4, metadata={"help": "Weight of the soft-label divergence (paper: lambda = 0.4)."}
    )
    temperature: float = field(
        default=1.0, metadata={"help": "Distillation temperature t (the KD term is scaled by t^2)."}
    )
    kd_loss: str = field(default="forward_kl", metadata={"help": "forward_kl (paper), reverse_kl or jsd."})
    jsd_beta: float = field(
        default=0.5, metadata={"help": "Mixture weight of the generalized JSD (kd_loss='jsd')."}
    )
    alpha_hidden: float = field(default=0.0, metadata={"help": "Weight of the hidden-state alignment term."})
    hidden_loss: str = field(default="mse", metadata={"help": "Hidden alignment: 'mse' or 'cosine'."})
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
    dp_opd: bool = field(
        default=False,
        metadata={
            "help": "DP-OPD (needs target_epsilon or noise_multiplier): every DP-SGD step trains on the student's own "
            "continuation of each private example's prompt, scored by the teacher (kd_loss on the continuation "
            "tokens; 'jsd' is DP-OPD's generalized JSD). The rollout is part of the example's clipped loss. The "
            "teacher must be DP (its ledger is composed) or public (teacher_is_public=True)."
        },
    )
    dp_opd_prompt_tokens: int = field(
        default=8,
        metadata={
            "help": "DP-OPD: tokens of each private text kept in its prompt after the masked prefix (the control "
            "codes: labels -100); the student continues from there."
        },
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
        if self.dp_opd:
            self._validate_dp_opd()
        if self.dp_enabled and (self.alpha_hidden > 0 or (self.on_policy_ratio > 0 and not self.dp_opd)):
            raise ValueError(
                "With DP-SGD (DPKD) only alpha_ce and alpha_kd are supported: set alpha_hidden=0 and on_policy_ratio=0 "
                "(the projection would need its own per-sample clipping; on-policy training under DP-SGD is "
                "dp_opd=True, which puts each example's rollout inside its clipped loss)."
            )

    def _validate_dp_opd(self) -> None:
        if not self.dp_enabled:
            raise ValueError(
                "dp_opd=True is DP-OPD: DP-SGD on the student's rollouts of PRIVATE prompts; give target_epsilon "
                "(e.g. 2.0) or noise_multiplier (disable_dp=True only to debug). Without DP, on-policy distillation "
                "from a DP teacher on control-code prompts is on_policy_ratio=1.0 (post-processing, no noise)."
            )
        if self.on_policy_ratio not in (0.0, 1.0):
            raise ValueError(
                f"dp_opd=True trains every step on-policy; on_policy_ratio={self.on_policy_ratio} (a share of "
                "steps, without DP only) must be 0 or 1 with it."
            )
        if self.dp_opd_prompt_tokens < 0:
            raise ValueError(
                f"dp_opd_prompt_tokens={self.dp_opd_prompt_tokens} must be >= 0 (text tokens kept in each prompt "
                "after its control codes, e.g. 8)."
            )
        if self.on_policy_max_new_tokens < 1:
            raise ValueError(
                f"on_policy_max_new_tokens={self.on_policy_max_new_tokens} must be >= 1 (tokens per rollout, e.g. 32)."
            )
        if not self.on_policy_temperature > 0:
            raise ValueError(f"on_policy_temperature={self.on_policy_temperature} must be > 0 (e.g. 1.0).")
        if self.privacy_release_name == "dp_distillation":  # the default name: say what ran
            self.privacy_release_name = "dp_opd"


class DistillationTrainer(DPTrainer):
    """Trains `model` (the student) against a frozen `teacher_model` that is never saved with it."""

    def __init__(
        self,
        model=None,
        teacher_model=None,
        args: DistillationConfig | None = None,
        teacher_privacy_ledger: PrivacyLedger | None = None,
        **kw,
    ):
        if teacher_model is None:
            raise ValueError(
                "DistillationTrainer needs teacher_model= (a causal LM sharing the student's vocabulary)."
            )
        if args is None or not isinstance(args, DistillationConfig):
            raise TypeError("DistillationTrainer needs args=DistillationConfig(...).")
        self._check_vocab(model, teacher_model)
        if args.dp_opd:
            self._check_dp_opd(model, teacher_model, args, kw.get("train_dataset"))
        self._teacher_ledger = teacher_privacy_ledger
        self._teacher_source = getattr(getattr(teacher_model, "config", None), "_name_or_path", "") or ""
        self.projections: HiddenProjections | None = None
        if args.alpha_hidden > 0:
            s_cfg, t_cfg = model.config, teacher_model.config
            pairs = resolve_layer_map(args.layer_map, s_cfg.num_hidden_layers, t_cfg.num_hidden_layers)
            self.projections = HiddenProjections(pairs, s_cfg.hidden_size, t_cfg.hidden_size)
        super().__init__(model=model, args=args, **kw)
        self.teacher = place_teacher(teacher_model, self)
        if self.projections is not None:
            self.projections.to(self.args.device)
        self.loss_is_scaled_for_ga = True  # compute_loss divides by num_items_in_batch itself
        self._policy_rng = random.Random(args.seed)

    model_card_kind = "student"

    # -- privacy: what the teacher's outputs cost -----------------------------------------------------
    def _prior_ledger(self, ledger: PrivacyLedger) -> PrivacyLedger:
        """Under DP-SGD every example's loss reads the teacher, so the teacher's releases are composed in.

        A teacher trained on the private data WITHOUT DP would make one example's gradient depend on every
        other record, and no epsilon would hold: it is refused unless declared public (never saw the data).
        """
        args = self.args
        if args.disable_dp or args.teacher_is_public:
            return ledger
        columns = getattr(self.train_dataset, "column_names", None) or []
        precomputed = TOPK_INDICES in columns
        teacher = self._teacher_ledger
        if teacher is None and not precomputed:
            folder = self._teacher_source
            if folder and os.path.isfile(os.path.join(folder, LEDGER_FILENAME)):
                teacher = PrivacyLedger.load(folder)
        if teacher is None:
            where = (
                f"the {TOPK_INDICES!r} columns of train_dataset (give the ledger of the teacher that computed "
                "them as teacher_privacy_ledger=)"
                if precomputed
                else f"the teacher (loaded from {self._teacher_source or 'memory'!r}, no {LEDGER_FILENAME} there)"
            )
            method = (
                "DP-OPD (its 'frozen, non-private' teacher scores every private example's rollout)"
                if args.dp_opd
                else "DP distillation"
            )
            raise ValueError(
                f"{method} reads {where}, whose privacy is unknown. If the teacher was trained on this "
                "private data without DP, every example's loss depends on other records and no epsilon holds. "
                "Give a DP teacher (a folder written by DPTrainer, or teacher_privacy_ledger=its ledger), or set "
                "teacher_is_public=True for a teacher that never saw the private data (e.g. a public base model)."
            )
        n = self.dp_num_examples
        for r in teacher.releases:
            other = r.meta.get("num_examples")
            if r.is_private and r.sample_rate < 1 and other is not None and int(other) != n:
                raise ValueError(
                    f"The teacher's release {r.name!r} was DP-SGD over {other} rows, but this training's data has "
                    f"{n}: its ledger is not about the same private data. Distil from a teacher trained on this "
                    "dataset, or set teacher_is_public=True if the teacher never saw it."
                )
        return ledger.compose(teacher)

    def model_card_method(self) -> dict[str, Any]:
        a = self.args
        if a.dp_opd:
            method = {
                "name": "DP-OPD (on-policy distillation with DP-SGD on the student's rollouts of private prompts)",
                "student_data": "private",
                "kd_loss": a.kd_loss,
                "jsd_beta": a.jsd_beta,
                "temperature": a.temperature,
                "rollout_max_new_tokens": a.on_policy_max_new_tokens,
                "prompt_text_tokens": a.dp_opd_prompt_tokens,
                "teacher": "public (declared)" if a.teacher_is_public else "DP (its ledger composed)",
            }
            return {**super().model_card_method(), **method}
        method = {
            "name": "DPKD (distillation with DP-SGD on private data)",
            "student_data": "private",
            "alpha_ce": a.alpha_ce,
            "alpha_kd": a.alpha_kd,
            "temperature": a.temperature,
            "kd_loss": a.kd_loss,
        }
        return {**super().model_card_method(), **method}

    @staticmethod
    def _check_dp_opd(student, teacher, args: DistillationConfig, train_dataset) -> None:
        """DP-OPD scores the student's rollouts online: no precomputed teacher columns; rollouts must fit."""
        columns = getattr(train_dataset, "column_names", None) or []
        if TOPK_INDICES in columns:
            raise ValueError(
                f"dp_opd=True: the teacher scores the student's own rollouts, so the precomputed {TOPK_INDICES!r} "
                "columns of train_dataset cannot be used; remove them and pass the teacher as teacher_model=."
            )
        limits = [
            getattr(getattr(m, "config", None), "max_position_embeddings", None) for m in (student, teacher)
        ]
        limits = [int(x) for x in limits if x]
        if limits and min(limits) <= args.on_policy_max_new_tokens:
            raise ValueError(
                f"on_policy_max_new_tokens={args.on_policy_max_new_tokens} leaves no room for a prompt within the "
                f"models' {min(limits)} positions; lower it (e.g. to {min(limits) // 2})."
            )

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
        ce, counts = cross_entropy_sums(s_logits, targets, mask, args.loss_chunk_size)
        kd = torch.zeros_like(ce)
        hidden = torch.zeros_like(ce)
        t_out = None
        if args.alpha_kd > 0 and TOPK_INDICES in inputs:
            kd, _ = kd_divergence_topk(
                s_logits,
                inputs[TOPK_INDICES][:, :-1],
                inputs[TOPK_LOGPROBS][:, :-1],
                mask,
                temperature=args.temperature,
                chunk_size=args.loss_chunk_size,
            )
        elif args.alpha_kd > 0 or need_hidden:
            with torch.no_grad():
                t_out = self.teacher(
                    **dp_forward_kwargs(self.teacher, inputs), output_hidden_states=need_hidden
                )
            if args.alpha_kd > 0:
                kd, _ = kd_divergence(
                    s_logits,
                    t_out.logits[:, :-1],
                    mask,
                    beta=kd_beta(args.kd_loss, args.jsd_beta),
                    temperature=args.temperature,
                    chunk_size=args.loss_chunk_size,
                )
        if need_hidden:
            pos = inputs.get("attention_mask", torch.ones_like(inputs["input_ids"])).float()
            hidden = hidden_alignment_sums(
                out.hidden_states, t_out.hidden_states, pos, self.projections, args.hidden_loss
            )
            hidden_counts = pos.sum(1)
        else:
            hidden_counts = counts
        return ce, kd, hidden, counts, hidden_counts, out

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

    def compute_per_sample_loss(self, model, inputs):
        """DPKD: each example's (alpha_ce * CE + alpha_kd * t^2 * KD) token mean; depends on that example only.

        DP-OPD (`dp_opd=True`): t^2 * D(teacher || student) token mean over the continuation the student
        sampled from the example's own prompt (see `_dp_opd_rollouts`)."""
        if self.args.dp_opd:
            return self._dp_opd_per_sample_loss(model, inputs)
        ce, kd, _, counts, _, _ = self._loss_terms(model, inputs, need_hidden=False)
        token_terms, _ = self._combine(ce, kd, torch.zeros_like(ce))
        return token_terms / counts.clamp(min=1)

    # -- on-policy ----------------------------------------------------------------------------------
    def training_step(self, model, inputs, num_items_in_batch=None):
        if (
            not self.args.dp_enabled
            and self.args.on_policy_ratio > 0
            and self._policy_rng.random() < self.args.on_policy_ratio
        ):
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

    # -- DP-OPD: on-policy distillation under DP-SGD ------------------------------------------------
    def _dp_opd_per_sample_loss(self, model, inputs) -> torch.Tensor:
        """[B]: row i's divergence token mean over ITS rollout; row i's value depends on row i only.

        The rollouts are sampled without gradients; the student then runs one ordinary grad-enabled forward on
        the rollout batch through `model` (the per-sample clipping wrapper), so the whole per-example loss,
        rollout included, is what gets clipped.
        """
        kd, counts = self._rollout_divergence(model, self._dp_opd_rollouts(inputs))
        return self.args.temperature**2 * kd / counts.clamp(min=1)

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

    def _dp_opd_rollouts(self, inputs) -> dict[str, torch.Tensor]:
        """The student's continuation of each row's prompt, as a left-padded batch with labels on the continuation.

        Row i's prompt (`_dp_opd_prompts`) and its sampling generator (seeded from the public seed, the step and
        row i's tokens) are functions of row i alone, and every row samples with its own generator, so
        row i's rollout does not depend on the other rows of the batch. The continuation ends at the first eos
        (kept: the student learns when the teacher stops).
        """
        args = self.args
        device = inputs["input_ids"].device
        student = self.model  # the model itself (hooks attached), not the clipping wrapper
        tok = self.processing_class
        cfg = getattr(student, "config", None)
        eos = getattr(tok, "eos_token_id", None)
        if eos is None:
            eos = getattr(cfg, "eos_token_id", None)
        eos_ids = [int(e) for e in (eos if isinstance(eos, list | tuple) else [eos]) if e is not None]
        pad_id = getattr(tok, "pad_token_id", None)
        if pad_id is None:
            pad_id = getattr(cfg, "pad_token_id", None)
        if pad_id is None:
            pad_id = eos_ids[0] if eos_ids else 0
        new_tokens = args.on_policy_max_new_tokens
        room = [
            getattr(getattr(m, "config", None), "max_position_embeddings", None)
            for m in (student, self.teacher)
        ]
        room = [int(x) - new_tokens for x in room if x]
        prompts = self._dp_opd_prompts(inputs, args.dp_opd_prompt_tokens)
        if room:
            prompts = [p[: min(room)] for p in prompts]  # per row: fits with a full rollout
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad_id, dtype=torch.long, device=device)
        attn = torch.zeros_like(ids)
        for i, p in enumerate(prompts):  # left padding: every row continues at the same column
            ids[i, width - len(p) :] = p
            attn[i, width - len(p) :] = 1
        step = int(getattr(self.state, "global_step", 0) or 0)
        attn_in = inputs.get("attention_mask", torch.ones_like(inputs["input_ids"]))
        rows = [row[keep == 1] for row, keep in zip(inputs["input_ids"], attn_in)]
        generators = [self._dp_opd_generator(row, step, device) for row in rows]
        # Plain sampling of the student (no penalties from its generation_config): the per-row sampler draws,
        # and greedy decoding takes the one token it leaves allowed.
        generation = GenerationConfig(
            max_new_tokens=new_tokens,
            do_sample=False,
            num_beams=1,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            pad_token_id=pad_id,
            eos_token_id=eos_ids or None,
        )
        was_training = student.training
        student.eval()
        try:
            with torch.no_grad():
                gen = student.generate(
                    input_ids=ids,
                    attention_mask=attn,
                    generation_config=generation,
                    logits_processor=LogitsProcessorList(
                        [_PerRowSampler(generators, args.on_policy_temperature)]
                    ),
                )
        finally:
            student.train(was_training)
        cont = gen[:, width:]
        is_eos = torch.isin(cont, torch.tensor(eos_ids, device=device)) if eos_ids else torch.zeros_like(cont)
        is_eos = is_eos.long()
        keep = ((is_eos.cumsum(1) - is_eos) == 0).long()  # up to and including the first eos
        labels = torch.full_like(gen, -100)
        labels[:, width:] = torch.where(keep.bool(), cont, torch.full_like(cont, -100))
        return {
            "input_ids": gen.contiguous(),
            "attention_mask": torch.cat([attn, keep], dim=1),
            "labels": labels,
        }

    def _dp_opd_generator(self, row: torch.Tensor, step: int, device) -> torch.Generator:
        """A generator for one row's rollout, seeded from the public training seed, the optimizer step and the
        row's own tokens (a function of that row alone: two records sharing a prompt still get their own
        draws); never from the secret DP seed, never shared between rows."""
        digest = hashlib.sha256(f"dp-opd-rollout:{self.args.seed}:{step}:".encode())
        digest.update(",".join(str(int(t)) for t in row.tolist()).encode())
        seed = int.from_bytes(digest.digest()[:8], "big") >> 1
        return torch.Generator(device=device).manual_seed(seed)

    @staticmethod
    def _dp_opd_prompts(inputs, text_tokens: int) -> list[torch.Tensor]:
        """DP-OPD's prompt of each row: its masked prefix (the control codes, labels -100 before the first
        scored label) plus the first `text_tokens` tokens of its private text, always leaving at least one
        token of the row out (and at least one in)."""
        labels = causal_lm_labels(inputs)
        ids = inputs["input_ids"]
        attn = inputs.get("attention_mask", torch.ones_like(ids))
        out = []
        for i in range(ids.shape[0]):
            keep = attn[i] == 1
            valid, scored = ids[i][keep], (labels[i][keep] != -100).nonzero()
            prefix = int(scored[0]) if len(scored) else len(valid)
            out.append(valid[: max(1, min(prefix + text_tokens, len(valid) - 1))])
        return out


class _PerRowSampler(LogitsProcessor):
    """A logits processor that samples each row from softmax(scores / temperature) with that row's own
    generator and leaves only the sampled token allowed (greedy decoding then takes it): a row's draws never
    depend on how many rows the batch has or what they hold."""

    def __init__(self, generators: list[torch.Generator], temperature: float):
        self.generators = generators
        self.temperature = temperature

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        chosen = torch.cat(
            [torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(self.generators)]
        )
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, chosen.view(-1, 1), 0.0)
