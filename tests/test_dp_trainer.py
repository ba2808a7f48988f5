"""DPTrainer inside the real HF Trainer loop: drop-in, resume, saving, budget, bad inputs."""

import json
import math
import os
import warnings

import pytest
import torch
from datasets import Dataset
from transformers import (
    AutoModelForCausalLM,
    DataCollatorForLanguageModeling,
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainingArguments,
    default_data_collator,
)

from hf_dpkd.privacy.accounting import PrivacyLedger, compute_epsilon
from hf_dpkd.trainers.dp import DPConfig, DPTrainer
from tests.dp_models import tiny_word_tokenizer

TEXTS = [
    f"the {a} cat sat on the {b} mat and the {a} dog ran"
    for a in ("red", "blue", "green", "black")
    for b in ("big", "small", "old")
] * 30


def run_clm(trainer_cls, args_cls, output_dir, **extra_args):
    """The shape of a standard HF causal-LM fine-tuning script (tokenize, group texts, Trainer)."""
    tokenizer = tiny_word_tokenizer(TEXTS)
    raw = Dataset.from_dict({"text": TEXTS})
    tokenized = raw.map(lambda b: tokenizer(b["text"]), batched=True, remove_columns=["text"])
    block = 8

    def group_texts(examples):
        concat = {k: sum(examples[k], []) for k in examples}
        total = len(concat["input_ids"]) // block * block
        out = {k: [v[i : i + block] for i in range(0, total, block)] for k, v in concat.items()}
        out["labels"] = [list(x) for x in out["input_ids"]]
        return out

    train = tokenized.map(group_texts, batched=True)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(
            n_layer=2,
            n_embd=32,
            n_head=2,
            vocab_size=len(tokenizer),
            n_positions=16,
            bos_token_id=1,
            eos_token_id=1,
            pad_token_id=0,
        )
    )
    args = args_cls(
        output_dir=str(output_dir),
        per_device_train_batch_size=32,
        num_train_epochs=2,
        learning_rate=3e-3,
        use_cpu=True,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        seed=0,
        **extra_args,
    )
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=train,
        processing_class=tokenizer,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
    )
    before = trainer.evaluate(train)["eval_loss"]
    trainer.train()
    return trainer, (before, trainer.evaluate(train)["eval_loss"])


def test_drop_in_replacement_trains_with_dp(tmp_path):
    _, (base_before, base_after) = run_clm(Trainer, TrainingArguments, tmp_path / "plain")
    trainer, (before, after) = run_clm(DPTrainer, DPConfig, tmp_path / "dp", target_epsilon=8.0)
    assert base_after < base_before - 1.0
    # DP training learns (less than non-private training, as expected): 0.51-0.52 nats over 5 fresh draws at
    # delta=1e-5; the margin leaves room for the noise of any draw
    assert after < before - 0.3
    report = trainer.privacy_report()
    assert report["epsilon"] <= 8.0 and report["epsilon"] > 7.0
    assert report["steps"] == trainer.state.global_step
    assert any("epsilon" in h for h in trainer.state.log_history)


def test_saved_model_loads_without_hf_dpkd_prefixes(tmp_path):
    trainer, _ = run_clm(DPTrainer, DPConfig, tmp_path / "dp", noise_multiplier=1.0, max_steps=2)
    trainer.save_model(str(tmp_path / "final"))
    from safetensors.torch import load_file

    keys = load_file(str(tmp_path / "final" / "model.safetensors")).keys()
    assert not any("_module" in k for k in keys)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    for (n, p), (_, q) in zip(trainer.model.named_parameters(), loaded.named_parameters()):
        assert torch.equal(p, q), n
    ledger = PrivacyLedger.load(tmp_path / "final")
    report = json.loads((tmp_path / "final" / "privacy_report.json").read_text())
    assert math.isclose(ledger.epsilon(), report["epsilon"], rel_tol=1e-12)
    assert math.isclose(
        report["epsilon"],
        compute_epsilon([(1.0, report["sample_rate"], 2)], report["delta"], "prv"),
        rel_tol=1e-9,
    )


