"""Synthetic generation: exact counts, schema, determinism, padding-invariance, filters, resume, 2 processes."""

import hashlib
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, NoRepeatNGramLogitsProcessor

import hf_dpkd.synthetic.generation as generation
from hf_dpkd.privacy.histogram import ControlCodeDistribution, public_distribution, uniform_distribution
from hf_dpkd.synthetic.control_codes import ControlCodeFormat
from hf_dpkd.synthetic.generation import (
    BatchedNoRepeatNGramLogitsProcessor,
    SyntheticGenerationConfig,
    generate_synthetic_dataset,
    load_synthetic_dataset,
)
from hf_dpkd.workers import can_fork

ROOT = Path(__file__).resolve().parents[1]
FMT = ControlCodeFormat(fields=[("category", "Business Category"), ("stars", "Review Stars")])
# categories of 1, 3 and 2 words: prompts of different token lengths (left padding is exercised)
DOMAIN = {"category": ["Restaurants", "Night Life Bars", "Coffee Shops"], "stars": ["1.0", "3.0", "5.0"]}
GEN = SyntheticGenerationConfig.paper(
    max_length=24, min_words=1
)  # the paper's sampling: these tests predate the plain default
WORDS = "good food nice staff slow service great coffee loud music cheap beer clean rooms friendly".split()

torch.set_num_threads(1)


def tiny_teacher(path: Path | None = None):
    """A random 2-layer GPT-2 with a word-level tokenizer over the prompts and a few words (saved to `path`)."""
    from tests.dp_models import tiny_gpt2, tiny_word_tokenizer

    prompts = [
        FMT.format_prompt({"category": c, "stars": s}) for c in DOMAIN["category"] for s in DOMAIN["stars"]
    ]
    tok = tiny_word_tokenizer([*prompts, " ".join(WORDS)])
    model = tiny_gpt2()
    model.resize_token_embeddings(len(tok))
    model.config.pad_token_id = tok.pad_token_id
    model.config.eos_token_id = tok.eos_token_id
    if path is not None:
        model.save_pretrained(path)
        tok.save_pretrained(path)
    return model.eval(), tok


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher")
    model, tok = tiny_teacher(path)
    return model, tok, path


def _gen(model, tok, out, n=40, **kw):
    kw = {"fmt": FMT, "generation": GEN, "shard_size": 8, "show_progress": False, **kw}
    return generate_synthetic_dataset(
        model, tok, kw.pop("dist", uniform_distribution(FMT, DOMAIN)), n, out, **kw
    )


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_vectorised_no_repeat_ngram_matches_transformers(n):
    g = torch.Generator().manual_seed(n)
    for length in (1, 2, 3, 5, 30):
        ids = torch.randint(0, 6, (9, length), generator=g)
        scores = torch.randn(9, 12, generator=g)
        ref = NoRepeatNGramLogitsProcessor(n)(ids, scores.clone())
        assert torch.equal(BatchedNoRepeatNGramLogitsProcessor(n)(ids, scores.clone()), ref)
    # with left padding, a row bans exactly what its unpadded version bans
    row = torch.tensor([[3, 4, 3, 5, 3]])
    padded = torch.cat([torch.tensor([[3, 4, 0]]), row], dim=1)  # 3 pad positions holding other tokens
    ours = BatchedNoRepeatNGramLogitsProcessor(n, torch.tensor([3]))(padded, torch.zeros(1, 8))
    assert torch.equal(ours, NoRepeatNGramLogitsProcessor(n)(row, torch.zeros(1, 8)))


def test_exact_count_schema_stripped_prompt_and_determinism(teacher, tmp_path):
    model, tok, _ = teacher
    a = _gen(model, tok, tmp_path / "a", 70, seed=3)
    b = _gen(model, tok, tmp_path / "b", 70, seed=3)
    c = _gen(model, tok, tmp_path / "c", 70, seed=4)
    assert len(a) == 70 and a.column_names == ["category", "stars", "text"]
    assert a.to_list() == b.to_list() and a["text"] != c["text"]
    # prompt stripped (a random model may emit a prompt word, never the whole prompt)
    assert not any(" ".join(FMT.format_prompt(r).split()) in r["text"] for r in a)
    for row in a:
        assert row["category"] in DOMAIN["category"] and row["stars"] in DOMAIN["stars"] and row["text"]
        prompt = len(tok(FMT.format_prompt(row))["input_ids"])
        assert prompt + len(tok(row["text"])["input_ids"]) <= GEN.max_length
    assert load_synthetic_dataset(tmp_path / "a").to_list() == a.to_list()
    # the folder loads with plain `datasets` (shards and info files are not picked up)
    assert load_dataset(str(tmp_path / "a"), split="train").to_list() == a.to_list()
    info = json.loads((tmp_path / "a" / "generation_info.json").read_text())
    assert info["distribution_mode"] == "uniform" and info["num_samples"] == 70
    assert info["filter_report"]["kept"] >= 70 and sum(r["count"] for r in info["code_counts"]) == 70
    assert info["generation"]["top_k"] == 50 and info["generation"]["max_length"] == 24


