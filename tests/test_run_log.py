"""The pipeline's console: a run log without the noise every run expects, and model folders that carry their cards."""

import math
import re
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    ProgressCallback,
    Trainer,
    TrainingArguments,
    default_data_collator,
)

from hf_dpkd.console import run_log, use_causal_lm_loss_for_gpt2
from hf_dpkd.hub import card_epsilon
from hf_dpkd.privacy.accounting import PrivacyLedger
from hf_dpkd.run_config import parse_run_config

ROOT = Path(__file__).parents[1]
#: What a run printed before it was a run log; each is expected, none is news.
EXPECTED_NOISE = (
    "indexing errors",  # the tokenizer on texts that the pipeline truncates on purpose
    "values were not passed",  # `accelerate launch` without a config
    "loss_type=None",  # transformers on GPT-2's class name
    "Setting accelerator to CPU",  # DeepSpeed on a CPU-only machine
    "{'loss':",  # the Trainer's dict of each logging step
    "{'train_runtime':",
)
STAGE_LINE = re.compile(r"^==> stage (\w+)$", re.MULTILINE)


def _tiny_trainer(tmp_path, disable_tqdm: bool = False) -> Trainer:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(
            n_layer=1, n_embd=16, n_head=2, vocab_size=40, n_positions=16, bos_token_id=0, eos_token_id=0
        )
    )
    ids = torch.randint(0, 40, (16, 8), generator=torch.Generator().manual_seed(0)).tolist()
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=8,
        logging_steps=1,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        disable_tqdm=disable_tqdm,
    )
    data = Dataset.from_dict({"input_ids": ids, "labels": ids})
    return Trainer(model=model, args=args, train_dataset=data, data_collator=default_data_collator)


@pytest.mark.parametrize("disable_tqdm", [False, True])
def test_trainer_logs_are_printed_only_when_verbose(tmp_path, capsys, disable_tqdm):
    with run_log(verbose=False):
        trainer = _tiny_trainer(tmp_path / "quiet", disable_tqdm)
        trainer.train()
    quiet = capsys.readouterr()
    assert "'loss'" not in quiet.out + quiet.err and "train_runtime" not in quiet.out + quiet.err
    assert len(trainer.state.log_history) == 3  # the logs are kept (and sent to report_to); only not printed
    with run_log(verbose=True):
        _tiny_trainer(tmp_path / "verbose", disable_tqdm).train()
    verbose = capsys.readouterr()
    assert "'loss'" in verbose.out and "train_runtime" in verbose.out
    import transformers.trainer as hf_trainer

    assert hf_trainer.DEFAULT_PROGRESS_CALLBACK is ProgressCallback  # restored on exit
    _tiny_trainer(tmp_path / "after", disable_tqdm).train()
    assert "'loss'" in capsys.readouterr().out


def test_only_deepspeeds_cpu_notice_is_dropped(monkeypatch):
    """DeepSpeed's CPU notice comes from its real accelerator detection; its other warnings still show."""
    import logging

    from deepspeed.accelerator import real_accelerator

    if torch.cuda.is_available():
        pytest.skip("DeepSpeed gives its CPU notice only on a machine without GPU")
    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    deepspeed_logger = logging.getLogger("DeepSpeed")
    emitted: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: emitted.append(record.getMessage())
    # in place of DeepSpeed's own handler, which writes to whatever stdout was when DeepSpeed was imported
    monkeypatch.setattr(deepspeed_logger, "handlers", [handler])

    def detect() -> str:
        emitted.clear()
        monkeypatch.setattr(real_accelerator, "ds_accelerator", None)
        real_accelerator.get_accelerator()
        deepspeed_logger.warning("another DeepSpeed warning")
        return "\n".join(emitted)

    assert "Setting accelerator to CPU" in detect()  # what a run printed
    with run_log(verbose=False):
        printed = detect()
    assert "Setting accelerator to CPU" not in printed and "another DeepSpeed warning" in printed
    assert "Setting accelerator to CPU" in detect()  # the filter is gone after the run


def test_gpt2_keeps_the_causal_lm_loss_under_its_own_name():
    use_causal_lm_loss_for_gpt2()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=40, n_positions=16))
    assert model.loss_type == "GPT2LMHeadModel"  # recognized: no "loss_type=None" warning
    ids = torch.randint(0, 40, (2, 8))
    out = model(input_ids=ids, labels=ids)
    expected = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 40), ids[:, 1:].reshape(-1))
    assert torch.allclose(out.loss, expected, atol=1e-6)


def test_verbose_flag():
    assert parse_run_config(["--quick"]).pipeline.verbose is False
    assert parse_run_config(["--quick", "--verbose"]).pipeline.verbose is True


# ---------------------------------------------------------------------------------------------------
# The quick run (the shared fixture)
# ---------------------------------------------------------------------------------------------------
def test_quick_run_console_is_a_run_log(quick_run):
    _, proc, _ = quick_run
    printed = proc.stdout + proc.stderr
    for noise in EXPECTED_NOISE:
        assert noise not in printed, noise
    stages = STAGE_LINE.findall(proc.stdout)
    assert stages[:4] == ["data", "histogram", "teacher", "generate"], stages
    for stage in stages:  # each stage ends with its seconds
        assert re.search(rf"^    stage {stage} done in \d+\.\d s$", proc.stdout, re.MULTILINE), stage
    assert "| Method | epsilon | Test perplexity |" in proc.stdout
    assert re.search(
        r"^DistilDP total guarantee \(ledger of .*\): epsilon=\d\.\d{4}, delta=", proc.stdout, re.M
    )
    assert re.search(r"^  privacy unit: one training example \(one text\)$", proc.stdout, re.MULTILINE)
    assert re.search(
        r"^  - teacher_dp_sgd: subsampled_gaussian, noise_multiplier=", proc.stdout, re.MULTILINE
    )
    assert re.search(r"^artifacts: ", proc.stdout, re.MULTILINE)


def test_quick_run_model_folders_carry_their_cards(quick_run):
    run_dir, _, _ = quick_run
    for folder in ("teacher/final", "students/distildp/final"):
        card = run_dir / folder / "README.md"
        assert card.is_file(), folder
        assert math.isclose(card_epsilon(card), PrivacyLedger.load(run_dir / folder).epsilon(), rel_tol=1e-9)
        assert "differential-privacy" in card.read_text()
    for final in sorted((run_dir / "students").glob("*/final")):
        name = final.parent.name
        if name.startswith("non_private"):
            assert card_epsilon(final / "README.md") is None, name
        else:
            assert math.isclose(card_epsilon(final / "README.md"), PrivacyLedger.load(final).epsilon()), name
    assert card_epsilon(run_dir / "non_private_teacher" / "final" / "README.md") is None


def test_quickstart_transcript_shows_the_stages_a_quick_run_prints(quick_run):
    _, proc, _ = quick_run
    text = (ROOT / "docs" / "quickstart.md").read_text(encoding="utf-8")
    blocks = [
        b for b in re.findall(r"^```text\n(.*?)^```", text, re.DOTALL | re.MULTILINE) if "==> stage" in b
    ]
    assert len(blocks) == 1, "docs/quickstart.md should hold one transcript of a quick run"
    assert STAGE_LINE.findall(blocks[0]) == STAGE_LINE.findall(proc.stdout)
