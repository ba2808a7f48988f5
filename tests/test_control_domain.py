"""The control-code domain in the pipeline: declared public by the loaders or by --control_domain, else read
off the private data and recorded as a NON-private release, in every mode; `exact` is recorded the same way.
A non-private release in the histogram stage's ledger makes every epsilon that composes it infinite: the
teacher's, the synthetic data's, the students' on the synthetic data, in results.json / results.md and on
every card.

The runs use a tiny local csv dataset and a tiny GPT-2 (the embedded demo declares its domain itself).
"""

import json
import math
from pathlib import Path

import pytest

from hf_dpkd.hub import card_epsilon
from hf_dpkd.privacy.accounting import PrivacyLedger
from hf_dpkd.run_config import parse_run_config
from tests.hub_server import HubServer, hub_fixture  # noqa: F401  (the `hub` fixture)

CATEGORIES = ("Bars", "Gyms")
STARS = ("1.0", "2.0", "3.0")
#: Declared public: "Dentists", "4.0" and "5.0" are not in the data.
DOMAIN = "category=Bars|Gyms|Dentists;stars=1.0|2.0|3.0|4.0|5.0"
INF = float("inf")


def _texts(split: str, n: int) -> list[tuple[str, str, str]]:
    return [
        (CATEGORIES[i % 2], STARS[i % 3], f"a tiny review number {i} of the {split} split") for i in range(n)
    ]


