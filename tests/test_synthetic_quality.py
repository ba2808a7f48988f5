"""The synthetic data quality report: known inputs -> known distances, the model-based metrics, the files,
the dataset card section (only on request, saying it is not covered) and the push patterns that leave it out."""

import ast
import inspect
import json
import math
import random
import textwrap
from collections import Counter
from types import SimpleNamespace

import pytest
import torch

from hf_dpkd.hub import card_epsilon, write_dataset_card
from hf_dpkd.privacy.accounting import PrivacyLedger
from hf_dpkd.synthetic.control_codes import ControlCodeFormat
from hf_dpkd.synthetic.quality import (
    conditional_log_likelihoods,
    control_code_fidelity,
    distinct_n,
    length_distance,
    length_stats,
    ngram_js_divergence,
    quality_markdown,
    quality_report,
    quality_summary,
    reference_perplexity,
    self_bleu,
    wasserstein_1,
    write_quality_report,
)

JS_HALF = 1.5 - 0.75 * math.log2(3)  # JS({a: 1/2, b: 1/2}, {a: 1}) in bits, by hand


# ---------------------------------------------------------------------------------------------------
# n-gram Jensen-Shannon divergence
# ---------------------------------------------------------------------------------------------------
def test_js_divergence_known_values():
    assert ngram_js_divergence(["a b c", "c a"], ["c a", "a b c"]) == 0.0
    assert ngram_js_divergence(["a b", "a"], ["a b a"]) == 0.0  # same unigram frequencies, other texts
    assert ngram_js_divergence(["a b"], ["c d"]) == 1.0
    assert ngram_js_divergence(["a b"], ["c d"], n=2) == 1.0
    assert math.isclose(ngram_js_divergence(["a b"], ["a"]), JS_HALF, rel_tol=1e-12)
    assert math.isclose(ngram_js_divergence(["a"], ["a b"]), JS_HALF, rel_tol=1e-12)  # symmetric
    # bigrams {ab: 1/2, bc: 1/2} vs {ab: 1}: the same numbers one order up
    assert math.isclose(ngram_js_divergence(["a b c"], ["a b"], n=2), JS_HALF, rel_tol=1e-12)
    # bigrams never span two texts: "a" + "b" has no bigram "a b"
    assert ngram_js_divergence(["a b", "c"], ["a b c"], n=2) == pytest.approx(JS_HALF)
    # a custom tokenization: characters
    assert math.isclose(ngram_js_divergence(["ab"], ["a"], tokenize=list), JS_HALF, rel_tol=1e-12)


def test_js_divergence_does_not_depend_on_the_string_hash_seed():
    """Whitespace n-grams are strings, whose set order changes with PYTHONHASHSEED: the sum must not."""
    import os
    import subprocess
    import sys

    import hf_dpkd.synthetic.quality_text_metrics as metrics

    # the module alone (standard library only), not the package: a fresh process per seed stays cheap
    code = textwrap.dedent(
        f"""
        import importlib.util
        spec = importlib.util.spec_from_file_location("metrics", {metrics.__file__!r})
        metrics = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(metrics)
        ngram_js_divergence = metrics.ngram_js_divergence
        a = [f"the cat sat on the mat {{i}} times" for i in range(80)] + ["a dog ran far away quickly"] * 3
        b = [f"the dog sat on a rug {{7 * i}} times" for i in range(90)]
        print(repr(ngram_js_divergence(a, b, n=1)), repr(ngram_js_divergence(a, b, n=2)))
        """
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": str(seed)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in (0, 1, 2, 3)
    }
    assert len(outs) == 1, outs


def test_js_divergence_bad_inputs():
    with pytest.raises(ValueError, match=r"b_texts \(2 texts\) has no 2-gram"):
        ngram_js_divergence(["a b"], ["a", "b"], n=2)
    with pytest.raises(ValueError, match=r"n=0 must be an int >= 1"):
        ngram_js_divergence(["a"], ["a"], n=0)