def _trainer(tmp_path, n=96, **kw):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(
            n_layer=1, n_embd=16, n_head=2, vocab_size=40, n_positions=16, bos_token_id=0, eos_token_id=0
        )
    )
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 40, (n, 8), generator=g).tolist()
    ds = Dataset.from_dict({"input_ids": ids, "labels": ids})
    base = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        gradient_accumulation_steps=2,
        max_physical_batch_size=3,
        use_cpu=True,
        report_to=[],
        seed=0,
        learning_rate=1e-2,
    )
    base.update(kw)
    return DPTrainer(
        model=model, args=DPConfig(**base), train_dataset=ds, data_collator=default_data_collator
    )


def test_resume_restores_ledger_noise_and_optimizer(tmp_path):
    full = _trainer(tmp_path / "a", target_epsilon=3.0, max_steps=6, save_strategy="steps", save_steps=3)
    full.train()
    resumed = _trainer(tmp_path / "a2", target_epsilon=3.0, max_steps=6, save_strategy="steps", save_steps=3)
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-3"))
    assert resumed.privacy_ledger.to_dict() == full.privacy_ledger.to_dict()
    assert resumed.privacy_report()["epsilon"] == full.privacy_report()["epsilon"]
    for (n, p), (_, q) in zip(full.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.allclose(p, q, atol=1e-6), n


def test_noise_and_batches_are_secret_by_default_and_reproducible_with_dp_seed(tmp_path):
    """The training seed does not fix DP-SGD's randomness: the default DP seed is fresh and never published."""

    def run(name, **kw):
        trainer = _trainer(tmp_path / name, noise_multiplier=1.0, max_steps=2, **kw)
        trainer.train()
        params = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
        return params, trainer.privacy_ledger.to_dict()["releases"][0]

    a, release_a = run("a")
    b, release_b = run("b")  # same seed=0, same data, same settings
    assert not torch.allclose(a, b), "two runs with the same training seed drew the same DP noise"
    assert release_a["meta"]["noise_draw"] != release_b["meta"]["noise_draw"]  # composed as two releases
    c, release_c = run("c", dp_seed=123)
    d, release_d = run("d", dp_seed=123)
    assert torch.equal(c, d)
    # the published draw id is random, not a function of the seed (a small seed could be found by trying)
    assert release_c["meta"].pop("noise_draw") != release_d["meta"].pop("noise_draw")
    assert release_c == release_d
    assert 123 not in release_c["meta"].values() and "seed" not in json.dumps(release_c)  # not published


def test_the_secret_resume_state_stays_in_checkpoints(tmp_path):
    trainer = _trainer(tmp_path, noise_multiplier=1.0, max_steps=2, save_strategy="steps", save_steps=1)
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    assert (tmp_path / "checkpoint-2" / "dp_state.pt").is_file()
    assert (tmp_path / "final" / "privacy_ledger.json").is_file()
    assert not (tmp_path / "final" / "dp_state.pt").exists()  # a model folder that may be pushed


def test_training_stops_before_exceeding_the_budget(tmp_path):
    trainer = _trainer(tmp_path, target_epsilon=1.0, max_steps=4)
    planned_sigma = trainer.dp_session.noise_multiplier
    trainer.args.max_steps = 40  # e.g. a user asks for more steps than were budgeted
    trainer.train()
    assert trainer.state.global_step < 40
    assert trainer.privacy_report()["epsilon"] <= 1.0
    assert trainer.dp_session.noise_multiplier == planned_sigma


def test_prior_ledger_entries_are_composed(tmp_path):
    prior = PrivacyLedger(accountant="prv", delta=1e-4)
    prior.record("control_code_histogram", 6.0, 1.0, 1, mechanism="gaussian")
    prior.save(tmp_path)
    trainer = _trainer(
        tmp_path / "t", target_epsilon=2.0, max_steps=3, privacy_ledger_path=str(tmp_path), target_delta=1e-4
    )
    trainer.train()
    ledger = trainer.privacy_ledger
    assert [r.name for r in ledger.releases] == ["control_code_histogram", "dp_sgd"]
    assert ledger.epsilon() <= 2.0
    assert ledger.epsilon() > trainer.privacy_report()["release_epsilon"]
    assert os.path.isfile(tmp_path / "t" / "privacy_ledger.json")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({}, r"Give exactly one of target_epsilon .* or noise_multiplier .*got neither"),
        ({"target_epsilon": 1.0, "noise_multiplier": 1.0}, r"Give exactly one of target_epsilon.*got both"),
        ({"target_epsilon": 0.0}, r"target_epsilon=0.0 must be a positive finite number"),
        ({"target_epsilon": -1.0}, r"target_epsilon=-1.0 must be a positive finite number"),
        (
            {"noise_multiplier": 0.0},
            r"noise_multiplier=0.0 must be > 0; to train without noise set disable_dp=True",
        ),
        ({"target_epsilon": 1.0, "target_delta": 0.0}, r"target_delta=0.0 must lie strictly between 0 and 1"),
        ({"target_epsilon": 1.0, "target_delta": 1.0}, r"target_delta=1.0 must lie strictly between 0 and 1"),
        (
            {"target_epsilon": 1.0, "per_sample_max_grad_norm": 0.0},
            r"per_sample_max_grad_norm=0.0 must be > 0",
        ),
        (
            {"target_epsilon": 1.0, "per_sample_max_grad_norm": -2.0},
            r"per_sample_max_grad_norm=-2.0 must be > 0",
        ),
        (
            {"target_epsilon": 1.0, "max_grad_norm": 1.0},
            r"max_grad_norm=1.0 is the Trainer's non-private global clipping.*max_grad_norm=0",
        ),
        ({"target_epsilon": 1.0, "accountant": "moments"}, r"accountant='moments' is not supported"),
        ({"target_epsilon": 1.0, "clipping_mode": "fast"}, r"clipping_mode='fast' is not supported"),
        ({"target_epsilon": 1.0, "max_physical_batch_size": 0}, r"max_physical_batch_size=0 must be >= 1"),
        (
            {"target_epsilon": 1.0, "poisson_sampling": False},
            r"poisson_sampling=False .* only accounted by accountant='gdp'",
        ),
    ],
)
def test_bad_config_messages(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        DPConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], **kwargs)


