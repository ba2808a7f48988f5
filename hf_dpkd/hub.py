"""Model and dataset cards that state the privacy guarantee, and pushes of artifact folders to the Hub.

Every artifact this package pushes (the DP teacher, the synthetic dataset, the student) carries a card
whose epsilon is recomputed from the run's :class:`~hf_dpkd.privacy.accounting.PrivacyLedger`, that lists
every release composed into it, and that names what the guarantee does not cover. The cards' usage
snippets need only ``transformers`` / ``datasets``: nothing pushed requires ``hf_dpkd`` to load.

Directories holding raw private records carry a marker file (:data:`PRIVATE_DATA_MARKER`, written by
:func:`mark_private_data`); :func:`push_folder_to_hub` refuses any folder that contains one.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import DatasetCard, DatasetCardData, EvalResult, HfApi, ModelCard, ModelCardData

from hf_dpkd._io import atomic_write_text
from hf_dpkd.peft_support import adapter_base as recorded_base
from hf_dpkd.peft_support import adapter_description, is_adapter_folder, usage_snippet
from hf_dpkd.privacy.accounting import PrivacyLedger

#: Name of the marker file that flags a directory as holding raw private records (never pushed).
PRIVATE_DATA_MARKER = ".hf_dpkd_private"
#: The YAML metadata key of the cards that carries the machine-readable guarantee.
CARD_PRIVACY_KEY = "differential_privacy"
REPO_TYPES = ("model", "dataset")
#: What one protected record is when nothing says otherwise (row-level DP).
DEFAULT_PRIVACY_UNIT = "one training example (one text)"
#: teacher/student: the DistilDP pipeline's models; dp_finetune: any model DPTrainer fine-tuned (a user's script).
MODEL_KINDS = ("teacher", "student", "dp_finetune")

_ACCOUNTANT_NAMES = {
    "prv": "PRV (privacy random variables, Gopi, Lee & Wutschitz 2021; Opacus implementation)",
    "rdp": "RDP (Renyi differential privacy, Mironov 2017; Opacus implementation)",
    "gdp": "GDP (Gaussian differential privacy with the central-limit approximation for subsampled steps, "
    "Dong, Roth & Su 2019; an approximation, not an upper bound)",
}
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_REPO_ID_RE = re.compile(rf"{_NAME}/{_NAME}")
_HUB_MODEL_ID_RE = re.compile(rf"(?:{_NAME}/)?{_NAME}")
_EPSILON_ROW_RE = re.compile(r"^\|\s*epsilon \(ε\)\s*\|\s*`?([^|`]+?)`?\s*\|", re.MULTILINE)
_PLACEHOLDER_REPO = "YOUR_NAMESPACE/REPO_NAME"


class HubPushError(RuntimeError):
    """A push to the Hub failed; the local folder is untouched and re-running the push resumes it."""

    def __init__(self, message: str, *, repo_id: str, folder: Path, stage: str):
        super().__init__(message)
        self.repo_id, self.folder, self.stage = repo_id, folder, stage


# ---------------------------------------------------------------------------------------------------
# The privacy statement
# ---------------------------------------------------------------------------------------------------
def _fmt(x: float) -> str:
    return f"{x:.4g}" if math.isfinite(x) else str(x)


def _ledger_epsilon(ledger: PrivacyLedger) -> float:
    if ledger.delta is None:
        raise ValueError(
            "ledger.delta is None: a guarantee needs the delta at which epsilon is reported; "
            "create the ledger with PrivacyLedger(delta=...) (e.g. default_delta(num_examples))."
        )
    return ledger.epsilon()


def privacy_metadata(ledger: PrivacyLedger | None, *, privacy_unit: str) -> dict[str, Any]:
    """The machine-readable guarantee stored under :data:`CARD_PRIVACY_KEY` in a card's YAML metadata."""
    if ledger is None:
        return {"epsilon": None, "delta": None, "guarantee": "none: not differentially private"}
    return {
        "epsilon": _ledger_epsilon(ledger),
        "delta": ledger.delta,
        "epsilon_is_upper_bound": not ledger.approximate,
        "non_private_releases": [r.name for r in ledger.non_private_releases],
        "accountant": ledger.accountant,
        "privacy_unit": privacy_unit,
        "releases": [r.name for r in ledger.releases],
    }


