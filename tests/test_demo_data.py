"""The embedded demo corpus, its public-only tokenizer and its cached base models."""

import json
import math
from collections import Counter, defaultdict

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_dpkd.data.demo import (
    CONTROL_FIELDS,
    PRIVATE_CATEGORIES,
    PUBLIC_CATEGORIES,
    STARS,
    make_demo_dataset,
)
from hf_dpkd.data.models import COMPLETE, build_demo_models, pretrain_on_public, train_demo_tokenizer
from hf_dpkd.evaluation import perplexity
from hf_dpkd.synthetic.control_codes import ControlCodeFormat

SIZES = dict(num_train=1500, num_validation=200, num_test=400, num_public=800)


@pytest.fixture(scope="module")
def demo():
    return make_demo_dataset(**SIZES, seed=0)


def _rows(ds):
    return list(zip(ds["category"], ds["stars"], ds["text"]))


def test_same_seed_same_rows_other_seed_other_rows(demo):
    again = make_demo_dataset(**SIZES, seed=0)
    other = make_demo_dataset(**SIZES, seed=1)
    for split in demo.dataset:
        assert _rows(demo.dataset[split]) == _rows(again.dataset[split])
        assert _rows(demo.dataset[split]) != _rows(other.dataset[split])
    assert demo.canaries == again.canaries
    assert [c["secret"] for c in demo.canaries] != [c["secret"] for c in other.canaries]


def test_sizes_columns_and_codes(demo):
    ds = demo.dataset
    n_canary_rows = sum(c["repeats"] for c in demo.canaries)
    assert n_canary_rows == 1 + 4 + 16
    assert {k: len(v) for k, v in ds.items()} == {
        "train": SIZES["num_train"] + n_canary_rows,
        "validation": SIZES["num_validation"],
        "test": SIZES["num_test"],
        "public": SIZES["num_public"],
    }
    private = {c.name for c in PRIVATE_CATEGORIES}
    public = {c.name for c in PUBLIC_CATEGORIES}
    assert len(private) == 10 and not private & public
    for split, v in ds.items():
        assert v.column_names == ["category", "stars", "text"] + ([] if split == "public" else ["user_id"])
        assert set(v["stars"]) == set(STARS)
        assert set(v["category"]) == (public if split == "public" else private)
    assert demo.control_fields == CONTROL_FIELDS == {"category": "Business Category", "stars": "Review Stars"}
    assert demo.domain == {"category": [c.name for c in PRIVATE_CATEGORIES], "stars": list(STARS)}
    counts = Counter(ds["train"]["category"])
    assert counts.most_common(1)[0][0] == "Restaurants"
    assert counts["Restaurants"] > 3 * min(counts.values())  # skewed like Yelp, not uniform
    words = [len(t.split()) for t in ds["train"]["text"]]
    assert 25 <= sum(words) / len(words) <= 60 and min(words) >= 8
    # Every code is a valid prompt value for the paper's format.
    fmt = ControlCodeFormat(fields=tuple(CONTROL_FIELDS.items()), domain=demo.domain)
    assert fmt.parse_prompt(fmt.format_prompt(ds["train"][0])) == {
        "category": ds["train"][0]["category"],
        "stars": ds["train"][0]["stars"],
    }


def test_canaries_in_train_only_exactly_repeat_times(demo):
    train = Counter(demo.dataset["train"]["text"])
    others = [t for s in ("validation", "test", "public") for t in demo.dataset[s]["text"]]
    fmt = ControlCodeFormat(fields=tuple(CONTROL_FIELDS.items()))
    for c, audit in zip(demo.canaries, demo.audit_canaries()):
        assert train[c["text"]] == c["repeats"]
        rows = [r for r in demo.dataset["train"] if r["text"] == c["text"]]
        assert {(r["category"], r["stars"]) for r in rows} == {(c["category"], c["stars"])}
        stem = c["template"].split("{secret}")[0].strip()
        assert not any(stem in t for t in others)  # not even the canary's wording leaks into other splits
        assert sum(stem in t for t in train.elements()) == c["repeats"]
        assert c["space_size"] == 10**4 and len(c["secret"].split(" ")) == 4
        assert audit.render() == c["text"] and audit.space_size == 10**4 and audit.repeats == c["repeats"]
        assert audit.prefix == c["prefix"] == fmt.format_prompt(c)
    json.dumps(demo.canaries)  # the pipeline stores them in data/info.json
    assert make_demo_dataset(**SIZES, plant_canaries=False).canaries == []


