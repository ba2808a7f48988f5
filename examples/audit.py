"""Privacy audit of a causal LM: membership inference, memorization, optional per-block risk, canary exposure
and a one-run empirical epsilon. Writes audit.json, audit.md and roc.png to --output_dir.

    python examples/audit.py --model PATH_OR_HUB_ID [--reference_model PUBLIC_BASE] \
        --members members.jsonl --non_members heldout.jsonl [--text_column text] \
        [--prefix_columns category stars --prefix_labels "Business Category" "Review Stars"] \
        --output_dir audit_out

Records are scored on their text tokens only; the prefix (control-code prompt: the labelled prefix columns
joined by a tab, then a blank line) is context. Members/non-members load with `datasets` from
json/jsonl/csv/parquet files or a `save_to_disk` folder. An audit gives evidence and lower bounds; it never
certifies privacy.
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
    memorization_gap,
    per_block_mope,
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
    tokenizer: str | None = field(default=None, metadata={"help": "Tokenizer path or id (default: --model)."})
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
    seed: int = field(default=0, metadata={"help": "Seed for record subsampling and MoPe noise."})


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
    show_progress: bool = field(default=True, metadata={"help": "Show progress bars."})


def load_records(path: str, data: DataArguments) -> list[tuple[str, str]]:
    """(prefix, text) pairs from a file or dataset folder."""
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
    if len(ds) > data.max_records:
        ds = ds.shuffle(seed=data.seed).select(range(data.max_records))
    records = []
    for row in ds:
        fields = [f"{lab}: {row[col]}" for lab, col in zip(labels, data.prefix_columns)]
        prefix = "\t".join(fields) + "\n\n" if fields else ""
        records.append((prefix, str(row[data.text_column])))
    return records


def main(argv: list[str] | None = None) -> dict:
    parser = HfArgumentParser((ModelArguments, DataArguments, AuditArguments))
    margs, data, audit = parser.parse_args_into_dataclasses(args=argv)
    device = torch.device(margs.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tokenizer = AutoTokenizer.from_pretrained(margs.tokenizer or margs.model)
    model = AutoModelForCausalLM.from_pretrained(margs.model).to(device).eval()
    reference = None
    if margs.reference_model:
        reference = AutoModelForCausalLM.from_pretrained(margs.reference_model).to(device).eval()
    members, non_members = load_records(data.members, data), load_records(data.non_members, data)
    attacks = [a for a in audit.attacks if a != "reference" or reference is not None]

    results: dict = {
        "meta": {
            "model": margs.model,
            "reference_model": margs.reference_model or "",
            "members": f"{data.members} ({len(members)})",
            "non_members": f"{data.non_members} ({len(non_members)})",
            **({"claimed_epsilon": audit.claimed_epsilon} if audit.claimed_epsilon is not None else {}),
        },
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
    )
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
        results["canaries"] = canary_exposures(
            model, tokenizer, canaries, seed=data.seed, show_progress=audit.show_progress
        )
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
        )
    paths = write_audit_report(results, audit.output_dir)
    for name, r in results["membership"].items():
        print(f"{name:>16}: AUC {r['auc']:.4f}  TPR@1%FPR {r['tpr@fpr=1%']:.4f}")
    if "memorization" in results:
        print(f"{'memorization gap':>16}: {results['memorization']['gap']:.4f}")
    if "empirical_epsilon" in results:
        e = results["empirical_epsilon"]
        print(f"{'epsilon >=':>16} {e['epsilon_lower_bound']:.4f} (confidence {e['confidence']:.0%})")
    print(f"report: {paths['markdown']}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
