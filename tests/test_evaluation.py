"""Perplexity against a slow window-by-window reference, and the offline `evaluate` module."""

import math

import evaluate
import pytest
import torch
import torch.nn.functional as F

from hf_dpkd.evaluation import perplexity, perplexity_metric_path
from tests.dp_models import tiny_gpt2, tiny_word_tokenizer

TEXTS = [f"w{i % 7} w{(i * 3) % 11} w{(i * 5) % 13} w{i % 4}" for i in range(60)]


def _reference(model, tokenizer, texts, window):
    ids = tokenizer("\n\n".join(texts))["input_ids"]
    means, total, count = [], 0.0, 0
    for start in range(0, len(ids) - window + 1, window):
        block = torch.tensor([ids[start : start + window]])
        logp = F.log_softmax(model(input_ids=block).logits[0].double(), dim=-1)
        nlls = [-logp[t, block[0, t + 1]].item() for t in range(window - 1)]
        means.append(sum(nlls) / len(nlls))
        total += sum(nlls)
        count += len(nlls)
    return math.exp(sum(means) / len(means)), math.exp(total / count)


def test_matches_window_by_window_reference():
    tok = tiny_word_tokenizer(TEXTS)
    model = tiny_gpt2()
    model.eval()
    ours = perplexity(model, tok, TEXTS, window=16, batch_size=3, show_progress=False)
    ref_paper, ref_token = _reference(model, tok, TEXTS, 16)
    assert math.isclose(ours["perplexity"], ref_paper, rel_tol=1e-5)
    assert math.isclose(ours["token_weighted_perplexity"], ref_token, rel_tol=1e-5)


def test_evaluate_module_loads_offline_and_agrees(tmp_path):
    tok = tiny_word_tokenizer(TEXTS)
    model = tiny_gpt2()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    metric = evaluate.load(perplexity_metric_path())
    result = metric.compute(predictions=TEXTS, model_id=str(tmp_path), window=16)
    direct = perplexity(model, tok, TEXTS, window=16, show_progress=False)
    assert math.isclose(result["perplexity"], direct["perplexity"], rel_tol=1e-6)


@pytest.mark.parametrize(
    "texts,window,match",
    [
        ([], 16, "texts is empty"),
        (["a b"], 1, "window=1 must be >= 2"),
        (["w1"], 64, "fewer than one window of 64"),
    ],
)
def test_bad_inputs(texts, window, match):
    tok = tiny_word_tokenizer(TEXTS + ["a b"])
    with pytest.raises(ValueError, match=match):
        perplexity(tiny_gpt2(), tok, texts, window=window, show_progress=False)