def privacy_statement(ledger: PrivacyLedger | None, *, privacy_unit: str = DEFAULT_PRIVACY_UNIT) -> str:
    """Markdown stating the (epsilon, delta) guarantee of `ledger`, its releases, and what it does not cover.

    Epsilon is recomputed by ``ledger.epsilon()`` from the recorded (noise, rate, steps), never copied
    from a target. ``ledger=None`` yields a loud "NOT differentially private" statement.
    """
    if ledger is None:
        return (
            "## Privacy\n\n"
            "> [!WARNING]\n"
            "> **NOT DIFFERENTIALLY PRIVATE.** No privacy ledger was recorded for this artifact, so it carries\n"
            "> no differential-privacy guarantee. If it was trained on (or generated from a model trained on)\n"
            "> private data, it may memorise and reveal that data: do not publish it.\n"
        )
    if not privacy_unit or not privacy_unit.strip():
        raise ValueError(f"privacy_unit={privacy_unit!r} must name what one protected record is.")
    eps = _ledger_epsilon(ledger)
    accountant = _ACCOUNTANT_NAMES.get(ledger.accountant, ledger.accountant)
    lines = ["## Privacy", ""]
    if not ledger.releases:
        lines += [
            "> [!WARNING]",
            "> The privacy ledger records **no release over private data**. This artifact is private only if no",
            "> private data was used at all; anything computed from private data outside the ledger is NOT covered.",
            "",
        ]
    if ledger.non_private_releases:
        lines += [
            "> [!WARNING]",
            "> **ε is infinite: NOT differentially private.** These releases used the private data without DP: "
            + "; ".join(
                f"`{r.name}` ({r.meta.get('reason', 'no noise')})" for r in ledger.non_private_releases
            )
            + ".",
            "",
        ]
    elif ledger.approximate:
        lines += [
            f"This artifact satisfies **approximately (ε ≈ {_fmt(eps)}, δ = {ledger.delta:.3g})-differential "
            f"privacy** with respect to the privacy unit **{privacy_unit}**. The GDP accountant's ε comes from a "
            "central-limit approximation of subsampled steps: it is an estimate, NOT an upper bound, so this card "
            "does not claim the e^ε bound. Use the PRV or RDP accountant for a guarantee.",
            "",
        ]
    else:
        lines += [
            f"This artifact satisfies **(ε = {_fmt(eps)}, δ = {ledger.delta:.3g})-differential privacy** with "
            f"respect to the privacy unit **{privacy_unit}**: adding or removing one such unit from the private "
            "data changes the probability of any outcome by at most a factor e^ε, except with probability δ.",
            "",
        ]
    lines += [
        "| quantity | value |",
        "|---|---|",
        f"| epsilon (ε) | `{eps!r}` |",
        f"| delta (δ) | `{ledger.delta!r}` |",
        f"| accountant | {accountant} |",
        f"| ε is an upper bound | {'no (approximation)' if ledger.approximate else 'yes'} |",
        f"| privacy unit | {privacy_unit} |",
        f"| releases composed | {len(ledger.releases)} |",
        "",
        "ε is recomputed by the accountant from the releases below (their noise multipliers, sample rates and "
        "step counts); it is the total cost of everything released from the private data, composed.",
        "",
    ]
    if ledger.releases:
        lines += [
            "### Releases composed into this guarantee",
            "",
            "| release | mechanism | noise multiplier σ | sample rate q | steps | details |",
            "|---|---|---|---|---|---|",
        ]
        for r in ledger.releases:
            details = ", ".join(f"{k}={v}" for k, v in sorted(r.meta.items())) if r.meta else ""
            lines.append(
                f"| {r.name} | {r.mechanism} | {r.noise_multiplier:.6g} | {r.sample_rate:.6g} | {r.steps} | "
                f"{details} |"
            )
        lines += [
            "",
            "**Sampling.** A release with q < 1 is DP-SGD: at every step each unit is included in the batch "
            "independently with probability q (Poisson sampling), its per-unit gradient is clipped, and Gaussian "
            "noise of standard deviation σ × clip norm is added; this is the sampling the accountant assumes. "
            "A release with q = 1 and one step is a plain Gaussian mechanism over the whole dataset "
            "(e.g. the control-code histogram), with noise σ × its L2 sensitivity.",
            "",
        ]
    lines += [
        "### What the guarantee covers, and what it does NOT",
        "",
        "Covered: every release listed above, and anything computed from them alone (post-processing): the "
        "weights, text sampled from the model, and models trained on that text.",
        "",
        "**Not covered** (each is a release of private information unless it was computed without private data):",
        "",
        "- **The tokenizer**, if it was trained on the private data (a pretrained tokenizer is not affected).",
        "- **Hyperparameter search**: choosing settings or runs by their results on private data.",
        "- **Evaluation numbers on private test data** (e.g. perplexity on the private test split) published "
        "with the artifact.",
        "- **The control-code domain** (the set of possible control-code values), if it was taken from the "
        "private data rather than declared public: such a run records it as a non-private release, and ε above "
        "is then ∞.",
        "- **A known DP seed**: DP-SGD's noise and batches come from a secret seed drawn for each run; a seed "
        "set by hand, or a leaked checkpoint, lets its holder regenerate them.",
        "- **The number of private units N**: it is treated as public (it sets the sample rate and the default "
        "δ).",
        "- **Training logs**: with DP the per-batch training loss is not logged (it carries no noise); "
        "anything logged by the user from private batches is not covered.",
        "- Anything else computed from the private data and not recorded in the ledger, and units larger than "
        "the privacy unit: a person contributing k units is protected with roughly k·ε (group privacy).",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# Cards
# ---------------------------------------------------------------------------------------------------
def _check_kind(kind: str) -> None:
    if kind not in MODEL_KINDS:
        raise ValueError(f"kind={kind!r} is not supported; use one of {', '.join(MODEL_KINDS)}.")


def _value_md(value: Any) -> str:
    if isinstance(value, (dict, list, tuple)):
        return "`" + json.dumps(value, sort_keys=True, default=str) + "`"
    return f"`{value}`"


def _settings_table(settings: dict[str, Any]) -> list[str]:
    if not settings:
        return ["(no settings recorded)", ""]
    lines = ["| setting | value |", "|---|---|"]
    lines += [f"| {k} | {_value_md(v)} |" for k, v in settings.items()]
    return lines + [""]


def _eval_results(eval_results: dict[str, Any]) -> tuple[list[EvalResult], list[str]]:
    """EvalResults for the model-index and the markdown rows; values are numbers or {"value", "dataset", "split"}.

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
        rows.append(f"| {metric} | {value:.6g} | {dataset} | {split} |")
    return results, rows


def _usage_model(repo_id: str) -> str:
    return (
        "```python\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")\n'
        f'model = AutoModelForCausalLM.from_pretrained("{repo_id}")\n\n'
        "# Control-coded prompt: the control-code fields joined by a tab, then a blank line.\n"
        'inputs = tokenizer("Field: value\\n\\n", return_tensors="pt")\n'
        "out = model.generate(**inputs, do_sample=True, top_k=50, top_p=0.9, max_new_tokens=64)\n"
        "print(tokenizer.decode(out[0], skip_special_tokens=True))\n"
        "```\n"
    )


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
    _check_kind(kind)
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

    tags = ["hf_dpkd", "text-generation"]
    if ledger is not None:
        tags += ["differential-privacy", "dp-sgd"]
    if kind == "student" or method.get("name", "").lower().startswith("distil"):
        tags.append("knowledge-distillation")
    if student_data == "synthetic":
        tags.append("synthetic-data")

    results, rows = _eval_results(eval_results or {})
    data_kwargs: dict[str, Any] = {}
    if base_model and _HUB_MODEL_ID_RE.fullmatch(base_model):
        data_kwargs["base_model"] = base_model
    if dataset_name and _HUB_MODEL_ID_RE.fullmatch(dataset_name):
        data_kwargs["datasets"] = [dataset_name]
    card_data = ModelCardData(
        library_name="peft" if adapter else "transformers",
        pipeline_tag="text-generation",
        tags=tags + (["lora"] if adapter else []),
        model_name=name,
        eval_results=results or None,
        **data_kwargs,
        **{CARD_PRIVACY_KEY: privacy_metadata(ledger, privacy_unit=_privacy_unit(method, ledger))},
    )

    method_name = method.get("name", "DistilDP")
    if kind == "dp_finetune":
        what = (
            f"This model was fine-tuned with **DP-SGD** ({method_name}): per-example gradient clipping, Gaussian "
            "noise and Poisson sampling over the rows of its training data."
        )
        if ledger is None:
            what = "This model was fine-tuned WITHOUT differential privacy."
    elif kind == "teacher":
        what = (
            f"This is the **teacher** of {method_name}: a causal LM fine-tuned on the private corpus with DP-SGD "
            "(per-example gradient clipping, Gaussian noise, Poisson sampling), every training text prefixed by "
            "its control code. It is the only model that sees the private data; synthetic text sampled from "
            "it is post-processing of a differentially private model."
        )
        if ledger is None:
            what = f"This is the **teacher** of {method_name}, trained WITHOUT differential privacy."
    elif ledger is None:
        what = f"This is a **student** of {method_name}, trained WITHOUT differential privacy."
    elif student_data == "synthetic":
        what = (
            f"This is the **student** of {method_name}: trained without DP noise on synthetic text generated by "
            "the DP teacher (and, with knowledge distillation, on the teacher's output distributions). It never "
            "saw the private data: its privacy guarantee is **inherited by post-processing** from the teacher "
            "and the control-code release, so it is the same (ε, δ) as the ledger below, with no extra cost."
        )
    else:
        what = (
            f"This is a **student** trained with DP-SGD directly on the private data ({method_name}); its own "
            "DP-SGD run is one of the releases composed in the guarantee below."
        )

    body = [f"# {name}", "", what, ""]
    if base_model:
        body += [f"Initialised from `{base_model}`.", ""]
    if dataset_name:
        body += [f"Training data: `{dataset_name}`.", ""]
    body += [privacy_statement(ledger, privacy_unit=_privacy_unit(method, ledger)), "## Method", ""]
    body += [f"**{method_name}** ({kind}).", ""] + _settings_table(
        {k: v for k, v in method.items() if k != "name"}
    )
    if rows:
        body += [
            "## Evaluation",
            "",
            "| metric | value | dataset | split |",
            "|---|---|---|---|",
            *rows,
            "",
            "Numbers computed on private test data are themselves a release that the guarantee above does NOT "
            "cover.",
            "",
        ]
    if adapter:
        base = adapter_base or base_model or recorded_base(output_dir) or "BASE_MODEL"
        body += [
            "## Usage",
            "",
            f"This folder is a **LoRA adapter** (peft): DP-SGD trained only the adapter; the base weights are "
            f"the public base model `{base}`, unchanged, and are not in this folder. Load the base and merge the "
            "adapter into it (`PeftModel.from_pretrained(base, path).merge_and_unload()`); no `hf_dpkd` import "
            "is needed.",
            "",
            usage_snippet(usage_id, base),
        ]
    else:
        body += [
            "## Usage",
            "",
            "Loads with plain `transformers`; no `hf_dpkd` import is needed.",
            "",
            _usage_model(usage_id),
        ]
    card = ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(body))
    path = output_dir / "README.md"
    atomic_write_text(path, str(card))
    return path


def _privacy_unit(method: dict[str, Any], ledger: PrivacyLedger | None = None) -> str:
    """The method's unit, else the one every release of the ledger names (user-level runs), else one row."""
    unit = method.get("privacy_unit") or (ledger.privacy_unit if ledger is not None else None)
    return str(unit or DEFAULT_PRIVACY_UNIT)


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


_CONTROL_CODE_MODES = {
    "dp_histogram": "drawn from a differentially private histogram of the private control codes (a Gaussian "
    "mechanism; it is one of the releases composed in the guarantee)",
    "public": "drawn from a control-code distribution the data owner declared public (no private data used)",
    "uniform": "drawn uniformly over the control-code domain (no private frequencies used)",
}


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
    leaky = control_code_mode in ("private", "exact")
    mode_text = _CONTROL_CODE_MODES.get(control_code_mode, f"chosen by mode `{control_code_mode}`")
    if leaky:
        mode_text = (
            "drawn from the EXACT private control-code frequencies. **These frequencies are NOT covered by the "
            "guarantee**: they leak private information"
        )

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
    usage_id = repo_id or _PLACEHOLDER_REPO
    body = [
        f"# Synthetic text sampled from `{source_model}`",
        "",
        f"{num_samples} control-coded texts sampled from the differentially private teacher `{source_model}`. "
        "The generator saw the private data only through DP-SGD, so this dataset is **post-processing** of a "
        "differentially private model: it carries the guarantee below at no extra privacy cost, and can be "
        "shared and used to train students without DP noise.",
        "",
        f"**Control codes.** Fields: {', '.join(f'`{f}`' for f in control_fields) or '(none)'}. Each prompt is "
        "the fields joined by a tab, followed by a blank line; the prompt is stripped from the generated text. "
        f"The number of prompts per control code was {mode_text}.",
        "",
    ]
    if leaky:
        body += [
            "> [!WARNING]",
            "> The control-code frequencies of this dataset are those of the private data: they are a release "
            "NOT covered by the differential-privacy guarantee.",
            "",
        ]
    body += [privacy_statement(ledger, privacy_unit=privacy_unit), "## Generation settings", ""]
    body += _settings_table(dict(generation_config))
    if quality is not None:
        from hf_dpkd.synthetic.quality import quality_markdown

        body += [
            "## Synthetic data quality (local, not covered by the guarantee)",
            "",
            "How close the synthetic text is to real held-out text (`hf_dpkd.synthetic.quality`). The real "
            "side is private data, so these numbers are **NOT covered by the differential-privacy guarantee** "
            "above; they are shown because the dataset's author chose to include them.",
            "",
            quality_markdown(quality),
        ]
    body += [
        "## Usage",
        "",
        "Loads with plain `datasets`; no `hf_dpkd` import is needed.",
        "",
        "```python\n"
        "from datasets import load_dataset\n\n"
        f'ds = load_dataset("{usage_id}", split="train")\n'
        "```\n",
    ]
    card = DatasetCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(body))
    path = output_dir / "README.md"
    atomic_write_text(path, str(card))
    return path


