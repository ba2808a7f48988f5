"""Private datasets in the schema the pipeline uses: control-code columns (strings) + ``text``.

Known names load from the Hugging Face Hub (for users who have it):

- ``yelp`` / ``yelp_review_full``: ``Yelp/yelp_review_full`` (train/test), stars only, as "1.0".."5.0".
- ``big_patent``: ``NortheasternUniversity/big_patent``, one config per CPC section (a..h, y); the section
  name is the control code (``cpc_section``), the abstract the text.
- ``dbpedia`` / ``dbpedia_14``: ``fancyzhx/dbpedia_14``; the class name is the control code.

Local files or folders (csv / json / jsonl / parquet) work the same way with user-named columns. The
DistilDP Yelp data (Yue et al. 2023: ``train.csv``, ``dev.csv``, ``test.csv`` with columns ``text``,
``label1`` = "Business Category: Restaurants", ``label2`` = "Review Stars: 5.0") is read by pointing at
its folder: label columns are found by name (every column with "label" in it, as in that release) and a
shared "<Label>: " prefix in a column's values becomes the field's display label.

Each known dataset declares the PUBLIC domain of its control codes (:func:`declared_domain`): the values
a field can take, known without looking at the private records (Yelp's five star ratings and the ten
business categories of Yue et al.'s release, the nine CPC section names, the fourteen DBpedia classes).
The pipeline builds its control-code distribution over that domain; for other data the user declares it
(``--control_domain``), or it is read off the private data and recorded as a NON-private release.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datasets import ClassLabel, Dataset, DatasetDict, concatenate_datasets, load_dataset

from hf_dpkd.data.known_datasets import (  # noqa: F401  (re-exported: the names users import from here)
    ALIASES,
    CPC_SECTIONS,
    DBPEDIA_CLASSES,
    KNOWN_DATASETS,
    YELP_CATEGORIES,
    YELP_STARS,
    YUE_YELP_FIELDS,
    KnownDataset,
    declared_domain,
    known_dataset_names,
)

FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
#: File stems recognised as splits inside a dataset folder.
SPLIT_NAMES = {
    "train": "train",
    "validation": "validation",
    "val": "validation",
    "dev": "validation",
    "test": "test",
}


def _label_of(column: str) -> str:
    return column.replace("_", " ").strip().title()


def _check_utf8(path: Path) -> None:
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as e:
                raise ValueError(
                    f"dataset file {str(path)!r} is not UTF-8 text (bad byte at offset {offset + e.start}); "
                    "re-encode it as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)."
                ) from None
            offset += len(chunk)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise ValueError(
                f"dataset file {str(path)!r} is not UTF-8 text (truncated character at the end); "
                "re-encode it as UTF-8."
            ) from None


def _local_files(path: Path) -> dict[str, Path]:
    """split -> file, for a single file (all in train) or a folder of split files."""
    if path.is_file():
        if path.suffix.lower() not in FORMATS:
            raise ValueError(
                f"dataset={str(path)!r}: unsupported file type {path.suffix!r}; use one of {sorted(FORMATS)}."
            )
        return {"train": path}
    files: dict[str, Path] = {}
    for child in sorted(path.iterdir()):
        split = SPLIT_NAMES.get(child.stem.lower())
        if split and child.suffix.lower() in FORMATS and child.is_file():
            if split in files:
                raise ValueError(
                    f"dataset={str(path)!r} holds two files for split {split!r}: {files[split].name} and "
                    f"{child.name}; keep one."
                )
            files[split] = child
    if "train" not in files:
        raise ValueError(
            f"dataset={str(path)!r} is a folder without a train file; expected train.(csv|json|jsonl|parquet) "
            "and optionally validation/val/dev and test files."
        )
    return files


def _load_local(path: Path) -> DatasetDict:
    files = _local_files(path)
    kinds = {FORMATS[f.suffix.lower()] for f in files.values()}
    if len(kinds) != 1:
        raise ValueError(
            f"dataset={str(path)!r} mixes file types {sorted(kinds)}; use one format for all splits."
        )
    for f in files.values():
        if f.suffix.lower() != ".parquet":
            _check_utf8(f)
    data_files = {split: str(f) for split, f in files.items()}
    kind = kinds.pop()
    try:
        return load_dataset(kind, data_files=data_files)
    except ValueError as e:
        if "corresponds to no data" in str(e):
            raise ValueError(
                f"dataset={str(path)!r} is empty (a split file has no rows: {e}); add rows or remove that file."
            ) from None
        raise
    except Exception as e:  # parse errors surface as DatasetGenerationError / ArrowInvalid deep inside
        if type(e).__name__ in ("DatasetGenerationError", "ArrowInvalid", "EmptyDataError"):
            raise ValueError(
                f"dataset={str(path)!r} could not be read as {kind} ({type(e).__name__}: {e}); check "
                "that each file is valid csv (with a header row) / json / jsonl / parquet."
            ) from e
        raise


def _load_hub(name: str, spec: KnownDataset, hub_kwargs: dict[str, Any]) -> DatasetDict:
    try:
        if name == "big_patent":
            sections = hub_kwargs.pop("sections", list(CPC_SECTIONS))
            parts: dict[str, list[Dataset]] = {}
            for section in sections:
                if section not in CPC_SECTIONS:
                    raise ValueError(
                        f"sections={sections!r}: {section!r} is not a CPC section {list(CPC_SECTIONS)}."
                    )
                ds = load_dataset(spec.hub_id, section, **hub_kwargs)
                for split, d in ds.items():
                    d = d.add_column("cpc_section", [CPC_SECTIONS[section]] * len(d))
                    parts.setdefault(split, []).append(d)
            return DatasetDict({k: concatenate_datasets(v) for k, v in parts.items()})
        ds = load_dataset(spec.hub_id, **hub_kwargs)
    except (ConnectionError, OSError) as e:
        raise RuntimeError(
            f"dataset={name!r} loads {spec.hub_id!r} from the Hugging Face Hub and that failed ({e}); check the "
            "network / HF_HUB_OFFLINE, or download it and pass the local file or folder instead."
        ) from e
    label = ds["train"].features.get("label")
    if not isinstance(label, ClassLabel):
        raise ValueError(
            f"{spec.hub_id!r} has no ClassLabel 'label' column (features: {ds['train'].features})."
        )
    if name == "yelp_review_full":
        # ClassLabel 0..4 = 1..5 stars; written like the Yelp CSV of Yue et al. ("5.0").
        return ds.map(lambda b: {"stars": [f"{i + 1}.0" for i in b["label"]]}, batched=True)
    return ds.map(lambda b: {"category": [label.int2str(i) for i in b["label"]]}, batched=True)


def _joined_prompt_completion(ds: DatasetDict) -> DatasetDict:
    """trl's prompt/completion rows as one ``text`` each (prompt + completion, joined as trl joins them).

    The pipeline's teacher learns whole records from their control codes and generates whole synthetic records:
    the private prompts cannot be given to the generator, so they are part of the text the teacher learns (the
    completion-only loss of this format applies to DPTrainer, which trains on given prompts).
    """
    return DatasetDict(
        {
            k: v.map(
                lambda b: {"text": [str(p) + str(c) for p, c in zip(b["prompt"], b["completion"])]},
                batched=True,
                remove_columns=["prompt", "completion"],
            )
            for k, v in ds.items()
        }
    )


def _strip_label_prefix(ds: DatasetDict, column: str) -> str | None:
    """If every value of `column` is "<Label>: value" with one shared Label, strip it and return Label."""
    prefixes = set()
    for split in ds.values():
        for v in split.unique(column):
            head, sep, _ = str(v).partition(": ")
            if not sep:
                return None
            prefixes.add(head)
            if len(prefixes) > 1:
                return None
    if not prefixes:
        return None
    label = prefixes.pop()
    cut = len(label) + 2
    for split in list(ds):
        ds[split] = ds[split].map(lambda b: {column: [str(v)[cut:] for v in b[column]]}, batched=True)
    return label


def _split_if_needed(ds: DatasetDict, seed: int, test_size: int) -> DatasetDict:
    if "test" in ds:
        return ds
    n = len(ds["train"])
    if n < 2:
        raise ValueError(f"The dataset has {n} training example(s) and no test split; it needs at least 2.")
    parts = ds["train"].train_test_split(test_size=min(test_size, max(1, n // 10)), seed=seed)
    return DatasetDict({**ds, "train": parts["train"], "test": parts["test"]})


def load_private_dataset(
    name_or_path: str,
    *,
    text_column: str | None = None,
    control_columns: Sequence[str] | None = None,
    control_labels: Sequence[str] | None = None,
    split: str | None = None,
    seed: int = 0,
    test_size: int = 5000,
    hub_kwargs: dict[str, Any] | None = None,
    unit_column: str | None = None,
) -> tuple[DatasetDict, list[tuple[str, str]]]:
    """Load a private dataset as (DatasetDict of control columns + ``text``, [(control column, label)]).

    `name_or_path`: a known name (see :func:`known_dataset_names`) or a local file / folder. Control
    values become strings. Without a test split, ``min(test_size, 10%)`` of train is held out (seeded);
    `split` keeps only that split. `control_labels` name the fields in prompts (default: the column
    title-cased, or the "<Label>: " prefix shared by a column's values). `hub_kwargs` go to
    ``datasets.load_dataset`` (``sections=[...]`` picks Big Patent sections). `unit_column` (user-level DP)
    is kept next to them, as strings: the column naming each row's user.
    """
    name = ALIASES.get(name_or_path, name_or_path)
    if name in KNOWN_DATASETS:
        spec = KNOWN_DATASETS[name]
        ds = _load_hub(name, spec, dict(hub_kwargs or {}))
        text_column = text_column or spec.text_column
        if control_columns is None:
            control_columns = [c for c, _ in spec.fields]
            control_labels = control_labels or [label for _, label in spec.fields]
    else:
        path = Path(name_or_path)
        if not path.exists():
            raise FileNotFoundError(
                f"dataset={name_or_path!r}: no such file or folder, and not a known name "
                f"({', '.join(known_dataset_names())})."
            )
        ds = _load_local(path)
        columns = ds["train"].column_names
        if text_column is None:
            if "text" not in columns and {"prompt", "completion"} <= set(columns):
                ds = _joined_prompt_completion(ds)
                columns = ds["train"].column_names
            if "text" not in columns:
                raise ValueError(
                    f"dataset={name_or_path!r} has no 'text' column (columns: {columns}), nor 'prompt' and "
                    "'completion' columns (trl's format); pass text_column (--text_column) naming the column that "
                    "holds the text."
                )
            text_column = "text"
        if control_columns is None:
            control_columns = [c for c in columns if "label" in c.lower() and c != text_column]
            if not control_columns:
                raise ValueError(
                    f"dataset={name_or_path!r}: pass control_columns (--control_columns a,b) naming the "
                    f"control-code columns; none has 'label' in its name to guess from (columns: {columns})."
                )
    control_columns = list(control_columns)
    if not control_columns:
        raise ValueError("control_columns=[]: name at least one control-code column.")
    if control_labels is not None and len(control_labels) != len(control_columns):
        raise ValueError(
            f"control_labels={list(control_labels)} must have one label per control column {control_columns}."
        )
    if split is not None:
        if split not in ds:
            raise ValueError(f"split={split!r} is not in dataset={name_or_path!r} (splits: {list(ds)}).")
        ds = DatasetDict({split: ds[split]})
    first = next(iter(ds.values()))
    columns = first.column_names
    units = [unit_column] if unit_column else []
    missing = [c for c in [text_column, *control_columns, *units] if c not in columns]
    if missing:
        raise ValueError(
            f"dataset={name_or_path!r} lacks column(s) {missing}; its columns are {columns}. Pass "
            "text_column / control_columns that exist."
        )
    if "text" in control_columns:
        raise ValueError("control_columns must not include 'text' (the output text column).")
    if sum(len(d) for d in ds.values()) == 0 or ("train" in ds and len(ds["train"]) == 0):
        raise ValueError(
            f"dataset={name_or_path!r} is empty (splits: { {k: len(v) for k, v in ds.items()} })."
        )
    if unit_column in (text_column, *control_columns):
        raise ValueError(f"unit_column={unit_column!r} must not be the text or a control-code column.")
    keep = [*control_columns, text_column, *units]
    ds = DatasetDict({k: v.select_columns(keep) for k, v in ds.items()})
    for k, v in ds.items():
        for column in keep:
            bad = [i for i, x in enumerate(v[column]) if x is None or (isinstance(x, str) and not x.strip())]
            if bad:
                raise ValueError(
                    f"dataset={name_or_path!r} split {k!r}: column {column!r} is empty in {len(bad)} row(s) "
                    f"(first: row {bad[0]}); drop or fill those rows."
                )
    # New columns (then renamed): map would cast strings back to an existing column's int/float type.
    tmp = {c: f"__control_{i}" for i, c in enumerate(control_columns)}
    ds = ds.map(
        lambda b: {
            **{tmp[c]: [str(x).strip() for x in b[c]] for c in control_columns},
            "__text": [str(x) for x in b[text_column]],
            **({"__unit": [str(x).strip() for x in b[unit_column]]} if unit_column else {}),
        },
        batched=True,
        remove_columns=keep,
    )
    ds = ds.rename_columns(
        {
            **{v: k for k, v in tmp.items()},
            "__text": "text",
            **({"__unit": unit_column} if unit_column else {}),
        }
    )
    ds = DatasetDict({k: v.select_columns([*control_columns, "text", *units]) for k, v in ds.items()})
    labels = []
    for i, c in enumerate(control_columns):
        prefix = _strip_label_prefix(ds, c)  # "Review Stars: 5.0" -> "5.0" (a ": " would break prompts)
        labels.append(control_labels[i] if control_labels is not None else prefix or _label_of(c))
    if split is None:
        ds = _split_if_needed(ds, seed, test_size)
    return ds, list(zip(control_columns, labels))