def _dataset(tmp: Path, n_train: int = 40, n_test: int = 8) -> str:
    folder = tmp / "private"
    folder.mkdir(exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        rows = ["category,stars,text"] + [",".join(r) for r in _texts(split, n)]
        (folder / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return str(folder)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    """A 1-layer GPT-2 with a byte-level BPE trained on public text in the prompt format."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from hf_dpkd.data.models import train_demo_tokenizer

    folder = tmp_path_factory.mktemp("tiny") / "model"
    public = [f"Category: {c}\tStars: {s}\n\n{t}" for c, s, t in _texts("public", 60)]
    tokenizer = train_demo_tokenizer(public, vocab_size=300)
    config = GPT2Config(
        n_layer=1,
        n_embd=32,
        n_head=2,
        vocab_size=len(tokenizer),
        n_positions=128,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def _pipeline(tmp: Path, model: str, *argv: str, dataset: str | None = None):
    from hf_dpkd.pipeline import Pipeline

    config = parse_run_config(
        [
            "--quick",
            "--run_dir",
            str(tmp / "run"),
            *(
                ["--dataset", dataset]
                if dataset
                else ["--dataset", _dataset(tmp), "--control_columns", "category,stars"]
            ),
            "--teacher_model",
            model,
            "--student_model",
            model,
            "--methods",
            "distildp",
            "--teacher_batch_size",
            "8",
            "--max_physical_batch_size",
            "8",
            "--max_length",
            "48",
            "--num_synthetic_samples",
            "8",
            "--generation_batch_size",
            "8",
            "--generation_max_length",
            "40",
            "--student_batch_size",
            "8",
            *argv,
        ]
    )
    return Pipeline(config)


def _histogram(tmp: Path, model: str, *argv: str, **kwargs) -> tuple[PrivacyLedger, dict]:
    """Run the data and histogram stages: (the histogram stage's ledger, its control_codes.json)."""
    _pipeline(tmp, model, "--stages", "data,histogram", *argv, **kwargs).run_stages()
    out = tmp / "run" / "histogram"
    return PrivacyLedger.load(out), json.loads((out / "control_codes.json").read_text())


@pytest.mark.parametrize("mode", ["dp", "uniform"])
def test_declared_domain_is_used_and_costs_nothing_beyond_the_dp_histogram(tmp_path, tiny_model, mode):
    ledger, codes = _histogram(
        tmp_path, tiny_model, "--control_code_distribution", mode, "--control_domain", DOMAIN
    )
    assert ledger.non_private_releases == []
    assert [r.name for r in ledger.releases] == (["control_code_histogram"] if mode == "dp" else [])
    assert math.isfinite(ledger.epsilon()) if ledger.releases else True
    # the codes are the declared cross product, including values no record holds
    assert len(codes["codes"]) == 3 * 5 and ["Dentists", "5.0"] in codes["codes"]
    assert not codes["meta"].get("domain_from_private_data")
    info = json.loads((tmp_path / "run" / "data" / "info.json").read_text())
    assert info["domain_source"] == {"category": "--control_domain", "stars": "--control_domain"}


@pytest.mark.parametrize("mode", ["dp", "uniform", "exact"])
def test_domain_read_off_a_local_dataset_is_recorded_in_every_mode(tmp_path, tiny_model, mode, capsys):
    ledger, codes = _histogram(tmp_path, tiny_model, "--control_code_distribution", mode)
    names = [r.name for r in ledger.non_private_releases]
    expected = ["control_code_domain"] + (["control_code_histogram_exact"] if mode == "exact" else [])
    assert names == expected
    domain = ledger.get("control_code_domain")
    assert domain.meta["columns"] == ["category", "stars"]
    assert domain.meta["reason"] == "the set of control-code values was read off the private training data"
    assert ledger.epsilon() == INF
    assert json.loads((tmp_path / "run" / "stages" / "histogram.json").read_text())["epsilon_so_far"] == INF
    assert codes["meta"]["domain_from_private_data"] is True
    out = capsys.readouterr().out
    assert "WARNING: The control-code values of ['category', 'stars'] are read off the PRIVATE" in out
    assert "INFINITE" in out and "--control_domain" in out


def test_partial_control_domain_records_only_the_columns_read_off(tmp_path, tiny_model):
    ledger, codes = _histogram(
        tmp_path,
        tiny_model,
        "--control_code_distribution",
        "uniform",
        "--control_domain",
        "stars=1.0|2.0|3.0|4.0",
    )
    assert [r.name for r in ledger.non_private_releases] == ["control_code_domain"]
    assert ledger.get("control_code_domain").meta["columns"] == ["category"]
    assert len(codes["codes"]) == 2 * 4


def test_known_dataset_domain_comes_from_the_loader(tmp_path, tiny_model, monkeypatch):
    """DBpedia-14 (its Hub schema stood in offline): the 14 classes, also those no record holds; free."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    from hf_dpkd.data import loaders

    features = Features(
        {"label": ClassLabel(names=list(loaders.DBPEDIA_CLASSES)), "content": Value("string")}
    )
    data = {"label": [0, 2, 2, 5, 0, 13], "content": [f"an abstract number {i}" for i in range(6)]}
    monkeypatch.setattr(
        loaders,
        "load_dataset",
        lambda path, name=None, **kw: DatasetDict(
            {s: Dataset.from_dict(data, features=features) for s in ("train", "test")}
        ),
    )
    ledger, codes = _histogram(
        tmp_path, tiny_model, "--control_code_distribution", "uniform", dataset="dbpedia"
    )
    assert ledger.releases == []
    assert sorted(c[0] for c in codes["codes"]) == sorted(loaders.DBPEDIA_CLASSES)


@pytest.mark.parametrize(
    "domain,stages,match",
    [
        # a value of the data outside the declared domain: the fix is named
        (
            "category=Bars;stars=1.0|2.0|3.0",
            "data,histogram",
            r"control column 'category' .* outside its declared",
        ),
        (
            "city=Paris;stars=1.0",
            "data",
            r"--control_domain names column\(s\) \['city'\] that are not control-code",
        ),
        ("category=Bars\tGyms;stars=1.0", "data", r"--control_domain: .*separator"),
    ],
)
def test_control_domain_errors_name_the_argument(tmp_path, tiny_model, domain, stages, match):
    pipeline = _pipeline(tmp_path, tiny_model, "--stages", stages, "--control_domain", domain)
    with pytest.raises(ValueError, match=match) as error:
        pipeline.run_stages()
    assert "--control_domain" in str(error.value)


@pytest.mark.parametrize(
    "argv,non_private",
    [
        ([], "control_code_domain"),  # a local dataset, no --control_domain: the domain is read off
        (
            ["--control_code_distribution", "exact", "--control_domain", DOMAIN],
            "control_code_histogram_exact",
        ),
    ],
    ids=["domain_read_off", "exact"],
)
def test_non_private_histogram_stage_makes_every_dependent_epsilon_infinite(
    tmp_path, tiny_model, argv, non_private, hub: HubServer
):
    run = tmp_path / "run"
    stages = "data,histogram,teacher,generate,students,evaluate,push"
    pushes = ["--push_teacher", "demo-user/teacher", "--push_student", "demo-user/student"]
    _pipeline(
        tmp_path, tiny_model, "--stages", stages, *pushes, "--push_synthetic", "demo-user/synth", *argv
    ).run_stages()
    histogram = PrivacyLedger.load(run / "histogram")
    assert [r.name for r in histogram.non_private_releases] == [non_private]
    for folder in ("teacher/final", "synthetic", "students/distildp/final"):
        ledger = PrivacyLedger.load(run / folder)
        assert non_private in [r.name for r in ledger.non_private_releases], folder
        assert ledger.epsilon() == INF, folder
    # DP-SGD itself still ran with noise calibrated over the DP releases
    teacher_sgd = PrivacyLedger.load(run / "teacher" / "final").get("teacher_dp_sgd")
    assert teacher_sgd is not None and teacher_sgd.noise_multiplier > 0
    rows = {r["method"]: r for r in json.loads((run / "results.json").read_text())["rows"]}
    assert set(rows) == {"teacher", "distildp", "public_teacher", "public_student"}
    assert rows["teacher"]["epsilon"] == INF and rows["distildp"]["epsilon"] == INF
    assert rows["public_teacher"]["epsilon"] == rows["public_student"]["epsilon"] == 0.0
    table = (run / "results.md").read_text()
    assert table.count("| inf (not private) |") == 2, table
    for card in ("synthetic/README.md", "teacher/final/README.md", "students/distildp/final/README.md"):
        text = (run / card).read_text()
        assert card_epsilon(run / card) == INF, card
        assert "NOT differentially private" in text and non_private in text, card
