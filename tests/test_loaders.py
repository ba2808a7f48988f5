"""Private-dataset loaders on small local files with the real schemas, and their errors.

The Hub code paths are exercised offline by standing local `datasets` objects with the Hub datasets'
features (ClassLabel names, columns, configs) in for the download.
"""

import json

import pandas as pd
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

from hf_dpkd.data import loaders
from hf_dpkd.data.loaders import (
    CPC_SECTIONS,
    DBPEDIA_CLASSES,
    YELP_CATEGORIES,
    declared_domain,
    known_dataset_names,
    load_private_dataset,
)


def _rows(n=30):
    return [
        {"business_category": f"Cat{i % 3}", "stars": 1 + i % 5, "text": f"review number {i}", "id": i}
        for i in range(n)
    ]


def _write(frame: pd.DataFrame, path):
    suffix = path.suffix
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    elif suffix == ".json":
        path.write_text(json.dumps(frame.to_dict(orient="records")))
    else:
        frame.to_parquet(path)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".json", ".parquet"])
def test_local_files_load_with_control_columns(tmp_path, suffix):
    path = tmp_path / f"reviews{suffix}"
    _write(pd.DataFrame(_rows()), path)
    ds, fields = load_private_dataset(str(path), control_columns=["business_category", "stars"], test_size=5)
    assert set(ds) == {"train", "test"} and (len(ds["train"]), len(ds["test"])) == (27, 3)
    assert ds["train"].column_names == ["business_category", "stars", "text"]
    assert fields == [("business_category", "Business Category"), ("stars", "Stars")]
    row = ds["train"][0]
    assert isinstance(row["stars"], str) and row["stars"] in {"1", "2", "3", "4", "5"}
    all_texts = sorted(list(ds["train"]["text"]) + list(ds["test"]["text"]))
    assert all_texts == sorted(r["text"] for r in _rows())
    again, _ = load_private_dataset(str(path), control_columns=["business_category", "stars"], test_size=5)
    assert list(again["test"]["text"]) == list(ds["test"]["text"])  # the held-out split is seeded


def test_yue_et_al_yelp_folder(tmp_path):
    """train.csv / dev.csv / test.csv with text, label1 ("Business Category: X"), label2 ("Review Stars: Y")."""
    for split, n in (("train", 12), ("dev", 3), ("test", 4)):
        frame = pd.DataFrame(
            {
                "text": [f"{split} review {i}, with a comma" for i in range(n)],
                "label1": [f"Business Category: {['Restaurants', 'Beauty & Spas'][i % 2]}" for i in range(n)],
                "label2": [f"Review Stars: {1 + i % 5}.0" for i in range(n)],
            }
        )
        frame.to_csv(tmp_path / f"{split}.csv", index=False)
    ds, fields = load_private_dataset(str(tmp_path))
    assert {k: len(v) for k, v in ds.items()} == {"train": 12, "validation": 3, "test": 4}
    assert fields == [("label1", "Business Category"), ("label2", "Review Stars")]
    assert ds["train"][1] == {
        "label1": "Beauty & Spas",
        "label2": "2.0",
        "text": "train review 1, with a comma",
    }
    only_test, _ = load_private_dataset(str(tmp_path), split="test")
    assert list(only_test) == ["test"] and len(only_test["test"]) == 4
    # The prompts the pipeline builds from these fields parse back (no stray "Label: " in the values).
    from hf_dpkd.synthetic.control_codes import ControlCodeFormat

    fmt = ControlCodeFormat(fields=fields)
    assert fmt.parse_prompt(fmt.format_prompt(ds["test"][0])) == {"label1": "Restaurants", "label2": "1.0"}


def test_big_patent_and_dbpedia_local_schemas(tmp_path):
    patents = tmp_path / "patents.jsonl"
    patents.write_text(
        "\n".join(
            json.dumps({"cpc_section": "Physics", "abstract": f"a device {i}", "description": "long " * 20})
            for i in range(12)
        )
    )
    ds, fields = load_private_dataset(str(patents), text_column="abstract", control_columns=["cpc_section"])
    assert ds["train"].column_names == ["cpc_section", "text"] and ds["train"][0]["text"].startswith(
        "a device"
    )
    assert fields == [("cpc_section", "Cpc Section")]
    dbpedia = tmp_path / "dbpedia.csv"
    pd.DataFrame(
        {
            "label": ["Company", "Artist"] * 5,
            "title": ["t"] * 10,
            "content": [f"abstract {i}" for i in range(10)],
        }
    ).to_csv(dbpedia, index=False)
    ds, fields = load_private_dataset(
        str(dbpedia), text_column="content", control_columns=["label"], control_labels=["Category"]
    )
    assert fields == [("label", "Category")] and set(list(ds["train"]["label"])) <= {"Company", "Artist"}


