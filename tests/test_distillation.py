"""DistillationTrainer in the real Trainer loop: projections, top-k cache, on-policy, DPKD, bad inputs, learning."""

import math

import pytest
import torch
from datasets import Dataset
from transformers import (
    AutoModelForCausalLM,
    DataCollatorForSeq2Seq,
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainingArguments,
)

from hf_dpkd.evaluation import perplexity
from hf_dpkd.trainers.distillation import TOPK_INDICES, TOPK_LOGPROBS, DistillationConfig, DistillationTrainer
from hf_dpkd.trainers.dp_distillation import DPDistillationConfig, DPDistillationTrainer
from hf_dpkd.trainers.losses import dp_forward_kwargs
from tests.dp_models import tiny_word_lm, tiny_word_tokenizer

WORDS = ["good", "food", "nice", "staff", "slow", "service", "bad", "cold", "fries", "great"]


def _grammar(n, seed):
    """A small probabilistic grammar: a code word, then text whose word choice depends on it."""
    g = torch.Generator().manual_seed(seed)
    texts = []
    for _ in range(n):
        pos = torch.rand(1, generator=g).item() < 0.5
        code = "POS" if pos else "NEG"
        pool = WORDS[:4] + ["great"] if pos else WORDS[4:9]
        words = [pool[int(torch.randint(len(pool), (1,), generator=g))] for _ in range(6)]
        texts.append(f"{code} : " + " ".join(words))
    return texts


TOK = tiny_word_tokenizer(_grammar(50, 0) + ["POS NEG :"])


def _model(n_layer, n_embd, seed=0):
    return tiny_word_lm(len(TOK), n_layer, n_embd, seed)


def _dataset(texts, mask_prompt=True):
    rows = {"input_ids": [], "attention_mask": [], "labels": []}
    for t in texts:
        ids = TOK(t + " <eos>")["input_ids"]
        labels = list(ids)
        if mask_prompt:
            labels[:2] = [-100, -100]
        rows["input_ids"].append(ids)
        rows["attention_mask"].append([1] * len(ids))
        rows["labels"].append(labels)
    return Dataset.from_dict(rows)


COLLATE = DataCollatorForSeq2Seq(TOK, label_pad_token_id=-100, padding=True)
BASE = dict(
    use_cpu=True,
    report_to=[],
    save_strategy="no",
    per_device_train_batch_size=8,
    learning_rate=5e-3,
    seed=0,
    disable_tqdm=True,
    logging_strategy="no",
)


def _teacher(steps=150):
    teacher = _model(2, 32, seed=1)
    Trainer(
        model=teacher,
        args=TrainingArguments(output_dir="/tmp/_t", max_steps=steps, **BASE),
        train_dataset=_dataset(_grammar(400, 1)),
        data_collator=COLLATE,
    ).train()
    return teacher


@pytest.fixture(scope="module")
def teacher():
    return _teacher()


def test_hidden_alignment_trains_projection_and_is_not_saved(tmp_path, teacher):
    student = _model(1, 16)
    args = DistillationConfig(
        output_dir=str(tmp_path), max_steps=3, alpha_hidden=1.0, layer_map="uniform", **BASE
    )
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=_dataset(_grammar(40, 2)),
        data_collator=COLLATE,
    )
    before = trainer.projections.maps[0].weight.detach().clone()
    trainer.train()
    assert not torch.equal(before, trainer.projections.maps[0].weight)  # the projection learned
    trainer.save_model(str(tmp_path / "final"))
    from safetensors.torch import load_file

    keys = load_file(str(tmp_path / "final" / "model.safetensors")).keys()
    assert not any("maps" in k or "projection" in k for k in keys)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    assert loaded.config.n_embd == 16 and not any("transformer.h.1" in k for k in keys)


def test_cached_topk_with_full_vocab_equals_online(tmp_path, teacher):
    data = _dataset(_grammar(8, 3))
    batch = COLLATE([data[i] for i in range(8)])
    with torch.no_grad():
        logp = torch.log_softmax(teacher(**dp_forward_kwargs(teacher, batch)).logits, -1)
    vals, idx = logp.topk(logp.shape[-1], dim=-1)
    student = _model(1, 16)
    args = DistillationConfig(output_dir=str(tmp_path), max_steps=1, **BASE)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=data, data_collator=COLLATE
    )
    online = trainer.compute_loss(student, batch)
    cached = trainer.compute_loss(student, {**batch, TOPK_INDICES: idx, TOPK_LOGPROBS: vals})
    assert math.isclose(online.item(), cached.item(), rel_tol=1e-5)


