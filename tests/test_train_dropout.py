"""--train_dropout: every dropout probability of a model about to be trained is set, whatever the architecture
names it (GPT-2's *_pdrop, Llama's attention_dropout read at call time), and 'keep' leaves the checkpoint's."""

from __future__ import annotations

import json

import pytest
import torch

from hf_dpkd.pipeline.loading import load_model_and_tokenizer, set_dropout
from hf_dpkd.run_config import parse_run_config
from tests.dp_models import VOCAB, tiny_gpt2, tiny_llama


def _gpt2_with_dropout(p: float):
    return tiny_gpt2(dropout=p)


def _llama_with_dropout(p: float):
    return tiny_llama(attention_dropout=p)


def _two_train_mode_forwards(model) -> tuple[torch.Tensor, torch.Tensor]:
    model.train()
    ids = torch.randint(0, VOCAB, (4, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model(input_ids=ids).logits, model(input_ids=ids).logits


@pytest.mark.parametrize("factory", [_gpt2_with_dropout, _llama_with_dropout], ids=["gpt2", "llama"])
def test_zero_dropout_makes_training_mode_deterministic(factory):
    model = factory(0.3)
    first, second = _two_train_mode_forwards(model)
    assert not torch.equal(first, second)  # the dropout is live before
    set_dropout(model, 0.0)
    first, second = _two_train_mode_forwards(model)
    assert torch.equal(first, second)
    model.eval()
    with torch.no_grad():  # and the train-mode forward is now the eval-mode one
        ids = torch.randint(0, VOCAB, (4, 16), generator=torch.Generator().manual_seed(1))
        assert torch.allclose(model(input_ids=ids).logits, first, atol=1e-6)


def test_the_config_says_how_the_model_was_trained():
    model = _gpt2_with_dropout(0.1)
    set_dropout(model, 0.25)
    c = model.config
    assert (c.attn_pdrop, c.resid_pdrop, c.embd_pdrop, c.summary_first_dropout) == (0.25, 0.25, 0.25, 0.25)
    assert {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)} == {0.25}
    llama = _llama_with_dropout(0.1)
    set_dropout(llama, 0.0)
    assert llama.config.attention_dropout == 0.0
    assert {layer.self_attn.attention_dropout for layer in llama.model.layers} == {0.0}


def test_loading_for_training_sets_it_and_keep_leaves_the_checkpoint(tmp_path):
    from tests.dp_models import tiny_word_tokenizer

    model = _gpt2_with_dropout(0.1)
    model.save_pretrained(tmp_path / "m")
    tiny_word_tokenizer(["a b c"]).save_pretrained(tmp_path / "m")
    kept, _ = load_model_and_tokenizer(tmp_path / "m")
    assert kept.config.attn_pdrop == 0.1
    zero, _ = load_model_and_tokenizer(tmp_path / "m", dropout=0.0)
    assert zero.config.attn_pdrop == 0.0
    zero.save_pretrained(tmp_path / "trained")
    assert json.loads((tmp_path / "trained" / "config.json").read_text())["attn_pdrop"] == 0.0


@pytest.mark.parametrize(("flag", "expected"), [("0", 0.0), ("0.1", 0.1), ("keep", None), ("KEEP", None)])
def test_the_flag(flag, expected, tmp_path):
    config = parse_run_config(["--run_dir", str(tmp_path), "--train_dropout", flag])
    assert config.teacher.train_dropout_probability() == expected


def test_the_default_trains_without_dropout(tmp_path):
    assert parse_run_config(["--run_dir", str(tmp_path)]).teacher.train_dropout_probability() == 0.0


def test_the_pipeline_trains_every_model_with_the_flag(quick_run):
    run_dir = quick_run[0]
    trained = list(run_dir.rglob("final/config.json"))
    assert len(trained) >= 4  # DP teacher and every student
    for path in trained:
        config = json.loads(path.read_text())
        assert (config["attn_pdrop"], config["resid_pdrop"], config["embd_pdrop"]) == (0.0, 0.0, 0.0), path
