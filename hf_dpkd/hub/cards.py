"""Model and dataset cards that state the privacy guarantee, and reading a card's epsilon back.

The bodies are the Jinja templates ``templates/model_card.md`` and ``templates/dataset_card.md`` (package data),
rendered by ``huggingface_hub``'s ``ModelCard.from_template`` / ``DatasetCard.from_template`` under YAML
metadata built with ``ModelCardData`` / ``DatasetCardData``; this module computes what they show.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from huggingface_hub import DatasetCard, DatasetCardData, EvalResult, ModelCard, ModelCardData, metadata_load
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id as _hf_validate_repo_id

from hf_dpkd._io import atomic_write_text
from hf_dpkd.hub.statement import (
    CARD_PRIVACY_KEY,
    DEFAULT_PRIVACY_UNIT,
    privacy_metadata,
    privacy_statement,
    template,
)
from hf_dpkd.peft_support import adapter_base as recorded_base
from hf_dpkd.peft_support import adapter_description, is_adapter_folder, usage_snippet
from hf_dpkd.privacy.accounting import PrivacyLedger
from hf_dpkd.reporting import markdown_table, significant

#: teacher/student: the DistilDP pipeline's models; dp_finetune: any model DPTrainer fine-tuned (a user's script).
MODEL_KINDS = ("teacher", "student", "dp_finetune")

# The body's epsilon row, checked against the metadata (a card edited by hand in one place only).
_EPSILON_ROW_RE = re.compile(r"^\|\s*epsilon \(ε\)\s*\|\s*`?([^|`]+?)`?\s*\|", re.MULTILINE)
_PLACEHOLDER_REPO = "YOUR_NAMESPACE/REPO_NAME"


def _is_hub_id(name: str | None) -> bool:
    """Whether `name` can be a Hub repository id ('name' or 'namespace/name'), as opposed to a local path."""
    if not name:
        return False
    try:
        _hf_validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _settings_table(settings: dict[str, Any]) -> str:
    """The settings table (containers as sorted JSON, every value in backticks), or a line saying there is none."""
    if not settings:
        return "(no settings recorded)"
    rows = []
    for key, value in settings.items():
        if isinstance(value, (dict, list, tuple)):
            value = json.dumps(value, sort_keys=True, default=str)
        rows.append([str(key), f"`{value}`"])
    return "\n".join(markdown_table(["setting", "value"], rows))


def _eval_table(rows: list[dict[str, Any]]) -> str | None:
    """The card's evaluation table (values to 6 significant digits), None without results."""
    if not rows:
        return None
    cells = [[str(r["metric"]), significant(r["value"], 6), r["dataset"], str(r["split"])] for r in rows]
    return "\n".join(markdown_table(["metric", "value", "dataset", "split"], cells))


def _eval_results(eval_results: dict[str, Any]) -> tuple[list[EvalResult], list[dict[str, Any]]]:
    """EvalResults for the model-index and the card's rows; values are numbers or {"value", "dataset", "split"}.

    The dataset defaults to the private test split (the paper's protocol), not the training data.
    """
    results, rows = [], []
    for metric, spec in eval_results.items():
        spec = spec if isinstance(spec, dict) else {"value": spec}
        if "value" not in spec:
            raise ValueError(f"eval_results[{metric!r}]={spec!r} needs a 'value' (e.g. {{'value': 44.1}}).")
        value = float(spec["value"])
        dataset = str(spec.get("dataset") or "private-test-split")
        split = spec.get("split", "test")
        results.append(
            EvalResult(
                task_type="text-generation",
                dataset_type=dataset,
                dataset_name=dataset,
                dataset_split=split,
                metric_type=str(metric),
                metric_value=value,
            )
        )
        rows.append({"metric": metric, "value": value, "dataset": dataset, "split": split})
    return results, rows


def _privacy_unit(method: dict[str, Any], ledger: PrivacyLedger | None = None) -> str:
    """The method's unit, else the one every release of the ledger names (user-level runs), else one row."""
    unit = method.get("privacy_unit") or (ledger.privacy_unit if ledger is not None else None)
    return str(unit or DEFAULT_PRIVACY_UNIT)