def card_epsilon(readme_path: str | Path) -> float | None:
    """The epsilon a card states (None if the card says NOT differentially private).

    Reads the YAML metadata and the body's epsilon row and checks they agree; raises ValueError for a card
    with no privacy statement or with two different epsilons.
    """
    text = Path(readme_path).read_text(encoding="utf-8")
    match = re.match(r"^---\s*\n(.*?)\n---\s*\n", text, re.DOTALL)
    metadata = (yaml.safe_load(match.group(1)) if match else None) or {}
    privacy = metadata.get(CARD_PRIVACY_KEY)
    row = _EPSILON_ROW_RE.search(text)
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


# ---------------------------------------------------------------------------------------------------
# Pushing
# ---------------------------------------------------------------------------------------------------
def mark_private_data(directory: str | Path) -> Path:
    """Drop the :data:`PRIVATE_DATA_MARKER` file into `directory` so that it can never be pushed."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(
        directory / PRIVATE_DATA_MARKER,
        "This directory holds raw private records. hf_dpkd refuses to push any folder containing this file.\n",
    )


def find_private_markers(folder: str | Path) -> list[Path]:
    """Every :data:`PRIVATE_DATA_MARKER` file under `folder` (hidden directories included)."""
    return sorted(
        Path(root) / PRIVATE_DATA_MARKER for root, _, files in os.walk(folder) if PRIVATE_DATA_MARKER in files
    )


def validate_repo_id(repo_id: Any) -> str:
    """Return `repo_id` if it has the Hub's 'namespace/name' form; raise a ValueError naming the fix otherwise."""
    ok = (
        isinstance(repo_id, str)
        and _REPO_ID_RE.fullmatch(repo_id) is not None
        and "--" not in repo_id
        and ".." not in repo_id
        and not repo_id.endswith(".git")
    )
    if not ok:
        raise ValueError(
            f"repo_id={repo_id!r} is not a valid Hub repository id: expected 'namespace/name' (your user or "
            "organization, a slash, the repository name; e.g. 'my-user/dpkd-teacher'). Names use letters, "
            "digits, '-', '_' and '.', at most 96 characters, without leading/trailing '-' or '.', '--' or '..'."
        )
    return repo_id