def _naive_bayes_accuracy(train_rows, test_rows, key):
    """Multinomial naive Bayes over words, trained on (label, text) pairs."""
    counts, totals, priors = defaultdict(Counter), Counter(), Counter()
    vocab = set()
    for row in train_rows:
        words = row["text"].lower().split()
        counts[row[key]].update(words)
        totals[row[key]] += len(words)
        priors[row[key]] += 1
        vocab.update(words)
    n = sum(priors.values())
    correct = 0
    for row in test_rows:
        words = row["text"].lower().split()

        def score(label, words=words):
            log_p = math.log(priors[label] / n)
            denom = totals[label] + len(vocab)
            return log_p + sum(math.log((counts[label][w] + 1) / denom) for w in words)

        correct += max(priors, key=score) == row[key]
    majority = max(Counter(r[key] for r in test_rows).values()) / len(test_rows)
    return correct / len(test_rows), majority


@pytest.mark.parametrize("key,min_accuracy", [("category", 0.95), ("stars", 0.8)])
def test_text_depends_on_the_codes(demo, key, min_accuracy):
    """Held-out reviews reveal their category and stars: the conditioning is there to be learnt."""
    accuracy, majority = _naive_bayes_accuracy(list(demo.dataset["train"]), list(demo.dataset["test"]), key)
    assert majority < 0.5
    assert accuracy >= min_accuracy, (accuracy, majority)


def test_bad_sizes_are_named():
    with pytest.raises(ValueError, match=r"num_test=0 must be a positive integer"):
        make_demo_dataset(num_test=0)


def test_public_coverage_adds_the_private_language_not_its_records_labels_or_codes():
    covered = make_demo_dataset(**SIZES, seed=0, public_coverage=0.25)
    plain = make_demo_dataset(**SIZES, seed=0)
    public = covered.dataset["public"]
    assert len(public) == SIZES["num_public"]
    language = [r for r in public if r["category"] == ""]
    assert len(language) == round(0.25 * SIZES["num_public"]) and all(r["stars"] == "" for r in language)
    # the rest is the shifted public categories; the private splits are untouched
    assert {r["category"] for r in public if r["category"]} <= {c.name for c in PUBLIC_CATEGORIES}
    for split in ("train", "validation", "test"):
        assert _rows(covered.dataset[split]) == _rows(plain.dataset[split])
    # the private categories' words now reach public pretraining and the tokenizer...
    texts = [r["text"] for r in language]
    assert sum(" portions" in t for t in texts) > 5
    tok = train_demo_tokenizer(_public_texts(covered))
    assert len(tok(" portions")["input_ids"]) < len(
        train_demo_tokenizer(_public_texts(plain))(" portions")["input_ids"]
    )
    # ... but not their frequencies: private training data is Restaurant-heavy, covered text is not
    restaurant_words = sum("ordered the" in t or "waiter" in t for t in texts) / len(texts)
    private = list(plain.dataset["train"]["text"])
    assert restaurant_words < sum("ordered the" in t or "waiter" in t for t in private) / len(private)
    assert (
        make_demo_dataset(**SIZES, seed=0, public_coverage=0.25).dataset["public"]["text"] == public["text"]
    )
    with pytest.raises(ValueError, match=r"public_coverage=1.5 must be in \[0, 1\]"):
        make_demo_dataset(public_coverage=1.5)


def _public_texts(demo):
    return demo.public_texts()


def test_tokenizer_learns_only_what_it_is_given(demo, tmp_path):
    """A private-only word stays split on a public-only tokenizer, and would not on a private one."""
    public = _public_texts(demo)
    private = list(demo.dataset["train"]["text"])
    word = " portions"
    assert not any("portion" in t for t in public) and sum("portions" in t for t in private) > 50
    tok = train_demo_tokenizer(public)
    leaky = train_demo_tokenizer(private)
    assert len(tok(word)["input_ids"]) > 1
    assert len(leaky(word)["input_ids"]) == 1  # the check has teeth: private training would show
    assert len(tok(" concierge")["input_ids"]) == 1  # frequent public words do merge
    assert tok.pad_token_id != tok.eos_token_id and len(tok) == 1024
    text = private[0] + " 3 9 1 7 ünïcode"
    assert tok.decode(tok(text)["input_ids"]) == text  # private text still encodes losslessly
    tok.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path)(text)["input_ids"] == tok(text)["input_ids"]
    with pytest.raises(ValueError, match="public_texts is empty"):
        train_demo_tokenizer([])