def test_fused_forward_kl_loss_gives_the_autograd_gradient(tmp_path, teacher, monkeypatch):
    """The trainer's loss with forward KL (CE and KD fused, closed-form backward) against autograd through
    the unfused sums: the same loss and the same gradient for every student parameter."""
    import hf_dpkd.trainers.distillation as distillation
    from hf_dpkd.trainers.losses import causal_lm_labels, cross_entropy_sums, kd_divergence
    from tests.tolerances import assert_matches_reference

    fused_calls = []
    fused_sums = distillation.cross_entropy_and_forward_kl_sums
    monkeypatch.setattr(
        distillation,
        "cross_entropy_and_forward_kl_sums",
        lambda *a, **k: (fused_calls.append(1), fused_sums(*a, **k))[1],
    )

    data = _dataset(_grammar(8, 3))
    batch = COLLATE([data[i] for i in range(8)])
    student = _model(1, 16)
    args = DistillationConfig(output_dir=str(tmp_path), max_steps=1, temperature=2.0, alpha_kd=0.7, **BASE)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=data, data_collator=COLLATE
    )
    fused = trainer.compute_loss(student, batch)
    fused.backward()
    assert fused_calls == [1]
    ours = {"loss": fused.detach(), **{n: p.grad.clone() for n, p in student.named_parameters()}}
    student.zero_grad()
    targets = causal_lm_labels(batch)[:, 1:]
    mask = (targets != -100).float()
    logits = student(**dp_forward_kwargs(student, batch)).logits[:, :-1]
    with torch.no_grad():
        t_logits = teacher(**dp_forward_kwargs(teacher, batch)).logits[:, :-1]
    ce, counts = cross_entropy_sums(logits, targets, mask)
    kd, _ = kd_divergence(logits, t_logits, mask, temperature=2.0)
    reference = (args.alpha_ce * ce.sum() + 0.7 * 4.0 * kd.sum()) / counts.sum()
    reference.backward()
    ref = {"loss": reference.detach(), **{n: p.grad for n, p in student.named_parameters()}}
    assert_matches_reference(ours, ref, what="fused distillation loss", terms=int(counts.sum()) * 64)


def test_on_policy_rollouts_train(tmp_path, teacher):
    student = _model(1, 16)
    args = DistillationConfig(
        output_dir=str(tmp_path),
        max_steps=12,
        on_policy_ratio=1.0,
        kd_loss="jsd",
        on_policy_max_new_tokens=6,
        **{**BASE, "logging_strategy": "steps", "logging_steps": 1},
    )
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        processing_class=TOK,
        train_dataset=_dataset(_grammar(96, 4)),
        data_collator=COLLATE,
    )
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert all(math.isfinite(x) for x in losses)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3


def test_dpkd_per_sample_losses_are_independent_and_recorded(tmp_path, teacher):
    data = _dataset(_grammar(64, 5))
    args = DPDistillationConfig(
        output_dir=str(tmp_path),
        max_steps=2,
        target_epsilon=2.0,
        max_physical_batch_size=4,
        teacher_is_public=True,  # the fixture's teacher is declared public here (test_privacy_hardening: DP teachers)
        **BASE,
    )
    trainer = DPDistillationTrainer(
        model=_model(1, 16), teacher_model=teacher, args=args, train_dataset=data, data_collator=COLLATE
    )
    batch = COLLATE([data[i] for i in range(6)])
    full = trainer.compute_per_sample_loss(trainer.model, batch)
    changed = {k: v.clone() for k, v in batch.items()}
    changed["input_ids"][1:] = changed["input_ids"][1:].flip(0)  # other samples change, sample 0 does not
    again = trainer.compute_per_sample_loss(trainer.model, changed)
    assert torch.allclose(full[0], again[0], atol=1e-6)
    trainer.train()
    assert [r.name for r in trainer.privacy_ledger.releases] == ["dp_distillation"]
    assert 0 < trainer.privacy_report()["epsilon"] <= 2.0


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"alpha_ce": 0.0, "alpha_kd": 0.0}, "all 0: nothing to train"),
        ({"alpha_kd": -0.1}, "weights must be >= 0"),
        ({"temperature": 0.0}, r"temperature=0.0 must be > 0"),
        ({"kd_loss": "mse"}, r"kd_loss='mse' is not supported"),
        ({"on_policy_ratio": 1.5}, r"on_policy_ratio=1.5 must lie in \[0, 1\]"),
        ({"target_epsilon": 1.0, "alpha_hidden": 1.0}, r"With DP-SGD \(DPKD\) only alpha_ce and alpha_kd"),
        ({"target_epsilon": 1.0, "on_policy_ratio": 0.5}, r"With DP-SGD \(DPKD\) only alpha_ce and alpha_kd"),
        (
            {"target_epsilon": 1.0, "alpha_kd": -0.1},
            "weights must be >= 0",
        ),  # the KD checks hold under DP too
        ({}, "Give exactly one of target_epsilon"),
    ],
)
def test_bad_config(tmp_path, kwargs, match):
    config = DPDistillationConfig if "target_epsilon" in kwargs or not kwargs else DistillationConfig
    with pytest.raises(ValueError, match=match):
        config(output_dir=str(tmp_path), **{**BASE, **kwargs})


