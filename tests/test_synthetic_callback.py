"""SyntheticDataCallback on DPTrainer: the dataset, its card, the ledger's epsilon, refusals, push."""

import json
import logging

import pytest
from datasets import Dataset
from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

from hf_dpkd.hub import card_epsilon
from hf_dpkd.privacy.accounting import PrivacyLedger, compute_epsilon
from hf_dpkd.privacy.histogram import (
    dp_control_code_distribution,
    exact_private_distribution,
    uniform_distribution,
)
from hf_dpkd.synthetic.callback import SyntheticDataCallback
from hf_dpkd.synthetic.generation import SyntheticGenerationConfig, load_synthetic_dataset
from hf_dpkd.trainers.dp import DPConfig, DPTrainer
from tests.hub_server import HubServer, hub_fixture  # noqa: F401 - registers the `hub` fixture
from tests.test_generation import DOMAIN, FMT, tiny_teacher

GEN = SyntheticGenerationConfig(max_length=24, min_words=1)


def _private():
    rows = [{"category": c, "stars": s} for c in DOMAIN["category"] for s in DOMAIN["stars"]] * 2
    return Dataset.from_list([{**r, "text": "good food nice staff"} for r in rows])


def _tokenized(tok):
    texts = [FMT.format_training_text(r, r["text"], tok.eos_token) for r in _private()]
    return Dataset.from_dict({"text": texts}).map(
        lambda b: tok(b["text"]), batched=True, remove_columns=["text"]
    )


def _trainer(tmp_path, tok, model, cb, dp=True, **kw):
    common = dict(
        output_dir=str(tmp_path / "teacher"), per_device_train_batch_size=8, use_cpu=True, report_to=[]
    )
    common.update(save_strategy="no", **kw)
    if dp:
        args = DPConfig(target_epsilon=3.0, **common)
        cls = DPTrainer
    else:
        args, cls = TrainingArguments(**common), Trainer
    return cls(
        model=model,
        args=args,
        train_dataset=_tokenized(tok),
        processing_class=tok,
        data_collator=DataCollatorForLanguageModeling(tok, mlm=False),
        callbacks=[cb],
    )


def test_dataset_and_card_state_the_ledger_of_the_dp_teacher(tmp_path):
    model, tok = tiny_teacher()
    cb = SyntheticDataCallback(40, uniform_distribution(FMT, DOMAIN), FMT, generation=GEN, shard_size=8)
    trainer = _trainer(tmp_path, tok, model, cb, max_steps=3)
    trainer.train()
    out = tmp_path / "teacher" / "synthetic"
    assert cb.outputs == [out] and len(load_synthetic_dataset(out)) == 40
    ledger = PrivacyLedger.load(out)
    assert ledger.epsilon() == trainer.privacy_report()["epsilon"]
    assert card_epsilon(out / "README.md") == pytest.approx(ledger.epsilon(), abs=1e-3)
    assert "uniformly over the control-code domain" in (out / "README.md").read_text()
    assert model.training  # the trainer's mode is restored after generation


def test_dp_histogram_is_composed_into_the_card(tmp_path):
    model, tok = tiny_teacher()
    hist_dir = tmp_path / "histogram"
    hist_ledger = PrivacyLedger(delta=1e-5)
    dist = dp_control_code_distribution(_private(), FMT, 20.0, hist_ledger, domain=DOMAIN)
    hist_ledger.save(hist_dir)
    dist.save(hist_dir / "control_codes.json")
    cb = SyntheticDataCallback(20, hist_dir / "control_codes.json", FMT, generation=GEN, shard_size=8)
    trainer = _trainer(tmp_path, tok, model, cb, max_steps=2, privacy_ledger_path=str(hist_dir))
    trainer.train()
    out = tmp_path / "teacher" / "synthetic"
    ledger = PrivacyLedger.load(out)
    assert [r.name for r in ledger.releases] == ["control_code_histogram", "dp_sgd"]
    composed = compute_epsilon([r.history_entry() for r in ledger.releases], ledger.delta, ledger.accountant)
    assert card_epsilon(out / "README.md") == pytest.approx(composed, abs=1e-3)
    assert composed > compute_epsilon([ledger.releases[1].history_entry()], ledger.delta, ledger.accountant)