def test_pretraining_on_public_lowers_perplexity(demo, tmp_path):
    from hf_dpkd.data.models import demo_model

    public = _public_texts(demo)
    tok = train_demo_tokenizer(public, vocab_size=512)
    model = demo_model(tok, "student")
    held_out = public[-100:]
    before = perplexity(model, tok, held_out, window=64, show_progress=False)["perplexity"]
    metrics = pretrain_on_public(
        model, tok, public[:-100], tmp_path, max_steps=40, max_length=48, batch_size=16, learning_rate=5e-3
    )
    after = perplexity(model, tok, held_out, window=64, show_progress=False)["perplexity"]
    assert after < 0.3 * before, (before, after)
    assert metrics["train_loss"] > 0 and not (tmp_path / "_pretraining").exists()
    with pytest.raises(ValueError, match=r"fewer tokens than one block of max_length=128"):
        pretrain_on_public(model, tok, ["a short one"], tmp_path, max_steps=1, max_length=128)
    with pytest.raises(ValueError, match=r"max_steps=0 must be > 0"):
        pretrain_on_public(model, tok, public, tmp_path, max_steps=0)


def test_build_demo_models_caches_and_rebuilds(demo, tmp_path, monkeypatch):
    monkeypatch.setenv(
        "HF_DPKD_CACHE", "off"
    )  # every base model pretrained here (the cache: test_base_model_cache)
    public = _public_texts(demo)[:200]
    tok = train_demo_tokenizer(public, vocab_size=400)
    kwargs = dict(pretrain_steps=2, max_length=32, batch_size=4)
    paths = build_demo_models(tmp_path, tok, public, **kwargs)
    assert paths == {"teacher": tmp_path / "base" / "teacher", "student": tmp_path / "base" / "student"}
    teacher = AutoModelForCausalLM.from_pretrained(paths["teacher"])
    student = AutoModelForCausalLM.from_pretrained(paths["student"])
    assert (teacher.config.n_layer, teacher.config.n_embd) == (4, 128)
    assert (student.config.n_layer, student.config.n_embd) == (2, 64)
    assert teacher.config.n_positions == student.config.n_positions == 128
    assert AutoTokenizer.from_pretrained(paths["student"]).get_vocab() == tok.get_vocab()
    marker = json.loads((paths["teacher"] / COMPLETE).read_text())
    assert marker["settings"]["pretrain_steps"] == 2
    weights = {k: (p / "model.safetensors").stat().st_mtime_ns for k, p in paths.items()}

    build_demo_models(tmp_path, tok, public, **kwargs)  # complete and matching: nothing redone
    assert {k: (p / "model.safetensors").stat().st_mtime_ns for k, p in paths.items()} == weights

    (paths["student"] / COMPLETE).unlink()  # as if killed before the marker: the student is redone
    build_demo_models(tmp_path, tok, public, **kwargs)
    assert (paths["teacher"] / "model.safetensors").stat().st_mtime_ns == weights["teacher"]
    assert (paths["student"] / "model.safetensors").stat().st_mtime_ns != weights["student"]

    build_demo_models(tmp_path, tok, public, **{**kwargs, "pretrain_steps": 3})  # other settings: redone
    assert json.loads((paths["teacher"] / COMPLETE).read_text())["settings"]["pretrain_steps"] == 3


def test_users_write_one_to_forty_reviews_and_each_canary_has_its_own(demo):
    """The user column of user-level DP: skewed activity, disjoint users per split, one user per canary."""
    train = demo.dataset["train"]
    per_user = Counter(train["user_id"])
    sizes = sorted(per_user.values())
    assert sizes[0] == 1 and sizes[-1] <= 40 and sizes[-1] >= 10  # a few prolific users
    assert len(per_user) < len(train) / 2  # on average several rows per user
    for i, canary in enumerate(demo.canaries):
        rows = [r for r in train if r["user_id"] == f"train-canary-{i}"]
        assert len(rows) == canary["repeats"] and {r["text"] for r in rows} == {canary["text"]}
    users = {s: set(demo.dataset[s]["user_id"]) for s in ("train", "validation", "test")}
    assert not users["train"] & users["test"] and not users["train"] & users["validation"]


def test_the_word_lists_are_package_data():
    """demo_words.json ships in the wheel (pyproject's package-data) and loads through importlib.resources."""
    import tomllib
    from fnmatch import fnmatch
    from importlib import resources
    from pathlib import Path

    from hf_dpkd.data import demo as demo_module

    words = resources.files("hf_dpkd.data").joinpath(demo_module.WORDS_FILE)
    assert words.is_file()
    assert [c.name for c in PRIVATE_CATEGORIES] == [
        c["name"] for c in json.loads(words.read_text())["private_categories"]
    ]
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["hf_dpkd"]
    assert any(fnmatch(f"data/{demo_module.WORDS_FILE}", g) for g in globs), globs
