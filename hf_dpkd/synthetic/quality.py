"""How close synthetic text is to real text: the quality report written next to every generated dataset.

Distances to real held-out text (n-gram Jensen-Shannon divergence, length Wasserstein-1), diversity
(distinct-n, self-BLEU), fluency (perplexity of a reference model that never saw the private data) and
control-code fidelity (does the text read as the code it was generated for, according to a model's
conditional likelihood). Size-dependent numbers (distinct-n, self-BLEU, JS) are computed on equally
sized seeded samples of both sides, so the real column is the yardstick for the synthetic one.

PRIVACY: the real texts are private held-out text, so a report with a real side is computed from private
data and is NOT covered by the differential-privacy guarantee: it stays local (``quality.json`` and
``quality.md`` are never pushed) and enters a dataset card only when the user opts in.

The metrics live in :mod:`.quality_text_metrics` (counts: distances, diversity) and
:mod:`.quality_model_metrics` (a model's perplexity and control-code likelihoods); this module computes
the report from them, renders it (``quality.md``, the dataset card's section) and writes it. Every metric
is re-exported here, where users import it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hf_dpkd._io import atomic_write_text
from hf_dpkd.reporting import markdown_table
from hf_dpkd.synthetic.control_codes import ControlCodeFormat
from hf_dpkd.synthetic.quality_model_metrics import (
    conditional_log_likelihoods,
    control_code_fidelity,
    reference_perplexity,
)
from hf_dpkd.synthetic.quality_text_metrics import (
    Tokenize,
    distinct_n,
    length_distance,
    length_stats,
    ngram_js_divergence,
    sample_indices,
    self_bleu,
    text_lengths,
    wasserstein_1,
    whitespace_tokenize,
)

__all__ = [
    "JSON_FILE",
    "MARKDOWN_FILE",
    "PRIVACY_NOTE",
    "Tokenize",
    "conditional_log_likelihoods",
    "control_code_fidelity",
    "distinct_n",
    "length_distance",
    "length_stats",
    "ngram_js_divergence",
    "quality_markdown",
    "quality_report",
    "quality_summary",
    "reference_perplexity",
    "self_bleu",
    "text_lengths",
    "wasserstein_1",
    "whitespace_tokenize",
    "write_quality_report",
]

JSON_FILE = "quality.json"
MARKDOWN_FILE = "quality.md"
PRIVACY_NOTE = (
    "Computed against PRIVATE held-out text (the real side): these numbers are NOT covered by the "
    "differential-privacy guarantee. They are written locally and never pushed unless you opt in."
)


def _hf_tokenize(tokenizer, texts: Sequence[str]) -> Tokenize:
    """`tokenizer`'s token ids (no special tokens), computed once for `texts` in one batch call."""
    unique = list(dict.fromkeys(texts))
    ids = tokenizer(unique, add_special_tokens=False)["input_ids"] if unique else []
    cache = dict(zip(unique, (list(x) for x in ids)))

    def tokenize(text: str) -> list[int]:
        if text not in cache:
            cache[text] = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        return cache[text]

    return tokenize


