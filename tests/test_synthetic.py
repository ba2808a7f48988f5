"""Control codes, the DP control-code histogram and resumable synthetic generation."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset
from scipy.stats import chisquare

from hf_dpkd.privacy.accounting import PrivacyLedger, compute_epsilon
from hf_dpkd.privacy.histogram import (
    ControlCodeDistribution,
    allocate_prompts,
    dp_control_code_distribution,
    exact_private_distribution,
    uniform_distribution,
)
from hf_dpkd.synthetic.control_codes import ControlCodeFormat
from hf_dpkd.synthetic.generation import (
    SyntheticGenerationConfig,
    generate_synthetic_dataset,
    load_synthetic_dataset,
)

FMT = ControlCodeFormat(fields=(("category", "Business Category"), ("stars", "Review Stars")))
DOMAIN = {"category": ["Restaurants", "Bars", "Gyms"], "stars": ["1.0", "3.0", "5.0"]}


@pytest.mark.parametrize(
    "record",
    [
        {"category": "Restaurants", "stars": "5.0"},
        {"category": "Coffee & Tea", "stars": "1.0"},
        {"category": "A: B", "stars": "x"},
        {"category": "ünïcode 🍕", "stars": "4.5"},
    ],
)
def test_format_parse_round_trip(record):
    fmt = ControlCodeFormat(
        fields=(("category", "Business Category"), ("stars", "Review Stars")),
        key_value_separator=": " if ": " not in record["category"] else " = ",
    )
    prompt = fmt.format_prompt(record)
    assert prompt.endswith("\n\n") and "\t" in prompt
    assert fmt.parse_prompt(prompt) == record
    assert fmt.split_text(fmt.format_training_text(record, "hello", "<eos>")) == (record, "hello<eos>")


def test_paper_prompt_format():
    assert FMT.format_prompt({"category": "Restaurants", "stars": "5.0"}) == (
        "Business Category: Restaurants\tReview Stars: 5.0\n\n"
    )


@pytest.mark.parametrize("value", ["Bars\tPubs", "line\nbreak", "a: b"])
def test_separators_in_values_are_rejected(value):
    with pytest.raises(ValueError, match=r"contains the separator .* clean the value"):
        FMT.format_prompt({"category": value, "stars": "1.0"})


def test_missing_control_field():
    with pytest.raises(KeyError, match=r"Control field 'stars' is missing"):
        FMT.format_prompt({"category": "Bars"})


def _private(n=600, seed=0):
    rng = np.random.default_rng(seed)
    cats = rng.choice(DOMAIN["category"], size=n, p=[0.6, 0.3, 0.1])
    stars = rng.choice(DOMAIN["stars"], size=n)
    return Dataset.from_dict({"category": cats.tolist(), "stars": stars.tolist(), "text": ["x"] * n})


def test_dp_histogram_noise_std_and_ledger():
    data = _private()
    exact = exact_private_distribution(data, FMT)
    counts = {c: p * len(data) for c, p in zip(exact.codes, exact.probs)}
    sigma = 3.0
    draws = []
    for seed in range(300):
        ledger = PrivacyLedger(delta=1e-5)
        dist = dp_control_code_distribution(data, FMT, sigma, ledger, domain=DOMAIN, seed=seed)
        assert dist.meta["domain_from_private_data"] is False
        # un-normalise: recover the noisy clipped counts of the well-populated codes (never clipped at sigma 3)
        total = sum(c for c in counts.values())
        draws.append([dist.probs[dist.codes.index(c)] for c in exact.codes if counts[c] > 40])
        assert np.isclose(ledger.epsilon(), compute_epsilon([(sigma, 1.0, 1)], 1e-5, "prv"), rtol=1e-9)
    # relative noise on the normalised scale: std of p_hat * total ~ sigma (normalisation jitter is small)
    std = (np.array(draws) * total).std(axis=0).mean()
    assert abs(std - sigma) / sigma < 0.15
    assert ledger.releases[0].mechanism == "gaussian" and ledger.releases[0].sample_rate == 1.0


def test_domain_from_private_data_warns():
    with pytest.warns(UserWarning, match="read off the private data and is NOT covered"):
        dp_control_code_distribution(_private(), FMT, 5.0, PrivacyLedger(delta=1e-5), seed=0)


def test_allocated_frequencies_match_the_distribution():
    dist = ControlCodeDistribution(
        FMT.columns, [("Bars", "1.0"), ("Gyms", "3.0"), ("Bars", "5.0")], [0.5, 0.3, 0.2], "public"
    )
    codes = allocate_prompts(dist, 5000, seed=1)
    observed = [codes.count(c) for c in dist.codes]
    assert chisquare(observed, f_exp=[p * 5000 for p in dist.probs]).pvalue > 0.001
    assert allocate_prompts(dist, 50, seed=2) == allocate_prompts(dist, 50, seed=2)


def _tiny_teacher(path: Path):
    from tests.dp_models import tiny_gpt2, tiny_word_tokenizer

    texts = [
        FMT.format_prompt({"category": c, "stars": s}) + "good food nice staff slow service"
        for c in DOMAIN["category"]
        for s in DOMAIN["stars"]
    ]
    tok = tiny_word_tokenizer(texts + ["Business Category: Review Stars:"])
    model = tiny_gpt2()
    model.resize_token_embeddings(len(tok))
    model.config.pad_token_id = tok.pad_token_id
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return model, tok


GEN = SyntheticGenerationConfig.paper(
    max_length=24, min_words=1
)  # the paper's sampling: these tests predate the plain default


def test_generation_exact_count_schema_and_determinism(tmp_path):
    model, tok = _tiny_teacher(tmp_path / "teacher")
    dist = uniform_distribution(FMT, DOMAIN)
    a = generate_synthetic_dataset(
        model,
        tok,
        dist,
        70,
        tmp_path / "a",
        fmt=FMT,
        generation=GEN,
        seed=3,
        shard_size=8,
        show_progress=False,
    )
    b = generate_synthetic_dataset(
        model,
        tok,
        dist,
        70,
        tmp_path / "b",
        fmt=FMT,
        generation=GEN,
        seed=3,
        shard_size=8,
        show_progress=False,
    )
    assert len(a) == 70 and a.column_names == ["category", "stars", "text"]
    assert a.to_list() == b.to_list()
    assert not any("Business Category" in t for t in a["text"])  # prompt stripped
    assert load_synthetic_dataset(tmp_path / "a").to_list() == a.to_list()
    info = json.loads((tmp_path / "a" / "generation_info.json").read_text())
    assert info["generated"] >= 70 and info["distribution_mode"] == "uniform"


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"num_samples": 0}, "num_samples=0 must be > 0"),
        (
            {"generation": SyntheticGenerationConfig(max_length=3)},
            "max_length=3 is not longer than the prompt",
        ),
    ],
)
def test_generation_bad_inputs(tmp_path, kwargs, match):
    model, tok = _tiny_teacher(tmp_path / "teacher")
    args = {"num_samples": 10, "generation": GEN, **kwargs}
    with pytest.raises(ValueError, match=match):
        generate_synthetic_dataset(
            model,
            tok,
            uniform_distribution(FMT, DOMAIN),
            args["num_samples"],
            tmp_path / "out",
            fmt=FMT,
            generation=args["generation"],
            show_progress=False,
        )


def test_bad_distributions():
    with pytest.raises(ValueError, match="needs at least one code"):
        ControlCodeDistribution(FMT.columns, [], [], "uniform")
    with pytest.raises(ValueError, match=r"domain\['stars'\] is empty"):
        uniform_distribution(FMT, {"category": ["Bars"], "stars": []})
    with pytest.raises(ValueError, match="domain lacks control field"):
        uniform_distribution(FMT, {"category": ["Bars"]})


RESUME_SCRIPT = """
import sys, time
from transformers import AutoModelForCausalLM, AutoTokenizer
from hf_dpkd.privacy.histogram import uniform_distribution
from hf_dpkd.synthetic.generation import generate_synthetic_dataset, SyntheticGenerationConfig
from tests.test_synthetic import FMT, DOMAIN
import hf_dpkd.synthetic.generation as g
slow = g._generate_shard
def delayed(*a, **k):
    time.sleep(float(sys.argv[3]))
    return slow(*a, **k)