def test_left_padded_batches_give_the_same_text_as_one_prompt_at_a_time(teacher, tmp_path):
    """top_k=1 makes sampling greedy: batching and padding must then change nothing."""
    model, tok, _ = teacher
    greedy = SyntheticGenerationConfig(max_length=24, top_k=1, num_return_sequences=1, min_words=0)
    one = _gen(model, tok, tmp_path / "one", 24, generation=greedy, batch_size=1, filters=[], shard_size=24)
    batched = _gen(
        model, tok, tmp_path / "batch", 24, generation=greedy, batch_size=24, filters=[], shard_size=24
    )
    assert one.to_list() == batched.to_list()
    assert len({len(tok(FMT.format_prompt(r))["input_ids"]) for r in one}) > 1  # prompts of several lengths


def test_max_length_at_the_position_limit_with_left_padding(teacher, tmp_path):
    """max_length = the model's positions, prompts of several lengths in one batch: the longest-prompt rows
    must not be pushed past the last position by the padding (they used to index out of range)."""
    model, tok, _ = teacher
    greedy = SyntheticGenerationConfig(max_length=model.config.n_positions, top_k=1, num_return_sequences=1)
    greedy.min_words = 0
    batched = _gen(
        model, tok, tmp_path / "b", 18, generation=greedy, batch_size=18, filters=[], shard_size=18
    )
    one = _gen(model, tok, tmp_path / "one", 18, generation=greedy, batch_size=1, filters=[], shard_size=18)
    assert batched.to_list() == one.to_list()
    for r in batched:
        assert len(tok(FMT.format_prompt(r) + r["text"])["input_ids"]) <= model.config.n_positions


def test_defaults_sample_the_teacher_as_it_is():
    g = SyntheticGenerationConfig()
    assert (g.top_k, g.top_p, g.temperature, g.no_repeat_ngram_size) == (0, 1.0, 1.0, 0)


def test_paper_defaults():
    g = SyntheticGenerationConfig.paper()
    assert (
        g.top_k,
        g.top_p,
        g.temperature,
        g.no_repeat_ngram_size,
        g.max_length,
        g.num_return_sequences,
    ) == (
        50,
        0.9,
        1.0,
        2,
        128,
        2,
    )


def test_filters_add_shards_until_exactly_num_samples(teacher, tmp_path, monkeypatch):
    model, tok, _ = teacher
    seeds = []
    inner = generation._generate_shard
    monkeypatch.setattr(generation, "_generate_shard", lambda *a: seeds.append(a[-1]) or inner(*a))

    def keep_half(text: str) -> bool:
        return hashlib.md5(text.encode()).digest()[0] % 2 == 0

    ds = _gen(model, tok, tmp_path / "f", 40, filters=["empty", "duplicate", keep_half])
    info = json.loads((tmp_path / "f" / "generation_info.json").read_text())
    assert len(ds) == 40 and all(keep_half(t) for t in ds["text"])
    assert info["num_shards"] > math.ceil(40 / 16) and info["dropped_keep_half"] > 0
    assert len(seeds) == len(set(seeds)) == info["num_shards"]  # every shard generated exactly once
    assert len(list((tmp_path / "f" / "shards").glob("shard-*.jsonl"))) == info["num_shards"]
    # a larger request in the same folder reuses every finished shard and extends the same rows
    more = _gen(model, tok, tmp_path / "f", 60, filters=["empty", "duplicate", keep_half])
    assert more.to_list()[:40] == ds.to_list() and len(more) == 60
    assert len(seeds) == len(set(seeds))