def quality_report(
    synthetic_records: Sequence[Mapping[str, Any]],
    real_texts: Sequence[str] | None,
    tokenizer=None,
    *,
    reference_model=None,
    reference_tokenizer=None,
    fidelity_model=None,
    fmt: ControlCodeFormat | None = None,
    codes: Sequence[Sequence[str]] | None = None,
    max_records: int = 500,
    fidelity_records: int = 64,
    fidelity_text_tokens: int | None = 48,
    self_bleu_sample: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """Synthetic records (dicts with ``text`` and the control columns) measured against real held-out text.

    Tokens are `tokenizer`'s ids (whitespace words when None). Up to `max_records` texts of each side are
    drawn (seeded), the same number for both. Model-based metrics run only when their model is given:
    ``reference_perplexity`` (`reference_model`, with `reference_tokenizer`, default `tokenizer`) and
    ``control_code_fidelity`` (`fidelity_model` and `fmt`; `fidelity_records` texts, their first
    `fidelity_text_tokens` tokens). Self-BLEU uses at most `self_bleu_sample` texts per side (its cost and
    value grow with the number of references). `real_texts` None: synthetic-only numbers.
    PRIVATE: with real held-out text, the report is not covered by the guarantee (see the module doc).
    """
    if not isinstance(max_records, int) or max_records < 2:
        raise ValueError(f"max_records={max_records!r} must be an int >= 2 (texts drawn from each side).")
    if hasattr(synthetic_records, "column_names"):  # a datasets.Dataset: read the column at once
        texts = [str(t) for t in synthetic_records["text"]]
    else:
        texts = [str(r["text"]) for r in synthetic_records]
    real = [str(t) for t in real_texts] if real_texts is not None else []
    if len(texts) < 2:
        raise ValueError(f"synthetic_records has {len(texts)} records; the report needs at least 2.")
    if real_texts is not None and len(real) < 2:
        raise ValueError(
            f"real_texts has {len(real)} texts; pass at least 2 (or None for a synthetic-only report)."
        )
    k = min(len(texts), len(real) if real else len(texts), max_records)
    syn_sample = [texts[i] for i in sample_indices(len(texts), k, seed)]
    real_sample = [real[i] for i in sample_indices(len(real), k, seed + 1)] if real else []
    tokenize = (
        _hf_tokenize(tokenizer, syn_sample + real_sample) if tokenizer is not None else whitespace_tokenize
    )
    sides = {"synthetic": syn_sample, **({"real": real_sample} if real else {})}
    bleu_k = min(self_bleu_sample, k)

    def per_side(fn: Callable[[list[str]], Any]) -> dict[str, Any]:
        return {side: fn(sample) for side, sample in sides.items()}

    metrics: dict[str, Any] = {
        "length": per_side(lambda s: length_stats(s, tokenize)),
        "distinct_1": per_side(lambda s: distinct_n(s, 1, tokenize)),
        "distinct_2": per_side(lambda s: distinct_n(s, 2, tokenize)),
        "self_bleu": per_side(lambda s: self_bleu(s, 4, bleu_k, seed, tokenize)),
    }
    if real:
        metrics["unigram_js"] = ngram_js_divergence(syn_sample, real_sample, tokenize, 1)
        metrics["bigram_js"] = ngram_js_divergence(syn_sample, real_sample, tokenize, 2)
        metrics["length_wasserstein"] = length_distance(syn_sample, real_sample, tokenize)
    if reference_model is not None:
        ref_tok = reference_tokenizer or tokenizer
        if ref_tok is None:
            raise ValueError(
                "reference_model needs its tokenizer: pass reference_tokenizer= (or tokenizer=)."
            )
        metrics["reference_perplexity"] = per_side(
            lambda s: reference_perplexity(reference_model, ref_tok, s)
        )
    if fidelity_model is not None:
        if fmt is None or tokenizer is None:
            raise ValueError(
                "fidelity_model needs fmt= (the ControlCodeFormat) and tokenizer= (the model's)."
            )
        metrics["control_code_fidelity"] = control_code_fidelity(
            fidelity_model,
            tokenizer,
            fmt,
            synthetic_records,
            codes=codes,
            max_records=fidelity_records,
            max_text_tokens=fidelity_text_tokens,
            seed=seed,
        )
    return {
        "num_synthetic": len(texts),
        "num_real": len(real),
        "sample_size": k,
        "self_bleu_sample": bleu_k,
        "seed": seed,
        "tokens": getattr(tokenizer, "name_or_path", None)
        or ("tokenizer" if tokenizer else "whitespace words"),
        "uses_private_data": bool(real),
        "covered_by_guarantee": not real,
        "metrics": metrics,
    }


def quality_summary(report: Mapping[str, Any]) -> dict[str, float]:
    """A flat dict of the headline numbers (synthetic side; JS and length distance vs real)."""
    m = report["metrics"]
    out: dict[str, float] = {}
    for key in ("unigram_js", "bigram_js", "length_wasserstein"):
        if key in m:
            out[key] = m[key]
    out["distinct_2"] = m["distinct_2"]["synthetic"]
    out["self_bleu"] = m["self_bleu"]["synthetic"]
    if "reference_perplexity" in m:
        out["reference_perplexity"] = m["reference_perplexity"]["synthetic"]["perplexity"]
        if "real" in m["reference_perplexity"]:
            out["reference_perplexity_real"] = m["reference_perplexity"]["real"]["perplexity"]
    if "control_code_fidelity" in m:
        out["control_code_accuracy"] = m["control_code_fidelity"]["accuracy"]
        out["control_code_chance"] = m["control_code_fidelity"]["chance"]
    return out


def _num(x: Any) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.4g}" if math.isfinite(x) else str(x)
    return str(x)


