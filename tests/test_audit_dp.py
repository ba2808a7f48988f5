"""The one-run audit against DPTrainer: the empirical lower bound stays below the claimed epsilon,
and the same code path with clipping and noise switched off is caught."""

import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import DataCollatorForLanguageModeling, GPT2Config, GPT2LMHeadModel

from hf_dpkd import DPConfig, DPTrainer, audit_epsilon, insert_audit_canaries, make_audit_canaries
from tests.test_audit_epsilon import CANARY_TRAINING, _byte_tokenizer


def _train_and_audit(tmp_path, seed: int, guesses: int = 20, epochs: int = 40, **dp_kwargs) -> dict:
    tok = _byte_tokenizer()
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=257, n_positions=64, n_embd=64, n_layer=2, n_head=2, bos_token_id=256, eos_token_id=256
        )
    )
    canaries = make_audit_canaries(80, seed=seed, num_words=5)
    rng = np.random.default_rng(seed)
    corpus = Dataset.from_dict(
        {"text": [" ".join(rng.choice(["good food", "slow service", "nice staff"], 3)) for _ in range(40)]}
    )
    train = insert_audit_canaries(corpus, canaries, seed=seed)
    train = train.map(
        lambda b: tok(b["text"], truncation=True, max_length=64), batched=True, remove_columns=["text"]
    )
    args = DPConfig(
        output_dir=str(tmp_path),
        num_train_epochs=epochs,
        seed=seed,
        dp_seed=seed,  # a fixed draw: the test's outcome is reproducible
        max_physical_batch_size=16,
        **CANARY_TRAINING,
        **dp_kwargs,
    )
    trainer = DPTrainer(
        model=model,
        args=args,
        train_dataset=train,
        data_collator=DataCollatorForLanguageModeling(tok, mlm=False),
    )
    trainer.train()
    result = audit_epsilon(
        model, tok, canaries, num_positive=guesses, num_negative=guesses, show_progress=False
    )
    result["claimed_epsilon"] = trainer.privacy_report()["epsilon"]
    return result


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lower_bound_never_exceeds_the_claim(tmp_path, seed):
    result = _train_and_audit(tmp_path, seed, target_epsilon=1.0)
    assert result["claimed_epsilon"] <= 1.0
    assert result["epsilon_lower_bound"] <= result["claimed_epsilon"]


def test_broken_trainer_without_clipping_or_noise_is_caught(tmp_path):
    # Trained long enough to memorise its canaries (100 epochs: bound 2.06 / 2.55 / 1.74 for seeds 0 / 1 / 2;
    # at 40 epochs the memorisation, and the bound, depend on the draw: 0.97 / 1.74 / 0.97).
    result = _train_and_audit(tmp_path, 0, epochs=100, disable_dp=True, per_sample_max_grad_norm=1e9)
    assert result["epsilon_lower_bound"] > 1.0  # it would have been claimed as epsilon = 1