# ---------------------------------------------------------------------------------------------------
# Lengths
# ---------------------------------------------------------------------------------------------------
def test_length_stats_known_values():
    stats = length_stats(["a", "a b", "a b c", "a b c d"])
    assert stats["mean"] == 2.5 and stats["min"] == 1.0 and stats["max"] == 4.0
    assert math.isclose(stats["std"], math.sqrt(1.25))
    assert math.isclose(stats["p10"], 1.3) and stats["p50"] == 2.5 and math.isclose(stats["p90"], 3.7)
    with pytest.raises(ValueError, match="texts is empty"):
        length_stats([])


def test_length_distance_known_values():
    texts = ["a", "a b", "a b c"]
    assert length_distance(texts, list(reversed(texts))) == 0.0
    assert length_distance(["a", "a b", "a b c"], ["a b", "a b c", "a b c d"]) == 1.0  # shifted by one
    assert wasserstein_1([0, 0], [0, 4]) == 2.0  # half the mass moves 4
    assert wasserstein_1([1], [1, 3]) == 1.0  # unequal sizes: half the mass moves 2
    with pytest.raises(ValueError, match="two non-empty samples"):
        wasserstein_1([], [1])


def test_wasserstein_matches_an_independent_implementation():
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(3)
    for _ in range(20):
        a = [rng.randint(0, 30) for _ in range(rng.randint(1, 40))]
        b = [rng.randint(5, 50) for _ in range(rng.randint(1, 40))]
        assert math.isclose(
            wasserstein_1(a, b), stats.wasserstein_distance(a, b), rel_tol=1e-9, abs_tol=1e-12
        )


# ---------------------------------------------------------------------------------------------------
# Diversity
# ---------------------------------------------------------------------------------------------------
def test_distinct_n_known_values():
    assert distinct_n(["a a b", "a b"], 1) == 2 / 5
    assert distinct_n(["a a b", "a b"], 2) == 2 / 3  # aa, ab, ab
    assert distinct_n(["a b c d"], 2) == 1.0
    assert distinct_n(["x x x x"], 1) == 1 / 4
    with pytest.raises(ValueError, match=r"texts \(1 texts\) has no 3-gram"):
        distinct_n(["a b"], 3)


def _slow_self_bleu(texts, n_max):
    """Each text against every other text, counts clipped by the max over references, one by one."""
    tokens = [t.split() for t in texts]
    scores = []
    for i, hyp in enumerate(tokens):
        refs = [r for j, r in enumerate(tokens) if j != i]
        if not hyp:
            scores.append(0.0)
            continue
        logs = []
        for n in range(1, n_max + 1):
            grams = Counter(tuple(hyp[k : k + n]) for k in range(len(hyp) - n + 1))
            ref_max: Counter = Counter()
            for r in refs:
                for g, c in Counter(tuple(r[k : k + n]) for k in range(len(r) - n + 1)).items():
                    ref_max[g] = max(ref_max[g], c)
            matches = sum(min(c, ref_max[g]) for g, c in grams.items())
            total = sum(grams.values())
            if n == 1 and matches == 0:
                break
            logs.append(math.log(matches / total) if n == 1 else math.log((matches + 1) / (total + 1)))
        if len(logs) < n_max:
            scores.append(0.0)
            continue
        ref_len = min((len(r) for r in refs), key=lambda x: (abs(x - len(hyp)), x))
        bp = 1.0 if len(hyp) > ref_len else math.exp(1 - ref_len / len(hyp))
        scores.append(bp * math.exp(sum(logs) / n_max))
    return sum(scores) / len(scores)


def test_self_bleu_known_values():
    assert self_bleu(["the food was good"] * 3) == 1.0
    assert self_bleu(["a b c", "d e f", "g h"]) == 0.0
    # unigrams 3/4, bigrams (2 + 1) / (3 + 1) = 3/4, same lengths: BLEU-2 = 0.75 for both texts
    assert math.isclose(self_bleu(["a b c d", "a b c e"], n_max=2), 0.75)
    # "a b" vs "a b c d": precisions 1, brevity exp(1 - 4/2); "a b c d" vs "a b": p1 = 1/2, p2 = 2/4, no penalty
    assert math.isclose(self_bleu(["a b", "a b c d"], n_max=2), (math.exp(-1) + 0.5) / 2)