def test_changed_settings_in_the_same_folder_are_refused(teacher, tmp_path):
    model, tok, _ = teacher
    _gen(model, tok, tmp_path / "s", 10)
    other = SyntheticGenerationConfig(max_length=24, top_k=5)
    with pytest.raises(ValueError, match=r"other settings \(changed: \['generation'\]\).*another output_dir"):
        _gen(model, tok, tmp_path / "s", 10, generation=other)
    retrained, _ = tiny_teacher()
    with torch.no_grad():
        retrained.transformer.wte.weight.add_(0.01)
    with pytest.raises(ValueError, match=r"changed: \['model'\]"):
        _gen(retrained, tok, tmp_path / "s", 10)
    # the filter threshold only acts at assembly: changing it reuses the shards
    assert (
        len(_gen(model, tok, tmp_path / "s", 10, generation=SyntheticGenerationConfig.paper(max_length=24)))
        == 10
    )


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"n": 0}, "num_samples=0 must be > 0"),
        (
            {"generation": SyntheticGenerationConfig(max_length=6)},
            r"max_length=6 is not longer than the prompt",
        ),
        ({"generation": SyntheticGenerationConfig(max_length=64)}, "exceeds the model's 32 positions"),
        (
            {"dist": ControlCodeDistribution(["category"], [("Bars",)], [1.0], "public")},
            r"Unknown control field",
        ),
        ({"batch_size": 0}, "batch_size=0 must be an int > 0"),
        ({"filters": ["short", "typo"]}, "unknown filter 'typo'"),
    ],
)
def test_bad_inputs(teacher, tmp_path, kwargs, match):
    model, tok, _ = teacher
    with pytest.raises(ValueError, match=match):
        _gen(model, tok, tmp_path / "bad", **kwargs)
    with pytest.raises(ValueError, match=r"codes=\[\]"):
        public_distribution(FMT, [], [])
    with pytest.raises(ValueError, match=r"top_p=0 must be in \(0, 1\]"):
        SyntheticGenerationConfig(top_p=0)


