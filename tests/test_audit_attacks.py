"""Membership attacks, memorization and per-block risk against hand-computed values on a tiny GPT-2."""

import copy
import zlib

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from hf_dpkd.audit.blocks import find_transformer_blocks, per_block_mope
from hf_dpkd.audit.memorization import memorization_gap
from hf_dpkd.audit.mia import (
    compute_membership_scores,
    min_k_plus_plus_score,
    min_k_score,
    mope_scores,
    run_membership_inference,
)
from hf_dpkd.audit.scoring import score_records
from tests.tolerances import assert_matches_reference

PREFIX = "Business Category: Restaurants\tReview Stars: 5.0\n\n"


def byte_tokenizer():
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab["<|endoftext|>"] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    eos = "<|endoftext|>"
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token=eos, bos_token=eos, pad_token=eos)


def tiny_gpt2(seed=0, n_layer=2):
    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=257,
        n_positions=128,
        n_embd=32,
        n_layer=n_layer,
        n_head=2,
        bos_token_id=256,
        eos_token_id=256,
    )
    return GPT2LMHeadModel(cfg).eval()


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


@pytest.fixture(scope="module")
def model():
    return tiny_gpt2()


RECORDS = [
    (PREFIX, "The soup was great."),
    (PREFIX, "Terrible service, cold fries and a long wait"),
    ("", "no prefix here"),
    ("Review Stars: 1.0\n\n", "x"),
]


def reference_token_stats(model, tok, prefix, text):
    """Slow reference: one forward per record, explicit loop over text tokens."""
    ctx = tok(prefix, add_special_tokens=False)["input_ids"] if prefix else [tok.bos_token_id]
    txt = tok(text, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([ctx + txt])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].double(), -1)
    lp, mu, sd = [], [], []
    for j, t in enumerate(txt):
        row = logp[len(ctx) + j - 1]
        lp.append(row[t].item())
        m = sum(row.exp()[v].item() * row[v].item() for v in range(row.numel()))
        s2 = sum(row.exp()[v].item() * row[v].item() ** 2 for v in range(row.numel())) - m * m
        mu.append(m)
        sd.append(max(s2, 0.0) ** 0.5)
    return np.array(lp), np.array(mu), np.array(sd)


def test_scores_match_loop_and_exclude_prefix(model, tok):
    """Batched, padded float32 scores against a float64 loop (tests/tolerances.py; a vocabulary sum per value).

    sigma**2 is computed in float32 as E[lp^2] - mu^2, a difference of terms about 200 times larger, so it
    is held to the rounding of E[lp^2]; its error reached 0.87 of the old absolute bound on sigma (1e-4)
    with AVX2 kernels. Measured now: log-probs and mu relative error 2.3e-7 (limit 1e-5); sigma**2 0.33 of
    its element unit (limit 16). Statistics of the next position (off by one) give 2e-2 to 3e-2 for
    log-probs and mu and 59 to 105 element units for sigma**2: both fail. The min-k++ check in
    test_attack_scores_hand_computed pins sigma closer: 0.1 % on sigma moves it by 0.8e-3 to 1.8e-3."""
    scored = score_records(model, tok, RECORDS, batch_size=3, show_progress=False)
    vocab = model.config.vocab_size
    for (prefix, text), s in zip(RECORDS, scored):
        lp, mu, sd = reference_token_stats(model, tok, prefix, text)
        assert s.num_tokens == len(tok(text, add_special_tokens=False)["input_ids"])  # text tokens only
        ours, ref = (torch.tensor(np.stack(x)) for x in ((s.token_logprobs, s.mu), (lp, mu)))
        assert_matches_reference(ours, ref, what=f"log-probs and mu of {text!r}", terms=vocab)
        second = float((sd**2 + mu**2).max())  # E[lp^2]: the size of the terms sigma**2 is the difference of
        assert_matches_reference(
            torch.tensor(s.sigma**2),
            torch.tensor(sd**2),
            what=f"sigma**2 of {text!r}",
            terms=vocab,
            scale=second,
        )
        assert s.loss == pytest.approx(-lp.mean(), abs=1e-5)


def test_batching_and_padding_do_not_change_scores(model, tok):
    a = score_records(model, tok, RECORDS, batch_size=1, show_progress=False)
    b = score_records(model, tok, RECORDS, batch_size=4, show_progress=False)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x.token_logprobs, y.token_logprobs, atol=1e-5)


