"""Privacy audit of a causal LM: membership inference, memorization, optional per-block risk, canary exposure
and a one-run empirical epsilon. Writes audit.json, audit.md and roc.png to --output_dir.

    python examples/audit.py --model PATH_OR_HUB_ID [--reference_model PUBLIC_BASE] \
        --members members.jsonl --non_members heldout.jsonl [--text_column text] \
        [--prefix_columns category stars --prefix_labels "Business Category" "Review Stars"] \
        --output_dir audit_out

Records are scored on their text tokens only; the prefix (control-code prompt: the labelled prefix columns
joined by a tab, then a blank line) is context. Members/non-members load with `datasets` from
json/jsonl/csv/parquet files or a `save_to_disk` folder; the non-members are drawn from their file to match
the members' control codes and lengths. Every number comes with its interval, and with a model that never saw
the private data (--no_leak_model, default --reference_model) the report scores it on the same records and
the verdict compares the model with it. An audit gives evidence and lower bounds; it never certifies privacy.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, HfArgumentParser

from hf_dpkd.audit import (
    ATTACKS,
    AuditCanary,
    Canary,
    audit_epsilon,
    canary_exposures,
    compare_exposures,
    match_non_members,
    membership_verdict,
    memorization_gap,
    per_block_mope,
    record_balance,
    run_membership_inference,
    write_audit_report,
)

BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass
class ModelArguments:
    model: str = field(metadata={"help": "Audited model: a local save_pretrained folder or a Hub id."})
    reference_model: str | None = field(
        default=None,
        metadata={
            "help": "Model that never saw the private data (e.g. the public pretrained base) for the reference attack."
        },
    )
    no_leak_model: str | None = field(
        default=None,
        metadata={
            "help": "Model that never saw the private data, scored with the same attacks on the same records: the "
            "no-leak level the verdict compares with (default: --reference_model; use the audited model's "
            "public base)."
        },
    )
    tokenizer: str | None = field(
        default=None,
        metadata={
            "help": "Tokenizer path or id (default: --model); the reference and no-leak models share it."
        },
    )
    device: str | None = field(
        default=None, metadata={"help": "Device, e.g. cuda:0 (default: cuda if available, else cpu)."}
    )


@dataclass
class DataArguments:
    members: str = field(metadata={"help": "File or dataset folder of training members."})
    non_members: str = field(metadata={"help": "File or dataset folder of held-out non-members."})
    text_column: str = field(default="text", metadata={"help": "Column holding the text to score."})
    prefix_columns: list[str] = field(
        default_factory=list, metadata={"help": "Control-code columns forming the prompt prefix, in order."}
    )
    prefix_labels: list[str] = field(
        default_factory=list,
        metadata={"help": "Label per prefix column, e.g. 'Review Stars' (default: column names)."},
    )
    max_records: int = field(
        default=1000, metadata={"help": "Use at most this many members and non-members (protocol: 1000)."}
    )
    match_non_members: bool = field(
        default=True,
        metadata={
            "help": "Draw the non-members from their file to match the members (same control code, nearest "
            "length); without it, a random subsample. The remaining difference is reported either way."
        },
    )
    seed: int = field(
        default=0, metadata={"help": "Seed for record subsampling, matching, MoPe noise and the bootstrap."}
    )


@dataclass
class AuditArguments:
    output_dir: str = field(metadata={"help": "Where audit.json, audit.md and roc.png are written."})
    attacks: list[str] = field(
        default_factory=lambda: list(ATTACKS), metadata={"help": f"Attacks to run, from {list(ATTACKS)}."}
    )
    batch_size: int = field(default=8, metadata={"help": "Records per forward pass."})
    max_length: int | None = field(
        default=None, metadata={"help": "Token limit per record (default: the model's)."}
    )
    min_k_fraction: float = field(default=0.2, metadata={"help": "k of Min-k%% and Min-k%%++."})
    mope_sigma: float = field(default=0.01, metadata={"help": "Std of the MoPe weight noise."})
    mope_num_perturbations: int = field(default=10, metadata={"help": "Perturbed copies for MoPe."})
    memorization: bool = field(
        default=True, metadata={"help": "Run the greedy-continuation memorization test."}
    )
    prompt_tokens: int = field(
        default=32, metadata={"help": "Text tokens given to the model before continuing."}
    )
    num_tokens: int = field(
        default=32, metadata={"help": "Generated tokens compared with the true continuation."}
    )
    per_block: bool = field(
        default=False, metadata={"help": "Per-block MoPe AUC (one block perturbed at a time)."}
    )
    canaries: str | None = field(
        default=None,
        metadata={
            "help": "JSON list of canary descriptions (secret, template, prefix, alphabet, separator, repeats, name)."
        },
    )
    audit_canaries: str | None = field(
        default=None,
        metadata={
            "help": "JSON/JSONL of one-run audit canaries (index, text, included, prefix) used in training."
        },
    )
    audit_num_guesses: int = field(
        default=100, metadata={"help": "Guesses per side (included / excluded) for the one-run audit."}
    )
    audit_delta: float = field(
        default=0.0, metadata={"help": "delta of the (epsilon, delta) hypothesis tested."}
    )
    audit_beta: float = field(default=0.05, metadata={"help": "1 - confidence of the epsilon lower bound."})
    claimed_epsilon: float | None = field(
        default=None, metadata={"help": "Epsilon the training claims (for the report)."}
    )
    confidence: float = field(
        default=0.95,
        metadata={"help": "Confidence of the intervals (bootstrap over records, exact binomial)."},
    )
    num_resamples: int = field(default=1000, metadata={"help": "Bootstrap resamples per interval."})
    show_progress: bool = field(default=True, metadata={"help": "Show progress bars."})


def load_records(path: str, data: DataArguments, limit: int | None = None) -> list[tuple[str, str]]:
    """(prefix, text) pairs from a file or dataset folder: a seeded random `limit` of them (default
    --max_records), all of them with limit=0."""
    from datasets import load_dataset, load_from_disk

    p = Path(path)
    if p.is_dir():
        ds = load_from_disk(str(p))
    elif p.suffix.lower() in BUILDERS:
        ds = load_dataset(BUILDERS[p.suffix.lower()], data_files=str(p), split="train")
    else:
        raise ValueError(f"{path!r} is neither a dataset folder nor a {sorted(BUILDERS)} file")
    missing = [c for c in [data.text_column, *data.prefix_columns] if c not in ds.column_names]
    if missing:
        raise ValueError(
            f"{path}: columns {missing} not found in {ds.column_names}; check --text_column/--prefix_columns"
        )
    labels = data.prefix_labels or data.prefix_columns
    if len(labels) != len(data.prefix_columns):
        raise ValueError(
            f"--prefix_labels has {len(labels)} labels for {len(data.prefix_columns)} --prefix_columns; give one each"
        )
    limit = data.max_records if limit is None else limit
    if limit and len(ds) > limit:
        ds = ds.shuffle(seed=data.seed).select(range(limit))
    records = []
    for row in ds:
        fields = [f"{lab}: {row[col]}" for lab, col in zip(labels, data.prefix_columns)]
        prefix = "\t".join(fields) + "\n\n" if fields else ""
        records.append((prefix, str(row[data.text_column])))
    return records


def load_non_members(
    members: list[tuple[str, str]], data: DataArguments
) -> tuple[list[tuple[str, str]], dict]:
    """The non-members and how they compare with the members (`record_balance`): matched on control code
    and length from up to 20x --max_records candidates, or a random subsample without --match_non_members."""
    if not data.match_non_members:
        non_members = load_records(data.non_members, data)
        return non_members, record_balance(members, non_members)
    pool = load_records(data.non_members, data, limit=20 * data.max_records)
    if len(pool) <= len(members):  # no choice to make: every held-out record is used
        return pool, record_balance(members, pool)
    return match_non_members(members, pool, seed=data.seed)


def main(argv: list[str] | None = None) -> dict:
    parser = HfArgumentParser((ModelArguments, DataArguments, AuditArguments))
    margs, data, audit = parser.parse_args_into_dataclasses(args=argv)
    device = torch.device(margs.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tokenizer = AutoTokenizer.from_pretrained(margs.tokenizer or margs.model)
    model = AutoModelForCausalLM.from_pretrained(margs.model).to(device).eval()
    reference = None
    if margs.reference_model:
        reference = AutoModelForCausalLM.from_pretrained(margs.reference_model).to(device).eval()
    no_leak_path = margs.no_leak_model or margs.reference_model
    no_leak = reference
    if margs.no_leak_model and margs.no_leak_model != margs.reference_model:
        no_leak = AutoModelForCausalLM.from_pretrained(margs.no_leak_model).to(device).eval()
    members = load_records(data.members, data)
    non_members, balance = load_non_members(members, data)
    attacks = [a for a in audit.attacks if a != "reference" or reference is not None]
    stats = dict(confidence=audit.confidence, num_resamples=audit.num_resamples)

    results: dict = {
        "meta": {
            "model": margs.model,
            "reference_model": margs.reference_model or "",
            "no_leak_model": no_leak_path or "(none: no no-leak level)",
            "members": f"{data.members} ({len(members)})",
            "non_members": f"{data.non_members} ({len(non_members)})",
            **({"claimed_epsilon": audit.claimed_epsilon} if audit.claimed_epsilon is not None else {}),
        },
        "matching": balance,
        "arguments": {"model": asdict(margs), "data": asdict(data), "audit": asdict(audit)},
    }
    results["membership"] = run_membership_inference(
        model,
        tokenizer,
        members,
        non_members,
        attacks=attacks,
        reference_model=reference,
        min_k_fraction=audit.min_k_fraction,
        mope_sigma=audit.mope_sigma,
        mope_num_perturbations=audit.mope_num_perturbations,
        seed=data.seed,
        batch_size=audit.batch_size,
        max_length=audit.max_length,
        show_progress=audit.show_progress,
        no_leak_model=no_leak,
        no_leak_name=no_leak_path or "no-leak model",
        **stats,
    )
    if no_leak is not None:
        results["verdict"] = membership_verdict(results["membership"])
    if audit.memorization:
        results["memorization"] = memorization_gap(
            model,
            tokenizer,
            members,
            non_members,
            audit.prompt_tokens,
            audit.num_tokens,
            audit.batch_size,
            audit.show_progress,
            seed=data.seed,
            **stats,
        )
    if audit.per_block:
        results["blocks"] = per_block_mope(
            model,
            tokenizer,
            members,
            non_members,
            audit.mope_sigma,
            audit.mope_num_perturbations,
            data.seed,
            audit.batch_size,
            audit.max_length,
            show_progress=audit.show_progress,
        )
    if audit.canaries:
        specs = json.loads(Path(audit.canaries).read_text())
        canaries = [Canary.from_dict(s) for s in specs]
        common = dict(seed=data.seed, show_progress=audit.show_progress, confidence=audit.confidence)
        results["canaries"] = canary_exposures(model, tokenizer, canaries, **common)
        if no_leak is not None:
            base = canary_exposures(no_leak, tokenizer, canaries, **common)
            results["canaries"] = compare_exposures(results["canaries"], base, no_leak_path)
    if audit.audit_canaries:
        text = Path(audit.audit_canaries).read_text()
        rows = (
            json.loads(text)
            if text.lstrip().startswith("[")
            else [json.loads(x) for x in text.splitlines() if x.strip()]
        )
        canaries = [AuditCanary(**r) for r in rows]
        k = min(audit.audit_num_guesses, len(canaries) // 2)
        results["empirical_epsilon"] = audit_epsilon(
            model,
            tokenizer,
            canaries,
            k,
            k,
            audit.audit_delta,
            audit.audit_beta,
            reference,
            audit.batch_size,
            audit.max_length,
            audit.show_progress,
            no_leak_model=no_leak,
        )
    paths = write_audit_report(results, audit.output_dir)
    print(
        f"intervals: {audit.confidence:.0%} bootstrap over records; no-leak model: {no_leak_path or 'none'}"
    )
    for name, r in results["membership"].items():
        (lo, hi), (tlo, thi) = r["intervals"]["auc"], r["intervals"]["tpr@fpr=1%"]
        line = f"{name:>16}: AUC {r['auc']:.4f} [{lo:.4f}, {hi:.4f}]  TPR@1%FPR {r['tpr@fpr=1%']:.4f} [{tlo:.4f}, {thi:.4f}]"
        if "no_leak" in r:
            b = r["no_leak"]
            line += f"  no-leak AUC {b['auc']:.4f} [{b['intervals']['auc'][0]:.4f}, {b['intervals']['auc'][1]:.4f}]"
        print(line)
    if results.get("verdict"):
        print(f"{'verdict':>16}: {results['verdict']['summary']}")
    if "memorization" in results:
        m = results["memorization"]
        print(
            f"{'memorization gap':>16}: {m['gap']:.4f} [{m['gap_interval'][0]:.4f}, {m['gap_interval'][1]:.4f}]"
        )
    if "empirical_epsilon" in results:
        e = results["empirical_epsilon"]
        line = f"{'epsilon >=':>16} {e['epsilon_lower_bound']:.4f} (confidence {e['confidence']:.0%})"
        if "no_leak" in e:
            line += f"; no-leak model: {e['no_leak']['epsilon_lower_bound']:.4f}"
        print(line)
    print(f"report: {paths['markdown']}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