SCRIPT = """
import json, os, sys, time
import torch
torch.set_num_threads(1)
if "WORLD_SIZE" in os.environ:
    torch.distributed.init_process_group("gloo")
from transformers import AutoModelForCausalLM, AutoTokenizer
import hf_dpkd.synthetic.generation as g
from hf_dpkd.privacy.histogram import uniform_distribution
from tests.test_generation import DOMAIN, FMT, GEN
teacher, out, n, delay, log = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
inner = g._generate_shard
def logged(*a):
    rows = inner(*a)
    time.sleep(delay)
    with open(log, "a") as f:
        f.write(json.dumps({"rank": int(os.environ.get("RANK", 0)), "seed": a[-1]}) + "\\n")
    return rows
g._generate_shard = logged
model = AutoModelForCausalLM.from_pretrained(teacher)
tok = AutoTokenizer.from_pretrained(teacher)
ds = g.generate_synthetic_dataset(model, tok, uniform_distribution(FMT, DOMAIN), n, out, fmt=FMT, generation=GEN,
                                  seed=5, shard_size=4, show_progress=False)
print("RESULT " + json.dumps({"rank": int(os.environ.get("RANK", 0)), "rows": len(ds)}), flush=True)
"""


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_resume_after_sigkill_finishes_with_exact_count_and_no_shard_twice(teacher, tmp_path):
    _, _, path = teacher
    script, out, log = tmp_path / "gen.py", tmp_path / "synth", tmp_path / "log.jsonl"
    script.write_text(SCRIPT)
    cmd = [sys.executable, str(script), str(path), str(out), "60"]
    proc = subprocess.Popen(
        [*cmd, "0.4", str(log)], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.time() + 60
    while time.time() < deadline and len(list((out / "shards").glob("shard-*.jsonl"))) < 2:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {p.name: p.read_bytes() for p in (out / "shards").glob("shard-*.jsonl")}
    assert 2 <= len(before) < 8 and not (out / "data").exists()  # 60 rows need 8 shards of 4 prompts x 2
    res = subprocess.run([*cmd, "0", str(log)], env=_env(), capture_output=True, text=True, timeout=120)
    assert "RESULT" in res.stdout and '"rows": 60' in res.stdout, res.stderr[-2000:]
    assert all((out / "shards" / name).read_bytes() == data for name, data in before.items())  # kept as is
    seeds = [r["seed"] for r in _log(log)]
    assert len(seeds) == len(set(seeds)) == len(list((out / "shards").glob("shard-*.jsonl")))
    assert not list(out.rglob(".*tmp"))  # no half-written file left behind
    # the same rows as an uninterrupted run (teacher loaded from disk, in this process)
    model = AutoModelForCausalLM.from_pretrained(path)
    clean = _gen(model, AutoTokenizer.from_pretrained(path), tmp_path / "clean", 60, seed=5, shard_size=4)
    assert load_synthetic_dataset(out).to_list() == clean.to_list()


def test_two_processes_split_the_shards_without_overlap(teacher, tmp_path):
    _, _, path = teacher
    script, out, log = tmp_path / "gen.py", tmp_path / "synth", tmp_path / "log.jsonl"
    script.write_text(SCRIPT)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    run = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
    ]
    proc = subprocess.run(
        [*run, "--master_port", str(port), str(script), str(path), str(out), "50", "0", str(log)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(m) for m in re.findall(r"RESULT (\{[^}]*\})", proc.stdout)]  # lines may interleave
    assert sorted(r["rank"] for r in results) == [0, 1] and all(r["rows"] == 50 for r in results)
    entries = _log(log)
    seeds = [e["seed"] for e in entries]
    assert len(seeds) == len(set(seeds)) == len(list((out / "shards").glob("shard-*.jsonl")))
    assert {e["rank"] for e in entries} == {0, 1}  # both processes generated
    by_seed = {generation._shard_seed(5, i) + 1: i for i in range(len(seeds))}
    assert all(by_seed[e["seed"]] % 2 == e["rank"] for e in entries)  # shard i on rank i % 2
    single = json.loads((out / "generation_info.json").read_text())
    assert single["world_size"] == 2 and len(load_synthetic_dataset(out)) == 50


def test_categorical_sampler_draws_from_the_softmax_and_never_a_banned_token():
    """Against the obviously-correct law: frequencies of 200,000 draws vs softmax(scores), within 5 sigma."""
    from hf_dpkd.synthetic.generation_decoding import CategoricalSampler

    scores = torch.tensor([[float("-inf"), 2.0, 0.5, float("-inf"), -1.0, 1.0, float("-inf")]])
    n = 200_000
    torch.manual_seed(0)
    out = CategoricalSampler()(torch.zeros((n, 1), dtype=torch.long), scores.expand(n, -1).clone())
    assert torch.isfinite(out).sum(dim=1).eq(1).all()  # exactly one token per row is left
    drawn = out.argmax(dim=1)
    freq = torch.bincount(drawn, minlength=7).double() / n
    p = torch.softmax(scores[0].double(), dim=0)
    assert freq[0] == freq[3] == freq[6] == 0  # banned first, middle and last tokens
    sigma = (p * (1 - p) / n).sqrt()
    assert ((freq - p).abs() <= 5 * sigma + 1e-12).all(), (freq, p)


@pytest.mark.parametrize(
    ("uniform", "weights", "expected"),
    [
        (
            0.0,
            [0.0, 0.0, 0.5, 0.5],
            2,
        ),  # U = 0: the first token with weight, never a zero-weight one before it
        (
            1 - 2**-24,
            [0.3, 0.7, 0.0, 0.0],
            1,
        ),  # the largest U: the last token with weight, not a zero after it
        (1 - 2**-24, [1e-30, 1.0, 0.0], 1),
        (0.5, [1.0, 1.0, 0.0, 1.0, 1.0], 3),  # the zero in the middle is skipped
    ],
)
def test_draw_categorical_at_the_ends_of_the_uniform(monkeypatch, uniform, weights, expected):
    """Inverse CDF at the extreme uniforms: U * total rounded up to the total must not run past the last token
    with weight, and a zero weight is never drawn."""
    from hf_dpkd.synthetic import generation_decoding

    monkeypatch.setattr(generation_decoding.torch, "rand_like", lambda t: torch.full_like(t, uniform))
    drawn = generation_decoding.draw_categorical(torch.tensor([weights]))
    assert drawn.tolist() == [[expected]]


def test_sampling_processors_are_generates_warpers_in_generates_order():
    """do_sample=False with these processors samples as do_sample=True does: same warpers, same order."""
    from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel

    from hf_dpkd.synthetic.generation_decoding import (
        CategoricalSampler,
        TopKTopPSampler,
        sampling_processors,
    )

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=1, vocab_size=64))
    for top_k, top_p, temperature in ((50, 0.9, 1.0), (10, 0.5, 0.7), (0, 1.0, 1.3), (1, 1.0, 1.0)):
        config = GenerationConfig(do_sample=True, top_k=top_k, top_p=top_p, temperature=temperature)
        theirs = model._get_logits_processor(config)
        ours = sampling_processors(top_k, top_p, temperature)
        assert isinstance(ours[-1], TopKTopPSampler if top_k else CategoricalSampler)
        unfused = [q for p in ours for q in (p._unfused if isinstance(p, TopKTopPSampler) else [p])]
        assert isinstance(unfused[-1], CategoricalSampler)
        assert [type(p) for p in unfused[:-1]] == [type(p) for p in theirs]
        for a, b in zip(unfused[:-1], theirs):
            assert vars(a) == vars(b), (a, b)


