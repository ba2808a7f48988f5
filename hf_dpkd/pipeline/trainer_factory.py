"""Every Trainer the pipeline builds, in one place: the shared TrainingArguments, the collator, and the DP
settings of a private training, written once for DPTrainer and DPDistillationTrainer alike."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

if TYPE_CHECKING:
    from hf_dpkd.pipeline.context import RunContext
    from hf_dpkd.run_config import RunConfig

#: Non-private training batches texts of similar length (less padding); DP-SGD keeps Poisson sampling.
LENGTH_GROUPED = "group_by_length"
#: plain: Trainer; distill: DistillationTrainer (no DP: post-processing); dp: DPTrainer; dp_distill:
#: DPDistillationTrainer (DP-SGD distillation on private data: DPKD, DP-OPD).
TRAINER_KINDS = ("plain", "distill", "dp", "dp_distill")


def training_args(output_dir: Path, config: RunConfig, **kwargs) -> dict[str, Any]:
    """The TrainingArguments every training of the pipeline shares, updated with `kwargs`."""
    base = dict(
        output_dir=str(output_dir),
        use_cpu=not torch.cuda.is_available(),
        report_to=[],
        seed=config.pipeline.seed,
        save_strategy="steps",
        save_steps=config.pipeline.save_steps,
        save_total_limit=1,
        logging_steps=10,
        lr_scheduler_type=config.pipeline.lr_scheduler_type,
        weight_decay=0.01,
        disable_tqdm=False,
        dataloader_num_workers=0,
    )
    base.update(kwargs)
    return base


def lm_collator(tokenizer):
    """Pads input_ids/attention_mask with the pad token and labels with -100 (keeps masked prompts)."""
    return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, padding=True)


def dp_arguments(
    ctx: RunContext, *, target_epsilon: float, release_name: str, prior_ledger: Path | None
) -> dict[str, Any]:
    """The DP-SGD settings of a private training of this run (its secret seed is drawn for `release_name`)."""
    c = ctx.config
    return dict(
        target_epsilon=target_epsilon,
        target_delta=ctx.delta(),
        accountant=c.pipeline.accountant,
        per_sample_max_grad_norm=c.teacher.per_sample_max_grad_norm,
        max_physical_batch_size=c.teacher.max_physical_batch_size,
        clipping_mode=c.teacher.clipping_mode,
        privacy_unit_column=c.data.privacy_unit_column,
        max_rows_per_unit=c.data.max_rows_per_unit,
        privacy_ledger_path=str(prior_ledger) if prior_ledger else None,
        privacy_release_name=release_name,
        dp_seed=ctx.dp_seed(release_name),
    )


def build_trainer(
    kind: str,
    ctx: RunContext,
    *,
    model,
    tokenizer,
    train_dataset,
    args: dict[str, Any],
    teacher=None,
    loss: dict[str, Any] | None = None,
    target_epsilon: float | None = None,
    release_name: str = "dp_sgd",
    prior_ledger: Path | None = None,
    teacher_is_public: bool = False,
) -> Trainer:
    """A trainer of `kind` (one of TRAINER_KINDS) over `train_dataset`.

    `args`: the TrainingArguments (see `training_args`); `teacher` and `loss` (the DistillationConfig loss
    settings): the distilling kinds; `target_epsilon`, `release_name`, `prior_ledger` (a folder whose ledger
    the release composes with) and `teacher_is_public`: the DP kinds.
    """
    if kind not in TRAINER_KINDS:
        raise ValueError(f"trainer kind {kind!r}: choose from {', '.join(TRAINER_KINDS)}.")
    common = dict(model=model, train_dataset=train_dataset, processing_class=tokenizer)
    if kind == "plain":
        return Trainer(args=TrainingArguments(**args), data_collator=lm_collator(tokenizer), **common)
    dp = {}
    if kind in ("dp", "dp_distill"):
        dp = dp_arguments(
            ctx, target_epsilon=target_epsilon, release_name=release_name, prior_ledger=prior_ledger
        )
    if kind == "dp":
        from hf_dpkd.trainers.dp import DPConfig, DPTrainer

        return DPTrainer(args=DPConfig(**args, **dp), data_collator=lm_collator(tokenizer), **common)
    if kind == "dp_distill":
        from hf_dpkd.trainers.dp_distillation import DPDistillationConfig, DPDistillationTrainer

        config = DPDistillationConfig(**args, **dp, teacher_is_public=teacher_is_public, **(loss or {}))
        return DPDistillationTrainer(
            teacher_model=teacher, args=config, data_collator=lm_collator(tokenizer), **common
        )
    from hf_dpkd.trainers.distillation import DistillationConfig, DistillationTrainer

    config = DistillationConfig(**args, **(loss or {}))
    return DistillationTrainer(
        teacher_model=teacher, args=config, data_collator=lm_collator(tokenizer), **common
    )
