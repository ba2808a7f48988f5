"""One training of a stage, start to finish: resume from the last complete checkpoint, save the model
folder with its ledger and card, and mark it finished last (a kill never leaves a "done" model)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hf_dpkd._io import atomic_write_text
from hf_dpkd.pipeline.cards import write_card
from hf_dpkd.pipeline.constants import COMPLETE
from hf_dpkd.pipeline.loading import load_model_and_tokenizer, tokenize_for_lm
from hf_dpkd.pipeline.trainer_factory import LENGTH_GROUPED, build_trainer, training_args
from hf_dpkd.privacy.accounting import PrivacyLedger

if TYPE_CHECKING:
    from hf_dpkd.pipeline.context import RunContext


def resume_point(output_dir: Path) -> str | None:
    from hf_dpkd.trainers.checkpoints import last_complete_checkpoint

    return last_complete_checkpoint(str(output_dir))


def train_and_save(
    trainer,
    tokenizer,
    output: Path,
    final: Path,
    ledger: PrivacyLedger | None = None,
    card: Callable[[Path], Path] | None = None,
) -> Path:
    """Train (resuming from the last complete checkpoint), save the model folder with its `card` (README.md,
    the one a push uploads), and mark it finished last."""
    trainer.train(resume_from_checkpoint=resume_point(output))
    trainer.save_model(str(final))
    tokenizer.save_pretrained(str(final))
    if ledger is not None:
        ledger.save(final)
    if card is not None:
        card(final)
    atomic_write_text(final / COMPLETE, "finished\n")  # written last: a kill never leaves a "done" model
    return final


def train_private(
    ctx: RunContext,
    base: Path,
    output: Path,
    *,
    epochs: float,
    learning_rate: float,
    target_epsilon: float | None,
    prior_ledger: Path | None = None,
    release_name: str = "dp_sgd",
    teacher_for_kd: Path | None = None,
    on_policy: bool = False,
    teacher_is_public: bool = False,
    peft: str = "none",
) -> Path:
    """Train `base` on the private training split: DP-SGD (target_epsilon) or non-private (None).

    With `teacher_for_kd`: DPKD, or with `on_policy` DP-OPD (the student's rollouts of each record's prompt,
    scored by that teacher); the teacher's ledger is composed, or it is declared public (`teacher_is_public`).
    With `peft="lora"` DP-SGD trains only LoRA adapters on `base` and the final folder holds the adapter.
    """
    c = ctx.config
    final = output / "final"
    if (final / COMPLETE).is_file():
        return final
    model, tokenizer = load_model_and_tokenizer(base, dropout=c.teacher.train_dropout_probability())
    if peft == "lora" and target_epsilon is not None:
        from hf_dpkd.peft_support import add_lora

        model = add_lora(model, c.teacher.lora_settings())
    # DP-OPD's prompts are each record's control codes (masked: labels -100) plus the start of its text
    train = tokenize_for_lm(
        ctx.data()["train"],
        tokenizer,
        ctx.fmt(),
        c.data.max_length,
        mask_prompt=on_policy,
        keep=c.data.privacy_unit_column if target_epsilon is not None else None,
    )
    common = training_args(
        output,
        c,
        num_train_epochs=epochs,
        learning_rate=learning_rate,
        per_device_train_batch_size=c.teacher.teacher_batch_size,
        gradient_accumulation_steps=c.teacher.teacher_gradient_accumulation_steps,
    )
    build = partial(build_trainer, ctx=ctx, model=model, tokenizer=tokenizer, train_dataset=train)
    if target_epsilon is None:
        common["per_device_train_batch_size"] = min(64, c.teacher.teacher_batch_size)
        common["train_sampling_strategy"] = LENGTH_GROUPED
        trainer = build("plain", args=common)
    elif teacher_for_kd is None:
        trainer = build(
            "dp",
            args=common,
            target_epsilon=target_epsilon,
            release_name=release_name,
            prior_ledger=prior_ledger,
        )
    else:
        teacher, _ = load_model_and_tokenizer(teacher_for_kd, base=ctx.base_path("teacher"))
        s = c.student
        loss: dict[str, Any] = dict(
            alpha_ce=1 - s.kd_lambda,
            alpha_kd=s.kd_lambda,
            temperature=s.kd_temperature,
            kd_loss=s.kd_loss,
        )
        if on_policy:  # DP-OPD: generalized JSD on the continuation tokens
            loss.update(
                kd_loss="jsd",
                dp_opd=True,
                dp_opd_prompt_tokens=s.dp_opd_prompt_tokens,
                on_policy_max_new_tokens=max(1, min(s.dp_opd_max_new_tokens, c.data.max_length // 2)),
            )
        trainer = build(
            "dp_distill",
            args=common,
            teacher=teacher,
            loss=loss,
            target_epsilon=target_epsilon,
            release_name=release_name,
            prior_ledger=prior_ledger,
            teacher_is_public=teacher_is_public,
        )
    return train_and_save(trainer, tokenizer, output, final, card=partial(write_card, ctx, output.name))