def test_dp_histogram_missing_from_the_ledger_is_refused_before_training(tmp_path):
    model, tok = tiny_teacher()
    empty = tmp_path / "empty_ledger"
    PrivacyLedger(delta=1e-5).save(empty)
    dist = dp_control_code_distribution(_private(), FMT, 20.0, PrivacyLedger(delta=1e-5), domain=DOMAIN)
    cb = SyntheticDataCallback(10, dist, FMT, generation=GEN)
    trainer = _trainer(tmp_path, tok, model, cb, max_steps=2, privacy_ledger_path=str(empty))
    with pytest.raises(
        ValueError, match="release 'control_code_histogram', which is not in the privacy ledger"
    ):
        trainer.train()
    assert trainer.state.global_step == 0


def test_non_private_teacher_is_refused_unless_allowed_and_then_the_card_says_so(tmp_path, caplog):
    model, tok = tiny_teacher()
    cb = SyntheticDataCallback(10, uniform_distribution(FMT, DOMAIN), FMT, generation=GEN)
    trainer = _trainer(tmp_path, tok, model, cb, dp=False, max_steps=1)
    with pytest.raises(ValueError, match="No privacy ledger .* allow_non_private=True"):
        trainer.train()
    assert trainer.state.global_step == 0  # refused before training, not after
    cb = SyntheticDataCallback(
        10, uniform_distribution(FMT, DOMAIN), FMT, generation=GEN, allow_non_private=True
    )
    with caplog.at_level(logging.WARNING):
        _trainer(tmp_path, tok, model, cb, dp=False, max_steps=1).train()
    out = tmp_path / "teacher" / "synthetic"
    assert card_epsilon(out / "README.md") is None and "NOT private" in caplog.text
    assert "not differentially private" in (out / "README.md").read_text().lower()


def test_epoch_snapshots_and_push_of_the_final_dataset(tmp_path, hub: HubServer):
    model, tok = tiny_teacher()
    cb = SyntheticDataCallback(
        16,
        uniform_distribution(FMT, DOMAIN),
        FMT,
        generation=GEN,
        shard_size=8,
        on_epochs=[1],
        push_to_hub=True,
        hub_dataset_id="hf-dpkd-tester/tiny-synth",
        hub_private_repo=True,
    )
    trainer = _trainer(tmp_path, tok, model, cb, num_train_epochs=2, learning_rate=1e-2)
    trainer.train()
    root = tmp_path / "teacher" / "synthetic"
    assert cb.outputs == [root / "epoch-1", root]
    for out in cb.outputs:
        assert len(load_synthetic_dataset(out)) == 16
        assert card_epsilon(out / "README.md") == pytest.approx(trainer.privacy_report()["epsilon"], abs=1e-3)
    # the two snapshots come from different weights (the texts themselves may coincide: a tiny random model
    # whose weights moved a little can sample the same 16 texts from the same seed)
    info = [json.loads((out / "generation_info.json").read_text()) for out in cb.outputs]
    assert info[0]["settings"]["model"] != info[1]["settings"]["model"]
    files = hub.files("hf-dpkd-tester/tiny-synth", "dataset")
    pushed = set(files) - {".gitattributes"}  # the repo's own file
    assert pushed == {"README.md", "data/train-00000-of-00001.parquet"}  # no shards, no run files
    assert files["README.md"] == (root / "README.md").read_bytes()


def test_exact_distribution_is_refused_without_allow_non_private():
    with pytest.raises(ValueError, match="EXACT private control-code frequencies.*allow_non_private=True"):
        SyntheticDataCallback(5, exact_private_distribution(_private(), FMT), FMT)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"num_samples": 0}, "num_samples=0 must be > 0"),
        ({"push_to_hub": True}, "needs hub_dataset_id"),
        ({"on_epochs": [0]}, r"on_epochs=\[0\] must list epoch numbers >= 1"),
        ({"hub_dataset_id": "not a repo id"}, "repo_id"),
    ],
)
def test_bad_inputs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SyntheticDataCallback(
            **{"num_samples": 5, "distribution": uniform_distribution(FMT, DOMAIN), "fmt": FMT, **kwargs}
        )
    with pytest.raises(TypeError, match="distribution must be a ControlCodeDistribution"):
        SyntheticDataCallback(5, 42, FMT)