def test_self_bleu_matches_the_slow_reference():
    rng = random.Random(0)
    words = "a b c d e f".split()
    for trial in range(15):
        texts = [" ".join(rng.choices(words, k=rng.randint(0, 9))) for _ in range(rng.randint(2, 9))]
        if trial % 3 == 0:
            texts.append(texts[0])  # duplicated texts: the top-2 bookkeeping must see the tie
        assert math.isclose(self_bleu(texts, n_max=4, sample=None), _slow_self_bleu(texts, 4), rel_tol=1e-12)


def test_self_bleu_sample_is_seeded_and_bounded():
    rng = random.Random(1)
    texts = [" ".join(rng.choices("a b c d e f g h".split(), k=8)) for _ in range(60)]
    assert self_bleu(texts, sample=10, seed=4) == self_bleu(texts, sample=10, seed=4)
    assert self_bleu(texts, sample=10, seed=4) != self_bleu(texts, sample=10, seed=5)
    picked = [texts[i] for i in sorted(random.Random(4).sample(range(60), 10))]
    assert self_bleu(texts, sample=10, seed=4) == self_bleu(picked, sample=None)
    with pytest.raises(ValueError, match="sample=1 must be an int >= 2"):
        self_bleu(texts, sample=1)
    with pytest.raises(ValueError, match="at least 2 texts"):
        self_bleu(["only one"])


# ---------------------------------------------------------------------------------------------------
# Model-based metrics: a tiny GPT-2 that learns code A -> "x ...", code B -> "y ..."
# ---------------------------------------------------------------------------------------------------
FMT = ControlCodeFormat(fields=[("cat", "Category")], domain={"cat": ["A", "B"]})
TEXTS = {"A": "x x w x x", "B": "y y w y y"}


@pytest.fixture(scope="module")
def coded_lm():
    from tests.dp_models import tiny_gpt2, tiny_word_tokenizer

    tok = tiny_word_tokenizer([FMT.format_prompt({"cat": c}) for c in TEXTS] + list(TEXTS.values()) + ["z"])
    torch.manual_seed(0)
    model = tiny_gpt2()
    model.resize_token_embeddings(len(tok))
    seqs = [
        tok(FMT.format_training_text({"cat": c}, t, tok.eos_token))["input_ids"] for c, t in TEXTS.items()
    ]
    batch = torch.tensor(seqs)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(60):
        opt.zero_grad()
        model(input_ids=batch, labels=batch).loss.backward()
        opt.step()
    return model.eval(), tok


class ConstantLM(torch.nn.Module):
    """A causal LM whose next-token distribution ignores the input: no code can be read from it."""

    def __init__(self, vocab: int):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.linspace(0, 1, vocab))
        self.config = SimpleNamespace(n_positions=64)

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.bias.expand(*input_ids.shape, -1))


def test_control_code_fidelity_reads_the_codes(coded_lm):
    model, tok = coded_lm
    right = [{"cat": c, "text": t} for c, t in TEXTS.items()] * 3
    good = control_code_fidelity(model, tok, FMT, right)
    assert good["accuracy"] == 1.0 and good["field_accuracy"] == {"cat": 1.0}
    assert good["chance"] == 0.5 and good["num_codes"] == 2 and good["num_records"] == 6
    assert good["mean_margin_per_token"] > 0.5
    swapped = [{"cat": "B" if c == "A" else "A", "text": t} for c, t in TEXTS.items()]
    bad = control_code_fidelity(model, tok, FMT, swapped)
    assert bad["accuracy"] == 0.0
    assert math.isclose(bad["mean_margin_per_token"], -good["mean_margin_per_token"], rel_tol=1e-9)


def test_control_code_fidelity_of_a_model_that_ignores_the_prompt_is_chance():
    fmt = ControlCodeFormat(fields=[("cat", "Category"), ("mood", "Mood")])
    from tests.dp_models import tiny_word_tokenizer

    codes = [("A", "up"), ("A", "down"), ("B", "up"), ("B", "down")]
    tok = tiny_word_tokenizer([fmt.format_prompt(fmt.record_of(c)) for c in codes] + ["x y"])
    records = [{"cat": "A", "mood": "up", "text": "x y x"}, {"cat": "B", "mood": "down", "text": "y"}]
    out = control_code_fidelity(ConstantLM(len(tok)), tok, fmt, records, codes=codes)
    assert out["accuracy"] == 0.25 and out["chance"] == 0.25  # four-way ties share the credit
    assert out["field_accuracy"] == {"cat": 0.5, "mood": 0.5}
    assert out["mean_margin_per_token"] == 0.0


