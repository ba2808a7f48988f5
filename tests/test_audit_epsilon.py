"""One-run DP audit: the bound against a brute-force formula, its statistical validity on a mechanism with a
known epsilon, and an end-to-end audit that catches a deliberately non-private trainer."""

import math
import time

import numpy as np
import pytest
import torch
from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    DataCollatorForLanguageModeling,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
    Trainer,
    TrainingArguments,
)

from hf_dpkd.audit.empirical_epsilon import (
    audit_epsilon,
    audit_guesses,
    audit_p_value,
    epsilon_lower_bound,
    insert_audit_canaries,
    make_audit_canaries,
    one_run_audit,
)

#: Training settings of the canary audits that train a tiny model to memorise (shared with test_audit_dp).
CANARY_TRAINING = dict(
    per_device_train_batch_size=16,
    learning_rate=3e-3,
    lr_scheduler_type="constant",
    save_strategy="no",
    report_to=[],
    logging_strategy="no",
    use_cpu=True,
    disable_tqdm=True,
)


def brute_p_value(m, r, v, eps, delta):
    """The theorem's right-hand side written literally, with exact rational binomial sums."""
    q = math.exp(eps) / (1 + math.exp(eps))

    def f(u):  # P[Binomial(r, q) >= u]
        return sum(math.comb(r, k) * q**k * (1 - q) ** (r - k) for k in range(max(u, 0), r + 1))

    extra = max((f(v - i) - f(v)) / i for i in range(1, m + 1))
    return min(1.0, f(v) + 2 * m * delta * extra)


@pytest.mark.parametrize(
    "m,r,v,eps,delta",
    [
        (20, 10, 7, 0.5, 0.0),
        (20, 10, 7, 0.5, 1e-3),
        (30, 20, 20, 2.0, 1e-4),
        (12, 12, 0, 1.0, 0.01),
        (50, 8, 5, 0.0, 1e-2),
    ],
)
def test_p_value_matches_brute_force(m, r, v, eps, delta):
    assert audit_p_value(m, r, v, eps, delta) == pytest.approx(
        brute_p_value(m, r, v, eps, delta), rel=1e-9, abs=1e-12
    )


def test_all_correct_closed_form_and_growth():
    # r correct out of r, pure DP: q^r = beta  =>  eps = log(q / (1 - q)) with q = beta^(1/r)
    bounds = []
    for r in (5, 20, 100, 1000):
        q = 0.05 ** (1 / r)
        assert epsilon_lower_bound(2 * r, r, r, 0.0, 0.05) == pytest.approx(math.log(q / (1 - q)), abs=1e-5)
        bounds.append(epsilon_lower_bound(2 * r, r, r, 0.0, 0.05))
    assert bounds == sorted(bounds) and bounds[-1] > 5


def test_monotone_in_correct_and_delta_loosens():
    r, m = 200, 1000
    lbs = [epsilon_lower_bound(m, r, v, 0.0, 0.05) for v in range(90, r + 1, 10)]
    assert all(a <= b for a, b in zip(lbs, lbs[1:])) and lbs[0] == 0.0 and lbs[-1] > 2
    for v in (150, 180, 200):
        assert epsilon_lower_bound(m, r, v, 1e-5, 0.05) <= epsilon_lower_bound(m, r, v, 0.0, 0.05) + 1e-9
    assert epsilon_lower_bound(m, r, 200, 1e-3, 0.05) < epsilon_lower_bound(m, r, 200, 0.0, 0.05)
    # at the returned bound the claim is (just) not rejected any more
    eps = epsilon_lower_bound(m, r, 180, 1e-5, 0.05)
    assert audit_p_value(m, r, 180, eps, 1e-5) <= 0.05 < audit_p_value(m, r, 180, eps + 1e-3, 1e-5)


def test_random_guesses_give_about_zero():
    bounds = []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        included = rng.random(1000) < 0.5
        scores = rng.normal(size=1000)  # independent of membership
        bounds.append(one_run_audit(scores, included, 100, 100)["epsilon_lower_bound"])
    assert np.mean(bounds) < 0.05 and max(bounds) < 0.4


def test_randomized_response_bound_stays_below_true_epsilon():
    """An exactly eps-DP mechanism: each canary's output is randomized response on its coin. The audit
    must claim more than eps in at most beta of the runs: exactly (sum over v) and by simulation."""
    eps_true, beta, m = 1.0, 0.05, 400
    q = math.exp(eps_true) / (1 + math.exp(eps_true))
    # exact: guesses on all m canaries, W ~ Binomial(m, q)
    lbs = np.array([epsilon_lower_bound(m, m, v, 0.0, beta) for v in range(m + 1)])
    from scipy import stats

    exceed = float(stats.binom.pmf(np.arange(m + 1), m, q)[lbs > eps_true].sum())
    assert 0.0 < exceed <= beta
    # simulated end to end: coins, RR outputs turned into scores, guesses with abstention, bound
    rng = np.random.default_rng(1234)
    over, trials = 0, 600
    for _ in range(trials):
        coins = rng.random(m) < 0.5
        flip = rng.random(m) >= q
        out = np.where(flip, ~coins, coins)  # eps-DP view of each coin
        scores = out + rng.random(m) * 0.5  # a post-processing of the output
        res = one_run_audit(scores, coins, 150, 150, 0.0, beta)
        over += res["epsilon_lower_bound"] > eps_true
    # Monte Carlo error allowance: 3 standard errors of a rate equal to beta
    assert over / trials <= beta + 3 * math.sqrt(beta * (1 - beta) / trials)
    # and the audit is not vacuous on this mechanism: a decent share of runs find eps > 0.3
    assert np.mean([epsilon_lower_bound(m, m, v, 0.0, beta) > 0.3 for v in rng.binomial(m, q, 200)]) > 0.5


