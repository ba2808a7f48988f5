"""trl's dataset formats in DPTrainer and the pipeline's loaders: a ``text`` column, or ``prompt`` / ``completion``.

A prompt/completion row is trained on its completion only: its loss is checked against the NLL of the
completion's tokens computed by hand, and its tokens and labels against trl's SFTTrainer on the same rows.
"""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset

from hf_dpkd.data.loaders import load_private_dataset
from hf_dpkd.trainers.dp import DPConfig, DPTrainer
from tests.dp_models import tiny_word_lm, tiny_word_tokenizer

PROMPTS = ["the red cat", "a big dog", "the old mat"]
COMPLETIONS = [" sat on the mat", " ran", " was red and big and old"]
TEXTS = [p + c for p, c in zip(PROMPTS, COMPLETIONS)]


def _trainer(tmp_path, dataset, **kw):
    tokenizer = tiny_word_tokenizer(TEXTS)
    args = DPConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        use_cpu=True,
        report_to=[],
        noise_multiplier=1.0,
        accountant="rdp",
        max_steps=2,
        learning_rate=1e-2,
    )
    model = tiny_word_lm(len(tokenizer))
    return DPTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer, **kw
    ), tokenizer


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text)["input_ids"]


def test_text_column_is_tokenized_with_eos_and_trains(tmp_path):
    trainer, tokenizer = _trainer(tmp_path, Dataset.from_dict({"text": TEXTS}))
    rows = trainer.train_dataset
    assert rows.column_names == ["input_ids", "attention_mask", "labels"]
    for row, text in zip(rows, TEXTS):
        assert row["input_ids"] == _ids(tokenizer, text) + [tokenizer.eos_token_id] == row["labels"]
    trainer.train()
    assert trainer.privacy_report()["steps"] == 2 and math.isfinite(trainer.privacy_ledger.epsilon())


def test_prompt_completion_loss_is_the_completion_tokens_nll(tmp_path):
    """The per-example loss DPTrainer trains on is the mean NLL of the completion's tokens (and eos) given the
    prompt, computed here by hand from the model's logits; rows of different lengths share one padded batch."""
    data = Dataset.from_dict({"prompt": PROMPTS, "completion": COMPLETIONS})
    trainer, tokenizer = _trainer(tmp_path, data)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    with torch.no_grad():
        losses = trainer.compute_per_sample_loss(trainer.model, batch)
        for i, (prompt, completion) in enumerate(zip(PROMPTS, COMPLETIONS)):
            p = _ids(tokenizer, prompt)
            c = _ids(tokenizer, completion) + [tokenizer.eos_token_id]
            assert batch["labels"][i, : len(p)].eq(-100).all()
            logp = F.log_softmax(trainer.model(torch.tensor([p + c])).logits[0].double(), dim=-1)
            by_hand = -sum(logp[len(p) - 1 + j, token] for j, token in enumerate(c)) / len(c)
            assert losses[i].item() == pytest.approx(by_hand.item(), rel=1e-5), i
    trainer.train()  # and it trains with DP-SGD
    assert trainer.privacy_report()["steps"] == 2


def test_prompt_completion_rows_are_tokenized_as_trl_does(tmp_path):
    """The same input_ids and labels (-100 on the prompt) as trl's SFTTrainer builds for the same rows."""
    from trl import SFTConfig, SFTTrainer

    data = Dataset.from_dict({"prompt": PROMPTS, "completion": COMPLETIONS})
    ours, tokenizer = _trainer(tmp_path / "ours", data)
    trl = SFTTrainer(
        model=tiny_word_lm(len(tokenizer)),
        args=SFTConfig(output_dir=str(tmp_path / "trl"), report_to=[], use_cpu=True),
        train_dataset=data,
        processing_class=tokenizer,
    )
    for a, b in zip(ours.train_dataset, trl.train_dataset):
        assert a["input_ids"] == b["input_ids"] and a["labels"] == b["labels"]


def test_a_dataset_in_no_format_is_refused_naming_its_columns(tmp_path):
    data = Dataset.from_dict({"question": PROMPTS, "answer": COMPLETIONS})
    with pytest.raises(ValueError) as err:
        _trainer(tmp_path, data)
    message = str(err.value)
    assert message.startswith("train_dataset has columns ['question', 'answer']")
    assert (
        "'input_ids'" in message and "a 'text' column" in message and "'prompt' and 'completion'" in message
    )
    with pytest.raises(
        ValueError, match=r"'messages' is trl's conversational format: apply the chat template"
    ):
        _trainer(tmp_path, Dataset.from_dict({"messages": [[{"role": "user", "content": "hi"}]] * 3}))
    with pytest.raises(ValueError, match=r"eval_dataset\['val'\] has columns \['question', 'answer'\]"):
        _trainer(tmp_path, Dataset.from_dict({"text": TEXTS}), eval_dataset={"val": data})
    tokenizer = tiny_word_tokenizer(TEXTS)  # raw text without a tokenizer to tokenize it
    args = DPConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], noise_multiplier=1.0, max_steps=1)
    with pytest.raises(
        ValueError, match=r"train_dataset holds raw text .* pass processing_class=<tokenizer>"
    ):
        DPTrainer(
            model=tiny_word_lm(len(tokenizer)), args=args, train_dataset=Dataset.from_dict({"text": TEXTS})
        )


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_pipeline_loader_joins_prompt_and_completion_into_the_text(tmp_path):
    """The pipeline generates whole records from control codes, so a prompt/completion record becomes one text."""
    rows = [{"prompt": p, "completion": c, "label": s} for p, c, s in zip(PROMPTS, COMPLETIONS, "abc")] * 4
    data, fields = load_private_dataset(str(_jsonl(tmp_path / "train.jsonl", rows)), test_size=2)
    assert fields == [("label", "Label")]
    assert sorted([*data["train"]["text"], *data["test"]["text"]]) == sorted(TEXTS * 4)
    with pytest.raises(ValueError) as err:
        load_private_dataset(str(_jsonl(tmp_path / "other.jsonl", [{"body": "x", "label": "a"}] * 4)))
    message = str(err.value)
    assert (
        "has no 'text' column (columns: ['body', 'label']), nor 'prompt' and 'completion' columns" in message
    )
    assert "pass text_column (--text_column) naming the column" in message