def test_conditional_log_likelihoods_batched_equal_one_at_a_time(coded_lm):
    model, tok = coded_lm
    texts = ["x x w", "y w y y x", "w"]
    codes = [("A",), ("B",)]
    batched, lengths = conditional_log_likelihoods(model, tok, FMT, texts, codes, batch_size=4)
    assert lengths == [3, 5, 1]
    for t, text in enumerate(texts):
        for c, code in enumerate(codes):
            prompt = tok(FMT.format_prompt(FMT.record_of(code)))["input_ids"]
            target = tok(text, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([prompt + target])
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
            expected = sum(logp[len(prompt) - 1 + k, tok_id].item() for k, tok_id in enumerate(target))
            assert math.isclose(batched[t][c], expected, rel_tol=1e-5, abs_tol=1e-5), (text, code)
    # only the first two tokens of each text: the log-likelihood of "x x" (resp. "y w", "w")
    cut, cut_lengths = conditional_log_likelihoods(model, tok, FMT, texts, codes, max_text_tokens=2)
    full, _ = conditional_log_likelihoods(model, tok, FMT, ["x x", "y w", "w"], codes)
    assert cut_lengths == [2, 2, 1]
    for t in range(3):
        assert all(math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-5) for a, b in zip(cut[t], full[t]))


def test_control_code_fidelity_bad_inputs(coded_lm):
    model, tok = coded_lm
    with pytest.raises(ValueError, match=r"control code \('C',\), which is not among the 2 candidate codes"):
        control_code_fidelity(model, tok, FMT, [{"cat": "C", "text": "x"}])
    with pytest.raises(ValueError, match="at least 2 candidate codes"):
        control_code_fidelity(model, tok, FMT, [{"cat": "A", "text": "x"}], codes=[("A",)])
    with pytest.raises(ValueError, match="max_text_tokens=0 must be an int >= 1, or None"):
        control_code_fidelity(model, tok, FMT, [{"cat": "A", "text": "x"}], max_text_tokens=0)
    with pytest.raises(ValueError, match="max_records=0 must be an int >= 1"):
        control_code_fidelity(model, tok, FMT, [{"cat": "A", "text": "x"}], max_records=0)


def test_reference_perplexity_is_the_token_weighted_perplexity(coded_lm):
    model, tok = coded_lm
    texts = ["x x w x x", "y y w"]
    out = reference_perplexity(model, tok, texts)
    ids = torch.tensor([tok("\n\n".join(texts))["input_ids"]])  # fewer tokens than one window: one window
    with torch.no_grad():
        nll = model(input_ids=ids, labels=ids).loss.item()
    assert out["num_tokens"] == ids.shape[1] - 1
    assert math.isclose(out["perplexity"], math.exp(nll), rel_tol=1e-5)
    assert (
        reference_perplexity(model, tok, ["x x w x x"])["perplexity"]
        < reference_perplexity(model, tok, ["w x y w x"])["perplexity"]
    )


# ---------------------------------------------------------------------------------------------------
# The report, its files and the card
# ---------------------------------------------------------------------------------------------------
SYNTH = [
    {"cat": "A" if i % 2 else "B", "text": t}
    for i, t in enumerate(["a b c", "a b", "c d e f", "a a b", "d"] * 2)
]
REAL = ["a b c d", "b c", "a b c", "e f", "a c e", "b d"]