def _top_k_top_p_cases():
    """Scores on which the fused sampler runs its own path, and the three on which it must fall back."""
    g = torch.Generator().manual_seed(3)
    plain = torch.randn(1, 64, generator=g) * 2
    tie_at_k = plain.clone()
    tie_at_k[0, tie_at_k[0].argsort(descending=True)[10]] = tie_at_k[0].sort(descending=True).values[9]
    tie_inside = plain.clone()
    best = tie_inside[0].argsort(descending=True)
    tie_inside[0, best[3]] = tie_inside[0, best[2]]
    few = plain.clone()
    few[0, best[6:]] = float("-inf")  # fewer than k tokens allowed
    return {"own-path": plain, "tie-at-k": tie_at_k, "tie-inside": tie_inside, "fewer-than-k": few}


@pytest.mark.parametrize("case", ["own-path", "tie-at-k", "tie-inside", "fewer-than-k"])
@pytest.mark.parametrize("top_p", [1.0, 0.8])
def test_top_k_top_p_sampler_draws_what_the_three_processors_draw(case, top_p):
    """Against transformers' TopK then TopP warpers and the softmax of what they leave: frequencies of
    200,000 draws within 5 sigma, and never a token they removed."""
    from transformers import TopKLogitsWarper, TopPLogitsWarper

    from hf_dpkd.synthetic.generation_decoding import TopKTopPSampler

    scores = _top_k_top_p_cases()[case]
    ids = torch.zeros((1, 1), dtype=torch.long)
    kept = TopPLogitsWarper(top_p)(ids, TopKLogitsWarper(10)(ids, scores.clone())) if top_p < 1 else None
    kept = TopKLogitsWarper(10)(ids, scores.clone()) if kept is None else kept
    p = torch.softmax(kept[0].double(), dim=0)
    n = 200_000
    torch.manual_seed(0)
    sampler, fell_back = TopKTopPSampler(10, top_p), []
    top_k_warper = sampler._unfused[0]
    sampler._unfused[0] = lambda i, s: (fell_back.append(1), top_k_warper(i, s))[1]
    out = sampler(torch.zeros((n, 1), dtype=torch.long), scores.expand(n, -1).clone())
    assert bool(fell_back) == (case != "own-path")
    assert torch.isfinite(out).sum(dim=1).eq(1).all()
    freq = torch.bincount(out.argmax(dim=1), minlength=scores.shape[1]).double() / n
    assert (freq[p == 0] == 0).all()
    sigma = (p * (1 - p) / n).sqrt()
    assert ((freq - p).abs() <= 5 * sigma + 1e-12).all(), (freq, p)
    assert int((p > 0).sum()) >= 2 if top_p == 1.0 else True  # the cases really sample among several


class _RowLengthBudget:
    """The reference's stopping rule: row i stops once it holds ends[i] tokens (left padding included)."""

    def __init__(self, ends: torch.Tensor):
        self.ends = ends

    def __call__(self, input_ids, scores, **kwargs):
        return input_ids.shape[1] >= self.ends


