"""The inputs the documentation's python snippets talk about, built for real from the embedded demo.

A ``<!-- snippet: setup NAME -->`` marker before a python block of README.md or docs/*.md runs ``NAME(namespace)``
(a function of this module marked ``@setup``) in the page's process before the block: "your model", ``tok``,
``members``..., with tiny models. Setups marked ``@uses_hub`` run against a loopback Hub (tests/hub_server.py)
that the page's test starts. See tests/doc_snippets.py for the rules of the snippets.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

#: The setup functions by name: what a ``setup NAME`` marker may name.
SETUPS: dict[str, Callable[[dict[str, Any]], None]] = {}

#: Private training reviews of the demo (the 21 canary rows come on top: 128 rows).
NUM_TRAIN = 107
MAX_LENGTH = 48
_CACHE: dict[str, Any] = {}


def setup(fn: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    """Mark `fn` as a setup function usable in a ``<!-- snippet: setup NAME -->`` marker."""
    SETUPS[fn.__name__] = fn
    return fn


def uses_hub(fn: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    """A setup that talks to the (loopback) Hub: the page test starts one for the page."""
    fn.uses_hub = True  # type: ignore[attr-defined]
    return setup(fn)


def _demo():
    """(demo data, control-code format with the public domain, demo tokenizer trained on public text)."""
    if "demo" not in _CACHE:
        from hf_dpkd.data import make_demo_dataset, train_demo_tokenizer
        from hf_dpkd.synthetic.control_codes import ControlCodeFormat

        demo = make_demo_dataset(num_train=NUM_TRAIN, num_validation=16, num_test=64, num_public=400, seed=0)
        fmt = ControlCodeFormat(fields=tuple(demo.control_fields.items()), domain=demo.domain)
        public_texts = [fmt.format_training_text(r, r["text"]) for r in demo.dataset["public"]]
        _CACHE["demo"] = (demo, fmt, train_demo_tokenizer(public_texts))
    return _CACHE["demo"]


def _model(seed: int = 0):
    """A freshly initialised demo GPT-2 of the student's size (2 x 64, 128 positions) for the demo tokenizer.

    Teachers use it too (another seed): the snippets only need real models, and small ones run in seconds.
    """
    from hf_dpkd.data import demo_model

    return demo_model(_demo()[2], "student", seed=seed)


def _lm_dataset(rows):
    """Control-coded causal-LM examples (prompt + text + eos), padded to MAX_LENGTH, pads masked in labels."""
    _, fmt, tok = _demo()
    texts = [fmt.format_training_text(r, r["text"], tok.eos_token) for r in rows]
    enc = tok(texts, truncation=True, max_length=MAX_LENGTH, padding="max_length")
    labels = [
        [t if m else -100 for t, m in zip(ids, mask)]
        for ids, mask in zip(enc["input_ids"], enc["attention_mask"])
    ]
    from datasets import Dataset

    return Dataset.from_dict(
        {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}
    )


def _collator():
    from transformers import DataCollatorForSeq2Seq

    return DataCollatorForSeq2Seq(_demo()[2], label_pad_token_id=-100, padding=True)


def _quiet_args(**kwargs):
    """Training arguments of the short runs a setup makes itself (no logging, no checkpoints)."""
    return dict(report_to=[], save_strategy="no", logging_strategy="no", disable_tqdm=True, **kwargs)


def _synthetic(teacher, num_samples: int, output_dir: str):
    """Synthetic data sampled from `teacher` with uniformly drawn control codes (no privacy cost)."""
    from hf_dpkd.privacy.histogram import uniform_distribution
    from hf_dpkd.synthetic.generation import SyntheticGenerationConfig, generate_synthetic_dataset

    _, fmt, tok = _demo()
    return generate_synthetic_dataset(
        teacher,
        tok,
        uniform_distribution(fmt),
        num_samples,
        output_dir,
        fmt=fmt,
        generation=SyntheticGenerationConfig(max_length=MAX_LENGTH),
        batch_size=num_samples,
        shard_size=num_samples,
        show_progress=False,
    )


@setup
def dp_training_inputs(ns: dict[str, Any]) -> None:
    """`model`, `train`, `tokenizer`, `collator`: a demo teacher and the tokenized private demo split."""
    demo, _, tok = _demo()
    ns.update(model=_model(), train=_lm_dataset(demo.dataset["train"]), tokenizer=tok, collator=_collator())


@setup
def distillation_inputs(ns: dict[str, Any]) -> None:
    """`teacher`, `student`, `synthetic` / `synthetic_tokenized`, `collator`, `tokenizer`.

    The teacher is the one an earlier block of the page saved in ``teacher/final`` when there is one;
    the synthetic data is sampled from it.
    """
    from transformers import AutoModelForCausalLM

    _, _, tok = _demo()
    saved = Path("teacher/final")
    teacher = AutoModelForCausalLM.from_pretrained(saved) if (saved / "config.json").is_file() else _model(1)
    synthetic = _lm_dataset(_synthetic(teacher, 32, "synthetic"))
    ns.update(
        teacher=teacher,
        student=_model(2),
        synthetic=synthetic,
        synthetic_tokenized=synthetic,
        collator=_collator(),
        tokenizer=tok,
    )


@setup
def control_code_inputs(ns: dict[str, Any]) -> None:
    """`record` (a row's control fields), `text` (its review) and `tokenizer`."""
    demo, fmt, tok = _demo()
    row = demo.dataset["train"][0]
    ns.update(record={c: row[c] for c in fmt.columns}, text=row["text"], tokenizer=tok)


@setup
def generation_inputs(ns: dict[str, Any]) -> None:
    """`model`, `tokenizer`, and `distribution`: the DP histogram of the demo's private codes (+ `ledger`)."""
    from hf_dpkd.privacy.accounting import PrivacyLedger
    from hf_dpkd.privacy.histogram import dp_control_code_distribution

    demo, fmt, tok = _demo()
    ledger = PrivacyLedger(accountant="prv")
    distribution = dp_control_code_distribution(demo.dataset["train"], fmt, 10.0, ledger, domain=demo.domain)
    ns.update(model=_model(), tokenizer=tok, distribution=distribution, ledger=ledger)


@uses_hub
def callback_inputs(ns: dict[str, Any]) -> None:
    """``histogram/`` (the DP histogram and its ledger, as the pipeline's histogram stage writes them),
    `teacher`, `private` (the tokenized private split) and `tokenizer`."""
    from hf_dpkd.privacy.accounting import PrivacyLedger
    from hf_dpkd.privacy.histogram import dp_control_code_distribution

    demo, fmt, tok = _demo()
    ledger = PrivacyLedger(accountant="prv")
    dist = dp_control_code_distribution(demo.dataset["train"], fmt, 10.0, ledger, domain=demo.domain)
    Path("histogram").mkdir(exist_ok=True)
    dist.save("histogram/control_codes.json")
    ledger.save("histogram")
    ns.update(teacher=_model(), private=_lm_dataset(demo.dataset["train"]), tokenizer=tok)


def _push(folder: str, repo_id: str, **kwargs) -> None:
    from hf_dpkd.hub import push_folder_to_hub

    push_folder_to_hub(folder, repo_id, **kwargs)


@uses_hub
def loader_inputs(ns: dict[str, Any]) -> None:
    """The files the loader examples name, from demo reviews: ``path/to/yelp`` (Yue et al.'s CSV layout),
    ``reviews.parquet`` (columns body, city, stars), and a Big Patent-schema dataset (sections g and h)
    pushed to the loopback Hub as ``NortheasternUniversity/big_patent``."""
    import pandas as pd

    demo, _, _ = _demo()
    yelp = Path("path/to/yelp")
    yelp.mkdir(parents=True, exist_ok=True)
    for name, split in (("train", "train"), ("dev", "validation"), ("test", "test")):
        rows = demo.dataset[split]
        pd.DataFrame(
            {
                "text": rows["text"],
                "label1": [f"Business Category: {c}" for c in rows["category"]],
                "label2": [f"Review Stars: {s}" for s in rows["stars"]],
            }
        ).to_csv(yelp / f"{name}.csv", index=False)
    train = demo.dataset["train"]
    cities = ["Phoenix", "Las Vegas", "Toronto"]
    pd.DataFrame(
        {"body": train["text"], "city": [cities[i % 3] for i in range(len(train))], "stars": train["stars"]}
    ).to_parquet("reviews.parquet")
    patents = Path("big_patent_repo")
    for section in ("g", "h"):
        for split in ("train", "test"):
            out = patents / section / f"{split}-00000-of-00001.parquet"
            out.parent.mkdir(parents=True, exist_ok=True)
            texts = demo.dataset["public"]["text"][:20]
            pd.DataFrame({"description": texts, "abstract": [f"A device: {t}" for t in texts]}).to_parquet(
                out
            )
    configs = "".join(
        f"- config_name: {s}\n  data_files:\n  - split: train\n    path: {s}/train-*.parquet\n"
        f"  - split: test\n    path: {s}/test-*.parquet\n"
        for s in ("g", "h")
    )
    (patents / "README.md").write_text(f"---\nconfigs:\n{configs}---\n\nBig Patent schema, demo texts.\n")
    _push(str(patents), "NortheasternUniversity/big_patent", repo_type="dataset")


@setup
def evaluation_inputs(ns: dict[str, Any]) -> None:
    """`model`, `tokenizer`, `test_texts` (the demo's private test reviews)."""
    demo, _, tok = _demo()
    ns.update(model=_model(), tokenizer=tok, test_texts=list(demo.dataset["test"]["text"]))


@setup
def saved_demo_student(ns: dict[str, Any]) -> None:
    """A demo student saved with its tokenizer where the pipeline puts it: runs/demo/students/distildp/final."""
    out = Path("runs/demo/students/distildp/final")
    _model().save_pretrained(out)
    _demo()[2].save_pretrained(out)


def _records(rows) -> list[tuple[str, str]]:
    _, fmt, _ = _demo()
    return [(fmt.format_prompt(r), r["text"]) for r in rows]


@setup
def audit_inputs(ns: dict[str, Any]) -> None:
    """`model`, `tok`, `members` (private training records), `non_members` (held-out test records) as
    (control-code prompt, text) pairs, and `public_base` (a reference model that never saw them)."""
    demo, _, tok = _demo()
    ns.update(
        model=_model(0),
        tok=tok,
        members=_records(demo.dataset["train"].select(range(16))),
        non_members=_records(demo.dataset["test"].select(range(16))),
        public_base=_model(1),
    )


@setup
def audit_canary_inputs(ns: dict[str, Any]) -> None:
    """`train` (the private demo split: category, stars, text), `model` and `tok`."""
    demo, _, tok = _demo()
    ns.update(train=demo.dataset["train"], model=_model(), tok=tok)


@uses_hub
def hub_run_folders(ns: dict[str, Any]) -> None:
    """``run/teacher``, ``run/synthetic`` and ``run/student`` as a (very short) DistilDP run writes them.

    The teacher is trained with DPTrainer after the DP histogram release, so its ledger holds both; the
    synthetic data is sampled from it (with the ledger copied next to it); the student is distilled on it.
    """
    from hf_dpkd import DistillationConfig, DistillationTrainer, DPConfig, DPTrainer
    from hf_dpkd.privacy.accounting import PrivacyLedger
    from hf_dpkd.privacy.histogram import dp_control_code_distribution
    from hf_dpkd.synthetic.generation import SyntheticGenerationConfig, generate_synthetic_dataset

    demo, fmt, tok = _demo()
    ledger = PrivacyLedger(accountant="prv")
    dist = dp_control_code_distribution(demo.dataset["train"], fmt, 10.0, ledger, domain=demo.domain)
    teacher = _model()
    trainer = DPTrainer(
        model=teacher,
        args=DPConfig(
            output_dir="run/teacher_checkpoints",
            noise_multiplier=1.0,
            max_steps=2,
            per_device_train_batch_size=16,
            **_quiet_args(),
        ),
        train_dataset=_lm_dataset(demo.dataset["train"]),
        processing_class=tok,
        privacy_ledger=ledger,
    )
    trainer.train()
    trainer.save_model("run/teacher")
    synthetic = generate_synthetic_dataset(
        teacher,
        tok,
        dist,
        16,
        "run/synthetic",
        fmt=fmt,
        generation=SyntheticGenerationConfig(max_length=MAX_LENGTH),
        batch_size=16,
        shard_size=16,
        show_progress=False,
    )
    trainer.privacy_ledger.save("run/synthetic")
    student = _model(1)
    DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=DistillationConfig(output_dir="run/student_checkpoints", max_steps=2, **_quiet_args()),
        train_dataset=_lm_dataset(synthetic),
    ).train()
    student.save_pretrained("run/student")
    tok.save_pretrained("run/student")


@uses_hub
def hub_student_pushed(ns: dict[str, Any]) -> None:
    """The student folder ``run/student`` (with its card) pushed as ``me/dpkd-student``."""
    _push("run/student", "me/dpkd-student")