def test_quality_report_without_models_is_the_functions_on_equal_samples():
    report = quality_report(SYNTH, REAL, max_records=5, seed=3)
    assert report["sample_size"] == 5 and report["num_synthetic"] == 10 and report["num_real"] == 6
    assert report["uses_private_data"] is True and report["covered_by_guarantee"] is False
    syn = [SYNTH[i]["text"] for i in sorted(random.Random(3).sample(range(10), 5))]
    real = [REAL[i] for i in sorted(random.Random(4).sample(range(6), 5))]
    m = report["metrics"]
    assert m["unigram_js"] == ngram_js_divergence(syn, real, n=1)
    assert m["bigram_js"] == ngram_js_divergence(syn, real, n=2)
    assert m["length_wasserstein"] == length_distance(syn, real)
    assert m["distinct_2"] == {"synthetic": distinct_n(syn, 2), "real": distinct_n(real, 2)}
    assert m["self_bleu"]["real"] == self_bleu(real, sample=None, seed=3)
    assert m["length"]["synthetic"] == length_stats(syn)
    assert "reference_perplexity" not in m and "control_code_fidelity" not in m
    assert quality_report(SYNTH, REAL, max_records=5, seed=3) == report
    same = quality_report([{"text": t} for t in REAL], REAL)
    assert same["metrics"]["unigram_js"] == 0.0 and same["metrics"]["length_wasserstein"] == 0.0


def test_quality_report_without_real_text_reads_no_private_data():
    report = quality_report(SYNTH, None)
    assert report["uses_private_data"] is False and report["covered_by_guarantee"] is True
    assert set(report["metrics"]) == {"length", "distinct_1", "distinct_2", "self_bleu"}
    assert set(report["metrics"]["self_bleu"]) == {"synthetic"}
    assert "NOT covered" not in quality_markdown(report)


def test_quality_report_bad_inputs():
    with pytest.raises(ValueError, match="max_records=1 must be an int >= 2"):
        quality_report(SYNTH, REAL, max_records=1)
    with pytest.raises(ValueError, match="real_texts has 1 texts"):
        quality_report(SYNTH, ["a"])
    with pytest.raises(ValueError, match="fidelity_model needs fmt="):
        quality_report(SYNTH, REAL, fidelity_model=object())


def test_quality_report_with_models_files_and_markdown(coded_lm, tmp_path):
    model, tok = coded_lm
    synth = [{"cat": c, "text": t} for c, t in TEXTS.items()] * 4
    report = quality_report(
        synth,
        ["x x w", "y w y", "x y w x"],
        tok,
        reference_model=model,
        fidelity_model=model,
        fmt=FMT,
        seed=1,
    )
    m = report["metrics"]
    assert m["control_code_fidelity"]["accuracy"] == 1.0
    assert (
        m["reference_perplexity"]["synthetic"]["perplexity"] < m["reference_perplexity"]["real"]["perplexity"]
    )
    summary = quality_summary(report)
    assert summary["control_code_accuracy"] == 1.0 and summary["control_code_chance"] == 0.5
    assert summary["unigram_js"] == m["unigram_js"] and summary["self_bleu"] == m["self_bleu"]["synthetic"]
    path = write_quality_report(report, tmp_path / "synthetic")
    assert path == tmp_path / "synthetic" / "quality.json"
    assert json.loads(path.read_text()) == json.loads(json.dumps(report))
    md = (tmp_path / "synthetic" / "quality.md").read_text()
    assert (
        md.startswith("# Synthetic data quality")
        and "NOT covered by the differential-privacy guarantee" in md
    )
    for row in ("| unigram JS divergence | ", "| self-BLEU-4 | ", "| reference-model perplexity | "):
        assert row in md, row
    assert "| control-code accuracy | 1 | chance 0.5 | higher" in md
    assert (
        "Control-code fidelity: 8 synthetic texts (first 48 tokens) scored under each of the 2 codes." in md
    )
    assert not list((tmp_path / "synthetic").glob(".*.tmp"))


def _card(folder, **kwargs):
    ledger = PrivacyLedger(accountant="rdp", delta=1e-5)
    ledger.record("teacher_dp_sgd", noise_multiplier=1.0, sample_rate=0.01, steps=100)
    return write_dataset_card(
        folder,
        source_model="teacher",
        ledger=ledger,
        control_code_mode="uniform",
        generation_config={"top_k": 50},
        num_samples=10,
        control_fields=["cat"],
        **kwargs,
    )


