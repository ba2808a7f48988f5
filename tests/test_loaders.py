"""Local private datasets with the schemas of the known ones, and their errors."""

import json

import pytest

from hf_dpkd.data.loaders import load_private_dataset


def _rows(n=30):
    return [
        {"business_category": f"Cat{i % 3}", "stars": f"{1 + i % 5}.0", "text": f"review number {i}"}
        for i in range(n)
    ]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".json", ".parquet"])
def test_local_files_load_with_control_columns(tmp_path, suffix):
    import pandas as pd

    path = tmp_path / f"yelp{suffix}"
    frame = pd.DataFrame(_rows())
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    elif suffix == ".json":
        path.write_text(json.dumps(_rows()))
    else:
        frame.to_parquet(path)
    ds, fields = load_private_dataset(str(path), control_columns=["business_category", "stars"])
    assert set(ds) == {"train", "test"} and len(ds["train"]) + len(ds["test"]) == 30
    assert ds["train"].column_names == ["business_category", "stars", "text"]
    assert fields == [("business_category", "Business Category"), ("stars", "Stars")]


def test_other_text_column(tmp_path):
    path = tmp_path / "patents.jsonl"
    path.write_text(
        "\n".join(json.dumps({"cpc_section": "Physics", "abstract": f"a device {i}"}) for i in range(12))
    )
    ds, _ = load_private_dataset(str(path), text_column="abstract", control_columns=["cpc_section"])
    assert ds["train"][0]["text"].startswith("a device")


@pytest.mark.parametrize(
    "setup,kwargs,exc,match",
    [
        (
            None,
            {"control_columns": ["stars"]},
            FileNotFoundError,
            r"no such file, and not a known name \(demo, yelp",
        ),
        (
            "rows",
            {"control_columns": ["stars", "city"]},
            ValueError,
            r"lacks column\(s\) \['city'\]; its columns are",
        ),
        ("rows", {}, ValueError, r"pass --control_columns"),
        (
            "rows",
            {"control_columns": ["stars"], "text_column": "body"},
            ValueError,
            r"lacks column\(s\) \['body'\]",
        ),
        ("latin1", {"control_columns": ["stars"]}, ValueError, r"not UTF-8 text; re-encode it as UTF-8"),
        ("txt", {"control_columns": ["stars"]}, ValueError, r"unsupported file type '.txt'"),
    ],
)
def test_bad_datasets_are_named(tmp_path, setup, kwargs, exc, match):
    path = tmp_path / ("data.txt" if setup == "txt" else "data.csv")
    if setup in ("rows", "txt"):
        path.write_text("business_category,stars,text\nA,1.0,hello\nB,2.0,world\n")
    elif setup == "latin1":
        path.write_bytes(
            "business_category,stars,text\nCaf\xe9,1.0,cr\xe8me br\xfbl\xe9e\n".encode("latin-1")
        )
    with pytest.raises(exc, match=match):
        load_private_dataset(str(path), **kwargs)
