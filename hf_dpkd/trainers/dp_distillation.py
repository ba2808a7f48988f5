"""DPDistillationConfig and DPDistillationTrainer: distillation with DP-SGD on the private data.

DPTrainer's DP-SGD layered over DistillationTrainer's losses: the DPKD baseline (each example's
alpha_ce * CE + alpha_kd * t^2 * KD, clipped), or with `dp_opd=True` DP-OPD (Khadem et al. 2026): each
example's loss is the divergence on the student's own continuation of that example's prompt, the rollout
inside the clipped per-example computation. The teacher's own releases are composed into the ledger.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from hf_dpkd.privacy.accounting import LEDGER_FILENAME, PrivacyLedger
from hf_dpkd.trainers.distillation import TOPK_INDICES, DistillationConfig, DistillationTrainer
from hf_dpkd.trainers.dp import DPTrainer
from hf_dpkd.trainers.dp_config import DPConfig
from hf_dpkd.trainers.losses import causal_lm_labels


@dataclass
class DPDistillationConfig(DPConfig, DistillationConfig):
    """DPConfig + DistillationConfig: DPKD, or DP-OPD with dp_opd=True. Give target_epsilon or noise_multiplier."""

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
        if self.dp_opd:
            self._validate_dp_opd()
        if self.alpha_hidden > 0 or (self.on_policy_ratio > 0 and not self.dp_opd):
            raise ValueError(
                "With DP-SGD (DPKD) only alpha_ce and alpha_kd are supported: set alpha_hidden=0 and on_policy_ratio=0 "
                "(the projection would need its own per-sample clipping; on-policy training under DP-SGD is "
                "dp_opd=True, which puts each example's rollout inside its clipped loss)."
            )

    def _validate_dp_opd(self) -> None:
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


class DPDistillationTrainer(DPTrainer, DistillationTrainer):
    """DistillationTrainer's student and losses, trained with DPTrainer's DP-SGD (`args`: DPDistillationConfig).

    Extra keyword: `teacher_privacy_ledger`, the ledger of a teacher held in memory (a teacher loaded from a
    folder written by DPTrainer brings its own).
    """

    model_card_kind = "student"

    def __init__(
        self,
        model=None,
        teacher_model=None,
        args: DPDistillationConfig | None = None,
        teacher_privacy_ledger: PrivacyLedger | None = None,
        **kw,
    ):
        if args is None or not isinstance(args, DPDistillationConfig):
            raise TypeError(
                "DPDistillationTrainer needs args=DPDistillationConfig(...) (distillation and DP-SGD settings); "
                "without DP use DistillationTrainer with DistillationConfig."
            )
        if args.dp_opd:
            self._check_dp_opd(model, teacher_model, args, kw.get("train_dataset"))
        self._teacher_ledger = teacher_privacy_ledger
        self._teacher_source = getattr(getattr(teacher_model, "config", None), "_name_or_path", "") or ""
        super().__init__(model=model, teacher_model=teacher_model, args=args, **kw)

    # -- privacy: what the teacher's outputs cost -----------------------------------------------------
    def _prior_ledger(self, ledger: PrivacyLedger, num_units: int) -> PrivacyLedger:
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
        n = num_units
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

    def compute_per_sample_loss(self, model, inputs):
        """DPKD: each example's (alpha_ce * CE + alpha_kd * t^2 * KD) token mean; depends on that example only.

        DP-OPD (`dp_opd=True`): t^2 * D(teacher || student) token mean over the continuation the student
        sampled from the example's own prompt (see `_dp_opd_rollouts`)."""
        if self.args.dp_opd:
            return self._dp_opd_per_sample_loss(model, inputs)
        ce, kd, _, counts, _, _ = self._loss_terms(model, inputs, need_hidden=False)
        token_terms, _ = self._combine(ce, kd, torch.zeros_like(ce))
        return token_terms / counts.clamp(min=1)

    # -- DP-OPD: on-policy distillation under DP-SGD ------------------------------------------------
    def _dp_opd_per_sample_loss(self, model, inputs) -> torch.Tensor:
        """[B]: row i's divergence token mean over ITS rollout; row i's value depends on row i only.

        The rollouts are sampled without gradients; the student then runs one ordinary grad-enabled forward on
        the rollout batch through `model` (the per-sample clipping wrapper), so the whole per-example loss,
        rollout included, is what gets clipped.
        """
        kd, counts = self._rollout_divergence(model, self._dp_opd_rollouts(inputs))
        return self.args.temperature**2 * kd / counts.clamp(min=1)

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