def test_dataset_card_shows_quality_only_when_given(tmp_path):
    plain = _card(tmp_path / "plain").read_text()
    assert "Synthetic data quality" not in plain and "unigram JS" not in plain
    report = quality_report(SYNTH, REAL)
    path = _card(tmp_path / "with", quality=report)
    card = path.read_text()
    assert "## Synthetic data quality (local, not covered by the guarantee)" in card
    assert "**NOT covered by the differential-privacy guarantee**" in card
    assert f"| unigram JS divergence | {report['metrics']['unigram_js']:.4g} |" in card
    assert card_epsilon(path) == card_epsilon(
        tmp_path / "plain" / "README.md"
    )  # the guarantee reads the same


def test_quality_files_are_in_no_push_pattern():
    from huggingface_hub.utils import filter_repo_objects

    from hf_dpkd.pipeline import Pipeline
    from hf_dpkd.synthetic.callback import PUSH_PATTERNS

    files = ["README.md", "data/train-00000-of-00001.parquet", "quality.json", "quality.md"]
    tree = ast.parse(textwrap.dedent(inspect.getsource(Pipeline.stage_push)))
    pipeline_patterns = [
        ast.literal_eval(k.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        for k in node.keywords
        if k.arg == "allow_patterns"
    ]
    assert pipeline_patterns, "stage_push no longer pushes the synthetic data with allow_patterns"
    for patterns in [PUSH_PATTERNS, *pipeline_patterns]:
        pushed = list(filter_repo_objects(files, allow_patterns=patterns))
        assert "README.md" in pushed and "quality.json" not in pushed and "quality.md" not in pushed, patterns


# ---------------------------------------------------------------------------------------------------
# The pipeline: quality.json and quality.md next to the data; the card shows them only with the flag
# ---------------------------------------------------------------------------------------------------
def test_pipeline_writes_the_report_locally_and_keeps_it_out_of_the_card(quick_run):
    run_dir, proc, _ = quick_run
    synth = run_dir / "synthetic"
    report = json.loads((synth / "quality.json").read_text())
    assert report["num_synthetic"] == 128 and report["uses_private_data"] is True
    assert (
        report["num_real"] == json.loads((run_dir / "data" / "info.json").read_text())["sizes"]["validation"]
    )
    assert set(report["metrics"]) >= {"unigram_js", "reference_perplexity", "control_code_fidelity"}
    assert report["metrics"]["control_code_fidelity"]["num_codes"] == 50  # the demo's public domain
    assert "NOT covered" in (synth / "quality.md").read_text()
    stage = json.loads((run_dir / "stages" / "generate.json").read_text())
    assert stage["quality"]["unigram_js"] == report["metrics"]["unigram_js"]
    assert stage["quality"]["seconds"] == report["seconds"]
    assert "Synthetic data quality" not in (synth / "README.md").read_text()
    assert "synthetic quality (" in proc.stdout and "not covered by the guarantee" in proc.stdout


def test_pipeline_quality_in_card(quick_run, tmp_path):
    """--quality_in_card: the generate stage (re-run on a copy, from its finished data) adds the card section."""
    import shutil

    from tests.pipeline_runs import run_quick

    run_dir = tmp_path / "run"
    shutil.copytree(
        quick_run[0], run_dir, ignore=shutil.ignore_patterns("students", "audit", "non_private_teacher")
    )
    (run_dir / "stages" / "generate.json").unlink()
    (run_dir / "synthetic" / "quality.json").unlink()
    config = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps({**config, "quality_in_card": True}))
    proc = run_quick(run_dir, "--stages", "generate", "--quality_in_card")
    assert proc.returncode == 0, proc.stderr[-3000:]
    card = (run_dir / "synthetic" / "README.md").read_text()
    assert "## Synthetic data quality (local, not covered by the guarantee)" in card
    report = json.loads((run_dir / "synthetic" / "quality.json").read_text())
    assert f"| bigram JS divergence | {report['metrics']['bigram_js']:.4g} |" in card
    assert (
        report["metrics"] == json.loads((quick_run[0] / "synthetic" / "quality.json").read_text())["metrics"]
    )