def _fake_hub(monkeypatch, builder):
    calls = []

    def fake_load_dataset(path, name=None, **kwargs):
        calls.append((path, name))
        return builder(path, name)

    monkeypatch.setattr(loaders, "load_dataset", fake_load_dataset)
    return calls


def test_hub_yelp_review_full_schema(monkeypatch):
    features = Features(
        {
            "label": ClassLabel(names=["1 star", "2 star", "3 stars", "4 stars", "5 stars"]),
            "text": Value("string"),
        }
    )

    def build(path, name):
        data = {"label": [0, 4, 2, 1], "text": ["bad", "great", "meh", "poor"]}
        return DatasetDict({s: Dataset.from_dict(data, features=features) for s in ("train", "test")})

    calls = _fake_hub(monkeypatch, build)
    ds, fields = load_private_dataset("yelp")
    assert calls == [("Yelp/yelp_review_full", None)]
    assert fields == [("stars", "Review Stars")]
    assert (
        list(ds["test"]["stars"]) == ["1.0", "5.0", "3.0", "2.0"] and list(ds["test"]["text"])[1] == "great"
    )


def test_hub_dbpedia_schema(monkeypatch):
    names = ["Company", "EducationalInstitution", "Artist"]
    features = Features(
        {"label": ClassLabel(names=names), "title": Value("string"), "content": Value("string")}
    )

    def build(path, name):
        data = {"label": [2, 0, 1], "title": ["a", "b", "c"], "content": ["x y", "z w", "u v"]}
        return DatasetDict({s: Dataset.from_dict(data, features=features) for s in ("train", "test")})

    _fake_hub(monkeypatch, build)
    ds, fields = load_private_dataset("dbpedia_14")
    assert fields == [("category", "Category")]
    assert list(ds["train"]["category"]) == ["Artist", "Company", "EducationalInstitution"]
    assert list(ds["train"]["text"]) == ["x y", "z w", "u v"]


def test_hub_big_patent_sections(monkeypatch):
    def build(path, name):
        data = {"description": ["d"] * 2, "abstract": [f"{name} abstract {i}" for i in range(2)]}
        return DatasetDict({s: Dataset.from_dict(data) for s in ("train", "validation", "test")})

    calls = _fake_hub(monkeypatch, build)
    ds, fields = load_private_dataset("big_patent", hub_kwargs={"sections": ["g", "h"]})
    assert calls == [("NortheasternUniversity/big_patent", "g"), ("NortheasternUniversity/big_patent", "h")]
    assert fields == [("cpc_section", "Section")]
    assert list(ds["train"]["cpc_section"]) == [CPC_SECTIONS["g"]] * 2 + [CPC_SECTIONS["h"]] * 2
    assert list(ds["train"]["text"])[2] == "h abstract 0" and len(ds["validation"]) == 4


def test_hub_names_fail_offline_with_the_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        RuntimeError, match=r"loads 'fancyzhx/dbpedia_14' from the Hugging Face Hub.*local file"
    ):
        load_private_dataset("dbpedia")


def _csv(path, text="business_category,stars,text\nA,1.0,hello\nB,2.0,world\n"):
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "setup,kwargs,exc,match",
    [
        (
            None,
            {"control_columns": ["stars"]},
            FileNotFoundError,
            r"not a known name \(demo, big_patent, dbpedia",
        ),
        (
            "rows",
            {"control_columns": ["stars", "city"]},
            ValueError,
            r"lacks column\(s\) \['city'\]; its columns are",
        ),
        ("rows", {}, ValueError, r"pass control_columns \(--control_columns a,b\)"),
        (
            "rows",
            {"control_columns": ["stars"], "text_column": "body"},
            ValueError,
            r"lacks column\(s\) \['body'\]",
        ),
        ("notext", {"control_columns": ["stars"]}, ValueError, r"has no 'text' column .*pass text_column"),
        (
            "latin1",
            {"control_columns": ["stars"]},
            ValueError,
            r"not UTF-8 text \(bad byte at offset \d+\); re-encode",
        ),
        ("txt", {"control_columns": ["stars"]}, ValueError, r"unsupported file type '.txt'"),
        ("header", {"control_columns": ["stars"]}, ValueError, r"is empty"),
        (
            "blank",
            {"control_columns": ["stars"]},
            ValueError,
            r"column 'stars' is empty in 1 row\(s\) \(first: row 1\)",
        ),
        (
            "rows",
            {"control_columns": ["stars"], "split": "validation"},
            ValueError,
            r"split='validation' is not in",
        ),
        (
            "rows",
            {"control_columns": ["stars"], "control_labels": ["A", "B"]},
            ValueError,
            r"one label per control column",
        ),
        ("folder", {"control_columns": ["stars"]}, ValueError, r"folder without a train file"),
        ("badjson", {"control_columns": ["stars"]}, ValueError, r"could not be read as json .*valid csv"),
        ("zero", {"control_columns": ["stars"]}, ValueError, r"could not be read as csv"),
    ],
)
def test_bad_datasets_are_named(tmp_path, setup, kwargs, exc, match):
    path = tmp_path / "data.csv"
    if setup == "rows":
        _csv(path)
    elif setup == "notext":
        _csv(path, "stars,body\n1.0,hello\n2.0,world\n")
    elif setup == "txt":
        path = _csv(tmp_path / "data.txt")
    elif setup == "latin1":
        path.write_bytes(
            "business_category,stars,text\nCaf\xe9,1.0,cr\xe8me br\xfbl\xe9e\n".encode("latin-1")
        )
    elif setup == "header":
        _csv(path, "business_category,stars,text\n")
    elif setup == "blank":
        _csv(path, "business_category,stars,text\nA,1.0,hello\nB,,world\nC,3.0,again\n")
    elif setup == "badjson":
        path = tmp_path / "data.json"
        path.write_text("{not json")
    elif setup == "zero":
        path.write_text("")
    elif setup == "folder":
        path = tmp_path / "folder"
        path.mkdir()
        _csv(path / "test.csv")
    with pytest.raises(exc, match=match):
        load_private_dataset(str(path), **kwargs)