def quality_markdown(report: Mapping[str, Any]) -> str:
    """A markdown table of the report: one row per metric, synthetic and real columns, which way is better."""
    m = report["metrics"]

    def side(d: Mapping[str, Any] | None, key: str, field: str | None = None) -> str:
        if not d or key not in d:
            return "–"
        return _num(d[key][field] if field else d[key])

    rows: list[tuple[str, str, str, str]] = []
    if "unigram_js" in m:
        rows += [
            (
                "unigram JS divergence",
                _num(m["unigram_js"]),
                "–",
                "lower (0: same word frequencies, 1: disjoint)",
            ),
            (
                "bigram JS divergence",
                _num(m["bigram_js"]),
                "–",
                "lower (0: same bigram frequencies, 1: disjoint)",
            ),
            (
                "length Wasserstein-1 (tokens)",
                _num(m["length_wasserstein"]),
                "–",
                "lower (tokens the lengths differ by)",
            ),
        ]
    length = m["length"]
    rows += [
        (
            "mean length (tokens)",
            side(length, "synthetic", "mean"),
            side(length, "real", "mean"),
            "closer to real",
        ),
        (
            "length std (tokens)",
            side(length, "synthetic", "std"),
            side(length, "real", "std"),
            "closer to real",
        ),
        (
            "distinct-1",
            side(m["distinct_1"], "synthetic"),
            side(m["distinct_1"], "real"),
            "closer to real (low: repetitive)",
        ),
        (
            "distinct-2",
            side(m["distinct_2"], "synthetic"),
            side(m["distinct_2"], "real"),
            "closer to real (low: repetitive)",
        ),
        (
            "self-BLEU-4",
            side(m["self_bleu"], "synthetic"),
            side(m["self_bleu"], "real"),
            "closer to real (high: texts alike)",
        ),
    ]
    if "reference_perplexity" in m:
        ppl = m["reference_perplexity"]
        rows.append(
            (
                "reference-model perplexity",
                side(ppl, "synthetic", "perplexity"),
                side(ppl, "real", "perplexity"),
                "closer to real (high: disfluent; far lower: generic or repetitive)",
            )
        )
    if "control_code_fidelity" in m:
        fid = m["control_code_fidelity"]
        rows.append(
            (
                "control-code accuracy",
                _num(fid["accuracy"]),
                f"chance {_num(fid['chance'])}",
                "higher (text reads as its code)",
            )
        )
        for column, acc in fid["field_accuracy"].items():
            rows.append((f"control-code accuracy: {column}", _num(acc), "–", "higher"))
        rows.append(
            (
                "control-code margin (nats/token)",
                _num(fid["mean_margin_per_token"]),
                "–",
                "higher (> 0: own code preferred)",
            )
        )
    lines = markdown_table(("metric", "synthetic", "real (held-out)", "better"), rows)
    head = (
        f"{report['num_synthetic']} synthetic texts vs {report['num_real']} real held-out texts; "
        f"{report['sample_size']} of each side drawn (seed {report['seed']}), self-BLEU on "
        f"{report['self_bleu_sample']}; tokens: `{report['tokens']}`."
        if report["num_real"]
        else f"{report['num_synthetic']} synthetic texts, {report['sample_size']} drawn (seed {report['seed']}); "
        "no real text compared."
    )
    if "control_code_fidelity" in m:
        fid = m["control_code_fidelity"]
        read = (
            "whole texts" if fid.get("max_text_tokens") is None else f"first {fid['max_text_tokens']} tokens"
        )
        head += (
            f" Control-code fidelity: {fid['num_records']} synthetic texts ({read}) scored under each of the "
            f"{fid['num_codes']} codes."
        )
    note = (
        f"> [!WARNING]\n> {PRIVACY_NOTE}"
        if report.get("uses_private_data", True)
        else "> No private text was read: every number is post-processing of the synthetic data."
    )
    return "\n".join([note, "", head, "", *lines, ""])


def write_quality_report(report: Mapping[str, Any], folder: str | Path) -> Path:
    """Write ``quality.json`` and ``quality.md`` into `folder` (atomically); returns the JSON path.

    Local files: not in any push pattern of the pipeline or the callback (they hold private-data statistics).
    """
    folder = Path(folder)
    path = atomic_write_text(folder / JSON_FILE, json.dumps(report, indent=2))
    atomic_write_text(folder / MARKDOWN_FILE, "# Synthetic data quality\n\n" + quality_markdown(report))
    return path
