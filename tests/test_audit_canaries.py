"""Canary exposure: exact enumeration against a brute-force loop, estimation, and the effect of repeats."""

import copy
import itertools
import math

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from hf_dpkd.audit.canaries import Canary, canary_exposure, canary_exposures

PREFIX = "Business Category: Banks\tReview Stars: 4.0\n\n"


def byte_tokenizer():
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab["<|endoftext|>"] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    eos = "<|endoftext|>"
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token=eos, bos_token=eos, pad_token=eos)


def tiny_gpt2(seed=0):
    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=257, n_positions=96, n_embd=48, n_layer=2, n_head=2, bos_token_id=256, eos_token_id=256
    )
    return GPT2LMHeadModel(cfg).eval()


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def brute_force_exposure(model, tok, canary):
    """One forward per candidate, explicit sum over the text tokens, explicit rank."""
    ctx = tok(canary.prefix, add_special_tokens=False)["input_ids"] if canary.prefix else [tok.bos_token_id]

    def ll(text):
        txt = tok(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ctx + txt])).logits[0].double(), -1)
        return sum(logp[len(ctx) + j - 1, t].item() for j, t in enumerate(txt))

    secret = ll(canary.text)
    others = [ll(canary.render(c)) for c in itertools.product(canary.alphabet, repeat=canary.length)]
    others = [
        x
        for c, x in zip(itertools.product(canary.alphabet, repeat=canary.length), others)
        if c != canary.symbols
    ]
    rank = 1 + sum(x > secret for x in others)
    return rank, math.log2(canary.space_size) - math.log2(rank)


def test_canary_description_and_validation():
    c = Canary(secret="3 1 4 1", template="my PIN is {secret}", prefix=PREFIX, repeats=5)
    assert c.length == 4 and c.space_size == 10**4 and c.text == "my PIN is 3 1 4 1"
    assert c.render(("0", "0", "0", "7")) == "my PIN is 0 0 0 7"
    d = Canary.from_dict(
        {
            "secret": "ab",
            "format": "code {secret}!",
            "candidate_alphabet": "abc",
            "separator": "",
            "repeats": 2,
        }
    )
    assert d.symbols == ("a", "b") and d.space_size == 9 and d.text == "code ab!"
    with pytest.raises(ValueError, match=r"must contain \{secret\} exactly once"):
        Canary(secret="1", template="no slot")
    with pytest.raises(ValueError, match=r"\['x'\] is not in alphabet"):
        Canary(secret="1 x")
    with pytest.raises(ValueError, match=r"unknown keys \['colour'\]"):
        Canary.from_dict({"secret": "1", "colour": "red"})


def test_exact_exposure_matches_brute_force(tok):
    model = tiny_gpt2()
    for secret, prefix in (("7 2", PREFIX), ("0 5", "")):
        c = Canary(secret=secret, template="the code is {secret} ok", prefix=prefix)
        got = canary_exposure(model, tok, c, batch_size=16, show_progress=False)
        rank, exposure = brute_force_exposure(model, tok, c)
        assert got["method"] == "exact" and got["rank"] == rank
        assert got["exposure"] == pytest.approx(exposure)
        assert 0.0 <= got["exposure"] <= got["max_exposure"] == pytest.approx(math.log2(100))


def _train_with_canaries(model, tok, canaries, steps=80):
    rng = np.random.default_rng(0)
    filler = [" ".join(rng.choice(["tasty", "rude", "fast", "cheap", "clean"], 5)) for _ in range(16)]
    texts = filler + [c.text for c in canaries for _ in range(c.repeats)]
    batch = [tok(PREFIX + t, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(len(b) for b in batch)
    ids = torch.full((len(batch), width), tok.pad_token_id)
    labels = torch.full((len(batch), width), -100)
    for i, b in enumerate(batch):
        ids[i, : len(b)] = torch.tensor(b)
        labels[i, : len(b)] = torch.tensor(b)
    model = copy.deepcopy(model).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=(labels != -100).long(), labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_repeats_raise_exposure_and_estimate_tracks_exact(tok):
    planted = [
        Canary(secret="4 8 1", template="my PIN is {secret}", prefix=PREFIX, repeats=8, name="pin8"),
        Canary(secret="9 0 6", template="the door code is {secret}", prefix=PREFIX, repeats=8, name="door8"),
    ]
    control = Canary(
        secret="2 7 3", template="my bank code is {secret}", prefix=PREFIX, repeats=0, name="ctl"
    )
    model = _train_with_canaries(tiny_gpt2(), tok, planted)
    res = canary_exposures(model, tok, planted + [control], batch_size=100, show_progress=False)
    assert set(res["by_repeats"]) == {"0", "8"} and res["by_repeats"]["8"]["count"] == 2
    assert res["by_repeats"]["8"]["min"] > 7.0  # near the maximum log2(1000) = 9.97
    assert res["by_repeats"]["8"]["mean"] > res["by_repeats"]["0"]["mean"]
    # estimation on a space small enough to also enumerate
    for c in (planted[0], control):
        exact = canary_exposure(model, tok, c, method="exact", batch_size=100, show_progress=False)
        est = canary_exposure(
            model, tok, c, method="estimate", num_samples=300, batch_size=100, show_progress=False
        )
        assert est["method"] == "estimate" and est["empirical_resolution"] == pytest.approx(math.log2(300))
        assert abs(est["exposure_empirical"] - exact["exposure"]) < 1.5 or (
            exact["exposure"] > est["empirical_resolution"] - 1 and est["rank_empirical"] == 1
        )
        assert abs(est["exposure"] - exact["exposure"]) < 2.0
    with pytest.raises(ValueError, match="exact_limit=10"):
        canary_exposure(model, tok, control, method="exact", exact_limit=10, show_progress=False)
