"""SyntheticDataCallback on DPTrainer: the dataset, its card and the ledger's epsilon."""

import pytest
from datasets import Dataset
from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

from hf_dpkd import DPConfig, DPTrainer, card_epsilon
from hf_dpkd.privacy.accounting import PrivacyLedger
from hf_dpkd.privacy.histogram import uniform_distribution
from hf_dpkd.synthetic.callback import SyntheticDataCallback
from hf_dpkd.synthetic.generation import SyntheticGenerationConfig, load_synthetic_dataset
from tests.test_synthetic import DOMAIN, FMT, _tiny_teacher


def _train_data(tok):
    texts = [
        FMT.format_training_text({"category": c, "stars": s}, "good food nice staff", "<eos>")
        for c in DOMAIN["category"]
        for s in DOMAIN["stars"]
    ] * 8
    return Dataset.from_dict({"text": texts}).map(
        lambda b: tok(b["text"]), batched=True, remove_columns=["text"]
    )


def test_callback_generates_with_a_card_stating_the_ledger(tmp_path):
    model, tok = _tiny_teacher(tmp_path / "t")
    cb = SyntheticDataCallback(
        40,
        uniform_distribution(FMT, DOMAIN),
        FMT,
        generation=SyntheticGenerationConfig(max_length=24, min_words=1),
    )
    args = DPConfig(
        output_dir=str(tmp_path / "out"),
        target_epsilon=3.0,
        max_steps=3,
        per_device_train_batch_size=8,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
    )
    trainer = DPTrainer(
        model=model,
        args=args,
        train_dataset=_train_data(tok),
        processing_class=tok,
        data_collator=DataCollatorForLanguageModeling(tok, mlm=False),
        callbacks=[cb],
    )
    trainer.train()
    out = tmp_path / "out" / "synthetic"
    assert len(load_synthetic_dataset(out)) == 40
    ledger = PrivacyLedger.load(out)
    assert abs(card_epsilon(out / "README.md") - ledger.epsilon()) < 1e-3
    assert ledger.epsilon() == trainer.privacy_report()["epsilon"]


def test_callback_refuses_a_non_private_teacher(tmp_path):
    model, tok = _tiny_teacher(tmp_path / "t")
    cb = SyntheticDataCallback(
        10,
        uniform_distribution(FMT, DOMAIN),
        FMT,
        generation=SyntheticGenerationConfig(max_length=24, min_words=1),
    )
    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=str(tmp_path / "o"), max_steps=1, use_cpu=True, report_to=[], save_strategy="no"
        ),
        train_dataset=_train_data(tok),
        data_collator=DataCollatorForLanguageModeling(tok, mlm=False),
        processing_class=tok,
        callbacks=[cb],
    )
    with pytest.raises(ValueError, match="No privacy ledger .* allow_non_private=True"):
        trainer.train()


@pytest.mark.parametrize(
    "kwargs,match",
    [({"num_samples": 0}, "num_samples=0 must be > 0"), ({"push_to_hub": True}, "needs hub_dataset_id")],
)
def test_callback_bad_inputs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SyntheticDataCallback(
            **{"num_samples": 5, "distribution": uniform_distribution(FMT, DOMAIN), "fmt": FMT, **kwargs}
        )
