"""The model card of each model folder of a run: what method made it and the guarantee of its ledger. One
card, written when the model is saved and again before a push, so a copied folder says what a pushed one does."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from hf_dpkd.privacy.accounting import PrivacyLedger

if TYPE_CHECKING:
    from hf_dpkd.pipeline.context import RunContext
    from hf_dpkd.run_config import StudentArguments


def card_of(which: str, s: StudentArguments) -> tuple[str, dict[str, Any]]:
    """The card kind and method of the model folder of `which` (a method of STUDENT_METHODS, "teacher",
    "non_private_teacher" or "dpkd_teacher"); `s`: the run's student settings."""
    if which == "teacher":
        return "teacher", {"method": "DP-SGD fine-tuning (DistilDP teacher)"}
    if which.startswith("non_private_"):
        role = "teacher" if which.endswith("teacher") else "student"
        return "dp_finetune", {"name": f"fine-tuning without DP (the non-private reference {role})"}
    if which == "dpkd_teacher":
        return "dp_finetune", {"name": "DP-SGD fine-tuning of the DPKD and DP-OPD teacher (half budget)"}
    if which == "distildp":
        return "student", {
            "method": "DistilDP",
            "student_data": "synthetic",
            "kd_lambda": s.kd_lambda,
            "temperature": s.kd_temperature,
        }
    names = {
        "dp_syn_data": ("DP Syn Data (cross-entropy on the synthetic data)", "synthetic"),
        "on_policy": ("on-policy distillation from the DP teacher", "synthetic"),
        "dp_sgd_student": ("DP-SGD fine-tuning of the student", "private"),
        "dpkd": ("DPKD (distillation with DP-SGD on the private data)", "private"),
        "dp_opd": ("DP-OPD (on-policy distillation with DP-SGD on the private data)", "private"),
    }
    if which not in names:  # a folder of another name: a generic card, with the guarantee of its ledger
        return "dp_finetune", {"name": which}
    name, data = names[which]
    return "student", {"name": name, "student_data": data}


def write_card(ctx: RunContext, which: str, folder: Path, repo_id: str | None = None) -> Path:
    """README.md of the model folder of `which`: the guarantee of its ledger, its method, and its test
    perplexity once the run has evaluated it (with the repository's id before a push)."""
    from hf_dpkd.hub import write_model_card

    config = ctx.config
    kind, method = card_of(which, config.student)
    teacher = which.endswith("teacher")
    # a private method's folder must hold its ledger (a missing one fails here, never as "not private")
    ledger = None if which.startswith("non_private_") else PrivacyLedger.load(folder)
    ppl = {r["method"]: r["test_perplexity"] for r in ctx.summary().get("rows", [])}
    return write_model_card(
        folder,
        kind=kind,
        base_model=config.teacher.teacher_model if teacher else config.teacher.student_model,
        ledger=ledger,
        method=method,
        eval_results={"perplexity": ppl[which]} if which in ppl else None,
        repo_id=repo_id,
        adapter_base=str(ctx.base_path("teacher" if teacher else "student")),
        model_name=None if repo_id else f"{ctx.run.path.resolve().name}-{which}",  # not "final"
    )
