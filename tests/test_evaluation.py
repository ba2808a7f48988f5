"""Perplexity against a slow window-by-window reference, and the offline `evaluate` module."""

import math

import evaluate
import pytest
import torch
import torch.nn.functional as F

from hf_dpkd.evaluation import perplexity, perplexity_metric_path
from tests.dp_models import tiny_gpt2, tiny_word_tokenizer

TEXTS = [f"w{i % 7} w{(i * 3) % 11} w{(i * 5) % 13} w{i % 4}" for i in range(60)]


def _reference(model, tokenizer, texts, window, keep_remainder=False):
    """One window at a time, explicit log-softmax, one token at a time."""
    ids = tokenizer("\n\n".join(texts))["input_ids"]
    starts = list(range(0, len(ids), window))
    windows = [ids[s : s + window] for s in starts]
    windows = [w for w in windows if len(w) == window or (keep_remainder and len(w) >= 2)]
    means, total, count = [], 0.0, 0
    for w in windows:
        block = torch.tensor([w])
        with torch.no_grad():
            logp = F.log_softmax(model(input_ids=block).logits[0].double(), dim=-1)
        nlls = [-logp[t, w[t + 1]].item() for t in range(len(w) - 1)]
        means.append(sum(nlls) / len(nlls))
        total += sum(nlls)
        count += len(nlls)
    return math.exp(sum(means) / len(means)), math.exp(total / count), len(windows), count


@pytest.mark.parametrize("keep_remainder", [False, True])
def test_matches_window_by_window_reference(keep_remainder):
    tok = tiny_word_tokenizer(TEXTS)
    model = tiny_gpt2()
    model.train()  # perplexity must switch dropout off itself, then restore the mode
    ours = perplexity(
        model, tok, TEXTS, window=14, batch_size=3, keep_remainder=keep_remainder, show_progress=False
    )
    assert model.training
    model.eval()
    paper, token, n_windows, n_tokens = _reference(model, tok, TEXTS, 14, keep_remainder)
    n_ids = len(tok("\n\n".join(TEXTS))["input_ids"])
    assert n_ids % 14 >= 2  # the remainder case is exercised
    assert ours["num_windows"] == n_windows == n_ids // 14 + int(keep_remainder)
    assert ours["num_tokens"] == n_tokens
    assert math.isclose(ours["perplexity"], paper, rel_tol=1e-6)
    assert math.isclose(ours["token_weighted_perplexity"], token, rel_tol=1e-6)
    if keep_remainder:  # a short last window weighs more in the window mean than in the token mean
        assert not math.isclose(ours["perplexity"], ours["token_weighted_perplexity"], rel_tol=1e-9)


def test_batch_size_does_not_change_the_result():
    tok = tiny_word_tokenizer(TEXTS)
    model = tiny_gpt2()
    a = perplexity(model, tok, TEXTS, window=8, batch_size=1, show_progress=False)
    b = perplexity(model, tok, TEXTS, window=8, batch_size=64, show_progress=False)
    assert math.isclose(a["perplexity"], b["perplexity"], rel_tol=1e-6)


def test_trained_model_scores_lower_than_random():
    """A model that saw the texts must get a lower perplexity: the metric can tell models apart."""
    tok = tiny_word_tokenizer(TEXTS)
    model = tiny_gpt2()
    before = perplexity(model, tok, TEXTS, window=16, show_progress=False)["perplexity"]
    ids = torch.tensor(tok("\n\n".join(TEXTS))["input_ids"]).view(-1, 16)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = perplexity(model, tok, TEXTS, window=16, show_progress=False)["perplexity"]
    assert after < 0.5 * before


def test_evaluate_module_loads_offline_and_agrees(tmp_path):
    tok = tiny_word_tokenizer(TEXTS)
    model = tiny_gpt2()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    metric = evaluate.load(perplexity_metric_path())
    result = metric.compute(predictions=TEXTS, model_id=str(tmp_path), window=16, device="cpu")
    direct = perplexity(model, tok, TEXTS, window=16, show_progress=False)
    assert math.isclose(result["perplexity"], direct["perplexity"], rel_tol=1e-6)
    assert result["num_windows"] == direct["num_windows"]


def test_evaluate_module_loads_from_its_folder():
    from pathlib import Path

    metric = evaluate.load(str(Path(perplexity_metric_path()).parent))
    assert "DistilDP" in metric.description


@pytest.mark.parametrize(
    "texts,kwargs,match",
    [
        ([], {}, "texts is empty"),
        (["a b"], {"window": 1}, "window=1 must be >= 2"),
        (["w1"], {"window": 16}, "fewer than one window of 16"),
        (TEXTS, {"window": 64}, r"window=64 exceeds the model's 32 positions; pass window <= 32"),
        (TEXTS, {"window": 8, "batch_size": 0}, "batch_size=0 must be >= 1"),
    ],
)
def test_bad_inputs(texts, kwargs, match):
    tok = tiny_word_tokenizer(TEXTS + ["a b"])
    with pytest.raises(ValueError, match=match):
        perplexity(tiny_gpt2(), tok, texts, show_progress=False, **kwargs)
