"""Stage audit: membership inference, memorization and canary exposure of each model of --audit_models,
each compared with its public base model scored on the same records -> audit/<model>/ and audit/audit.json,
audit/audit.md. Evidence and lower bounds, never a certificate of privacy."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from hf_dpkd._io import atomic_write_text
from hf_dpkd.pipeline.constants import STUDENT_METHODS
from hf_dpkd.pipeline.loading import load_model_and_tokenizer
from hf_dpkd.pipeline.report import audit_markdown, ci_text

if TYPE_CHECKING:
    from hf_dpkd.pipeline.context import RunContext

#: Records per greedy-generation batch of the memorization test: 64 instead of the function's 8 takes the
#: demo's test from 3.0 s to 1.1 s per model on 2 CPU cores, with the same agreement scores there (a record's
#: greedy continuation does not depend on the other records of its batch).
MEMORIZATION_BATCH_SIZE = 64


def run(ctx: RunContext) -> dict[str, Any]:
    from hf_dpkd.audit.canaries import Canary, canary_exposures
    from hf_dpkd.audit.matching import match_non_members
    from hf_dpkd.audit.memorization import memorization_gap
    from hf_dpkd.audit.metrics import DEFAULT_CONFIDENCE, DEFAULT_NUM_RESAMPLES
    from hf_dpkd.audit.mia import (
        LEAK_RULE,
        compare_with_no_leak,
        membership_verdict,
        run_membership_inference,
    )
    from hf_dpkd.audit.report import write_audit_report

    c = ctx.config
    data = ctx.data()
    fmt = ctx.fmt()
    n = min(c.audit.audit_num_records, len(data["train"]), len(data["test"]))
    members = [(fmt.format_prompt(r), r["text"]) for r in data["train"].shuffle(seed=1).select(range(n))]
    # non-members: the held-out records that match the members' control codes and lengths
    pool = [(fmt.format_prompt(r), r["text"]) for r in data["test"]]
    non_members, balance = match_non_members(members, pool, seed=1)
    reference, reference_tokenizer = load_model_and_tokenizer(ctx.base_path("teacher"))
    canaries = [
        Canary(
            secret=x["secret"],
            template=x["template"],
            repeats=x["repeats"],
            name=x["name"],
            prefix=fmt.format_prompt({"category": x["category"], "stars": x["stars"]}),
        )
        for x in ctx.info().get("canaries", [])
    ]
    # records are scored as they were trained: cut to --max_length tokens (prompt included)
    mia_args = dict(
        mope_num_perturbations=c.audit.audit_mope_perturbations,
        max_length=c.data.max_length,
        show_progress=False,
    )
    no_leak_runs: dict[tuple[str, bool], dict[str, dict]] = {}

    def no_leak(which: str, with_reference: bool) -> dict[str, dict]:
        """The public base model `which` (never saw the private data), scored once per attack set."""
        if (which, with_reference) not in no_leak_runs:
            base, base_tokenizer = (
                (reference, reference_tokenizer)
                if which == "teacher"
                else load_model_and_tokenizer(ctx.base_path(which))
            )
            no_leak_runs[which, with_reference] = run_membership_inference(
                base,
                base_tokenizer,
                members,
                non_members,
                reference_model=reference if with_reference else None,
                include_curves=False,
                return_scores=True,
                **mia_args,
            )
        return no_leak_runs[which, with_reference]

    dirs = ctx.model_dirs()
    summary: dict[str, Any] = {
        "num_members": n,
        "num_non_members": n,
        "confidence": DEFAULT_CONFIDENCE,
        "num_resamples": DEFAULT_NUM_RESAMPLES,
        "matching": balance,
        "rule": LEAK_RULE,
        "no_leak": {},
        "models": {},
    }
    for name in c.audit.audit_models:
        if name not in dirs:
            continue
        print(f"    audit: {name}", flush=True)
        model, tokenizer = load_model_and_tokenizer(dirs[name], base=ctx.base_of(name))
        same_vocab = (
            reference.get_input_embeddings().weight.shape[0] == model.get_input_embeddings().weight.shape[0]
        )
        which = "student" if name in STUDENT_METHODS else "teacher"
        base_name = f"base/{which}"
        membership = run_membership_inference(
            model,
            tokenizer,
            members,
            non_members,
            reference_model=reference if same_vocab else None,
            include_curves=True,
            return_scores=True,
            **mia_args,
        )
        baseline = no_leak(which, same_vocab)
        membership = compare_with_no_leak(membership, baseline, no_leak_name=base_name)
        verdict = membership_verdict(membership)
        result: dict[str, Any] = {
            "membership": membership,
            "verdict": verdict,
            "matching": balance,
            "memorization": memorization_gap(
                model,
                tokenizer,
                members,
                non_members,
                prompt_tokens=8,
                num_tokens=16,
                batch_size=MEMORIZATION_BATCH_SIZE,
                show_progress=False,
            ),
            "meta": {
                "model": name,
                "path": str(dirs[name]),
                "epsilon": ctx.epsilon_of(dirs[name]),
                "no_leak_model": f"{base_name} (public base, never saw the private data)",
            },
        }
        if canaries:
            k = c.audit.audit_canary_candidates
            result["canaries"] = canary_exposures(
                model, tokenizer, canaries, exact_limit=k, num_samples=k, show_progress=False
            )
        write_audit_report(result, ctx.run / "audit" / name)
        summary["no_leak"][base_name] = _audit_row(baseline, summary["no_leak"].get(base_name, {}))
        row = _audit_row(membership, {})
        row.update(
            epsilon=result["meta"]["epsilon"],
            no_leak_model=base_name,
            auc_minus_no_leak={
                a: {k: r["vs_no_leak"][k] for k in ("difference", "interval", "confidence")}
                for a, r in membership.items()
            },
            leaks=verdict["leaks"],
            flagged_attacks=verdict["flagged_attacks"],
            verdict=verdict["summary"],
            memorization_gap=result["memorization"]["gap"],
            memorization_gap_interval=result["memorization"]["gap_interval"],
            canary_exposure_by_repeats={
                str(k): v["mean"] for k, v in (result.get("canaries") or {}).get("by_repeats", {}).items()
            },
            canaries_exposed=(result.get("canaries") or {}).get("exposed"),
            canary_no_leak_level=((result.get("canaries") or {}).get("no_leak") or {}).get("level"),
        )
        summary["models"][name] = row
        loss, base_loss = membership["loss"], baseline["loss"]
        print(
            f"    audit {name}: {verdict['summary']}; loss AUC {ci_text(loss['auc'], loss['intervals']['auc'])}"
            f" vs no-leak {ci_text(base_loss['auc'], base_loss['intervals']['auc'])}",
            flush=True,
        )
    atomic_write_text(ctx.run / "audit" / "audit.json", json.dumps(summary, indent=2, default=str))
    atomic_write_text(ctx.run / "audit" / "audit.md", audit_markdown(summary))
    return {"models": list(summary["models"])}


def _audit_row(membership: dict[str, dict], row: dict[str, Any]) -> dict[str, Any]:
    """`row` with the AUC and TPR@FPR of every attack of `membership` and their intervals (audit.json summary)."""
    out = {k: dict(row.get(k, {})) for k in ("auc", "auc_interval", "tpr", "tpr_interval")}
    for attack, r in membership.items():
        keys = [k for k in r if k.startswith("tpr@fpr=")]
        out["auc"][attack] = r["auc"]
        out["auc_interval"][attack] = r["intervals"]["auc"]
        out["tpr"][attack] = {k: r[k] for k in keys}
        out["tpr_interval"][attack] = {k: r["intervals"][k] for k in keys}
    return {**row, **out}
