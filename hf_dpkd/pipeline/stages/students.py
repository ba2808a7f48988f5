"""Stage students: every student method of --methods. DistilDP, DP Syn Data and on-policy train on the
synthetic data (post-processing: their ledger is what they saw, composed); DP-SGD, DPKD and DP-OPD students
are DP-SGD releases on the private data; the non-private student is the reference without DP."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hf_dpkd.pipeline.cards import write_card
from hf_dpkd.pipeline.constants import COMPLETE, STUDENT_METHODS
from hf_dpkd.pipeline.loading import load_model_and_tokenizer, tokenize_for_lm
from hf_dpkd.pipeline.trainer_factory import LENGTH_GROUPED, build_trainer, training_args
from hf_dpkd.pipeline.training import train_and_save, train_private

if TYPE_CHECKING:
    from hf_dpkd.pipeline.context import RunContext


def run(ctx: RunContext) -> dict[str, Any]:
    c = ctx.config
    eps = c.pipeline.target_epsilon
    result = {}
    for method in c.method_list:
        if method not in STUDENT_METHODS:
            continue
        print(f"    student: {method}", flush=True)
        out = ctx.run / "students" / method
        private = partial(
            train_private,
            ctx,
            ctx.base_path("student"),
            out,
            epochs=c.student.dp_student_epochs,
            learning_rate=c.teacher.teacher_learning_rate,
        )
        if method in ("distildp", "dp_syn_data", "on_policy"):
            final = _train_on_synthetic(ctx, method, out)
        elif method == "dp_sgd_student":
            final = private(target_epsilon=eps, release_name="student_dp_sgd", peft=c.teacher.student_peft)
        elif method == "non_private_student":  # the student's level without DP (a reference, epsilon inf)
            final = private(target_epsilon=None)
        elif method == "dp_opd" and c.student.dp_opd_teacher == "public":
            # DP-OPD from the public base teacher (never saw the private data): the student spends all of eps
            final = private(
                target_epsilon=eps,
                release_name="dp_opd_student_dp_sgd",
                teacher_for_kd=ctx.base_path("teacher"),
                on_policy=True,
                teacher_is_public=True,
                peft=c.teacher.student_peft,
            )
        else:  # dpkd, dp_opd: teacher at eps/2, then the student with DP-SGD, composed to eps
            half_teacher = _half_budget_teacher(ctx)
            final = private(
                target_epsilon=eps,
                prior_ledger=half_teacher,
                release_name=f"{method}_student_dp_sgd",
                teacher_for_kd=half_teacher,
                on_policy=method == "dp_opd",
                peft=c.teacher.student_peft,
            )
        result[method] = str(final)
    return result


def _train_on_synthetic(ctx: RunContext, method: str, output: Path) -> Path:
    c, s = ctx.config, ctx.config.student
    final = output / "final"
    if (final / COMPLETE).is_file():
        return final
    model, tokenizer = load_model_and_tokenizer(
        ctx.base_path("student"), dropout=c.teacher.train_dropout_probability()
    )
    synth = ctx.synthetic()
    split = synth.train_test_split(test_size=0.01, seed=c.pipeline.seed) if len(synth) >= 200 else None
    train = tokenize_for_lm(
        split["train"] if split else synth, tokenizer, ctx.fmt(), c.data.max_length, mask_prompt=True
    )
    common = training_args(
        output,
        c,
        num_train_epochs=s.student_epochs,
        learning_rate=s.student_learning_rate,
        per_device_train_batch_size=s.student_batch_size,
        train_sampling_strategy=LENGTH_GROUPED,
    )
    if method == "on_policy":
        common["num_train_epochs"] = s.on_policy_epochs
    build = partial(
        build_trainer, ctx=ctx, model=model, tokenizer=tokenizer, train_dataset=train, args=common
    )
    if method == "dp_syn_data":
        trainer = build("plain")
    else:
        teacher, _ = load_model_and_tokenizer(ctx.teacher_dir(), base=ctx.base_path("teacher"))
        loss: dict[str, Any] = dict(
            alpha_ce=1 - s.kd_lambda,
            alpha_kd=s.kd_lambda,
            temperature=s.kd_temperature,
            kd_loss=s.kd_loss if method != "on_policy" else "jsd",
            alpha_hidden=s.alpha_hidden,
        )
        if method == "on_policy":
            loss.update(
                on_policy_ratio=s.on_policy_ratio,
                on_policy_max_new_tokens=min(32, c.generation.generation_max_length),
            )
        trainer = build("distill", teacher=teacher, loss=loss)
    # Post-processing: the student inherits the guarantee of what it saw (the synthetic data, plus the
    # teacher's soft labels for KD), composed, with no new release.
    sources = [ctx.synthetic_dir()] + ([ctx.teacher_dir()] if method != "dp_syn_data" else [])
    return train_and_save(
        trainer,
        tokenizer,
        output,
        final,
        ledger=ctx.composed(*sources),
        card=partial(write_card, ctx, method),
    )


def _half_budget_teacher(ctx: RunContext) -> Path:
    """The teacher of DPKD and DP-OPD: DP-SGD on the private data at eps/2 (trained once, shared by both)."""
    c = ctx.config
    return train_private(
        ctx,
        ctx.base_path("teacher"),
        ctx.run / "students" / "dpkd_teacher",
        epochs=c.teacher.teacher_epochs,
        learning_rate=c.teacher.teacher_learning_rate,
        target_epsilon=c.pipeline.target_epsilon / 2,
        release_name="dpkd_teacher_dp_sgd",
        peft=c.teacher.teacher_peft,
    )