_STAGES = (
    ("/preupload/", "asking the Hub how to upload each file (preupload)"),
    ("/info/lfs/objects/batch", "requesting LFS upload instructions (LFS batch API)"),
    ("/api/validate-yaml", "validating the README.md metadata"),
    ("/commit/", "creating the commit (file contents were sent, but no commit was recorded)"),
)


def _failure_stage(exc: BaseException) -> str:
    """Which step of an upload failed, read from the failing request's URL in the exception chain."""
    seen: set[int] = set()
    chain: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        chain.append(e)
        e = e.__cause__ or e.__context__
    urls = []
    for err in chain:
        try:
            response = getattr(err, "response", None)
            urls.append(str(response.request.url) if response is not None else str(err.request.url))  # type: ignore[attr-defined]
        except Exception:
            continue
    for url in urls:
        for pattern, stage in _STAGES:
            if pattern in url:
                return stage
    if any("Error while uploading" in str(err) for err in chain):
        return "uploading large files (LFS)"
    return f"uploading the folder ({urls[0].split('?')[0]})" if urls else "uploading the folder"


def push_folder_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    repo_type: str = "model",
    private: bool | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    allow_patterns: list[str] | str | None = None,
    ignore_patterns: list[str] | str | None = None,
) -> str:
    """Create `repo_id` if needed and upload `folder` to it in one commit; return the repository URL.

    Refuses folders containing :data:`PRIVATE_DATA_MARKER`. Never deletes or modifies local files; an HTTP
    failure raises :class:`HubPushError` naming the repo and the failed step, and re-running the same push
    completes it (files the Hub already holds are not uploaded again).
    """
    validate_repo_id(repo_id)
    if repo_type not in REPO_TYPES:
        raise ValueError(f"repo_type={repo_type!r} is not supported; use one of {', '.join(REPO_TYPES)}.")
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"folder={str(folder)!r} does not exist; pass the directory to push.")
    if not folder.is_dir():
        raise NotADirectoryError(f"folder={str(folder)!r} is a file; pass the directory that contains it.")
    markers = find_private_markers(folder)
    if markers:
        raise PermissionError(
            f"folder={str(folder)!r} contains raw private data (marker file {markers[0]}"
            f"{f' and {len(markers) - 1} more' if len(markers) > 1 else ''}); it will not be pushed. Push only the "
            "artifacts (model folder, synthetic dataset). If this folder really may be published, delete the "
            f"{PRIVATE_DATA_MARKER} marker file(s) first."
        )
    if not any(p.is_file() for p in folder.rglob("*")):
        raise ValueError(f"folder={str(folder)!r} holds no files; nothing to push.")

    api = HfApi(token=token)
    where = f"the {repo_type} repo {repo_id!r}"
    intact = (
        f"Nothing was deleted or changed locally: the files in {folder} are intact. Re-run the same push to try "
        "again; files the Hub already holds are not uploaded twice."
    )
    try:
        url = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    except Exception as exc:
        stage = "creating the repository"
        raise HubPushError(
            f"Pushing {folder} to {where} failed while {stage}: {exc}\n{intact}",
            repo_id=repo_id,
            folder=folder,
            stage=stage,
        ) from exc
    try:
        api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            repo_type=repo_type,
            commit_message=commit_message or f"Upload {folder.name} with hf_dpkd",
            allow_patterns=allow_patterns,
            ignore_patterns=ignore_patterns,
        )
    except Exception as exc:
        stage = _failure_stage(exc)
        raise HubPushError(
            f"Pushing {folder} to {where} failed while {stage}: {exc}\n{intact}",
            repo_id=repo_id,
            folder=folder,
            stage=stage,
        ) from exc
    return str(url)


def resolve_artifact(
    reference: str, *, argument: str, repo_type: str = "model", token: str | None = None
) -> Path:
    """A local folder for `reference`: the folder itself, or a snapshot of the Hub repo it names.

    `argument` names the option in errors. Downloads go to the Hugging Face cache (`HF_HOME`), so a
    second run reuses them.
    """
    path = Path(reference).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"--{argument} {reference!r} is a file; give the folder that holds it, or a Hub id.")
    try:
        validate_repo_id(reference)
    except ValueError:
        raise FileNotFoundError(
            f"--{argument} {reference!r}: no such folder, and not a Hub id ('namespace/name'). Give a folder "
            "written by the pipeline or the id of a repo it pushed."
        ) from None
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=reference, repo_type=repo_type, token=token))
    except Exception as e:  # the client's errors name the HTTP status; keep them, add the argument
        raise FileNotFoundError(
            f"--{argument} {reference!r}: could not download this {repo_type} repo from the Hub ({type(e).__name__}: "
            f"{e}). Check the id, your token (--hub_token or `hf auth login`) and HF_ENDPOINT."
        ) from e
