"""Stage teacher: DP-SGD fine-tuning of the teacher on the private data (composed with the histogram's
release), or the given --dp_teacher; and the non-private reference teacher when --methods asks for it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hf_dpkd.pipeline.training import train_private
from hf_dpkd.privacy.accounting import PrivacyLedger

if TYPE_CHECKING:
    from hf_dpkd.pipeline.context import RunContext


def run(ctx: RunContext) -> dict[str, Any]:
    c = ctx.config
    result: dict[str, Any] = {}
    if c.teacher.dp_teacher:
        result["teacher_source"] = c.teacher.dp_teacher
        result["teacher_epsilon"] = PrivacyLedger.load(ctx.teacher_dir()).epsilon(ctx.delta())
    else:
        result["teacher_epsilon"] = _train_dp_teacher(ctx)
    if "non_private_teacher" in c.method_list:
        train_private(
            ctx,
            ctx.base_path("teacher"),
            ctx.run / "non_private_teacher",
            epochs=c.teacher.non_private_epochs,
            learning_rate=c.teacher.teacher_learning_rate,
            target_epsilon=None,
        )
    return result


def _train_dp_teacher(ctx: RunContext) -> float:
    c = ctx.config
    final = train_private(
        ctx,
        ctx.base_path("teacher"),
        ctx.run / "teacher",
        epochs=c.teacher.teacher_epochs,
        learning_rate=c.teacher.teacher_learning_rate,
        target_epsilon=c.pipeline.target_epsilon,
        prior_ledger=ctx.run / "histogram",
        release_name="teacher_dp_sgd",
        peft=c.teacher.teacher_peft,
    )
    return PrivacyLedger.load(final).epsilon()