def test_known_names_listed():
    assert known_dataset_names() == [
        "demo",
        "big_patent",
        "dbpedia",
        "dbpedia_14",
        "yelp",
        "yelp_review_full",
    ]


def test_known_datasets_declare_their_public_control_code_domain(monkeypatch, tmp_path):
    """The values each control field can take, from the dataset's schema, never from its records."""
    stars = ["1.0", "2.0", "3.0", "4.0", "5.0"]
    assert declared_domain("yelp", [("stars", "Review Stars")]) == {"stars": stars}
    assert declared_domain("yelp_review_full", [("stars", "Review Stars")]) == {"stars": stars}
    patents = declared_domain("big_patent", [("cpc_section", "Section")])
    assert patents == {"cpc_section": list(CPC_SECTIONS.values())} and len(patents["cpc_section"]) == 9
    assert "Human Necessities" in patents["cpc_section"]
    assert declared_domain(
        "big_patent", [("cpc_section", "Section")], hub_kwargs={"sections": ["g", "h"]}
    ) == {"cpc_section": ["Physics", "Electricity"]}
    dbpedia = declared_domain("dbpedia", [("category", "Category")])
    assert dbpedia == {"category": list(DBPEDIA_CLASSES)} and len(dbpedia["category"]) == 14
    # Yue et al.'s Yelp folder: ten business categories and five star ratings, as the loader writes them
    yue = declared_domain("data/yelp", [("label1", "Business Category"), ("label2", "Review Stars")])
    assert yue == {"label1": list(YELP_CATEGORIES), "label2": stars} and len(YELP_CATEGORIES) == 10
    assert {"Restaurants", "Beauty & Spas"} <= set(YELP_CATEGORIES)
    # a local dataset the loaders know nothing about declares nothing (a column of another name neither)
    assert declared_domain("reviews.csv", [("city", "City"), ("stars", "Stars")]) == {}
    assert declared_domain("dbpedia", [("label", "Label")]) == {}

    # the values the loaders produce lie in the declared domain
    for split, n in (("train", 6), ("test", 2)):
        pd.DataFrame(
            {
                "text": [f"review {i}" for i in range(n)],
                "label1": [f"Business Category: {YELP_CATEGORIES[i]}" for i in range(n)],
                "label2": [f"Review Stars: {1 + i % 5}.0" for i in range(n)],
            }
        ).to_csv(tmp_path / f"{split}.csv", index=False)
    ds, fields = load_private_dataset(str(tmp_path))
    domain = declared_domain(str(tmp_path), fields)
    for column in ("label1", "label2"):
        assert set(ds["train"][column]) <= set(domain[column])
    # a Hub schema stood in offline (load_dataset patched: after the local files)
    features = Features({"label": ClassLabel(names=list(DBPEDIA_CLASSES)), "content": Value("string")})
    data = {"label": [0, 13, 5], "content": ["a", "b", "c"]}
    _fake_hub(
        monkeypatch,
        lambda path, name: DatasetDict(
            {s: Dataset.from_dict(data, features=features) for s in ("train", "test")}
        ),
    )
    ds, fields = load_private_dataset("dbpedia")
    assert set(ds["train"]["category"]) <= set(declared_domain("dbpedia", fields)["category"])