def test_batch_larger_than_dataset(tmp_path):
    with pytest.raises(
        ValueError, match=r"expected logical batch .*=32 is larger than the dataset \(10 examples\)"
    ):
        _trainer(tmp_path, n=10, per_device_train_batch_size=16, target_epsilon=1.0)


def test_empty_dataset(tmp_path):
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=40, n_positions=16))
    empty = Dataset.from_dict({"input_ids": [], "labels": []})
    with pytest.raises(ValueError, match="train_dataset is empty"):
        DPTrainer(
            model=model,
            args=DPConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], target_epsilon=1.0),
            train_dataset=empty,
        )


def test_layer_opacus_cannot_handle(tmp_path):
    class BatchNormLM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(40, 8)
            self.norm = torch.nn.BatchNorm1d(8)

        def forward(self, input_ids, **kw):
            return self.norm(self.emb(input_ids).mean(1))

    ds = Dataset.from_dict({"input_ids": [[1, 2]] * 20})
    with pytest.raises(ValueError, match=r"Opacus cannot compute per-sample gradients.*ModuleValidator.fix"):
        DPTrainer(
            model=BatchNormLM(),
            args=DPConfig(
                output_dir=str(tmp_path),
                use_cpu=True,
                report_to=[],
                target_epsilon=1.0,
                per_device_train_batch_size=4,
            ),
            train_dataset=ds,
        )


def test_delta_at_least_one_over_n_warns(tmp_path):
    with pytest.warns(UserWarning, match=r"target_delta=0.05 is >= 1/N"):
        _trainer(tmp_path, n=96, target_epsilon=1.0, target_delta=0.05)


def test_reduced_precision_matmuls_warn_before_training(tmp_path):
    """TF32 (or any float32 matmul precision below 'highest') rounds the per-sample norms to ~5e-5: warned."""
    trainer = _trainer(tmp_path, max_steps=1, save_strategy="no", noise_multiplier=1.0)
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        with pytest.warns(UserWarning, match=r"set_float32_matmul_precision\('highest'\)"):
            trainer.train()
    finally:
        torch.set_float32_matmul_precision(before)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="float32 matrix products")
        _trainer(tmp_path, max_steps=1, save_strategy="no", noise_multiplier=1.0).train()