g._generate_shard = delayed
model = AutoModelForCausalLM.from_pretrained(sys.argv[1]); tok = AutoTokenizer.from_pretrained(sys.argv[1])
ds = generate_synthetic_dataset(model, tok, uniform_distribution(FMT, DOMAIN), 60, sys.argv[2], fmt=FMT,
    generation=SyntheticGenerationConfig(max_length=24, min_words=1), seed=5, shard_size=4, show_progress=False)
print("ROWS", len(ds))
"""


def test_resume_after_sigkill(tmp_path):
    _tiny_teacher(tmp_path / "teacher")
    script = tmp_path / "gen.py"
    script.write_text(RESUME_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    out = tmp_path / "synth"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "teacher"), str(out), "0.3"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "shards").glob("shard-*.jsonl"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = sorted(p.name for p in (out / "shards").glob("shard-*.jsonl"))
    assert 2 <= len(done_before) < 8 and not (out / "data").exists()
    before = {p: (out / "shards" / p).read_bytes() for p in done_before}
    res = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "teacher"), str(out), "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "ROWS 60" in res.stdout, res.stderr[-2000:]
    assert all(
        (out / "shards" / p).read_bytes() == b for p, b in before.items()
    )  # finished shards kept as is
    shards = sorted(p.name for p in (out / "shards").glob("shard-*.jsonl"))
    assert len(shards) == len(set(shards))
    assert not list((out / "shards").glob(".*tmp"))  # no half-written file left
    # same rows as an uninterrupted run
    clean = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "teacher"), str(tmp_path / "clean"), "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "ROWS 60" in clean.stdout
    assert load_synthetic_dataset(out).to_list() == load_synthetic_dataset(tmp_path / "clean").to_list()