def test_min_k_known_vector():
    v = np.array([-0.1, -5.0, -2.0, -0.3, -4.0, -1.0, -0.2, -3.0, -0.5, -0.4])
    assert min_k_score(v, 0.2) == pytest.approx((-5.0 - 4.0) / 2)
    assert min_k_score(v, 0.05) == pytest.approx(-5.0)  # at least one token
    assert min_k_score(v, 1.0) == pytest.approx(v.mean())
    mu, sd = np.full(10, -1.0), np.full(10, 2.0)
    assert min_k_plus_plus_score(v, mu, sd, 0.2) == pytest.approx(((-5.0 + 1) / 2 + (-4.0 + 1) / 2) / 2)
    with pytest.raises(ValueError, match="k=0 must be a fraction"):
        min_k_score(v, 0)


def test_attack_scores_hand_computed(model, tok):
    ref = tiny_gpt2(seed=1)
    attacks = ["loss", "zlib", "min_k", "min_k_plus_plus", "reference"]
    s = compute_membership_scores(
        model, tok, RECORDS, attacks=attacks, reference_model=ref, show_progress=False
    )
    for i, (prefix, text) in enumerate(RECORDS):
        lp, mu, sd = reference_token_stats(model, tok, prefix, text)
        rlp, _, _ = reference_token_stats(ref, tok, prefix, text)
        loss = -lp.mean()
        assert s["loss"][i] == pytest.approx(-loss, abs=1e-5)
        assert s["zlib"][i] == pytest.approx(-loss / len(zlib.compress(text.encode())), abs=1e-6)
        n = max(1, int(len(lp) * 0.2))
        assert s["min_k"][i] == pytest.approx(np.sort(lp)[:n].mean(), abs=1e-5)
        assert s["min_k_plus_plus"][i] == pytest.approx(np.sort((lp - mu) / sd)[:n].mean(), abs=1e-3)
        assert s["reference"][i] == pytest.approx(-rlp.mean() - loss, abs=1e-5)


def test_mope_matches_manual_perturbation_and_leaves_model_alone(model, tok):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    got = mope_scores(model, tok, RECORDS, sigma=0.01, num_perturbations=3, seed=7, show_progress=False)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"caller's model changed at {k}"
    # reference: same noise stream, explicit copies, explicit loss loop
    gen = torch.Generator().manual_seed(7)
    base = np.array([-reference_token_stats(model, tok, p, t)[0].mean() for p, t in RECORDS])
    diffs = []
    for _ in range(3):
        m2 = copy.deepcopy(model)
        with torch.no_grad():
            for p in m2.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 0.01)
        diffs.append(np.array([-reference_token_stats(m2, tok, p, t)[0].mean() for p, t in RECORDS]) - base)
    np.testing.assert_allclose(got, np.mean(diffs, axis=0), atol=1e-5)
    again = mope_scores(model, tok, RECORDS, sigma=0.01, num_perturbations=3, seed=7, show_progress=False)
    np.testing.assert_allclose(got, again)  # seeded


