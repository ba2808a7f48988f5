"""LoRA (peft) DP trainings: the clipping engine on peft's adapters, DPTrainer resume, and the pipeline's LoRA teacher.

The clipped sums of every clipping mode are compared with the per-example loop of tests/dp_models.py on peft
LoRA models (GPT-2's Conv1D projections and Llama's Linear ones), with the float32 limits of tests/tolerances.py.
The pipeline test runs the quick demo with --teacher_peft lora and --student_peft lora through generation, a
DP-SGD student and evaluation, then resumes the teacher stage from its checkpoint.
"""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, default_data_collator

from hf_dpkd.hub import card_epsilon
from hf_dpkd.peft_support import LoraSettings, add_lora, merged_copy
from hf_dpkd.pipeline import COMPLETE, load_model_and_tokenizer
from hf_dpkd.privacy.accounting import PrivacyLedger, compute_epsilon
from hf_dpkd.privacy.engine import CLIPPING_MODES, attach_grad_sampler, detach_grad_sampler
from hf_dpkd.synthetic.generation import load_synthetic_dataset
from hf_dpkd.trainers.dp import DPConfig, DPTrainer
from hf_dpkd.trainers.losses import dp_forward_kwargs
from tests.dp_models import random_batch, reference_clipped_sum, tiny_gpt2, tiny_llama
from tests.pipeline_runs import run_quick
from tests.test_dp_engine import T, _clipped_sum, _median_norm
from tests.tolerances import assert_matches_reference

GPT2_TARGETS = ("c_attn", "c_proj", "c_fc")
LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _lora(family: str, dropout: float = 0.0):
    """A tiny model with LoRA on every projection; B drawn at random (peft starts it at 0: no gradient for A)."""
    base, targets = (
        (tiny_gpt2(tied=True), GPT2_TARGETS) if family == "gpt2" else (tiny_llama(), LLAMA_TARGETS)
    )
    model = add_lora(base, LoraSettings(r=4, alpha=8, target_modules=targets, dropout=dropout))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    return model


# -- the clipping engine on peft's LoRA layers -------------------------------------------------------


@pytest.mark.parametrize("mode", CLIPPING_MODES)
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_lora_clipped_sum_matches_the_per_example_loop(family, mode):
    """Every clipping mode clips each example's adapter gradient (all adapters together) and sums: equal to the
    per-example loop within float32 rounding (the limits of tests/tolerances.py)."""
    model = _lora(family)
    model.train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)
    batch = random_batch(7)
    clip = _median_norm(model, batch)  # some examples clipped, some not
    ref = reference_clipped_sum(model, batch, clip)
    ours = _clipped_sum(model, batch, clip, mode=mode, micro=3)
    assert set(ours) == trainable == set(ref)
    assert_matches_reference(ours, ref, what=f"{mode} clipped sum, LoRA {family}", terms=7 * T)


@pytest.mark.parametrize("mode", CLIPPING_MODES)
def test_lora_dropout_examples_are_clipped_to_c(mode):
    """With LoRA dropout on, each example's clipped adapter gradient still has norm exactly C."""
    model = _lora("gpt2", dropout=0.1)
    model.train()
    batch = random_batch(3, pad_last=0)
    clip = 1e-3  # far below every example's gradient norm
    for i in range(3):
        one = {k: v[i : i + 1] for k, v in batch.items()}
        norm = torch.sqrt(
            sum((g.double() ** 2).sum() for g in _clipped_sum(model, one, clip, mode=mode).values())
        )
        assert abs(norm.item() / clip - 1) <= 1e-5, f"{mode}, example {i}: {norm.item() / clip:.7g} C"


def test_lora_on_an_embedding_is_refused_before_training():
    """An embedding's LoRA factors are used outside the modules that own them: add_lora refuses it, and a peft
    model built without it is refused by every clipping mode on its first training forward."""
    from peft import LoraConfig, get_peft_model

    with pytest.raises(
        ValueError, match=r"--lora_target_modules 'wte,c_attn': 'transformer.wte' is a Embedding"
    ):
        add_lora(tiny_gpt2(tied=False), LoraSettings(target_modules=("wte", "c_attn")))
    with pytest.raises(
        ValueError, match=r"no module of the model has that name; .* named c_attn, c_fc, c_proj"
    ):
        add_lora(tiny_gpt2(tied=False), LoraSettings(target_modules=("q_proj",)))
    for mode in CLIPPING_MODES:
        model = get_peft_model(tiny_gpt2(tied=False), LoraConfig(r=4, lora_alpha=8, target_modules=["wte"]))
        with pytest.raises(ValueError) as err:
            gsm = attach_grad_sampler(model, mode, 1.0)
            try:
                gsm(**dp_forward_kwargs(gsm, random_batch(2)))
            finally:
                detach_grad_sampler(gsm)
        assert str(err.value).startswith(f"clipping_mode={mode!r}") and "lora_embedding_A" in str(err.value)


# -- DPTrainer: only the adapters move, and a LoRA checkpoint resumes ---------------------------------


