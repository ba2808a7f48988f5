"""Private datasets with the schema the pipeline uses: control-code columns + `text`.

Known names load from the Hub (for users who have it) with their control fields; any local
csv/json/jsonl/parquet file with a text column and control columns works the same way.
"""

from __future__ import annotations

import codecs
from pathlib import Path

from datasets import ClassLabel, DatasetDict, load_dataset

# name -> (Hub id, config, text column, {control column: display label}, class-label columns to decode)
KNOWN = {
    "yelp": ("yelp_review_full", None, "text", {"stars": "Review Stars"}, ("label",)),
    "big_patent": ("big_patent", "all", "abstract", {"cpc_section": "Section"}, ()),
    "dbpedia": ("fancyzhx/dbpedia_14", None, "content", {"label": "Category"}, ("label",)),
}
CPC_SECTIONS = {
    "a": "Human Necessities",
    "b": "Performing Operations; Transporting",
    "c": "Chemistry; Metallurgy",
    "d": "Textiles; Paper",
    "e": "Fixed Constructions",
    "f": "Mechanical Engineering; Lighting; Heating; Weapons",
    "g": "Physics",
    "h": "Electricity",
    "y": "General Tagging of New Technological Developments",
}
FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def _check_utf8(path: Path, name: str) -> None:
    """Fail early, with the fix, on a text file that is not UTF-8 (the loaders would fail deep inside)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                decoder.decode(chunk)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise ValueError(f"dataset={name!r} is not UTF-8 text; re-encode it as UTF-8.") from None


def _split_if_needed(ds: DatasetDict, seed: int) -> DatasetDict:
    if "train" not in ds:
        raise ValueError(f"The dataset has no 'train' split (splits: {list(ds)}).")
    if "test" not in ds:
        parts = ds["train"].train_test_split(test_size=min(5000, max(1, len(ds["train"]) // 10)), seed=seed)
        ds = DatasetDict({**ds, "train": parts["train"], "test": parts["test"]})
    return ds


def load_private_dataset(
    name_or_path: str,
    *,
    text_column: str | None = None,
    control_columns: list[str] | None = None,
    seed: int = 0,
) -> tuple[DatasetDict, list[tuple[str, str]]]:
    """(DatasetDict with control columns + `text`, [(control column, label)]) for a known name or a local file."""
    if name_or_path in KNOWN:
        hub_id, config, default_text, controls, class_cols = KNOWN[name_or_path]
        ds = load_dataset(hub_id, config)
        for col in class_cols:
            feat = ds["train"].features[col]
            if isinstance(feat, ClassLabel):
                ds = ds.map(lambda b, f=feat, c=col: {c: [f.int2str(x) for x in b[c]]}, batched=True)
        if name_or_path == "yelp":
            ds = ds.map(lambda b: {"stars": [f"{int(x[0]) + 1}.0" for x in b["label"]]}, batched=True)
        if name_or_path == "big_patent" and "cpc_section" not in ds["train"].column_names:
            raise ValueError(
                "This big_patent copy has no cpc_section column; load it per section and add one."
            )
        text_column = text_column or default_text
        fields = (
            list(controls.items())
            if not control_columns
            else [(c, c.replace("_", " ").title()) for c in control_columns]
        )
    else:
        path = Path(name_or_path)
        if not path.exists():
            raise FileNotFoundError(
                f"dataset={name_or_path!r}: no such file, and not a known name ({', '.join(['demo', *KNOWN])})."
            )
        fmt = FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise ValueError(
                f"dataset={name_or_path!r}: unsupported file type {path.suffix!r}; use {sorted(FORMATS)}."
            )
        if fmt in ("csv", "json"):
            _check_utf8(path, name_or_path)
        ds = load_dataset(fmt, data_files={"train": str(path)})
        text_column = text_column or "text"
        if not control_columns:
            raise ValueError(
                f"dataset={name_or_path!r}: pass --control_columns (comma-separated control-code columns)."
            )
        fields = [(c, c.replace("_", " ").title()) for c in control_columns]
    columns = ds["train"].column_names
    missing = [c for c in [text_column, *[f[0] for f in fields]] if c not in columns]
    if missing:
        raise ValueError(f"dataset={name_or_path!r} lacks column(s) {missing}; its columns are {columns}.")
    if len(ds["train"]) == 0:
        raise ValueError(f"dataset={name_or_path!r} has an empty training split.")
    keep = [f[0] for f in fields]
    ds = ds.map(lambda b: {"text": b[text_column]}, batched=True) if text_column != "text" else ds
    ds = DatasetDict({k: v.select_columns([*keep, "text"]) for k, v in ds.items()})
    ds = ds.map(lambda b: {c: [str(x) for x in b[c]] for c in keep}, batched=True)
    return _split_if_needed(ds, seed), fields
