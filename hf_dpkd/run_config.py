"""The pipeline's arguments: dataclasses parsed by HfArgumentParser from a YAML recipe plus CLI overrides.

Precedence, lowest first: dataclass defaults, the ``--quick`` preset, the YAML recipe (``--config``),
command-line flags. Unknown recipe keys and malformed YAML are errors that name the key or the line.
"""

from __future__ import annotations

import functools
import json
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml
from transformers import HfArgumentParser, SchedulerType

from hf_dpkd.peft_support import PeftMethod
from hf_dpkd.pipeline.stages import STAGES  # the stage registry: --stages is checked and listed from it
from hf_dpkd.privacy.accounting import Accountant
from hf_dpkd.privacy.engine import ClippingMode
from hf_dpkd.trainers.losses import KdLoss

METHODS = (
    "non_private_teacher",
    "non_private_student",
    "distildp",
    "dp_syn_data",
    "dp_sgd_student",
    "dpkd",
    "on_policy",
    "dp_opd",
)

# Settings with fixed choices are Literal fields: HfArgumentParser gives them argparse `choices` (listed in
# --help, refused on the command line) and `_Arguments.__post_init__` refuses the same values from a recipe
# or a direct construction. The choices owned elsewhere (accountants, clipping modes, KD losses, peft
# methods) are imported with their Literal; these are the pipeline's own.
ControlCodeMode = Literal["dp", "uniform", "exact"]
DpOpdTeacher = Literal["dp_half", "public"]
#: transformers' learning-rate schedules (TrainingArguments.lr_scheduler_type).
LrSchedulerType = Literal[tuple(s.value for s in SchedulerType)]


def _one_of(choices: tuple[str, ...]) -> str:
    return ", ".join(choices[:-1]) + f" or {choices[-1]}" if len(choices) > 1 else choices[0]


@functools.cache
def _choices_of(cls: type) -> dict[str, tuple[str, ...]]:
    """The choices of each Literal field of the dataclass `cls`."""
    hints = get_type_hints(cls)
    return {f.name: get_args(hints[f.name]) for f in fields(cls) if get_origin(hints[f.name]) is Literal}


class _Arguments:
    """Base of the argument dataclasses: a Literal field's value must be one of its choices.

    argparse enforces `choices` on the command line only; a recipe (set as parser defaults), parse_dict or a
    direct construction reaches the dataclass unchecked, so the check is here.
    """

    def __post_init__(self):
        for name, choices in _choices_of(type(self)).items():
            value = getattr(self, name)
            if value not in choices:
                raise ValueError(f"--{name} {value!r}: choose {_one_of(choices)}.")


@dataclass
class PipelineArguments(_Arguments):
    run_dir: str = field(
        default="runs/demo", metadata={"help": "Run directory: every artifact of the run lives here."}
    )
    stages: str = field(
        default="all", metadata={"help": f"Comma-separated stages to run, or 'all': {', '.join(STAGES)}."}
    )
    methods: str = field(
        default="distildp,dp_syn_data,dp_sgd_student",
        metadata={"help": f"Comma-separated methods to train and compare: {', '.join(METHODS)}."},
    )
    quick: bool = field(default=False, metadata={"help": "A smoke run: tiny data, models and step counts."})
    repeats: int = field(
        default=1,
        metadata={
            "help": "Independent DP draws: the private stages (histogram to evaluate) are repeated N times with "
            "fresh noise in run_dir/draws/draw-K, and results.{json,md,png} report each method's mean and "
            "standard deviation. Every DP run draws fresh noise: claim an ordering of methods over >= 3 draws."
        },
    )
    seed: int = field(default=0, metadata={"help": "Seed of every stage."})
    target_epsilon: float = field(default=2.0, metadata={"help": "Total epsilon of each private method."})
    target_delta: float | None = field(
        default=None,
        metadata={
            "help": "Delta of the guarantee (default min(1e-5, 1/(10 N)) for N private training examples)."
        },
    )
    accountant: Accountant = field(default="prv", metadata={"help": "Privacy accountant."})
    lr_scheduler_type: LrSchedulerType = field(
        default="constant",
        metadata={
            "help": "Learning-rate schedule of every training of the run (teacher, students, DP or not), as in "
            "TrainingArguments."
        },
    )
    save_steps: int = field(
        default=50,
        metadata={"help": "Checkpoint every N optimizer steps (an interrupted stage resumes from it)."},
    )
    cpu_threads: int | None = field(
        default=None,
        metadata={
            "help": "Torch CPU threads of a single-process run (default: every usable core; `accelerate launch` "
            "without a config would otherwise leave one). Multi-process runs keep the launcher's setting."
        },
    )
    verbose: bool = field(
        default=False,
        metadata={
            "help": "Print what the libraries print: the Trainer's logs of each logging step, transformers' bars "
            "of loading and saving weights, DeepSpeed's notices. Default: one line per stage, progress bars and "
            "results."
        },
    )