def _lora_trainer(output_dir, **kw):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(
            n_layer=1, n_embd=16, n_head=2, vocab_size=40, n_positions=16, bos_token_id=0, eos_token_id=0
        )
    )
    model = add_lora(model, LoraSettings(r=2, alpha=4))
    ids = torch.randint(0, 40, (96, 8), generator=torch.Generator().manual_seed(0)).tolist()
    args = DPConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=8,
        max_physical_batch_size=3,
        use_cpu=True,
        report_to=[],
        seed=0,
        learning_rate=1e-2,
        noise_multiplier=1.0,
        accountant="rdp",  # no calibration, a fast epsilon: the test is about the adapters and the restore
        max_steps=6,
        save_strategy="steps",
        save_steps=3,
        **kw,
    )
    dataset = Dataset.from_dict({"input_ids": ids, "labels": ids})
    return DPTrainer(model=model, args=args, train_dataset=dataset, data_collator=default_data_collator)


def test_dp_trainer_moves_only_the_adapters_and_resumes_a_lora_checkpoint(tmp_path):
    full = _lora_trainer(tmp_path / "a")
    before = {n: p.detach().clone() for n, p in full.model.named_parameters()}
    full.train()
    noised = {id(p) for group in full.optimizer.param_groups for p in group["params"]}
    for name, p in full.model.named_parameters():
        is_lora = "lora_A" in name or "lora_B" in name
        assert (id(p) in noised) == is_lora == p.requires_grad, name  # noise only on the adapters
        assert torch.equal(p, before[name]) != is_lora, name  # the base is bit-identical, the adapters moved
    assert (tmp_path / "a" / "checkpoint-3" / "adapter_model.safetensors").is_file()

    merged = merged_copy(full.model)  # a plain model for generation; the trained adapter model stays as it is
    assert type(merged) is GPT2LMHeadModel and any("lora_" in n for n, _ in full.model.named_parameters())
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(
            merged.eval()(ids).logits, full.model.eval()(ids).logits, rtol=1e-5, atol=1e-6
        )

    resumed = _lora_trainer(tmp_path / "b")
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-3"))
    assert resumed.privacy_ledger.to_dict() == full.privacy_ledger.to_dict()
    for (n, p), (_, q) in zip(full.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.allclose(p, q, atol=1e-6), n


# -- the pipeline's LoRA DP teacher ------------------------------------------------------------------

PIPELINE = (
    "--stages",
    "data,histogram,teacher,generate",
    "--methods",
    "dp_sgd_student,dpkd",
    "--teacher_peft",
    "lora",
    "--student_peft",
    "lora",
    "--demo_num_train",
    "300",
    "--pretrain_steps",
    "5",
    "--num_synthetic_samples",
    "16",
    # the accountant's epsilon is most of a tiny DP training's time (calibration, then each checkpoint's
    # report): RDP is the quicker one, and one checkpoint (the last step's) is all the resume test needs
    "--accountant",
    "rdp",
    "--save_steps",
    "100",
)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("lora") / "run"
    proc = run_quick(run_dir, *PIPELINE)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return run_dir


def test_lora_teacher_folder_is_the_adapter_with_its_card_and_ledger(lora_run):
    final = lora_run / "teacher" / "final"
    names = {p.name for p in final.iterdir()}
    assert {
        "adapter_config.json",
        "adapter_model.safetensors",
        "README.md",
        "privacy_ledger.json",
        COMPLETE,
    } <= names
    assert "model.safetensors" not in names  # the base is public and stays out of the folder
    ledger = PrivacyLedger.load(final)
    assert card_epsilon(final / "README.md") == pytest.approx(ledger.epsilon(), rel=1e-9)
    card = (final / "README.md").read_text()
    assert "library_name: peft" in card and "LoRA adapters only (peft): r=8" in card
    assert "PeftModel.from_pretrained(base, path).merge_and_unload()" in card
    assert str(lora_run / "base" / "teacher") in card  # the public base teacher to merge it into

    # the releases: the run's DP histogram, then the teacher's DP-SGD over the adapters, as trained
    histogram = PrivacyLedger.load(lora_run / "histogram").to_dict()["releases"]
    releases = ledger.to_dict()["releases"]
    assert [r["name"] for r in releases] == ["control_code_histogram", "teacher_dp_sgd"]
    assert releases[0] == histogram[0]
    report = json.loads((final / "privacy_report.json").read_text())
    n = json.loads((lora_run / "data" / "info.json").read_text())["sizes"]["train"]
    sgd = releases[1]
    assert sgd["sample_rate"] == pytest.approx(64 / n, rel=1e-12) == report["sample_rate"]
    assert (
        sgd["steps"] == report["steps"] == round(n / 64)
        and sgd["noise_multiplier"] == report["noise_multiplier"]
    )
    entries = [(r["noise_multiplier"], r["sample_rate"], r["steps"]) for r in releases]
    assert ledger.epsilon() == pytest.approx(compute_epsilon(entries, ledger.delta, "rdp"), rel=1e-9)
    assert ledger.epsilon() <= 2.0


def _changed_by_merge(run_dir, folder, base: str) -> tuple[set[str], set[str]]:
    """(parameters that differ from the public `base` once the adapter in `folder` is merged, the adapted weights)."""
    public = dict(AutoModelForCausalLM.from_pretrained(run_dir / "base" / base).named_parameters())
    merged, _ = load_model_and_tokenizer(folder, base=run_dir / "base" / base)
    targets = {n for n in public if n.endswith(".weight") and n.split(".")[-2] in GPT2_TARGETS}
    return {n for n, p in merged.named_parameters() if not torch.equal(p, public[n])}, targets


def test_only_the_adapters_changed_and_generation_used_the_merged_teacher(lora_run):
    adapter = load_file(lora_run / "teacher" / "final" / "adapter_model.safetensors")
    assert adapter and all(".lora_A." in k or ".lora_B." in k for k in adapter)
    assert all(v.abs().max() > 0 for k, v in adapter.items() if ".lora_B." in k)  # B starts at 0: trained
    # the merge touches exactly the adapted projections; everything else is the public base, bit for bit
    changed, targets = _changed_by_merge(lora_run, lora_run / "teacher" / "final", "teacher")
    assert changed == targets
    # the merged teacher names the adapter folder (its ledger), not the public base: a DistillationTrainer
    # finds the ledger of the teacher it distils from there
    merged, _ = load_model_and_tokenizer(lora_run / "teacher" / "final", base=lora_run / "base" / "teacher")
    assert merged.config._name_or_path == str(lora_run / "teacher" / "final")
    # generation sampled from the merged teacher, and the synthetic data carries its ledger
    assert len(load_synthetic_dataset(lora_run / "synthetic")) == 16
    synthetic = PrivacyLedger.load(lora_run / "synthetic")
    assert synthetic.epsilon() == PrivacyLedger.load(lora_run / "teacher" / "final").epsilon()


def _continue(lora_run, tmp_path, stages: str) -> Path:
    """Run `stages` in-process on a copy of the LoRA run, with its settings."""
    from hf_dpkd.pipeline import Pipeline
    from hf_dpkd.run_config import parse_run_config

    run_dir = tmp_path / "run"
    if not run_dir.exists():
        shutil.copytree(lora_run, run_dir)
    config = parse_run_config(["--quick", "--run_dir", str(run_dir), *PIPELINE[2:], "--stages", stages])
    Pipeline(config).run_stages()
    return run_dir


def test_lora_teacher_resumes_from_its_checkpoint(lora_run, tmp_path):
    """The teacher stage of a copy, its final folder removed: restored from the LoRA checkpoint, the same
    adapter and ledger (the checkpoint's release, its draw id included)."""
    shutil.copytree(lora_run, tmp_path / "run")
    (tmp_path / "run" / "stages" / "teacher.json").unlink()
    shutil.rmtree(tmp_path / "run" / "teacher" / "final")
    assert list((tmp_path / "run" / "teacher").glob("checkpoint-*/adapter_model.safetensors"))
    run_dir = _continue(lora_run, tmp_path, "teacher")
    ours = load_file(run_dir / "teacher" / "final" / "adapter_model.safetensors")
    ref = load_file(lora_run / "teacher" / "final" / "adapter_model.safetensors")
    assert ours.keys() == ref.keys() and all(torch.equal(ours[k], ref[k]) for k in ref)
    ours, ref = (
        PrivacyLedger.load(run_dir / "teacher" / "final"),
        PrivacyLedger.load(lora_run / "teacher" / "final"),
    )
    assert ours.to_dict() == ref.to_dict()


def test_lora_dp_sgd_students_and_evaluation_of_the_merged_adapters(lora_run, tmp_path):
    """--student_peft lora: the DP-SGD student is an adapter of the public base student (with its card); DPKD
    distils from its LoRA teacher at epsilon/2 (composed); evaluation scores every adapter merged into its base."""
    run_dir = _continue(lora_run, tmp_path, "students,evaluate")
    student = run_dir / "students" / "dp_sgd_student" / "final"
    assert (student / "adapter_config.json").is_file() and not (student / "model.safetensors").exists()
    changed, targets = _changed_by_merge(run_dir, student, "student")
    assert changed == targets
    assert card_epsilon(student / "README.md") == pytest.approx(
        PrivacyLedger.load(student).epsilon(), rel=1e-9
    )
    rows = {r["method"]: r for r in json.loads((run_dir / "results.json").read_text())["rows"]}
    for name, public in (
        ("teacher", "public_teacher"),
        ("dp_sgd_student", "public_student"),
        ("dpkd", "public_student"),
    ):
        assert rows[name]["num_parameters"] == rows[public]["num_parameters"]  # merged: the base's size
        assert math.isfinite(rows[name]["test_perplexity"]) and rows[name]["epsilon"] <= 2.0
    releases = [r.name for r in PrivacyLedger.load(run_dir / "students" / "dpkd" / "final").releases]
    assert releases == ["dpkd_teacher_dp_sgd", "dpkd_student_dp_sgd"]
    assert (run_dir / "students" / "dpkd_teacher" / "final" / "adapter_config.json").is_file()