def _train(model, tok, texts, steps=60, lr=3e-3):
    model = copy.deepcopy(model).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    batch = [tok(PREFIX + t, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(len(b) for b in batch)
    ids = torch.full((len(batch), width), tok.pad_token_id)
    labels = torch.full((len(batch), width), -100)
    for i, b in enumerate(batch):
        ids[i, : len(b)] = torch.tensor(b)
        labels[i, : len(b)] = torch.tensor(b)
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=(labels != -100).long(), labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def trained(model, tok):
    rng = np.random.default_rng(0)
    words = ["good", "bad", "food", "slow", "cheap", "tasty", "staff", "pizza", "wine", "noisy"]
    texts = [" ".join(rng.choice(words, 6)) for _ in range(24)]
    members, non_members = texts[:12], texts[12:]
    return _train(model, tok, members), [(PREFIX, t) for t in members], [(PREFIX, t) for t in non_members]


def test_run_membership_inference_detects_overfit_members(trained, model, tok):
    target, members, non_members = trained
    res = run_membership_inference(
        target,
        tok,
        members,
        non_members,
        reference_model=model,
        mope_num_perturbations=2,
        show_progress=False,
    )
    assert set(res) == {"loss", "zlib", "min_k", "min_k_plus_plus", "reference", "mope"}
    assert res["loss"]["auc"] > 0.9 and res["reference"]["auc"] > 0.9
    for r in res.values():
        assert 0.0 <= r["auc"] <= 1.0 and 0.0 <= r["tpr@fpr=0.1%"] <= r["tpr@fpr=25%"] <= 1.0
    no_ref = run_membership_inference(
        target, tok, members, non_members, attacks=None, mope_num_perturbations=1, show_progress=False
    )
    assert "reference" not in no_ref


def test_attack_input_errors(model, tok):
    with pytest.raises(ValueError, match="reference_model=None"):
        run_membership_inference(model, tok, ["a"], ["b"], attacks=["reference"], show_progress=False)
    with pytest.raises(ValueError, match=r"unknown \['lira'\]"):
        run_membership_inference(model, tok, ["a"], ["b"], attacks=["lira"], show_progress=False)
    with pytest.raises(ValueError, match=r"members\[1\] has no text tokens"):
        run_membership_inference(model, tok, ["ab", ""], ["b"], attacks=["loss"], show_progress=False)
    with pytest.raises(TypeError, match=r"non_members\[0\]=3"):
        run_membership_inference(model, tok, ["a"], [3], attacks=["loss"], show_progress=False)
    with pytest.raises(ValueError, match="sigma=0 must be > 0"):
        mope_scores(model, tok, ["a"], sigma=0, show_progress=False)


def test_memorization_gap(trained, tok):
    target, members, non_members = trained
    res = memorization_gap(
        target, tok, members, non_members, prompt_tokens=8, num_tokens=16, batch_size=5, show_progress=False
    )
    assert res["member_mean"] > res["non_member_mean"]
    assert res["gap"] == pytest.approx(res["member_mean"] - res["non_member_mean"])
    # batched (left-padded) generation agrees with one record at a time
    one = memorization_gap(
        target, tok, members, non_members, prompt_tokens=8, num_tokens=16, batch_size=1, show_progress=False
    )
    np.testing.assert_allclose(res["member_scores"], one["member_scores"])
    # hand check of the first member: greedy loop without generate()
    prefix, text = members[0]
    ctx = tok(prefix, add_special_tokens=False)["input_ids"]
    txt = tok(text, add_special_tokens=False)["input_ids"]
    ids = ctx + txt[:8]
    true = txt[8:24]
    with torch.no_grad():
        for _ in range(len(true)):
            ids.append(int(target(torch.tensor([ids])).logits[0, -1].argmax()))
    expected = np.mean([a == b for a, b in zip(ids[len(ctx) + 8 :], true)])
    assert res["member_scores"][0] == pytest.approx(expected)
    assert 0 < res["member_mean"] <= 1
    with pytest.raises(ValueError, match="num_tokens=0 must be > 0"):
        memorization_gap(target, tok, members, non_members, num_tokens=0)


def test_find_blocks_and_per_block_mope(trained, tok):
    target, members, non_members = trained
    assert len(find_transformer_blocks(target)) == 2
    res = per_block_mope(
        target, tok, members, non_members, num_perturbations=2, sigma=0.05, show_progress=False
    )
    assert [b["block"] for b in res["blocks"]] == [0, 1]
    assert all(0 <= b["auc"] <= 1 for b in res["blocks"])
    assert res["blocks"][0]["path"] == "transformer.h.0"
    with pytest.raises(ValueError, match="no list of transformer blocks"):
        find_transformer_blocks(torch.nn.Linear(2, 2))


def test_example_cli_end_to_end(tmp_path, trained, model, tok):
    import importlib.util
    import json
    import sys
    from pathlib import Path

    from hf_dpkd.audit.empirical_epsilon import make_audit_canaries

    target, members, non_members = trained
    target.save_pretrained(tmp_path / "target")
    tok.save_pretrained(tmp_path / "target")
    model.save_pretrained(tmp_path / "base")

    def write(path, recs):
        rows = [{"category": "Restaurants", "stars": "5.0", "text": t} for _, t in recs]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    write(tmp_path / "members.jsonl", members)
    write(tmp_path / "non_members.jsonl", non_members)
    (tmp_path / "canaries.json").write_text(
        json.dumps([{"secret": "1 2", "template": "code {secret}", "repeats": 0, "name": "c"}])
    )
    audit_canaries = make_audit_canaries(10, seed=0, num_words=2)
    (tmp_path / "audit.jsonl").write_text("".join(json.dumps(c.to_dict()) + "\n" for c in audit_canaries))
    spec = importlib.util.spec_from_file_location(
        "audit_example", Path(__file__).parents[1] / "examples" / "audit.py"
    )
    example = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = example  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(example)
    out = tmp_path / "out"
    results = example.main(
        [
            "--model", str(tmp_path / "target"),
            "--reference_model", str(tmp_path / "base"),
            "--members", str(tmp_path / "members.jsonl"),
            "--non_members", str(tmp_path / "non_members.jsonl"),
            "--prefix_columns", "category", "stars",
            "--prefix_labels", "Business Category", "Review Stars",
            "--attacks", "loss", "reference", "min_k",
            "--prompt_tokens", "8", "--num_tokens", "8",
            "--canaries", str(tmp_path / "canaries.json"),
            "--audit_canaries", str(tmp_path / "audit.jsonl"), "--audit_num_guesses", "3",
            "--claimed_epsilon", "1.0",
            "--output_dir", str(out), "--show_progress", "false",
        ]
    )  # fmt: skip
    assert set(results["membership"]) == {"loss", "reference", "min_k"}
    # the CLI's prefix is the training prefix, so the scores equal the direct API's
    direct = run_membership_inference(
        target, tok, members, non_members, attacks=["loss"], show_progress=False
    )
    assert results["membership"]["loss"]["auc"] == pytest.approx(direct["loss"]["auc"])
    assert results["empirical_epsilon"]["num_guesses"] == 6
    assert {p.name for p in out.iterdir()} >= {"audit.json", "audit.md", "roc.png"}
    md = (out / "audit.md").read_text()
    assert "## Canary exposure" in md
    # every metric with its interval; the reference model (never trained) is the no-leak row by default
    base_path = str(tmp_path / "base")
    for attack, r in results["membership"].items():
        assert set(r["intervals"]) == {"auc", "tpr@fpr=25%", "tpr@fpr=5%", "tpr@fpr=1%", "tpr@fpr=0.1%"}
        lo, hi = r["intervals"]["auc"]
        assert lo <= r["auc"] <= hi
        assert r["vs_no_leak"]["no_leak_model"] == base_path and f"| {attack} | no-leak: {base_path} |" in md
    # the no-leak row is the base model scored on the same records with the same attack
    direct_base = run_membership_inference(
        model, tok, members, non_members, attacks=["loss"], show_progress=False
    )
    assert results["membership"]["loss"]["no_leak"]["auc"] == pytest.approx(direct_base["loss"]["auc"])
    assert results["membership"]["loss"]["vs_no_leak"]["leaks"] is True  # the members were overfit
    assert results["verdict"]["leaks"] is True and "### Verdict" in md and "LEAKS" in md
    assert "standardized_length_difference" in results["matching"]  # 12 held-out records for 12: no choice
    can = results["canaries"]
    assert "no_leak_exposure" in can["canaries"][0] and can["no_leak"]["model"] == base_path
    eps = results["empirical_epsilon"]
    assert (
        eps["no_leak"]["num_guesses"] == 6 and 0 <= eps["guess_accuracy_interval"][0] <= eps["guess_accuracy"]
    )
    bad = example.DataArguments(members="", non_members="", prefix_columns=["city"])
    with pytest.raises(ValueError, match=r"columns \['city'\] not found"):
        example.load_records(str(tmp_path / "members.jsonl"), bad)


def test_prefix_and_text_are_tokenized_together_as_in_training():
    """A merge across the prefix/text boundary ("\\n" + "T"): the straddling token is context, and the
    scored ids are exactly the tail of the jointly tokenized training string."""
    from hf_dpkd.audit.scoring import encode_record

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab["ĊT"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[("Ċ", "T")]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    tok2 = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    prefix, text = "Stars: 5\n\n", "The end"
    joint = tok2(prefix + text, add_special_tokens=False)["input_ids"]
    ctx, txt = encode_record(tok2, prefix, text)
    assert ctx + txt == joint and vocab["ĊT"] in ctx
    assert tok2.decode(txt) == "he end"
    torch.manual_seed(0)
    m = GPT2LMHeadModel(GPT2Config(vocab_size=258, n_positions=32, n_embd=16, n_layer=1, n_head=2)).eval()
    s = score_records(m, tok2, [(prefix, text)], show_progress=False)[0]
    with torch.no_grad():
        logp = torch.log_softmax(m(torch.tensor([joint])).logits[0], -1)
    expected = [logp[len(ctx) + j - 1, t].item() for j, t in enumerate(txt)]
    np.testing.assert_allclose(s.token_logprobs, expected, atol=1e-5)