@dataclass
class DataArguments(_Arguments):
    dataset: str = field(
        default="demo",
        metadata={
            "help": "'demo' (embedded, generated), a known dataset name (yelp, big_patent, dbpedia) or a "
            "local csv/json/jsonl/parquet path."
        },
    )
    text_column: str | None = field(default=None, metadata={"help": "Text column (default: the dataset's)."})
    control_columns: str | None = field(
        default=None, metadata={"help": "Comma-separated control-code columns (default: the dataset's)."}
    )
    control_domain: str | None = field(
        default=None,
        metadata={
            "help": "The PUBLIC values of each control-code column, declared without looking at the private "
            "data: a JSON file {column: [values]} or inline 'column=v1|v2;column2=a|b'. Known datasets (demo, "
            "yelp, big_patent, dbpedia, Yue et al.'s Yelp folder) declare theirs; for other data, without it "
            "the values are read off the private data and the run's epsilon is infinite (NOT private)."
        },
    )
    privacy_unit_column: str | None = field(
        default=None,
        metadata={
            "help": "User-level DP: the private data's column naming whom each row belongs to (the demo has "
            "'user_id'). Every DP release then protects one user: the control-code histogram counts each user's "
            "k rows with weight 1/k, DP-SGD samples users, clips the sum of a user's row gradients and accounts "
            "with the number of users. Default: one row (a user with k rows is protected at about k * epsilon)."
        },
    )
    max_rows_per_unit: int | None = field(
        default=None,
        metadata={
            "help": "With --privacy_unit_column: at most this many of a sampled user's rows per DP-SGD step, drawn "
            "at random (bounds memory and a prolific user's weight). Default: all of them."
        },
    )
    demo_num_train: int = field(default=3000, metadata={"help": "Embedded demo: private training examples."})
    demo_num_public: int = field(default=4000, metadata={"help": "Embedded demo: public pretraining texts."})
    # 0.1: public pretraining covers the private domain's language, as GPT-2's WebText covers Yelp's, and the
    # private data still moves every model far (base teacher 18.2 -> DP teacher 14.8, base student 33.2 ->
    # DP-SGD student 25.3, validation, one draw). With 0 (no coverage) every private word is spelled in byte
    # pieces under DP noise and the demo sits outside the paper's regime (docs/results.md, "The regime").
    demo_public_coverage: float = field(
        default=0.1,
        metadata={
            "help": "Embedded demo: share of the public texts written in the private domain's language (fresh "
            "reviews of the private categories as plain text: no records, no control codes, uniform labels), as "
            "web-scale pretraining covers Yelp's language; the rest are the shifted public categories."
        },
    )
    max_length: int = field(
        default=128, metadata={"help": "Token length of training sequences (paper: 128)."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Cap on private training examples."}
    )
    control_code_distribution: ControlCodeMode = field(
        default="dp",
        metadata={
            "help": "Distribution of control codes to generate: dp (noisy private histogram, in the ledger), "
            "uniform, or exact (NOT private: leaks the private histogram)."
        },
    )
    histogram_noise_multiplier: float = field(
        default=10.0,
        metadata={"help": "Gaussian noise std of the DP control-code histogram (sensitivity 1)."},
    )


@dataclass
class TeacherArguments(_Arguments):
    dp_teacher: str | None = field(
        default=None,
        metadata={
            "help": "A DP teacher trained earlier by this project (its folder, or the Hub id it was pushed to, "
            "with privacy_ledger.json): the teacher stage uses it instead of training one; its ledger is "
            "composed with this run's releases."
        },
    )
    teacher_model: str = field(
        default="demo",
        metadata={"help": "'demo' (a small GPT-2 pretrained on the public split), a path or Hub id."},
    )
    student_model: str = field(
        default="demo",
        metadata={"help": "'demo' (a smaller GPT-2 pretrained on the public split), a path or Hub id."},
    )
    pretrain_steps: int = field(
        default=200, metadata={"help": "Demo only: public pretraining steps per base model."}
    )
    demo_teacher_shape: str = field(
        default="4x128",
        metadata={"help": "Demo only: the teacher's GPT-2 layers x width (940K parameters at 4x128)."},
    )
    demo_student_shape: str = field(
        default="2x64",
        metadata={
            "help": "Demo only: the student's GPT-2 layers x width (174K parameters at 2x64: 5.4x smaller than "
            "the teacher; the paper distils 9.4x)."
        },
    )
    teacher_epochs: float = field(default=3.0, metadata={"help": "DP-SGD epochs of the teacher."})
    teacher_learning_rate: float = field(default=2e-3, metadata={"help": "Teacher learning rate."})
    teacher_batch_size: int = field(default=128, metadata={"help": "Expected logical batch per device."})
    teacher_gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "Teacher accumulation steps."}
    )
    max_physical_batch_size: int = field(
        default=32, metadata={"help": "Micro-batch size of DP-SGD (memory only)."}
    )
    per_sample_max_grad_norm: float = field(default=1.0, metadata={"help": "DP-SGD per-sample clip norm."})
    non_private_epochs: float = field(
        default=2.0,
        metadata={
            "help": "Epochs of the non-private reference teacher (recipes/demo_full.yaml: 8, to show memorisation)."
        },
    )
    clipping_mode: ClippingMode = field(
        default="auto",
        metadata={
            "help": "DP-SGD clipping mode (see DPConfig): auto = bookkeeping where supported (fastest)."
        },
    )
    teacher_peft: PeftMethod = field(
        default="none",
        metadata={
            "help": "none (full DP-SGD fine-tuning) or lora: the DP teachers (teacher, and the DPKD / DP-OPD "
            "teacher) train only LoRA adapters with DP-SGD; generation and distillation use the adapter merged "
            "into the public base teacher, and teacher/final holds the adapter with its privacy card."
        },
    )
    student_peft: PeftMethod = field(
        default="none",
        metadata={
            "help": "none or lora: the same for the students trained with DP-SGD on the private data "
            "(dp_sgd_student, dpkd, dp_opd). Non-private references and synthetic-data students stay full."
        },
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank (--teacher_peft/--student_peft lora)."})
    lora_alpha: float = field(
        default=16.0, metadata={"help": "LoRA alpha: the update is scaled by alpha / r."}
    )
    lora_target_modules: str = field(
        default="c_attn,c_proj,c_fc",
        metadata={
            "help": "Comma-separated names of the Linear/Conv1D layers that get adapters (default: GPT-2's "
            "attention and MLP projections, the demo's models; e.g. q_proj,k_proj,v_proj,o_proj for Llama)."
        },
    )
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA branch's input."})

    def lora_settings(self):
        """The LoRA settings of --lora_* (checked: every error names the flag)."""
        from hf_dpkd.peft_support import LoraSettings

        targets = tuple(t.strip() for t in self.lora_target_modules.split(",") if t.strip())
        return LoraSettings(
            r=self.lora_r, alpha=self.lora_alpha, target_modules=targets, dropout=self.lora_dropout
        )


@dataclass
class GenerationArguments(_Arguments):
    synthetic_data: str | None = field(
        default=None,
        metadata={
            "help": "DP synthetic data made earlier by this project (the generate stage's folder, or the Hub "
            "dataset id it was pushed to): the generate stage uses it instead of sampling; the students "
            "inherit its ledger."
        },
    )
    num_synthetic_samples: int = field(default=3000, metadata={"help": "Synthetic texts to generate."})
    generation_batch_size: int = field(default=64, metadata={"help": "Prompts per generation batch."})
    # Plain (ancestral) sampling by default: the student learns the teacher's distribution from its samples, and
    # truncation (top-k/top-p) and n-gram bans sample another one. On the demo's validation split (one DP
    # teacher, docs/results.md) they cost the DistilDP student 52.9 -> 44.3 and DP Syn Data 70.4 -> 46.5. The
    # paper recipes keep the paper's settings (top_k 50, top_p 0.9, no_repeat_ngram_size 2) for reproduction.
    top_k: int = field(default=0, metadata={"help": "Sampling top-k; 0 disables it (paper: 50)."})
    top_p: float = field(default=1.0, metadata={"help": "Sampling top-p; 1.0 disables it (paper: 0.9)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (paper: 1.0)."})
    no_repeat_ngram_size: int = field(
        default=0,
        metadata={
            "help": "Ban repeated n-grams of this size; 0 disables it (paper: 2, chosen for GPT-2's 50K vocabulary: "
            "with a small vocabulary it bans sub-word bigrams that real text repeats)."
        },
    )
    generation_max_length: int = field(
        default=128, metadata={"help": "Max tokens including the prompt (paper: 128)."}
    )
    num_return_sequences: int = field(default=2, metadata={"help": "Sequences per prompt (paper: 2)."})
    quality_in_card: bool = field(
        default=False,
        metadata={
            "help": "Also show the synthetic data quality report in the dataset card (pushed with the data). "
            "The report compares with PRIVATE validation text and is NOT covered by the guarantee; without this "
            "flag it is only written locally (synthetic/quality.json, quality.md)."
        },
    )


@dataclass
class StudentArguments(_Arguments):
    student_epochs: float = field(default=3.0, metadata={"help": "Epochs over the synthetic data."})
    student_learning_rate: float = field(default=2e-3, metadata={"help": "Student learning rate."})
    student_batch_size: int = field(
        default=32, metadata={"help": "Student per-device batch (synthetic data)."}
    )
    kd_lambda: float = field(
        default=0.4, metadata={"help": "Weight of the KD term (1-lambda on CE); paper 0.4."}
    )
    kd_temperature: float = field(default=1.0, metadata={"help": "Distillation temperature t (paper: 1)."})
    kd_loss: KdLoss = field(
        default="forward_kl", metadata={"help": "Distillation divergence (paper: forward_kl)."}
    )
    alpha_hidden: float = field(default=0.0, metadata={"help": "Weight of the hidden-state alignment term."})
    on_policy_epochs: float = field(
        default=2.0,
        metadata={"help": "Epochs of the on-policy student (its rollouts make each step costlier)."},
    )
    on_policy_ratio: float = field(
        default=0.25, metadata={"help": "Share of on-policy batches (on_policy method)."}
    )
    dp_student_epochs: float = field(
        default=3.0, metadata={"help": "DP-SGD epochs of private-data students."}
    )
    dp_opd_teacher: DpOpdTeacher = field(
        default="dp_half",
        metadata={
            "help": "Teacher of the dp_opd method: 'dp_half' (DP-SGD at epsilon/2 on the private data, the dpkd "
            "teacher; its release is composed, so the student gets the other half) or 'public' (the public base "
            "teacher, which never saw the private data: the student gets all of epsilon)."
        },
    )
    dp_opd_prompt_tokens: int = field(
        default=8,
        metadata={
            "help": "dp_opd: tokens of each private text after its control codes in the prompt the student continues."
        },
    )
    dp_opd_max_new_tokens: int = field(
        default=64,
        metadata={"help": "dp_opd: tokens per student rollout (at most half of --max_length)."},
    )

    def __post_init__(self):
        super().__post_init__()
        if self.dp_opd_prompt_tokens < 0 or self.dp_opd_max_new_tokens < 1:
            raise ValueError(
                f"--dp_opd_prompt_tokens {self.dp_opd_prompt_tokens} must be >= 0 and --dp_opd_max_new_tokens "
                f"{self.dp_opd_max_new_tokens} >= 1."
            )


@dataclass
class AuditArguments(_Arguments):
    audit_num_records: int = field(
        default=200,
        metadata={
            "help": "Members per audit, and as many non-members matched to them from the test split (capped by "
            "its size). Every AUC comes with its 95 percent interval: about +-0.055 with 200 + 200 records, +-0.025 with "
            "the paper's 1000 + 1000."
        },
    )
    audit_models: str = field(
        default="non_private_teacher,teacher,distildp",
        metadata={"help": "Models to audit: teacher, non_private_teacher, or any student method."},
    )
    audit_mope_perturbations: int = field(default=2, metadata={"help": "MoPe weight perturbations."})
    audit_canary_candidates: int = field(
        default=2000,
        metadata={
            "help": "Candidates scored per canary: every candidate when the canary's space is at most this "
            "large (exact exposure), else this many sampled ones (estimated exposure)."
        },
    )


@dataclass
class HubArguments(_Arguments):
    push_teacher: str | None = field(
        default=None, metadata={"help": "Hub repo id to push the DP teacher to."}
    )
    push_synthetic: str | None = field(
        default=None, metadata={"help": "Hub dataset repo id for the synthetic data."}
    )
    push_student: str | None = field(
        default=None, metadata={"help": "Hub repo id to push the DistilDP student to."}
    )
    hub_private_repo: bool = field(default=False, metadata={"help": "Create the Hub repos as private."})
    hub_token: str | None = field(default=None, metadata={"help": "Hub token (default: the logged-in one)."})


ARGUMENT_CLASSES = (
    PipelineArguments,
    DataArguments,
    TeacherArguments,
    GenerationArguments,
    StudentArguments,
    AuditArguments,
    HubArguments,
)

#: The --quick preset: the whole pipeline in about a minute, for smoke tests.
QUICK = {
    "run_dir": "runs/quick",
    "save_steps": 2,
    "methods": ",".join(METHODS),  # the smoke run covers every method
    "demo_num_train": 600,
    "demo_num_public": 600,
    "max_length": 48,
    "pretrain_steps": 30,
    "teacher_epochs": 1.0,
    "teacher_batch_size": 64,
    "num_synthetic_samples": 128,
    "generation_max_length": 48,
    "student_epochs": 1.0,
    "dp_student_epochs": 1.0,
    "non_private_epochs": 1.0,
    "on_policy_epochs": 1.0,
    "audit_num_records": 32,
    "audit_mope_perturbations": 2,
}


@dataclass
class RunConfig:
    pipeline: PipelineArguments
    data: DataArguments
    teacher: TeacherArguments
    generation: GenerationArguments
    student: StudentArguments
    audit: AuditArguments
    hub: HubArguments

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for part in (
            self.pipeline,
            self.data,
            self.teacher,
            self.generation,
            self.student,
            self.audit,
            self.hub,
        ):
            out.update({f.name: getattr(part, f.name) for f in fields(part)})
        if out.get("hub_token") is not None:
            out["hub_token"] = "<HUB_TOKEN>"  # config.json and results.json never hold the token
        return out

    @property
    def stage_list(self) -> list[str]:
        return list(STAGES) if self.pipeline.stages == "all" else _split(self.pipeline.stages)

    @property
    def method_list(self) -> list[str]:
        return _split(self.pipeline.methods)


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read a YAML recipe; errors name the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config {path}: no such recipe file (see recipes/ for examples).")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ValueError(f"--config {path}: malformed YAML: {e}") from None
    except UnicodeDecodeError:
        raise ValueError(f"--config {path}: not a UTF-8 text file.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(
            f"--config {path}: a recipe is a mapping of argument names to values, got {type(data).__name__}."
        )
    return data


def _typed_recipe(parser: HfArgumentParser, recipe: dict[str, Any], path: str | None) -> dict[str, Any]:
    """Recipe values converted as the command line converts them (a YAML `seed: abc` fails like `--seed abc`)."""
    actions = {a.dest: a for a in parser._actions}
    typed = {}
    for key, value in recipe.items():
        if key == "control_domain" and isinstance(value, dict):
            value = json.dumps(value)  # a YAML mapping {column: [values]}: kept as JSON text
        convert = actions[key].type
        if value is None or not callable(convert):
            typed[key] = value
            continue
        try:
            typed[key] = convert(str(value).lower() if isinstance(value, bool) else str(value))
        except (TypeError, ValueError):
            kind = getattr(convert, "__name__", "value")
            raise ValueError(
                f"--config {path}: {key}: {value!r} is not a valid {kind}; fix the recipe (see --help for {key})."
            ) from None
    return typed


def parse_run_config(argv: list[str] | None = None) -> RunConfig:
    """Parse defaults < --quick preset < YAML recipe (--config) < command-line flags into a RunConfig."""
    argv = list(sys.argv[1:] if argv is None else argv)
    config_path = None
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise ValueError("--config needs a path to a YAML recipe, e.g. --config recipes/demo.yaml.")
        config_path = argv[i + 1]
        del argv[i : i + 2]
    parser = HfArgumentParser(
        ARGUMENT_CLASSES, description="DistilDP: DP teacher -> synthetic data -> student."
    )
    known = {a.dest for a in parser._actions}
    recipe = load_recipe(config_path) if config_path else {}
    unknown = sorted(set(recipe) - known)
    if unknown:
        raise ValueError(
            f"--config {config_path}: unknown recipe key(s) {', '.join(unknown)}; run with --help for every field."
        )
    quick = bool(recipe.get("quick", False)) or any(
        a in ("--quick", "--quick=True", "--quick=true") for a in argv
    )
    if quick:
        parser.set_defaults(**QUICK)
    parser.set_defaults(**_typed_recipe(parser, recipe, config_path))
    parts = parser.parse_args_into_dataclasses(args=argv)
    config = RunConfig(*parts)
    validate_run_config(config)
    return config


def parse_control_domain(value: str | dict) -> dict[str, list[str]]:
    """`--control_domain`: a JSON file {column: [values]}, inline ``column=v1|v2;column2=a|b``, or a JSON object.

    A value ending in ``.json``, or holding no ``=``, is a file; one starting with ``{`` is JSON text (a YAML
    recipe may give a mapping); anything else is the inline list. Values become stripped strings (as the
    loaders write control values: a JSON 5.0 is "5.0"). Every error names the argument and the fix.
    """
    hint = (
        'give a JSON file {"column": ["value", ...]} or inline \'column=v1|v2;column2=a|b\' (use a file when '
        "a value holds ';', '|' or '=')"
    )
    text = "" if isinstance(value, dict) else str(value).strip()
    if isinstance(value, dict):
        raw = value
    elif text.startswith("{"):
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"--control_domain {value!r}: not valid JSON ({e}); {hint}.") from None
    elif text.lower().endswith(".json") or "=" not in text:
        path = Path(text).expanduser()
        if not path.is_file():
            raise ValueError(f"--control_domain {value!r}: no such file; {hint}.")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(
                f"--control_domain {value!r}: not a valid UTF-8 JSON file ({e}); {hint}."
            ) from None
    else:
        raw = {}
        for part in text.split(";"):
            if not part.strip():
                continue
            column, sep, values = part.partition("=")
            if not sep:
                raise ValueError(f"--control_domain {value!r}: {part.strip()!r} has no '='; {hint}.")
            column = column.strip()
            if column in raw:
                raise ValueError(
                    f"--control_domain {value!r}: column {column!r} is given twice; list it once."
                )
            raw[column] = values.split("|")
    if not isinstance(raw, dict):
        raise ValueError(
            f"--control_domain {value!r}: holds a {type(raw).__name__}, not an object {{column: [values]}}; "
            f"{hint}."
        )
    if not raw:
        raise ValueError(f"--control_domain {value!r}: declares no column; {hint}.")
    domain: dict[str, list[str]] = {}
    for column, values in raw.items():
        column = str(column).strip()
        if not column:
            raise ValueError(f"--control_domain {value!r}: a column name is empty; {hint}.")
        if not isinstance(values, list) or any(
            isinstance(v, bool) or not isinstance(v, str | int | float) for v in values
        ):
            raise ValueError(
                f"--control_domain {value!r}: the values of {column!r} must be a list of strings or numbers; {hint}."
            )
        vals = [str(v).strip() for v in values]
        if not vals or any(not v for v in vals):
            raise ValueError(
                f"--control_domain {value!r}: column {column!r} has an empty value list or an empty value; "
                "list every value the column can take."
            )
        dup = sorted({v for v in vals if vals.count(v) > 1})
        if dup:
            raise ValueError(
                f"--control_domain {value!r}: column {column!r} repeats {dup}; list each value once."
            )
        domain[column] = vals
    return domain


