"""The argument dataclasses of the run, its data and what it produces: every flag of the pipeline but the
training settings (``training``), with its default, help and metadata (``fields`` says what they may declare).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Literal

from transformers import SchedulerType

from hf_dpkd.pipeline.constants import STUDENT_METHODS
from hf_dpkd.pipeline.stages import STAGES  # the stage registry: --stages is checked and listed from it
from hf_dpkd.privacy.accounting import Accountant
from hf_dpkd.settings.fields import Arguments, neutral, setting

if TYPE_CHECKING:
    from hf_dpkd.synthetic.generation import SyntheticGenerationConfig

#: The methods --methods may name: the non-private references first, then the students the pipeline trains.
METHODS = (
    "non_private_teacher",
    "non_private_student",
    *(m for m in STUDENT_METHODS if m != "non_private_student"),
)

# The choices owned elsewhere (accountants, clipping modes, KD losses, peft methods) are imported with their
# Literal; these are the pipeline's own.
ControlCodeMode = Literal["dp", "uniform", "exact"]
#: transformers' learning-rate schedules (TrainingArguments.lr_scheduler_type).
LrSchedulerType = Literal[tuple(s.value for s in SchedulerType)]


@dataclass
class PipelineArguments(Arguments):
    run_dir: str = field(
        default="runs/demo", metadata=neutral(help="Run directory: every artifact of the run lives here.")
    )
    stages: list[str] = field(
        default_factory=lambda: ["all"],
        metadata=neutral(help=f"Stages to run (comma- or space-separated), or 'all': {', '.join(STAGES)}."),
    )
    methods: list[str] = field(
        default_factory=lambda: ["distildp", "dp_syn_data", "dp_sgd_student"],
        metadata={"help": f"Methods to train and compare (comma- or space-separated): {', '.join(METHODS)}."},
    )
    quick: bool = field(default=False, metadata={"help": "A smoke run: tiny data, models and step counts."})
    repeats: int = field(
        default=1,
        metadata=neutral(
            help="Independent DP draws: the private stages (histogram to evaluate) are repeated N times with "
            "fresh noise in run_dir/draws/draw-K, and results.{json,md,png} report each method's mean and "
            "standard deviation. Every DP run draws fresh noise: claim an ordering of methods over >= 3 draws."
        ),
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
        metadata=neutral(
            help="Torch CPU threads of a single-process run (default: every usable core; `accelerate launch` "
            "without a config would otherwise leave one). Multi-process runs keep the launcher's setting."
        ),
    )
    cpu_workers: int | None = field(
        default=None,
        metadata=neutral(
            help="Processes that run a stage's independent jobs at once on CPU (synthetic shards, students), "
            "--cpu_threads divided among them (default: one per usable core; 1 runs them one after another). "
            "Linux only; runs on an accelerator or under a multi-process launch use 1."
        ),
    )
    verbose: bool = field(
        default=False,
        metadata=neutral(
            help="Print what the libraries print: the Trainer's logs of each logging step, transformers' bars "
            "of loading and saving weights, DeepSpeed's notices. Default: one line per stage, progress bars and "
            "results."
        ),
    )


@dataclass
class DataArguments(Arguments):
    dataset: str = field(
        default="demo",
        metadata={
            "help": "'demo' (embedded, generated), a known dataset name (yelp, big_patent, dbpedia) or a "
            "local csv/json/jsonl/parquet path."
        },
    )
    text_column: str | None = field(default=None, metadata={"help": "Text column (default: the dataset's)."})
    control_columns: list[str] | None = field(
        default=None,
        metadata={"help": "Control-code columns, comma- or space-separated (default: the dataset's)."},
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
class GenerationArguments(Arguments):
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
        default=128,
        metadata=setting(help="Max tokens including the prompt (paper: 128).", generation="max_length"),
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

    def generation_flags(self) -> dict[str, str]:
        """Each SyntheticGenerationConfig field these arguments set -> its flag (the field's name, or the one
        its ``generation`` metadata renames: generation_max_length sets max_length)."""
        from hf_dpkd.synthetic.generation import SyntheticGenerationConfig

        flags = {f.metadata.get("generation", f.name): f.name for f in fields(self)}
        return {f.name: flags[f.name] for f in fields(SyntheticGenerationConfig) if f.name in flags}

    def generation_config(self) -> SyntheticGenerationConfig:
        """The SyntheticGenerationConfig of these arguments: every field they share with it, the rest default."""
        from hf_dpkd.synthetic.generation import SyntheticGenerationConfig

        return SyntheticGenerationConfig(
            **{name: getattr(self, flag) for name, flag in self.generation_flags().items()}
        )


@dataclass
class AuditArguments(Arguments):
    audit_num_records: int = field(
        default=200,
        metadata=neutral(
            help="Members per audit, and as many non-members matched to them from the test split (capped by "
            "its size). Every AUC comes with its 95 percent interval: about +-0.055 with 200 + 200 records, +-0.025 with "
            "the paper's 1000 + 1000."
        ),
    )
    audit_models: list[str] = field(
        default_factory=lambda: ["non_private_teacher", "teacher", "distildp"],
        metadata=neutral(help="Models to audit: teacher, non_private_teacher, or any student method."),
    )
    audit_mope_perturbations: int = field(default=2, metadata=neutral(help="MoPe weight perturbations."))
    audit_canary_candidates: int = field(
        default=2000,
        metadata=neutral(
            help="Candidates scored per canary: every candidate when the canary's space is at most this "
            "large (exact exposure), else this many sampled ones (estimated exposure)."
        ),
    )


@dataclass
class HubArguments(Arguments):
    push_teacher: str | None = field(
        default=None, metadata=neutral(help="Hub repo id to push the DP teacher to.")
    )
    push_synthetic: str | None = field(
        default=None, metadata=neutral(help="Hub dataset repo id for the synthetic data.")
    )
    push_student: str | None = field(
        default=None, metadata=neutral(help="Hub repo id to push the DistilDP student to.")
    )
    hub_private_repo: bool = field(default=False, metadata=neutral(help="Create the Hub repos as private."))
    hub_token: str | None = field(
        default=None, metadata=neutral(help="Hub token (default: the logged-in one).")
    )