def write_model_card(
    output_dir: str | Path,
    *,
    kind: str,
    base_model: str | None,
    ledger: PrivacyLedger | None,
    method: dict[str, Any],
    eval_results: dict[str, Any] | None = None,
    dataset_name: str | None = None,
    repo_id: str | None = None,
    model_name: str | None = None,
    adapter_base: str | None = None,
) -> Path:
    """Write ``output_dir/README.md``: YAML metadata (tags, base_model, model-index, the guarantee), the privacy
    statement, the method and its settings, and a plain ``transformers`` usage snippet.

    A LoRA adapter folder (adapter_config.json) gets peft's usage instead: load the public base model
    (``adapter_base``, default `base_model`, else the base the adapter records) and merge the adapter into it.

    ``dataset_name`` is the training data (for a student, the synthetic dataset's repo id); ``repo_id`` goes
    into the usage snippet; ``model_name`` titles the card (default: the repository's name, else the folder's).
    ``method`` is shown as a settings table; its ``"student_data"`` key (``"synthetic"``, the default, or
    ``"private"``) says whether a student learned from the DP teacher's synthetic text (its guarantee is then
    inherited by post-processing) or was itself trained with DP-SGD on private data (the DPKD baseline).
    ``eval_results`` maps a metric name (e.g. ``"perplexity"``) to a number or to ``{"value", "dataset", "split"}``
    (dataset default: ``"private-test-split"``). ``method["privacy_unit"]`` overrides the default privacy unit.
    """
    if kind not in MODEL_KINDS:
        raise ValueError(f"kind={kind!r} is not supported; use one of {', '.join(MODEL_KINDS)}.")
    if not isinstance(method, dict):
        raise TypeError(f"method={method!r} must be a dict of the method's name and settings.")
    output_dir = Path(output_dir)
    student_data = str(method.get("student_data", "synthetic")) if kind == "student" else None
    if student_data not in (None, "synthetic", "private"):
        raise ValueError(f"method['student_data']={student_data!r} must be 'synthetic' or 'private'.")
    name = model_name or (repo_id.split("/")[-1] if repo_id else output_dir.resolve().name)
    usage_id = repo_id or _PLACEHOLDER_REPO
    adapter = is_adapter_folder(output_dir)
    if adapter:  # what DP-SGD trained: the card's settings table says so
        method = {**method, "trained_parameters": adapter_description(output_dir)}
    privacy_unit = _privacy_unit(method, ledger)

    tags = ["hf_dpkd", "text-generation"]
    if ledger is not None:
        tags += ["differential-privacy", "dp-sgd"]
    if kind == "student" or method.get("name", "").lower().startswith("distil"):
        tags.append("knowledge-distillation")
    if student_data == "synthetic":
        tags.append("synthetic-data")
    results, eval_rows = _eval_results(eval_results or {})
    card_data = ModelCardData(
        library_name="peft" if adapter else "transformers",
        pipeline_tag="text-generation",
        tags=tags + (["lora"] if adapter else []),
        model_name=name,
        eval_results=results or None,
        **({"base_model": base_model} if _is_hub_id(base_model) else {}),
        **({"datasets": [dataset_name]} if _is_hub_id(dataset_name) else {}),
        **{CARD_PRIVACY_KEY: privacy_metadata(ledger, privacy_unit=privacy_unit)},
    )
    base = (adapter_base or base_model or recorded_base(output_dir) or "BASE_MODEL") if adapter else None
    card = ModelCard.from_template(
        card_data,
        template_str=template("model_card.md"),
        name=name,
        kind=kind,
        ledger=ledger,
        student_data=student_data,
        method_name=method.get("name", "DistilDP"),
        base_model=base_model,
        dataset_name=dataset_name,
        privacy_statement=privacy_statement(ledger, privacy_unit=privacy_unit),
        settings_table=_settings_table({k: v for k, v in method.items() if k != "name"}),
        eval_table=_eval_table(eval_rows),
        usage_id=usage_id,
        adapter_base=base,
        adapter_usage=usage_snippet(usage_id, base) if adapter else None,
    )
    return atomic_write_text(output_dir / "README.md", str(card))


def _size_category(n: int) -> str:
    for bound, label in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
    ):
        if n < bound:
            return label
    return "1M<n<10M" if n < 10_000_000 else "10M<n<100M"


def _has_histogram_release(ledger: PrivacyLedger) -> bool:
    return any("histogram" in r.name.lower() or r.sample_rate >= 1.0 for r in ledger.releases)