def validate_run_config(config: RunConfig) -> None:
    """Check the arguments before any work starts; every error names the argument and the fix."""
    p = config.pipeline
    bad_stages = [s for s in config.stage_list if s not in STAGES]
    if bad_stages:
        raise ValueError(
            f"--stages: unknown stage(s) {', '.join(bad_stages)}; choose from {', '.join(STAGES)} or 'all'."
        )
    bad_methods = [m for m in config.method_list if m not in METHODS]
    if bad_methods:
        raise ValueError(
            f"--methods: unknown method(s) {', '.join(bad_methods)}; choose from {', '.join(METHODS)}."
        )
    if not p.target_epsilon > 0:
        raise ValueError(f"--target_epsilon {p.target_epsilon}: must be > 0 (the paper uses 2.0).")
    if p.target_delta is not None and not 0 < p.target_delta < 1:
        raise ValueError(f"--target_delta {p.target_delta}: must lie strictly between 0 and 1 (e.g. 1e-6).")
    if p.repeats < 1:
        raise ValueError(f"--repeats {p.repeats}: must be >= 1 (the number of independent DP draws).")
    h = config.hub
    if p.repeats > 1 and (h.push_teacher or h.push_synthetic or h.push_student):
        raise ValueError(
            f"--repeats {p.repeats} measures several draws; push from a single-draw run (--repeats 1) so the "
            "pushed artifacts are one draw's, with that draw's ledger."
        )
    if p.cpu_threads is not None and p.cpu_threads < 1:
        raise ValueError(
            f"--cpu_threads {p.cpu_threads}: must be >= 1 (or left unset for every usable core)."
        )
    d = config.data
    if d.control_domain is not None:
        parse_control_domain(d.control_domain)
    from hf_dpkd.privacy.units import check_unit_settings

    check_unit_settings(d.privacy_unit_column, d.max_rows_per_unit, cli=True)
    if not d.histogram_noise_multiplier > 0:
        raise ValueError(f"--histogram_noise_multiplier {d.histogram_noise_multiplier}: must be > 0.")
    if d.max_length < 8:
        raise ValueError(
            f"--max_length {d.max_length}: too short for a control-code prompt and text; use >= 32."
        )
    if config.audit.audit_canary_candidates < 100:
        raise ValueError(
            f"--audit_canary_candidates {config.audit.audit_canary_candidates}: must be >= 100 (exposure is "
            "estimated from that many candidates; 2000 is a good default)."
        )
    t = config.teacher
    from hf_dpkd.data.models import parse_shape

    parse_shape(t.demo_teacher_shape, "--demo_teacher_shape")
    parse_shape(t.demo_student_shape, "--demo_student_shape")
    if not t.per_sample_max_grad_norm > 0:
        raise ValueError(f"--per_sample_max_grad_norm {t.per_sample_max_grad_norm}: must be > 0 (e.g. 1.0).")
    t.lora_settings()
    for name in (
        "teacher_epochs",
        "student_epochs",
        "dp_student_epochs",
        "teacher_learning_rate",
        "student_learning_rate",
    ):
        part = config.teacher if hasattr(config.teacher, name) else config.student
        if not getattr(part, name) > 0:
            raise ValueError(f"--{name} {getattr(part, name)}: must be > 0.")
    g = config.generation
    if g.num_synthetic_samples <= 0:
        raise ValueError(f"--num_synthetic_samples {g.num_synthetic_samples}: must be > 0.")
    s = config.student
    if not 0 <= s.kd_lambda <= 1:
        raise ValueError(f"--kd_lambda {s.kd_lambda}: must lie in [0, 1] (paper: 0.4).")
    if not s.kd_temperature > 0:
        raise ValueError(f"--kd_temperature {s.kd_temperature}: must be > 0 (paper: 1.0).")
    for name, value in (("dp_teacher", t.dp_teacher), ("synthetic_data", g.synthetic_data)):
        if value is not None and not Path(value).expanduser().exists():
            from hf_dpkd.hub import validate_repo_id

            try:
                validate_repo_id(value)
            except ValueError:
                raise ValueError(
                    f"--{name} {value!r}: no such folder, and not a Hub id ('namespace/name'); give a folder "
                    "written by the pipeline or the id of a repo it pushed."
                ) from None
    for push, given in (("push_teacher", "dp_teacher"), ("push_synthetic", "synthetic_data")):
        if getattr(config.hub, push) and (t.dp_teacher if given == "dp_teacher" else g.synthetic_data):
            raise ValueError(
                f"--{push} with --{given}: this run did not make that artifact; push it from the run that did "
                f"(or drop --{push})."
            )
    for name in ("push_teacher", "push_synthetic", "push_student"):
        repo = getattr(config.hub, name)
        if repo is not None:
            from hf_dpkd.hub import validate_repo_id

            try:
                validate_repo_id(repo)
            except ValueError as e:
                raise ValueError(f"--{name} {repo!r}: {e}") from None