@pytest.mark.parametrize("share", [0.0, 0.125, 2.0], ids=["drop-at-once", "drop-in-groups", "never-drop"])
def test_dropping_finished_rows_samples_what_generate_samples(teacher, share, monkeypatch):
    """Against `generate` (every row decoded until the last stops): greedy processors, left-padded prompts,
    rows that stop at different steps on a stop token or on their own length budget. Each row's tokens must
    be generate's, up to and including its stop token."""
    from transformers import LogitsProcessorList, StoppingCriteriaList

    import hf_dpkd.synthetic.generation_loop as loop
    from hf_dpkd.synthetic.generation_decoding import TopKTopPSampler, sampling_processors

    monkeypatch.setattr(loop, "COMPACT_SHARE", share)
    model, tok, _ = teacher
    g = torch.Generator().manual_seed(0)
    rows, width, vocab = 12, 6, model.config.vocab_size
    pads = torch.tensor([0, 3, 1, 0, 2, 5, 0, 4, 1, 0, 3, 2])
    ids = torch.randint(3, vocab, (rows, width), generator=g)
    mask = (torch.arange(width)[None, :] >= pads[:, None]).long()
    ids = ids.masked_fill(mask == 0, tok.pad_token_id)
    ends = pads + torch.tensor([20, 9, 20, 14, 20, 20, 7, 20, 20, 12, 20, 20])

    def greedy(_rows=None):  # top-1 is deterministic: the race then always draws the argmax
        return LogitsProcessorList([*sampling_processors(1, 1.0, 1.0)])

    assert isinstance(greedy()[-1], TopKTopPSampler)
    # stop tokens: two tokens the greedy continuations reach at different steps (found with generate)
    free = model.generate(
        input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=14, pad_token_id=0
    )
    counts = torch.bincount(free[:, width:].reshape(-1), minlength=vocab)
    stop = set(counts.argsort(descending=True)[:2].tolist())
    reference = model.generate(
        input_ids=ids,
        attention_mask=mask,
        do_sample=False,
        logits_processor=greedy(),
        stopping_criteria=StoppingCriteriaList([_RowLengthBudget(ends)]),
        eos_token_id=sorted(stop),
        pad_token_id=tok.pad_token_id,
        max_new_tokens=int((ends - width).max()),
    )[:, width:].tolist()
    ours = loop.sample_rows(model, ids, mask, greedy, ends, stop, tok.pad_token_id)
    lengths = set()
    for i, row in enumerate(reference):
        end = next((k + 1 for k, t in enumerate(row) if t in stop), int(ends[i]) - width)
        assert ours[i] == row[:end], i
        lengths.add(end)
    assert len(lengths) >= 4  # rows really stopped at different steps


@pytest.mark.parametrize("share", [0.125, 2.0], ids=["drop-in-groups", "never-drop"])
def test_rows_of_several_prompt_lengths_fill_the_positions_without_running_past_them(share, monkeypatch):
    """Left-padded prompts of 2-5 tokens in one batch, every row decoded to the model's last position (no
    stop token): the longest prompt's rows finish first and stay in the batch, fed pads, while the others
    run on; they must not be fed positions past the last (an index error), and each row must get the tokens
    it gets alone, unpadded."""
    from transformers import GPT2Config, GPT2LMHeadModel

    import hf_dpkd.synthetic.generation_loop as loop
    from hf_dpkd.synthetic.generation_decoding import sampling_processors

    monkeypatch.setattr(loop, "COMPACT_SHARE", share)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=40, n_positions=12)).eval()
    prompts = [[5, 6], [7, 8, 9, 10, 11], [12, 13, 14], [15, 16, 17, 18]]
    width, pad = 5, 0

    def greedy(_rows=None):
        return sampling_processors(1, 1.0, 1.0)

    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = (torch.arange(width)[None, :] >= torch.tensor([width - len(p) for p in prompts])[:, None]).long()
    ends = (width - mask.sum(1)) + 12  # every row to position 11, the model's last
    batched = loop.sample_rows(model, ids, mask, greedy, ends, set(), pad)
    for prompt, row in zip(prompts, batched, strict=True):
        alone = loop.sample_rows(
            model,
            torch.tensor([prompt]),
            torch.ones(1, len(prompt), dtype=torch.long),
            greedy,
            torch.tensor([12]),
            set(),
            pad,
        )[0]
        assert row == alone and len(row) == 12 - len(prompt)


@pytest.mark.skipif(not can_fork(), reason="workers are forked processes: Linux only")
def test_shards_on_worker_processes_are_the_shards_of_one_process(teacher, tmp_path):
    """cpu_workers forks processes that each generate whole shards: the same rows and files as one process
    (both at one torch thread, so that the arithmetic is the same), in fewer seconds on several cores."""
    model, tok, _ = teacher
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = _gen(model, tok, tmp_path / "one", 40, cpu_workers=1)
        two = _gen(model, tok, tmp_path / "two", 40, cpu_workers=2)
    finally:
        torch.set_num_threads(threads)
    assert one.to_list() == two.to_list()
    files = sorted(p.name for p in (tmp_path / "one" / "shards").glob("shard-*.jsonl"))
    assert len(files) >= 3
    for name in files:
        assert (tmp_path / "two" / "shards" / name).read_bytes() == (
            tmp_path / "one" / "shards" / name
        ).read_bytes()
    with pytest.raises(ValueError, match="cpu_workers=0"):
        _gen(model, tok, tmp_path / "bad", 40, cpu_workers=0)