def test_distillation_takes_no_privacy_setting(tmp_path):
    """DistillationTrainer is a plain Trainer: DP settings belong to DPDistillationConfig, which says so."""
    with pytest.raises(TypeError, match="target_epsilon"):
        DistillationConfig(output_dir=str(tmp_path), target_epsilon=2.0, **BASE)
    assert not any(
        f.startswith(("target_epsilon", "noise_multiplier", "dp_"))
        for f in DistillationConfig.__dataclass_fields__
    )
    with pytest.raises(TypeError, match="DPDistillationConfig"):
        DPDistillationTrainer(
            model=_model(1, 16),
            teacher_model=_model(1, 16),
            args=DistillationConfig(output_dir=str(tmp_path), **BASE),
        )


def test_bad_trainer_inputs(tmp_path, teacher):
    args = DistillationConfig(
        output_dir=str(tmp_path), max_steps=1, alpha_hidden=1.0, layer_map="5:2", **BASE
    )
    with pytest.raises(ValueError, match=r"layer_map pair \(5, 2\) is out of range"):
        DistillationTrainer(
            model=_model(1, 16), teacher_model=teacher, args=args, train_dataset=_dataset(["POS : good"])
        )
    ok = DistillationConfig(output_dir=str(tmp_path), max_steps=1, **BASE)
    with pytest.raises(ValueError, match="needs teacher_model="):
        DistillationTrainer(model=_model(1, 16), args=ok, train_dataset=_dataset(["POS : good"]))
    other = GPT2LMHeadModel(
        GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=len(TOK) + 7, n_positions=32)
    )
    with pytest.raises(ValueError, match=r"vocabularies differ \(teacher .* rows, student .* rows\)"):
        DistillationTrainer(
            model=other, teacher_model=teacher, args=ok, train_dataset=_dataset(["POS : good"])
        )


def test_distilled_student_beats_ce_only_student(tmp_path, teacher):
    """A real learning check: little data and many epochs, where soft labels regularise (CE alone overfits)."""
    train, test = _dataset(_grammar(24, 6)), _grammar(200, 7)
    results = {}
    for name, alpha_kd in (("ce", 0.0), ("kd", 0.7)):
        student = _model(1, 16, seed=3)
        args = DistillationConfig(
            output_dir=str(tmp_path / name),
            num_train_epochs=60,
            alpha_ce=1 - alpha_kd,
            alpha_kd=alpha_kd,
            **BASE,
        )
        DistillationTrainer(
            model=student, teacher_model=teacher, args=args, train_dataset=train, data_collator=COLLATE
        ).train()
        results[name] = perplexity(student, TOK, test, window=16, show_progress=False)["perplexity"]
    assert results["kd"] < results["ce"] * 0.95, results


def test_peft_lora_student_trains_adapters_only_and_saves_them(tmp_path, teacher):
    """A LoRA student: only the adapters move, the saved folder is a PEFT adapter, the base is untouched."""
    from peft import LoraConfig, PeftModel, get_peft_model

    base = _model(1, 16, seed=3)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    student = get_peft_model(
        base,
        LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True),
    )
    lora_before = {n: p.detach().clone() for n, p in student.named_parameters() if p.requires_grad}
    args = DistillationConfig(output_dir=str(tmp_path / "lora"), max_steps=8, **BASE)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=_dataset(_grammar(64, 8)),
        data_collator=COLLATE,
    )
    trainer.train()
    moved = [
        n for n, p in student.named_parameters() if p.requires_grad and not torch.equal(p, lora_before[n])
    ]
    assert moved and all("lora_" in n for n in moved)
    trainer.save_model(str(tmp_path / "adapter"))
    saved = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= saved
    fresh = _model(1, 16, seed=3)
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, before[k]), k  # the base weights never changed
    loaded = PeftModel.from_pretrained(fresh, str(tmp_path / "adapter"))
    ids = torch.tensor([TOK("POS : good food")["input_ids"]])
    student.eval()
    torch.testing.assert_close(loaded(input_ids=ids).logits, student(input_ids=ids).logits)


def test_bf16_distillation_with_a_bf16_teacher(tmp_path, teacher):
    """bf16 autocast (CPU) with the teacher stored in bf16: finite losses computed in float32, and it learns."""
    bf16_teacher = _model(2, 32, seed=1)
    bf16_teacher.load_state_dict(teacher.state_dict())
    bf16_teacher.to(torch.bfloat16)
    student = _model(1, 16, seed=3)
    data = _dataset(_grammar(128, 9))
    args = DistillationConfig(
        output_dir=str(tmp_path / "bf16"),
        max_steps=30,
        bf16=True,
        **{**BASE, "logging_strategy": "steps", "logging_steps": 5},
    )
    trainer = DistillationTrainer(
        model=student, teacher_model=bf16_teacher, args=args, train_dataset=data, data_collator=COLLATE
    )
    assert next(trainer.teacher.parameters()).dtype == torch.bfloat16
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]
    # kd computed in float32 even from bf16 logits
    batch = COLLATE([data[i] for i in range(4)])
    ce, kd, _, counts, _, _ = trainer._loss_terms(student, batch, need_hidden=False)
    assert kd.dtype == torch.float32 and torch.isfinite(kd).all()
