"""`DPTrainer.push_to_hub` (the Trainer's own push) carries the privacy card, against the loopback Hub."""

import math

from datasets import Dataset
from transformers import GPT2Config, GPT2LMHeadModel, default_data_collator

from hf_dpkd import DPConfig, DPTrainer, card_epsilon
from tests.hub_server import HubServer, hub_fixture  # noqa: F401  (the `hub` fixture)


def test_trainer_push_to_hub_writes_the_privacy_card(hub: HubServer, tmp_path):
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=40, n_positions=16))
    ids = [[i % 40 for i in range(j, j + 8)] for j in range(64)]
    args = DPConfig(
        output_dir=str(tmp_path / "out"),
        target_epsilon=3.0,
        max_steps=2,
        per_device_train_batch_size=8,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        push_to_hub=True,
        hub_model_id="demo-user/dp-tiny",
    )
    trainer = DPTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_dict({"input_ids": ids, "labels": ids}),
        data_collator=default_data_collator,
    )
    trainer.train()
    trainer.push_to_hub()
    files = hub.files("demo-user/dp-tiny")
    assert "model.safetensors" in files and "privacy_ledger.json" in files
    readme = tmp_path / "README.md"
    readme.write_bytes(files["README.md"])
    assert math.isclose(card_epsilon(readme), trainer.privacy_ledger.epsilon(), rel_tol=1e-3)
    assert "differential-privacy" in files["README.md"].decode()