def test_guesses_and_bad_inputs():
    g = audit_guesses([0.1, 0.9, 0.5, 0.2, 0.7], 2, 1)
    assert g.tolist() == [-1, 1, 0, 0, 1]
    with pytest.raises(ValueError, match="num_positive=4 and num_negative=2"):
        audit_guesses([0.0] * 5, 4, 2)
    with pytest.raises(ValueError, match="need 0 <= v <= r <= m, got m=5 canaries, r=6"):
        audit_p_value(5, 6, 1, 1.0)
    with pytest.raises(ValueError, match="beta=1.5 must be in"):
        epsilon_lower_bound(10, 5, 5, 0.0, 1.5)
    with pytest.raises(ValueError, match="scores has 3 entries but included has 2"):
        one_run_audit([1, 2, 3], [True, False], 1)


def test_bonferroni_sweep_is_not_better_than_the_best_single_try_at_full_beta():
    rng = np.random.default_rng(0)
    coins = rng.random(500) < 0.5
    scores = coins * 1.0 + rng.normal(0, 0.7, 500)
    sweep = one_run_audit(scores, coins, [10, 50, 100], [10, 50, 100])
    singles = [one_run_audit(scores, coins, k, k)["epsilon_lower_bound"] for k in (10, 50, 100)]
    assert len(sweep["tries"]) == 3
    assert 0 < sweep["epsilon_lower_bound"] <= max(singles)


def test_make_and_insert_canaries():
    c1, c2 = make_audit_canaries(200, seed=3), make_audit_canaries(200, seed=3)
    assert c1 == c2 and len({c.text for c in c1}) == 200
    assert 70 < sum(c.included for c in c1) < 130
    assert make_audit_canaries(200, seed=4) != c1
    ds = Dataset.from_dict({"text": ["a", "b", "c"], "stars": ["5.0", "1.0", "3.0"]})
    out = insert_audit_canaries(ds, c1, control_values={"stars": "3.0"}, shuffle=False)
    added = out.select(range(3, len(out)))
    assert len(out) == 3 + sum(c.included for c in c1)
    assert added["text"] == [c.text for c in c1 if c.included] and set(added["stars"]) == {"3.0"}
    shuffled = insert_audit_canaries(ds, c1, control_values={"stars": "3.0"}, seed=1)
    assert sorted(shuffled["text"]) == sorted(out["text"])
    with pytest.raises(ValueError, match="text_column='body' is not a column"):
        insert_audit_canaries(ds, c1, text_column="body")
    with pytest.raises(ValueError, match=r"control_values has columns \['category'\]"):
        insert_audit_canaries(ds, c1, control_values={"category": "x"})
    with pytest.raises(ValueError, match="m=0 must be > 0"):
        make_audit_canaries(0)


def _byte_tokenizer():
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab["<|endoftext|>"] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    eos = "<|endoftext|>"
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token=eos, bos_token=eos, pad_token=eos)


def test_end_to_end_audit_catches_a_non_private_trainer(tmp_path):
    """The plain HF Trainer (no clipping, no noise) stands in for a broken DP trainer claiming eps = 1:
    the audit's 95% lower bound must exceed the claim."""
    start = time.time()
    claimed_epsilon = 1.0
    tok = _byte_tokenizer()
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=257, n_positions=64, n_embd=64, n_layer=2, n_head=2, bos_token_id=256, eos_token_id=256
    )
    model = GPT2LMHeadModel(cfg)
    canaries = make_audit_canaries(80, seed=0, num_words=5)
    before = audit_epsilon(model, tok, canaries, 20, 20, show_progress=False)
    assert before["epsilon_lower_bound"] < claimed_epsilon  # untrained: inclusion leaves no trace
    rng = np.random.default_rng(0)
    corpus = Dataset.from_dict(
        {"text": [" ".join(rng.choice(["good food", "slow service", "nice staff"], 3)) for _ in range(40)]}
    )
    train = insert_audit_canaries(corpus, canaries, seed=0)
    train = train.map(
        lambda b: tok(b["text"], truncation=True, max_length=64), batched=True, remove_columns=["text"]
    )
    args = TrainingArguments(output_dir=str(tmp_path), num_train_epochs=40, seed=0, **CANARY_TRAINING)
    Trainer(
        model=model,
        args=args,
        train_dataset=train,
        data_collator=DataCollatorForLanguageModeling(tok, mlm=False),
    ).train()
    res = audit_epsilon(
        model, tok, canaries, num_positive=20, num_negative=20, delta=0.0, beta=0.05, show_progress=False
    )
    assert res["num_guesses"] == 40 and res["num_correct"] >= 38
    assert res["epsilon_lower_bound"] > claimed_epsilon
    assert time.time() - start < 60