def test_resume_point_skips_a_checkpoint_a_kill_interrupted(tmp_path):
    from hf_dpkd.trainers.checkpoints import last_complete_checkpoint

    assert last_complete_checkpoint(str(tmp_path / "missing")) is None
    for step, complete in ((1, True), (2, True), (10, False)):
        ckpt = tmp_path / f"checkpoint-{step}"
        ckpt.mkdir()
        (ckpt / "model.safetensors").write_bytes(b"x")
        if complete:
            (ckpt / "trainer_state.json").write_text("{}")
    assert last_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-2")
    assert not (tmp_path / "checkpoint-10").exists()


def test_loggers_get_epsilon_at_each_step_and_the_privacy_report_once(tmp_path):
    """report_to's loggers (here TensorBoard's event files) see the epsilon spent so far and, at the end, the report."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = _trainer(
        tmp_path,
        noise_multiplier=1.0,
        max_steps=4,
        logging_steps=1,
        report_to=["tensorboard"],
        save_strategy="no",
    )
    trainer.train()
    (log_dir,) = (tmp_path / "runs").iterdir()
    events = EventAccumulator(str(log_dir))
    events.Reload()
    epsilon = events.Scalars("train/epsilon")
    assert sorted({e.step for e in epsilon}) == [1, 2, 3, 4]  # each step (and the end-of-training metrics)
    values = [e.value for e in epsilon]
    assert all(a <= b for a, b in zip(values, values[1:])) and values[0] < values[-1]
    ledger_epsilon = trainer.privacy_ledger.epsilon()
    assert values[-1] == pytest.approx(ledger_epsilon, rel=1e-6, abs=1e-6)  # logged to 6 decimals, as float32
    report = trainer.privacy_report()
    for key in ("epsilon", "delta", "noise_multiplier", "sample_rate", "steps"):
        (logged,) = events.Scalars(f"train/privacy/{key}")  # once, at the last step
        assert logged.step == 4 and logged.value == pytest.approx(report[key], rel=1e-6), key
    assert any(tag.startswith("train/privacy/accountant") for tag in events.Tags()["tensors"])
    assert not any("loss" in tag for tag in events.Tags()["scalars"])  # the noiseless private loss stays out


def test_save_model_writes_the_card_that_states_the_guarantee(tmp_path):
    from hf_dpkd.hub import card_epsilon

    trainer = _trainer(tmp_path, noise_multiplier=1.0, max_steps=2, save_strategy="steps", save_steps=2)
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    readme = tmp_path / "final" / "README.md"
    assert card_epsilon(readme) == pytest.approx(trainer.privacy_ledger.epsilon(), rel=1e-12)
    text = readme.read_text()
    assert "differential-privacy" in text and "DP-SGD" in text and "noise_multiplier" in text
    assert not (tmp_path / "checkpoint-2" / "README.md").exists()  # a checkpoint is not a model folder
    # the card a push writes (create_model_card) is the card save_model writes into the same folder
    trainer.save_model()
    saved = (tmp_path / "README.md").read_text()
    trainer.create_model_card()
    assert (tmp_path / "README.md").read_text() == saved


def test_a_run_without_noise_writes_no_privacy_card(tmp_path):
    trainer = _trainer(tmp_path, disable_dp=True, max_steps=1, save_strategy="no")
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    assert not (tmp_path / "final" / "README.md").exists()


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_max_steps_within_budget_is_the_last_step_a_linear_search_allows(tmp_path, accountant):
    """The budget's last step, found by doubling then bisection (one check when calibration is tight), equals
    the reference: count up one step at a time from the planned steps while epsilon stays within target."""
    from hf_dpkd.privacy.accounting import compute_epsilon

    session = _trainer(tmp_path, target_epsilon=1.0, max_steps=6, accountant=accountant).dp_session

    def reference(start: int) -> int:
        k = start
        while (
            compute_epsilon(session.prior_history + [session.release_entry(k + 1)], session.delta, accountant)
            <= 1.0
        ):
            k += 1
        return k

    assert session.max_steps == session._max_steps_within_budget(session.planned_steps)
    for start in (1, 2, 3, session.planned_steps):  # below the planned steps: the search must climb
        assert session._max_steps_within_budget(start) == reference(start), start