def write_dataset_card(
    output_dir: str | Path,
    *,
    source_model: str,
    ledger: PrivacyLedger | None,
    control_code_mode: str,
    generation_config: dict[str, Any],
    num_samples: int,
    control_fields: list[str],
    repo_id: str | None = None,
    privacy_unit: str | None = None,
    quality: dict[str, Any] | None = None,
) -> Path:
    """Write ``output_dir/README.md`` for a synthetic dataset sampled from the DP teacher `source_model`.

    The dataset inherits the teacher's guarantee by post-processing; `control_code_mode` says how prompts'
    control codes were chosen (``"dp_histogram"``, ``"public"``, ``"uniform"``; ``"private"``/``"exact"``
    are flagged as NOT covered). The usage snippet is plain ``datasets.load_dataset``. `quality` (a
    :func:`hf_dpkd.synthetic.quality.quality_report`) adds its table in a section saying it is NOT covered
    by the guarantee (it compares with private held-out text): pass it only when you mean to publish it.
    """
    if not isinstance(num_samples, int) or num_samples <= 0:
        raise ValueError(
            f"num_samples={num_samples!r} must be a positive int (the number of synthetic texts)."
        )
    if not source_model:
        raise ValueError(f"source_model={source_model!r} must name the teacher the text was sampled from.")
    if not control_code_mode:
        raise ValueError(f"control_code_mode={control_code_mode!r} must say how control codes were chosen.")
    if control_code_mode == "dp_histogram" and ledger is not None and not _has_histogram_release(ledger):
        raise ValueError(
            "control_code_mode='dp_histogram' but the ledger records no histogram release (a release named "
            "'*histogram*' or a plain Gaussian mechanism with sample_rate=1); record the DP histogram in the "
            "ledger before writing the card, or pass the mode that was actually used."
        )
    output_dir = Path(output_dir)
    privacy_unit = _privacy_unit({"privacy_unit": privacy_unit}, ledger)
    quality_table = None
    if quality is not None:
        from hf_dpkd.synthetic.quality import quality_markdown

        quality_table = quality_markdown(quality)

    tags = ["hf_dpkd", "synthetic-data", "knowledge-distillation"]
    if ledger is not None:
        tags.append("differential-privacy")
    card_data = DatasetCardData(
        task_categories=["text-generation"],
        size_categories=[_size_category(num_samples)],
        tags=tags,
        pretty_name=f"Synthetic text from {source_model}",
        **{CARD_PRIVACY_KEY: privacy_metadata(ledger, privacy_unit=privacy_unit)},
    )
    card = DatasetCard.from_template(
        card_data,
        template_str=template("dataset_card.md"),
        source_model=source_model,
        num_samples=num_samples,
        control_fields=list(control_fields),
        control_code_mode=control_code_mode,
        leaky=control_code_mode in ("private", "exact"),
        privacy_statement=privacy_statement(ledger, privacy_unit=privacy_unit),
        settings_table=_settings_table(dict(generation_config)),
        quality_table=quality_table,
        usage_id=repo_id or _PLACEHOLDER_REPO,
    )
    return atomic_write_text(output_dir / "README.md", str(card))


def card_epsilon(readme_path: str | Path) -> float | None:
    """The epsilon a card states (None if the card says NOT differentially private).

    Reads the YAML metadata (``huggingface_hub.metadata_load``) and the body's epsilon row and checks they
    agree; raises ValueError for a card with no privacy statement or with two different epsilons.
    """
    privacy = (metadata_load(readme_path) or {}).get(CARD_PRIVACY_KEY)
    row = _EPSILON_ROW_RE.search(Path(readme_path).read_text(encoding="utf-8"))
    body_eps = float(row.group(1)) if row else None
    if privacy is None and body_eps is None:
        raise ValueError(
            f"readme_path={str(readme_path)!r} states no privacy guarantee (no '{CARD_PRIVACY_KEY}')."
        )
    meta_eps = privacy.get("epsilon") if isinstance(privacy, dict) else None
    meta_eps = None if meta_eps is None else float(meta_eps)
    if meta_eps is not None and body_eps is not None and meta_eps != body_eps:
        raise ValueError(
            f"{readme_path}: metadata epsilon {meta_eps!r} differs from the body's {body_eps!r}."
        )
    return meta_eps if meta_eps is not None else body_eps
