"""The DistilDP pipeline as functions over one run directory.

Stages (each skipped when its marker exists, each resumable when interrupted):
  data       private splits, public split, tokenizer and base models (embedded demo or a loaded dataset)
  histogram  the distribution of control codes to generate (DP: first privacy-ledger entry)
  teacher    DP-SGD fine-tuning of the teacher (ledger entry 2); the non-private reference teacher too
  generate   control-coded synthetic data sampled from the DP teacher (post-processing)
  students   every method of `--methods` (DistilDP, DP Syn Data, DP-SGD student, DPKD, on-policy)
  evaluate   test perplexity in the paper's protocol -> results.json, results.md, results.png
  audit      membership inference, memorization, canary exposure -> audit.json, audit.md, roc.png
  push       optional Hub pushes of the teacher, the synthetic data and the DistilDP student
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset, DatasetDict, load_from_disk
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainingArguments,
)

from hf_dpkd._io import atomic_write_text
from hf_dpkd.hub import DEFAULT_PRIVACY_UNIT
from hf_dpkd.privacy.accounting import PrivacyLedger, default_delta
from hf_dpkd.privacy.units import unit_name
from hf_dpkd.run_config import RunConfig
from hf_dpkd.run_dir import RunDir, RunDirMismatchError

logger = logging.getLogger(__name__)

COMPLETE = ".complete"  # marker of a finished model folder
#: Never uploaded from a model folder: checkpoints and DP state (the secret seed), pickled arguments, and the
#: loggers' folders (the Trainer's logs of private batches).
NEVER_PUSHED = ["checkpoint-*", "*.pt", "training_args.bin", COMPLETE, "runs/*", "runs/**", "logs/**"]
STUDENT_METHODS = (
    "distildp",
    "dp_syn_data",
    "dp_sgd_student",
    "non_private_student",
    "dpkd",
    "on_policy",
    "dp_opd",
)
METHOD_LABELS = {
    "non_private_teacher": "Teacher, non-private (reference)",
    "teacher": "DP teacher",
    "distildp": "DistilDP student (CE + KD)",
    "dp_syn_data": "DP Syn Data student (CE only)",
    "dp_sgd_student": "DP-SGD student",
    "non_private_student": "Student, non-private (reference)",
    "public_teacher": "Public base teacher (no private data)",
    "public_student": "Public base student (no private data)",
    "dpkd": "DPKD student",
    "on_policy": "On-policy student (DP teacher)",
    "dp_opd": "DP-OPD student (DP-SGD, on-policy)",
}


# ---------------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------------
def _training_args(output_dir: Path, config: RunConfig, **kwargs) -> dict[str, Any]:
    base = dict(
        output_dir=str(output_dir),
        use_cpu=not torch.cuda.is_available(),
        report_to=[],
        seed=config.pipeline.seed,
        save_strategy="steps",
        save_steps=config.pipeline.save_steps,
        save_total_limit=1,
        logging_steps=10,
        lr_scheduler_type=config.pipeline.lr_scheduler_type,
        weight_decay=0.01,
        disable_tqdm=False,
        dataloader_num_workers=0,
    )
    base.update(kwargs)
    return base


#: Non-private training batches texts of similar length (less padding); DP-SGD keeps Poisson sampling.
LENGTH_GROUPED = "group_by_length"


def _resume_point(output_dir: Path) -> str | None:
    from hf_dpkd.trainers.checkpoints import last_complete_checkpoint

    return last_complete_checkpoint(str(output_dir))


def _train_and_save(
    trainer,
    tokenizer,
    output: Path,
    final: Path,
    ledger: PrivacyLedger | None = None,
    card: Callable[[Path], Path] | None = None,
) -> Path:
    """Train (resuming from the last complete checkpoint), save the model folder with its `card` (README.md,
    the one a push uploads), and mark it finished last."""
    trainer.train(resume_from_checkpoint=_resume_point(output))
    trainer.save_model(str(final))
    tokenizer.save_pretrained(str(final))
    if ledger is not None:
        ledger.save(final)
    if card is not None:
        card(final)
    atomic_write_text(final / COMPLETE, "finished\n")  # written last: a kill never leaves a "done" model
    return final


def ensure_pad_token(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Give the tokenizer a pad token distinct from eos (the model's new row = mean embedding, as the paper does)."""
    if tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        model.config.pad_token_id = tokenizer.pad_token_id
        return
    tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
    old = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > old:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    model.config.pad_token_id = tokenizer.pad_token_id


def load_model_and_tokenizer(
    path: str | Path, argument: str = "model", base: str | Path | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from a folder or a Hub id, with a clear error for a bad path.

    A LoRA adapter folder loads as the adapter merged into a fresh copy of `base` (the public base model it was
    trained on; default: the base the adapter records), so every stage sees a plain model.
    """
    from hf_dpkd.peft_support import is_adapter_folder, load_merged

    path = str(path)
    if (path.startswith((".", "/")) or os.sep in path and not _looks_like_hub_id(path)) and not Path(
        path
    ).exists():
        raise FileNotFoundError(
            f"--{argument} {path!r}: no such folder; give a local model folder or a Hub id (namespace/name)."
        )
    tokenizer = AutoTokenizer.from_pretrained(path)
    # Every use here cuts or windows its sequences to the model's length itself (training rows, perplexity
    # windows, audit scores), so the tokenizer's "longer than the maximum sequence length" notice is moot.
    tokenizer.deprecation_warnings[LONG_SEQUENCE_NOTICE] = True
    if is_adapter_folder(path):
        return load_merged(path, base), tokenizer
    try:
        model = AutoModelForCausalLM.from_pretrained(path)
    except ValueError as e:
        kind = type(AutoConfig.from_pretrained(path)).__name__
        raise ValueError(
            f"--{argument} {path!r} is not a causal language model (a {kind}, which AutoModelForCausalLM "
            "cannot load); DistilDP needs a decoder-only LM (e.g. a GPT-2, Llama or Qwen checkpoint)."
        ) from e
    return model, tokenizer


def _check_splits(private: DatasetDict, name: str) -> None:
    for split in ("train", "test"):
        if split not in private or len(private[split]) == 0:
            raise ValueError(
                f"--dataset {name!r} has no (or an empty) {split!r} split; give train and test data "
                "(files named train.* and test.*, or a Hub dataset with both splits)."
            )


#: The key under which a tokenizer records that it already gave its "sequence longer than the maximum" notice.
LONG_SEQUENCE_NOTICE = "sequence-length-is-longer-than-the-specified-maximum"


def _looks_like_hub_id(path: str) -> bool:
    return path.count("/") == 1 and not Path(path).exists()


def _tokenize_for_lm(
    dataset: Dataset, tokenizer, fmt, max_length: int, mask_prompt: bool = False, keep: str | None = None
) -> Dataset:
    """Format each record as control-code prompt + text + eos and tokenize (truncated to `max_length`).

    With `mask_prompt` the prompt tokens get label -100 (students learn the text given the codes). `keep`:
    a column carried over as is (the privacy unit column of user-level DP-SGD).
    Truncated records are counted and reported: a large share means --max_length is too small.
    """
    eos = tokenizer.eos_token or ""
    columns = list(dataset.column_names)

    def encode(batch):
        out = {"input_ids": [], "attention_mask": [], "labels": [], TRUNCATED: []}
        for i in range(len(batch["text"])):
            record = {c: batch[c][i] for c in columns}
            prompt = fmt.format_prompt(record)
            full = tokenizer(prompt + record["text"] + eos, verbose=False)["input_ids"]  # cut below
            ids = full[:max_length]
            labels = list(ids)
            if mask_prompt:
                n = min(len(tokenizer(prompt)["input_ids"]), len(ids) - 1)
                labels[:n] = [-100] * n
            out["input_ids"].append(ids)
            out["attention_mask"].append([1] * len(ids))
            out["labels"].append(labels)
            out[TRUNCATED].append(len(full) > max_length)
        return out

    removed = [c for c in columns if c != keep]
    encoded = dataset.map(encode, batched=True, remove_columns=removed, desc="tokenizing")
    truncated = int(sum(encoded[TRUNCATED]))
    if truncated and (truncated, len(encoded), max_length) not in _TRUNCATION_REPORTED:
        _TRUNCATION_REPORTED.add((truncated, len(encoded), max_length))  # once per process, not per training
        logger.warning(
            "%d of %d texts are longer than max_length=%d tokens with their control codes and were truncated "
            "(raise --max_length to keep them whole).",
            truncated,
            len(encoded),
            max_length,
        )
    return encoded.remove_columns(TRUNCATED)


TRUNCATED = "_truncated"
_TRUNCATION_REPORTED: set[tuple[int, int, int]] = set()


def _lm_collator(tokenizer):
    """Pads input_ids/attention_mask with the pad token and labels with -100 (keeps masked prompts)."""
    return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, padding=True)


# ---------------------------------------------------------------------------------------------------
# The pipeline object
# ---------------------------------------------------------------------------------------------------
class Pipeline:
    """Runs the stages of `config` over `config.pipeline.run_dir`."""

    def __init__(self, config: RunConfig):
        self.config = config
        self.run = RunDir(config.pipeline.run_dir)
        self._data: DatasetDict | None = None
        self._fmt = None
        self._resolved: dict[str, Path] = {}

    # -- shared artifacts -------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.run / "data" / "private"

    def data(self) -> DatasetDict:
        if self._data is None:
            self._data = load_from_disk(str(self.data_dir))
        return self._data

    def fmt(self):
        if self._fmt is None:
            from hf_dpkd.synthetic.control_codes import ControlCodeFormat

            self._fmt = ControlCodeFormat(fields=tuple(tuple(f) for f in self.info()["control_fields"]))
        return self._fmt

    def info(self) -> dict[str, Any]:
        return json.loads((self.run / "data" / "info.json").read_text())

    def delta(self) -> float:
        """--target_delta, else the default for N privacy units (rows, or users with --privacy_unit_column)."""
        return self.config.pipeline.target_delta or default_delta(self.num_privacy_units())

    def num_privacy_units(self) -> int:
        train, column = self.data()["train"], self.config.data.privacy_unit_column
        if column is None:
            return len(train)
        if column not in train.column_names:
            raise ValueError(
                f"--privacy_unit_column {column!r} is not a column of the private training data (it has "
                f"{train.column_names}); name the column identifying each row's user (demo: user_id)."
            )
        return len(set(train[column]))

    def base_path(self, which: str) -> Path:
        return self.run / "base" / which

    def ledger_for(self, path: Path) -> PrivacyLedger | None:
        return PrivacyLedger.load(path) if (path / "privacy_ledger.json").is_file() else None

    def _given(self, argument: str, reference: str, repo_type: str) -> Path:
        """A folder for an artifact given by --argument (a local folder or a Hub id, downloaded once)."""
        if argument not in self._resolved:
            from hf_dpkd.hub import resolve_artifact

            folder = resolve_artifact(
                reference, argument=argument, repo_type=repo_type, token=self.config.hub.hub_token
            )
            if not (folder / "privacy_ledger.json").is_file():
                raise ValueError(
                    f"--{argument} {reference!r} has no privacy_ledger.json: it was not written by this project's "
                    "DP stages, so its guarantee is unknown. Give a DP teacher / synthetic dataset made by them."
                )
            self._resolved[argument] = folder
        return self._resolved[argument]

    def teacher_dir(self) -> Path:
        """The DP teacher: --dp_teacher when given, else the one this run trains."""
        given = self.config.teacher.dp_teacher
        return self._given("dp_teacher", given, "model") if given else self.run / "teacher" / "final"

    def synthetic_dir(self) -> Path:
        """The DP synthetic data: --synthetic_data when given, else the one this run generates."""
        given = self.config.generation.synthetic_data
        return self._given("synthetic_data", given, "dataset") if given else self.run / "synthetic"

    def _composed(self, *folders: Path) -> PrivacyLedger:
        """The ledgers of `folders` composed (a release shared by several counts once), at this run's delta."""
        ledger = PrivacyLedger(accountant=self.config.pipeline.accountant, delta=self.delta())
        for folder in folders:
            ledger = ledger.compose(PrivacyLedger.load(folder))
        return ledger

    def teacher_ledger(self) -> PrivacyLedger:
        """What generation from the teacher costs: the teacher's releases and this run's histogram."""
        folders = [self.teacher_dir()]
        if (self.run / "histogram" / "privacy_ledger.json").is_file():
            folders.append(self.run / "histogram")
        return self._composed(*folders)

    def dp_seed(self, release: str) -> int:
        """The secret seed of a DP-SGD release of this run (noise and batches), from the run's secret file.

        Drawn from the OS's secure randomness once per run directory and never pushed, so a re-run of the
        same command repeats an unfinished training exactly while nobody else can regenerate its noise.
        """
        import secrets

        path = self.run / "secrets" / "dp_seed.json"
        if not path.is_file():
            atomic_write_text(path, json.dumps({"master": secrets.randbits(62)}), secret=True)
        master = json.loads(path.read_text())["master"]
        digest = hashlib.sha256(f"{release}:{master}".encode()).digest()
        return int.from_bytes(digest[:8], "big") >> 2

    # -- stage runner -----------------------------------------------------------------------------
    def run_stages(self) -> dict[str, Any]:
        """Run the stages not yet done, printing one line as each starts and its seconds as it ends."""
        from hf_dpkd.console import run_log

        with self.run, run_log(verbose=self.config.pipeline.verbose):
            self._check_same_settings()
            atomic_write_text(self.run / "config.json", json.dumps(self.config.to_dict(), indent=2))
            for stage in self.config.stage_list:
                if (
                    stage == "push"
                ):  # pushes are idempotent: redone whenever a repo is given, else nothing to do
                    h = self.config.hub
                    if not (h.push_teacher or h.push_synthetic or h.push_student):
                        continue
                elif self.run.is_done(stage):
                    logger.info("stage %s: already done, skipped", stage)
                    continue
                start = time.time()
                print(f"==> stage {stage}", flush=True)
                result = getattr(self, f"stage_{stage}")() or {}
                result["seconds"] = round(time.time() - start, 1)
                self.run.mark_done(stage, result)
                print(f"    stage {stage} done in {result['seconds']:.1f} s", flush=True)
            self._record_stage_seconds()
            return self.summary()

    def stage_seconds(self) -> dict[str, float]:
        """Seconds each finished stage took (from its marker; a resumed run keeps the times of earlier runs)."""
        seconds = {}
        for stage in self.config.stage_list:
            result = self.run.stage_result(stage)
            if result and "seconds" in result:
                seconds[stage] = result["seconds"]
        return seconds

    def _record_stage_seconds(self) -> None:
        """Write the per-stage seconds into results.json (the evaluate stage writes it before the audit runs)."""
        results = self.run / "results.json"
        if results.is_file():
            data = json.loads(results.read_text())
            data["stage_seconds"] = self.stage_seconds()
            atomic_write_text(results, json.dumps(data, indent=2, default=str))

    #: Arguments that do not change what the stages compute (where to push, which stages to run).
    _NEUTRAL = {
        "stages",
        "push_teacher",
        "push_synthetic",
        "push_student",
        "hub_private_repo",
        "hub_token",
        "run_dir",
        "audit_models",
        "audit_num_records",
        "audit_mope_perturbations",
        "audit_canary_candidates",
        "cpu_threads",
        "repeats",
        "verbose",
    }

    def _check_same_settings(self) -> None:
        """Refuse to continue a run directory produced with other settings (its finished stages would be stale)."""
        previous = self.run / "config.json"
        if not previous.is_file() or not any((self.run / "stages").glob("*.json")):
            return  # nothing finished yet: a run that failed on bad input is re-run with the fixed settings
        old = json.loads(previous.read_text())
        new = json.loads(json.dumps(self.config.to_dict()))
        changed = sorted(k for k in new if k not in self._NEUTRAL and k in old and old[k] != new[k])
        if changed:
            details = ", ".join(f"{k}: {old[k]!r} -> {new[k]!r}" for k in changed[:5])
            raise RunDirMismatchError(
                f"run_dir={str(self.run.path)!r} was produced with other settings ({details}); use a new --run_dir, "
                "or the original settings to resume it."
            )

    def summary(self) -> dict[str, Any]:
        results = self.run / "results.json"
        return json.loads(results.read_text()) if results.is_file() else {}

    # -- stage: data ------------------------------------------------------------------------------
    def stage_data(self) -> dict[str, Any]:
        from hf_dpkd.hub import mark_private_data

        c = self.config
        info: dict[str, Any] = {"dataset": c.data.dataset}
        if c.data.dataset == "demo":
            from hf_dpkd.data.demo import make_demo_dataset
            from hf_dpkd.data.models import build_demo_models, train_demo_tokenizer
            from hf_dpkd.synthetic.control_codes import ControlCodeFormat

            demo = make_demo_dataset(
                num_train=c.data.demo_num_train,
                num_public=c.data.demo_num_public,
                seed=c.pipeline.seed,
                public_coverage=c.data.demo_public_coverage,
            )
            public = demo.dataset["public"]
            private = DatasetDict({k: v for k, v in demo.dataset.items() if k != "public"})
            info["control_fields"] = [list(x) for x in demo.control_fields.items()]
            # declared public: the categories and star values of the demo (or --control_domain)
            info.update(self._public_domain(info["control_fields"], demo.domain))
            info["canaries"] = demo.canaries
            public.save_to_disk(str(self.run / "data" / "public"))
            fmt = ControlCodeFormat(fields=tuple(demo.control_fields.items()))
            public_texts = demo.public_texts(fmt)
            tokenizer = train_demo_tokenizer(public_texts)
            paths = build_demo_models(
                self.run.path,
                tokenizer,
                public_texts,
                pretrain_steps=c.teacher.pretrain_steps,
                max_length=c.data.max_length,
                seed=c.pipeline.seed,
                shapes={"teacher": c.teacher.demo_teacher_shape, "student": c.teacher.demo_student_shape},
            )
            info["base_models"] = {k: str(v) for k, v in paths.items()}
        else:
            from hf_dpkd.data.loaders import declared_domain, load_private_dataset

            controls = c.data.control_columns.split(",") if c.data.control_columns else None
            private, control_fields = load_private_dataset(
                c.data.dataset,
                text_column=c.data.text_column,
                control_columns=controls,
                unit_column=c.data.privacy_unit_column,
            )
            info["control_fields"] = [list(x) for x in control_fields]
            # the loader's public domain of the datasets it knows, and --control_domain (never the records)
            info.update(
                self._public_domain(info["control_fields"], declared_domain(c.data.dataset, control_fields))
            )
            _check_splits(private, c.data.dataset)
            # both models load (and fail on a bad path) before anything is written
            bases = {
                which: load_model_and_tokenizer(source, argument=f"{which}_model")
                for which, source in (
                    ("teacher", c.teacher.teacher_model),
                    ("student", c.teacher.student_model),
                )
            }
            for which, (model, tokenizer) in bases.items():
                ensure_pad_token(model, tokenizer)
                model.save_pretrained(self.base_path(which))
                tokenizer.save_pretrained(self.base_path(which))
            info["base_models"] = {
                "teacher": str(self.base_path("teacher")),
                "student": str(self.base_path("student")),
            }
        if c.data.max_train_samples:
            private["train"] = private["train"].select(
                range(min(c.data.max_train_samples, len(private["train"])))
            )
        _check_splits(private, c.data.dataset)
        private.save_to_disk(str(self.data_dir))
        mark_private_data(self.data_dir)
        info["sizes"] = {k: len(v) for k, v in private.items()}
        atomic_write_text(self.run / "data" / "info.json", json.dumps(info, indent=2))
        self._data = None
        return {"sizes": info["sizes"]}

    # -- stage: histogram -------------------------------------------------------------------------
    def stage_histogram(self) -> dict[str, Any]:
        from hf_dpkd.privacy import histogram

        c = self.config
        mode = c.data.control_code_distribution
        ledger = PrivacyLedger(accountant=c.pipeline.accountant, delta=self.delta())
        train = self.data()["train"]
        # Every mode: a domain not declared public is read off the data and recorded as NOT private.
        domain, domain_release = self._code_domain(train, ledger)
        if mode == "dp":
            dist = histogram.dp_control_code_distribution(
                train,
                self.fmt(),
                c.data.histogram_noise_multiplier,
                ledger,
                domain=domain,
                seed=None,  # fresh noise: a seed from the recipe would make the released noise removable
                privacy_unit_column=c.data.privacy_unit_column,
            )
        elif mode == "uniform":
            dist = histogram.uniform_distribution(self.fmt(), domain)  # free over a public domain
        else:
            print(
                "WARNING: --control_code_distribution exact releases the EXACT private control-code histogram: "
                "NOT differentially private; it is recorded in the privacy ledger, so every epsilon that depends "
                "on it (teacher, synthetic data, students trained on it) is infinite.",
                flush=True,
            )
            dist = histogram.exact_private_distribution(train, self.fmt(), ledger=ledger)
        if domain_release is not None:
            dist.meta.update(domain_from_private_data=True, domain_release=domain_release)
            histogram_release = ledger.get(dist.meta.get("release", ""))
            if mode == "dp" and histogram_release is not None:
                histogram_release.meta["domain_from_private_data"] = True
        out = self.run / "histogram"
        out.mkdir(parents=True, exist_ok=True)
        dist.save(out / "control_codes.json")
        ledger.save(out)
        return {
            "mode": mode,
            "epsilon_so_far": ledger.epsilon() if ledger.releases else 0.0,
            "non_private_releases": [r.name for r in ledger.non_private_releases],
        }

    def _public_domain(self, fields: list[list[str]], declared: dict[str, list[str]]) -> dict[str, Any]:
        """info's ``domain`` (the public values of each control column known without the records) and
        ``domain_source``: `declared` by the dataset (loader or demo), overridden per column by --control_domain."""
        from hf_dpkd.synthetic.control_codes import ControlCodeFormat

        columns = [col for col, _ in fields]
        domain = {col: [str(v) for v in declared[col]] for col in columns if col in declared}
        source = {col: "dataset" for col in domain}
        given = self.config.data.control_domain
        if given is not None:
            from hf_dpkd.run_config import parse_control_domain

            user = parse_control_domain(given)
            unknown = sorted(set(user) - set(columns))
            if unknown:
                raise ValueError(
                    f"--control_domain names column(s) {unknown} that are not control-code columns of "
                    f"dataset={self.config.data.dataset!r} ({columns}); declare the values of those columns."
                )
            fmt = ControlCodeFormat(fields=tuple(tuple(f) for f in fields))
            for col, values in user.items():
                for v in values:
                    try:
                        fmt.check_value(col, v)
                    except ValueError as e:
                        raise ValueError(f"--control_domain: {e}") from None
                domain[col] = values
                source[col] = "--control_domain"
        return {
            "domain": {col: domain[col] for col in columns if col in domain},
            "domain_source": {col: source[col] for col in columns if col in source},
        }

    def _code_domain(
        self, dataset: Dataset, ledger: PrivacyLedger
    ) -> tuple[dict[str, list[str]], str | None]:
        """The domain of every control column, and the name of the non-private release when some were read off.

        Declared columns (info's ``domain``) must hold every value of the training data. A column without a
        declared domain is read off the private data: a value held by one record is revealed with certainty,
        so that is recorded in `ledger` as a NON-private release and the run's epsilon becomes infinite.
        """
        from hf_dpkd.privacy.histogram import record_domain_release

        info = self.info()
        declared, source = info.get("domain") or {}, info.get("domain_source") or {}
        domain: dict[str, list[str]] = {}
        missing = []
        for col in self.fmt().columns:
            if col not in declared:
                missing.append(col)
                continue
            domain[col] = [str(v) for v in declared[col]]
            outside = sorted({str(v) for v in dataset[col]} - set(domain[col]))
            if outside:
                where = (
                    "--control_domain"
                    if source.get(col) == "--control_domain"
                    else "the dataset's public domain"
                )
                raise ValueError(
                    f"{len(outside)} value(s) of control column {col!r} in the training data are outside its "
                    f"declared domain ({where}), e.g. {outside[0]!r}: pass --control_domain listing every value the "
                    "column can take (a JSON file {column: [values]} or 'column=v1|v2')."
                )
        if not missing:
            return domain, None
        message = (
            f"The control-code values of {missing} are read off the PRIVATE training data: a value held by one "
            "record is revealed with certainty. This is recorded in the privacy ledger as a non-private release: "
            "the run's epsilon (teacher, synthetic data and students built on them) is INFINITE. Pass "
            "--control_domain (a JSON file {column: [values]} or 'column=v1|v2;column2=a|b') declaring the public "
            "values to fix it."
        )
        logger.warning(message)
        print(f"WARNING: {message}", flush=True)
        for col in missing:
            domain[col] = sorted({str(v) for v in dataset[col]})
        return domain, record_domain_release(ledger, missing).name

    def control_distribution(self):
        from hf_dpkd.privacy.histogram import ControlCodeDistribution

        return ControlCodeDistribution.load(self.run / "histogram" / "control_codes.json")

    # -- stage: teacher ---------------------------------------------------------------------------
    def _train_private(
        self,
        base: Path,
        output: Path,
        *,
        epochs: float,
        learning_rate: float,
        target_epsilon: float | None,
        prior_ledger: Path | None = None,
        release_name: str = "dp_sgd",
        teacher_for_kd: Path | None = None,
        on_policy: bool = False,
        teacher_is_public: bool = False,
        peft: str = "none",
    ) -> Path:
        """Train `base` on the private training split: DP-SGD (target_epsilon) or non-private (None).

        With `teacher_for_kd`: DPKD, or with `on_policy` DP-OPD (the student's rollouts of each record's prompt,
        scored by that teacher); the teacher's ledger is composed, or it is declared public (`teacher_is_public`).
        With `peft="lora"` DP-SGD trains only LoRA adapters on `base` and the final folder holds the adapter.
        """
        from hf_dpkd.trainers.dp import DPConfig, DPTrainer

        c = self.config
        final = output / "final"
        if (final / COMPLETE).is_file():
            return final
        model, tokenizer = load_model_and_tokenizer(base)
        if peft == "lora" and target_epsilon is not None:
            from hf_dpkd.peft_support import add_lora

            model = add_lora(model, c.teacher.lora_settings())
        # DP-OPD's prompts are each record's control codes (masked: labels -100) plus the start of its text
        train = _tokenize_for_lm(
            self.data()["train"],
            tokenizer,
            self.fmt(),
            c.data.max_length,
            mask_prompt=on_policy,
            keep=c.data.privacy_unit_column if target_epsilon is not None else None,
        )
        common = _training_args(
            output,
            c,
            num_train_epochs=epochs,
            learning_rate=learning_rate,
            per_device_train_batch_size=c.teacher.teacher_batch_size,
            gradient_accumulation_steps=c.teacher.teacher_gradient_accumulation_steps,
        )
        if target_epsilon is None:
            common["per_device_train_batch_size"] = min(64, c.teacher.teacher_batch_size)
            common["train_sampling_strategy"] = LENGTH_GROUPED
            trainer = Trainer(
                model=model,
                args=TrainingArguments(**common),
                train_dataset=train,
                processing_class=tokenizer,
                data_collator=_lm_collator(tokenizer),
            )
        elif teacher_for_kd is None:
            args = DPConfig(
                **common,
                target_epsilon=target_epsilon,
                target_delta=self.delta(),
                accountant=c.pipeline.accountant,
                per_sample_max_grad_norm=c.teacher.per_sample_max_grad_norm,
                max_physical_batch_size=c.teacher.max_physical_batch_size,
                clipping_mode=c.teacher.clipping_mode,
                privacy_unit_column=c.data.privacy_unit_column,
                max_rows_per_unit=c.data.max_rows_per_unit,
                privacy_ledger_path=str(prior_ledger) if prior_ledger else None,
                privacy_release_name=release_name,
                dp_seed=self.dp_seed(release_name),
            )
            trainer = DPTrainer(
                model=model,
                args=args,
                train_dataset=train,
                processing_class=tokenizer,
                data_collator=_lm_collator(tokenizer),
            )
        else:
            from hf_dpkd.trainers.dp_distillation import DPDistillationConfig, DPDistillationTrainer

            teacher, _ = load_model_and_tokenizer(teacher_for_kd, base=self.base_path("teacher"))
            s = c.student
            loss: dict[str, Any] = dict(
                alpha_ce=1 - s.kd_lambda,
                alpha_kd=s.kd_lambda,
                temperature=s.kd_temperature,
                kd_loss=s.kd_loss,
            )
            if on_policy:  # DP-OPD: generalized JSD on the continuation tokens
                loss.update(
                    kd_loss="jsd",
                    dp_opd=True,
                    dp_opd_prompt_tokens=s.dp_opd_prompt_tokens,
                    on_policy_max_new_tokens=max(1, min(s.dp_opd_max_new_tokens, c.data.max_length // 2)),
                )
            args = DPDistillationConfig(
                **common,
                target_epsilon=target_epsilon,
                target_delta=self.delta(),
                accountant=c.pipeline.accountant,
                per_sample_max_grad_norm=c.teacher.per_sample_max_grad_norm,
                max_physical_batch_size=c.teacher.max_physical_batch_size,
                clipping_mode=c.teacher.clipping_mode,
                privacy_unit_column=c.data.privacy_unit_column,
                max_rows_per_unit=c.data.max_rows_per_unit,
                privacy_ledger_path=str(prior_ledger) if prior_ledger else None,
                privacy_release_name=release_name,
                dp_seed=self.dp_seed(release_name),
                teacher_is_public=teacher_is_public,
                **loss,
            )
            trainer = DPDistillationTrainer(
                model=model,
                teacher_model=teacher,
                args=args,
                train_dataset=train,
                processing_class=tokenizer,
                data_collator=_lm_collator(tokenizer),
            )
        return _train_and_save(trainer, tokenizer, output, final, card=partial(self.write_card, output.name))

    def stage_teacher(self) -> dict[str, Any]:
        c = self.config
        result: dict[str, Any] = {}
        if c.teacher.dp_teacher:
            result["teacher_source"] = c.teacher.dp_teacher
            result["teacher_epsilon"] = PrivacyLedger.load(self.teacher_dir()).epsilon(self.delta())
        else:
            result["teacher_epsilon"] = self._train_dp_teacher()
        if "non_private_teacher" in c.method_list:
            self._train_private(
                self.base_path("teacher"),
                self.run / "non_private_teacher",
                epochs=c.teacher.non_private_epochs,
                learning_rate=c.teacher.teacher_learning_rate,
                target_epsilon=None,
            )
        return result

    def _train_dp_teacher(self) -> float:
        c = self.config
        final = self._train_private(
            self.base_path("teacher"),
            self.run / "teacher",
            epochs=c.teacher.teacher_epochs,
            learning_rate=c.teacher.teacher_learning_rate,
            target_epsilon=c.pipeline.target_epsilon,
            prior_ledger=self.run / "histogram",
            release_name="teacher_dp_sgd",
            peft=c.teacher.teacher_peft,
        )
        return PrivacyLedger.load(final).epsilon()

    # -- stage: generate --------------------------------------------------------------------------
    def stage_generate(self) -> dict[str, Any]:
        from hf_dpkd.hub import write_dataset_card
        from hf_dpkd.synthetic.generation import (
            SyntheticGenerationConfig,
            generate_synthetic_dataset,
            load_synthetic_dataset,
        )

        c, g = self.config, self.config.generation
        if g.synthetic_data:
            return {
                "source": g.synthetic_data,
                "num_samples": len(load_synthetic_dataset(self.synthetic_dir())),
            }
        teacher_dir = self.teacher_dir()
        model, tokenizer = load_model_and_tokenizer(teacher_dir, base=self.base_path("teacher"))
        gen = SyntheticGenerationConfig(
            top_k=g.top_k,
            top_p=g.top_p,
            temperature=g.temperature,
            no_repeat_ngram_size=g.no_repeat_ngram_size,
            max_length=g.generation_max_length,
            num_return_sequences=g.num_return_sequences,
        )
        out = self.run / "synthetic"
        dataset = generate_synthetic_dataset(
            model,
            tokenizer,
            self.control_distribution(),
            g.num_synthetic_samples,
            out,
            fmt=self.fmt(),
            generation=gen,
            seed=c.pipeline.seed,
            batch_size=g.generation_batch_size,
        )
        ledger = self.teacher_ledger()
        ledger.save(out)
        quality = self._synthetic_quality(dataset, model, tokenizer, out)
        write_dataset_card(
            out,
            source_model=str(teacher_dir),
            ledger=ledger,
            control_code_mode=self._card_code_mode(),
            generation_config=vars(gen) if hasattr(gen, "__dict__") else dict(gen),
            num_samples=len(dataset),
            control_fields=[col for col, _ in self.fmt().fields],
            quality=quality if g.quality_in_card else None,
        )
        result: dict[str, Any] = {"num_samples": len(dataset)}
        if quality is not None:
            from hf_dpkd.synthetic.quality import quality_summary

            result["quality"] = {**quality_summary(quality), "seconds": quality["seconds"]}
        return result

    #: Texts drawn from each side for the quality report, and records scored for control-code fidelity
    #: (50 codes each on the demo): about 7 s added to the demo's generate stage on one CPU thread.
    QUALITY_RECORDS = 300
    QUALITY_FIDELITY_RECORDS = 32

    def _synthetic_quality(self, dataset: Dataset, model, tokenizer, out: Path) -> dict[str, Any] | None:
        """The quality report of the synthetic data vs the PRIVATE validation split (never test), written to
        `out`/quality.json and quality.md (local: not in the push patterns). None when it cannot be computed."""
        from hf_dpkd.synthetic.quality import quality_report, write_quality_report

        start = time.time()
        data = self.data()
        real = list(data["validation"]["text"]) if "validation" in data else []
        try:
            reference, reference_tokenizer = load_model_and_tokenizer(self.base_path("teacher"))
            report = quality_report(
                dataset,
                real or None,
                tokenizer,
                reference_model=reference,
                reference_tokenizer=reference_tokenizer,
                fidelity_model=model,  # the DP teacher: post-processing of a DP model
                fmt=self.fmt(),
                codes=self.control_distribution().codes,
                max_records=self.QUALITY_RECORDS,
                fidelity_records=self.QUALITY_FIDELITY_RECORDS,
                seed=self.config.pipeline.seed,
            )
        except ValueError as e:  # a diagnostic: it never fails the stage whose data is finished
            logger.warning("synthetic data quality report skipped: %s", e)
            print(f"WARNING: synthetic data quality report skipped: {e}", flush=True)
            return None
        report["seconds"] = round(time.time() - start, 2)
        write_quality_report(report, out)
        m = report["metrics"]
        line = f"distinct-2 {m['distinct_2']['synthetic']:.3f}, self-BLEU {m['self_bleu']['synthetic']:.3f}"
        if "unigram_js" in m:
            line = f"unigram JS {m['unigram_js']:.3f}, bigram JS {m['bigram_js']:.3f}, " + line
        fid = m["control_code_fidelity"]
        against = (
            "vs PRIVATE validation text, local, not covered by the guarantee"
            if real
            else "no validation split: synthetic side only"
        )
        print(
            f"    synthetic quality ({report['seconds']:.1f} s; {out / 'quality.md'}; {against}): {line}, "
            f"control-code accuracy {fid['accuracy']:.2f} (chance {fid['chance']:.2f})",
            flush=True,
        )
        return report

    def _card_code_mode(self) -> str:
        return {"dp": "dp_histogram", "uniform": "uniform", "exact": "exact"}[
            self.config.data.control_code_distribution
        ]

    def synthetic(self) -> Dataset:
        from hf_dpkd.synthetic.generation import load_synthetic_dataset

        return load_synthetic_dataset(self.synthetic_dir())

    # -- stage: students --------------------------------------------------------------------------
    def _train_on_synthetic(self, method: str, output: Path) -> Path:
        from hf_dpkd.trainers.distillation import DistillationConfig, DistillationTrainer

        c, s = self.config, self.config.student
        final = output / "final"
        if (final / COMPLETE).is_file():
            return final
        model, tokenizer = load_model_and_tokenizer(self.base_path("student"))
        synth = self.synthetic()
        split = synth.train_test_split(test_size=0.01, seed=c.pipeline.seed) if len(synth) >= 200 else None
        train = _tokenize_for_lm(
            split["train"] if split else synth, tokenizer, self.fmt(), c.data.max_length, mask_prompt=True
        )
        common = _training_args(
            output,
            c,
            num_train_epochs=s.student_epochs,
            learning_rate=s.student_learning_rate,
            per_device_train_batch_size=s.student_batch_size,
            train_sampling_strategy=LENGTH_GROUPED,
        )
        if method == "on_policy":
            common["num_train_epochs"] = s.on_policy_epochs
        if method == "dp_syn_data":
            trainer = Trainer(
                model=model,
                args=TrainingArguments(**common),
                train_dataset=train,
                processing_class=tokenizer,
                data_collator=_lm_collator(tokenizer),
            )
        else:
            teacher, _ = load_model_and_tokenizer(self.teacher_dir(), base=self.base_path("teacher"))
            extra = {}
            if method == "on_policy":
                extra = {
                    "on_policy_ratio": s.on_policy_ratio,
                    "on_policy_max_new_tokens": min(32, c.generation.generation_max_length),
                }
            args = DistillationConfig(
                **common,
                alpha_ce=1 - s.kd_lambda,
                alpha_kd=s.kd_lambda,
                temperature=s.kd_temperature,
                kd_loss=s.kd_loss if method != "on_policy" else "jsd",
                alpha_hidden=s.alpha_hidden,
                **extra,
            )
            trainer = DistillationTrainer(
                model=model,
                teacher_model=teacher,
                args=args,
                train_dataset=train,
                processing_class=tokenizer,
                data_collator=_lm_collator(tokenizer),
            )
        # Post-processing: the student inherits the guarantee of what it saw (the synthetic data, plus the
        # teacher's soft labels for KD), composed, with no new release.
        sources = [self.synthetic_dir()] + ([self.teacher_dir()] if method != "dp_syn_data" else [])
        return _train_and_save(
            trainer,
            tokenizer,
            output,
            final,
            ledger=self._composed(*sources),
            card=partial(self.write_card, method),
        )

    def stage_students(self) -> dict[str, Any]:
        c = self.config
        eps = c.pipeline.target_epsilon
        result = {}
        for method in c.method_list:
            if method not in STUDENT_METHODS:
                continue
            print(f"    student: {method}", flush=True)
            out = self.run / "students" / method
            if method in ("distildp", "dp_syn_data", "on_policy"):
                final = self._train_on_synthetic(method, out)
            elif method == "dp_sgd_student":
                final = self._train_private(
                    self.base_path("student"),
                    out,
                    epochs=c.student.dp_student_epochs,
                    learning_rate=c.teacher.teacher_learning_rate,
                    target_epsilon=eps,
                    release_name="student_dp_sgd",
                    peft=c.teacher.student_peft,
                )
            elif method == "non_private_student":  # the student's level without DP (a reference, epsilon inf)
                final = self._train_private(
                    self.base_path("student"),
                    out,
                    epochs=c.student.dp_student_epochs,
                    learning_rate=c.teacher.teacher_learning_rate,
                    target_epsilon=None,
                )
            elif method == "dp_opd" and c.student.dp_opd_teacher == "public":
                # DP-OPD from the public base teacher (never saw the private data): the student spends all of eps
                final = self._train_private(
                    self.base_path("student"),
                    out,
                    epochs=c.student.dp_student_epochs,
                    learning_rate=c.teacher.teacher_learning_rate,
                    target_epsilon=eps,
                    release_name="dp_opd_student_dp_sgd",
                    teacher_for_kd=self.base_path("teacher"),
                    on_policy=True,
                    teacher_is_public=True,
                    peft=c.teacher.student_peft,
                )
            else:  # dpkd, dp_opd: teacher at eps/2, then the student with DP-SGD, composed to eps
                half_teacher = self._half_budget_teacher()
                final = self._train_private(
                    self.base_path("student"),
                    out,
                    epochs=c.student.dp_student_epochs,
                    learning_rate=c.teacher.teacher_learning_rate,
                    target_epsilon=eps,
                    prior_ledger=half_teacher,
                    release_name=f"{method}_student_dp_sgd",
                    teacher_for_kd=half_teacher,
                    on_policy=method == "dp_opd",
                    peft=c.teacher.student_peft,
                )
            result[method] = str(final)
        return result

    def _half_budget_teacher(self) -> Path:
        """The teacher of DPKD and DP-OPD: DP-SGD on the private data at eps/2 (trained once, shared by both)."""
        c = self.config
        return self._train_private(
            self.base_path("teacher"),
            self.run / "students" / "dpkd_teacher",
            epochs=c.teacher.teacher_epochs,
            learning_rate=c.teacher.teacher_learning_rate,
            target_epsilon=c.pipeline.target_epsilon / 2,
            release_name="dpkd_teacher_dp_sgd",
            peft=c.teacher.teacher_peft,
        )

    # -- stage: evaluate --------------------------------------------------------------------------
    def model_dirs(self) -> dict[str, Path]:
        dirs = {
            "teacher": self.teacher_dir(),
            "non_private_teacher": self.run / "non_private_teacher" / "final",
        }
        for m in STUDENT_METHODS:
            dirs[m] = self.run / "students" / m / "final"
        given = {"teacher"} if self.config.teacher.dp_teacher else set()  # a pushed folder has no marker
        return {k: v for k, v in dirs.items() if k in given or (v / COMPLETE).is_file()}

    def stage_evaluate(self) -> dict[str, Any]:
        from hf_dpkd.evaluation import perplexity

        c = self.config
        test_texts = list(self.data()["test"]["text"])
        rows = []
        models = dict(self.model_dirs())
        # The public base models never saw the private data (epsilon 0): the level below which a private
        # method shows that the private data helped.
        public = {f"public_{w}": self.base_path(w) for w in ("teacher", "student")}
        models.update({k: v for k, v in public.items() if (v / "config.json").is_file()})
        for name, path in models.items():
            model, tokenizer = load_model_and_tokenizer(path, base=self._base_of(name))
            ppl = perplexity(model, tokenizer, test_texts, window=min(128, c.data.max_length))
            ledger = None if name in public else self.ledger_for(path)
            eps = ledger.epsilon() if ledger and ledger.releases else (0.0 if name in public else math.inf)
            rows.append(
                {
                    "method": name,
                    "label": METHOD_LABELS.get(name, name),
                    "epsilon": eps,
                    "epsilon_is_upper_bound": not (ledger and ledger.approximate),
                    "delta": ledger.delta if ledger else None,
                    "privacy_unit": (ledger.privacy_unit or DEFAULT_PRIVACY_UNIT) if ledger else None,
                    "test_perplexity": ppl["perplexity"],
                    "token_weighted_perplexity": ppl["token_weighted_perplexity"],
                    "num_parameters": sum(p.numel() for p in model.parameters()),
                    "path": str(path),
                }
            )
        results = {
            "rows": rows,
            "config": c.to_dict(),
            "delta": self.delta(),
            "privacy_unit": unit_name(c.data.privacy_unit_column)
            if c.data.privacy_unit_column
            else DEFAULT_PRIVACY_UNIT,
            "num_privacy_units": self.num_privacy_units(),
        }
        atomic_write_text(self.run / "results.json", json.dumps(results, indent=2, default=str))
        atomic_write_text(self.run / "results.md", results_markdown(rows))
        plot_results(rows, self.run / "results.png")
        return {"methods": [r["method"] for r in rows]}

    # -- stage: audit -----------------------------------------------------------------------------
    def stage_audit(self) -> dict[str, Any]:
        from hf_dpkd.audit.canaries import Canary, canary_exposures
        from hf_dpkd.audit.matching import match_non_members
        from hf_dpkd.audit.memorization import memorization_gap
        from hf_dpkd.audit.metrics import DEFAULT_CONFIDENCE, DEFAULT_NUM_RESAMPLES
        from hf_dpkd.audit.mia import (
            LEAK_RULE,
            compare_with_no_leak,
            membership_verdict,
            run_membership_inference,
        )
        from hf_dpkd.audit.report import write_audit_report

        c = self.config
        data = self.data()
        fmt = self.fmt()
        n = min(c.audit.audit_num_records, len(data["train"]), len(data["test"]))
        members = [(fmt.format_prompt(r), r["text"]) for r in data["train"].shuffle(seed=1).select(range(n))]
        # non-members: the held-out records that match the members' control codes and lengths
        pool = [(fmt.format_prompt(r), r["text"]) for r in data["test"]]
        non_members, balance = match_non_members(members, pool, seed=1)
        reference, reference_tokenizer = load_model_and_tokenizer(self.base_path("teacher"))
        canaries = [
            Canary(
                secret=x["secret"],
                template=x["template"],
                repeats=x["repeats"],
                name=x["name"],
                prefix=fmt.format_prompt({"category": x["category"], "stars": x["stars"]}),
            )
            for x in self.info().get("canaries", [])
        ]
        # records are scored as they were trained: cut to --max_length tokens (prompt included)
        mia_args = dict(
            mope_num_perturbations=c.audit.audit_mope_perturbations,
            max_length=c.data.max_length,
            show_progress=False,
        )
        no_leak_runs: dict[tuple[str, bool], dict[str, dict]] = {}

        def no_leak(which: str, with_reference: bool) -> dict[str, dict]:
            """The public base model `which` (never saw the private data), scored once per attack set."""
            if (which, with_reference) not in no_leak_runs:
                base, base_tokenizer = (
                    (reference, reference_tokenizer)
                    if which == "teacher"
                    else load_model_and_tokenizer(self.base_path(which))
                )
                no_leak_runs[which, with_reference] = run_membership_inference(
                    base,
                    base_tokenizer,
                    members,
                    non_members,
                    reference_model=reference if with_reference else None,
                    include_curves=False,
                    return_scores=True,
                    **mia_args,
                )
            return no_leak_runs[which, with_reference]

        dirs = self.model_dirs()
        summary: dict[str, Any] = {
            "num_members": n,
            "num_non_members": n,
            "confidence": DEFAULT_CONFIDENCE,
            "num_resamples": DEFAULT_NUM_RESAMPLES,
            "matching": balance,
            "rule": LEAK_RULE,
            "no_leak": {},
            "models": {},
        }
        for name in [m.strip() for m in c.audit.audit_models.split(",") if m.strip()]:
            if name not in dirs:
                continue
            print(f"    audit: {name}", flush=True)
            model, tokenizer = load_model_and_tokenizer(dirs[name], base=self._base_of(name))
            same_vocab = (
                reference.get_input_embeddings().weight.shape[0]
                == model.get_input_embeddings().weight.shape[0]
            )
            which = "student" if name in STUDENT_METHODS else "teacher"
            base_name = f"base/{which}"
            membership = run_membership_inference(
                model,
                tokenizer,
                members,
                non_members,
                reference_model=reference if same_vocab else None,
                include_curves=True,
                return_scores=True,
                **mia_args,
            )
            baseline = no_leak(which, same_vocab)
            membership = compare_with_no_leak(membership, baseline, no_leak_name=base_name)
            verdict = membership_verdict(membership)
            result: dict[str, Any] = {
                "membership": membership,
                "verdict": verdict,
                "matching": balance,
                "memorization": memorization_gap(
                    model,
                    tokenizer,
                    members,
                    non_members,
                    prompt_tokens=8,
                    num_tokens=16,
                    show_progress=False,
                ),
                "meta": {
                    "model": name,
                    "path": str(dirs[name]),
                    "epsilon": self._epsilon_of(dirs[name]),
                    "no_leak_model": f"{base_name} (public base, never saw the private data)",
                },
            }
            if canaries:
                k = c.audit.audit_canary_candidates
                result["canaries"] = canary_exposures(
                    model, tokenizer, canaries, exact_limit=k, num_samples=k, show_progress=False
                )
            write_audit_report(result, self.run / "audit" / name)
            summary["no_leak"][base_name] = _audit_row(baseline, summary["no_leak"].get(base_name, {}))
            row = _audit_row(membership, {})
            row.update(
                epsilon=result["meta"]["epsilon"],
                no_leak_model=base_name,
                auc_minus_no_leak={
                    a: {k: r["vs_no_leak"][k] for k in ("difference", "interval", "confidence")}
                    for a, r in membership.items()
                },
                leaks=verdict["leaks"],
                flagged_attacks=verdict["flagged_attacks"],
                verdict=verdict["summary"],
                memorization_gap=result["memorization"]["gap"],
                memorization_gap_interval=result["memorization"]["gap_interval"],
                canary_exposure_by_repeats={
                    str(k): v["mean"] for k, v in (result.get("canaries") or {}).get("by_repeats", {}).items()
                },
                canaries_exposed=(result.get("canaries") or {}).get("exposed"),
                canary_no_leak_level=((result.get("canaries") or {}).get("no_leak") or {}).get("level"),
            )
            summary["models"][name] = row
            loss, base_loss = membership["loss"], baseline["loss"]
            print(
                f"    audit {name}: {verdict['summary']}; loss AUC {_ci_text(loss['auc'], loss['intervals']['auc'])}"
                f" vs no-leak {_ci_text(base_loss['auc'], base_loss['intervals']['auc'])}",
                flush=True,
            )
        atomic_write_text(self.run / "audit" / "audit.json", json.dumps(summary, indent=2, default=str))
        atomic_write_text(self.run / "audit" / "audit.md", audit_markdown(summary))
        return {"models": list(summary["models"])}

    def _base_of(self, name: str) -> Path:
        """The public base model of the model folder `name` (what a LoRA adapter of it is merged into)."""
        return self.base_path("student" if name in STUDENT_METHODS or name == "public_student" else "teacher")

    def _epsilon_of(self, path: Path) -> float:
        ledger = self.ledger_for(path)
        return ledger.epsilon() if ledger and ledger.releases else math.inf

    # -- model cards ------------------------------------------------------------------------------
    def _card_of(self, which: str) -> tuple[str, dict[str, Any]]:
        """The card kind and method of the model folder of `which` (a method of STUDENT_METHODS, "teacher",
        "non_private_teacher" or "dpkd_teacher")."""
        s = self.config.student
        if which == "teacher":
            return "teacher", {"method": "DP-SGD fine-tuning (DistilDP teacher)"}
        if which.startswith("non_private_"):
            role = "teacher" if which.endswith("teacher") else "student"
            return "dp_finetune", {"name": f"fine-tuning without DP (the non-private reference {role})"}
        if which == "dpkd_teacher":
            return "dp_finetune", {"name": "DP-SGD fine-tuning of the DPKD and DP-OPD teacher (half budget)"}
        if which == "distildp":
            return "student", {
                "method": "DistilDP",
                "student_data": "synthetic",
                "kd_lambda": s.kd_lambda,
                "temperature": s.kd_temperature,
            }
        names = {
            "dp_syn_data": ("DP Syn Data (cross-entropy on the synthetic data)", "synthetic"),
            "on_policy": ("on-policy distillation from the DP teacher", "synthetic"),
            "dp_sgd_student": ("DP-SGD fine-tuning of the student", "private"),
            "dpkd": ("DPKD (distillation with DP-SGD on the private data)", "private"),
            "dp_opd": ("DP-OPD (on-policy distillation with DP-SGD on the private data)", "private"),
        }
        if which not in names:  # a folder of another name: a generic card, with the guarantee of its ledger
            return "dp_finetune", {"name": which}
        name, data = names[which]
        return "student", {"name": name, "student_data": data}

    def write_card(self, which: str, folder: Path, repo_id: str | None = None) -> Path:
        """README.md of the model folder of `which`: the guarantee of its ledger, its method, and its test
        perplexity once the run has evaluated it.

        The one card of a run's model: written when the model is saved and again before a push (then with the
        repository's id), so a folder copied or uploaded by hand states the guarantee that a pushed one does.
        """
        from hf_dpkd.hub import write_model_card

        kind, method = self._card_of(which)
        teacher = which.endswith("teacher")
        # a private method's folder must hold its ledger (a missing one fails here, never as "not private")
        ledger = None if which.startswith("non_private_") else PrivacyLedger.load(folder)
        ppl = {r["method"]: r["test_perplexity"] for r in self.summary().get("rows", [])}
        return write_model_card(
            folder,
            kind=kind,
            base_model=self.config.teacher.teacher_model if teacher else self.config.teacher.student_model,
            ledger=ledger,
            method=method,
            eval_results={"perplexity": ppl[which]} if which in ppl else None,
            repo_id=repo_id,
            adapter_base=str(self.base_path("teacher" if teacher else "student")),
            model_name=None if repo_id else f"{self.run.path.resolve().name}-{which}",  # not "final"
        )

    # -- stage: push ------------------------------------------------------------------------------
    def stage_push(self) -> dict[str, Any]:
        from hf_dpkd.hub import push_folder_to_hub

        h = self.config.hub
        pushed = {}
        if h.push_teacher:
            folder = self.run / "teacher" / "final"
            self.write_card("teacher", folder, repo_id=h.push_teacher)
            pushed["teacher"] = push_folder_to_hub(
                folder,
                h.push_teacher,
                private=h.hub_private_repo,
                token=h.hub_token,
                ignore_patterns=NEVER_PUSHED,
            )
        if h.push_synthetic:
            pushed["synthetic"] = push_folder_to_hub(
                self.run / "synthetic",
                h.push_synthetic,
                repo_type="dataset",
                private=h.hub_private_repo,
                token=h.hub_token,
                allow_patterns=["README.md", "data/*", "privacy_ledger.json"],
            )
        if h.push_student:
            folder = self.run / "students" / "distildp" / "final"
            self.write_card("distildp", folder, repo_id=h.push_student)
            pushed["student"] = push_folder_to_hub(
                folder,
                h.push_student,
                private=h.hub_private_repo,
                token=h.hub_token,
                ignore_patterns=NEVER_PUSHED,
            )
        return pushed


def _ci_text(value: float, interval: list[float], digits: int = 3) -> str:
    """A value with its interval, e.g. '0.650 [0.611, 0.688]'."""
    return f"{value:.{digits}f} [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"


def audit_summary_lines(summary: dict[str, Any]) -> list[str]:
    """One line per audited model of audit.json's summary: the verdict, then its loss-attack AUC with the 95%
    interval next to the no-leak model's on the same records (the level to compare with, not 0.5)."""
    lines = []
    for name, row in summary.get("models", {}).items():
        base = summary.get("no_leak", {}).get(row.get("no_leak_model", ""), {})
        attack = "loss" if "loss" in row.get("auc", {}) else next(iter(row.get("auc", {})), None)
        text = f"audit {name}: {row.get('verdict', 'no verdict')}"
        if attack is not None and attack in base.get("auc", {}):
            text += (
                f"; {attack} AUC {_ci_text(row['auc'][attack], row['auc_interval'][attack])}"
                f" vs no-leak {row['no_leak_model']} {_ci_text(base['auc'][attack], base['auc_interval'][attack])}"
            )
        lines.append(text)
    return lines


def _audit_row(membership: dict[str, dict], row: dict[str, Any]) -> dict[str, Any]:
    """`row` with the AUC and TPR@FPR of every attack of `membership` and their intervals (audit.json summary)."""
    out = {k: dict(row.get(k, {})) for k in ("auc", "auc_interval", "tpr", "tpr_interval")}
    for attack, r in membership.items():
        keys = [k for k in r if k.startswith("tpr@fpr=")]
        out["auc"][attack] = r["auc"]
        out["auc_interval"][attack] = r["intervals"]["auc"]
        out["tpr"][attack] = {k: r[k] for k in keys}
        out["tpr_interval"][attack] = {k: r["intervals"][k] for k in keys}
    return {**row, **out}


def audit_markdown(summary: dict[str, Any]) -> str:
    """One row per audited model and per no-leak model (a public base scored on the same records): epsilon,
    MIA AUC per attack with its interval, the verdict, memorization gap, canary exposure."""
    models = summary["models"]
    if not models:
        return "# Privacy audit\n\nNo model audited.\n"
    no_leak = summary.get("no_leak", {})
    attacks = sorted({a for m in [*models.values(), *no_leak.values()] for a in m["auc"]})
    repeats = sorted({r for m in models.values() for r in m["canary_exposure_by_repeats"]}, key=float)
    conf = summary.get("confidence", 0.95)
    head = [
        "model",
        "epsilon",
        *[f"AUC {a}" for a in attacks],
        "verdict (vs no-leak)",
        "memorization gap",
        *[f"exposure x{r}" for r in repeats],
    ]
    balance = summary.get("matching") or {}
    lines = [
        "# Privacy audit",
        "",
        f"{summary['num_members']} members (private training records) vs {summary['num_non_members']} non-members "
        "(held-out test records matched to the members on control code and length). Each AUC is followed by its "
        f"{conf:.0%} bootstrap interval over records. The no-leak rows are the public base models, which never saw "
        "the private data, scored with the same attacks on the same records: a model is compared with its base, "
        "not with 0.5. Exposure in bits (max log2 #candidates). An audit gives evidence and lower bounds; it "
        "never certifies privacy (see docs/auditing.md).",
        "",
    ]
    if balance:
        lines += [
            f"Members vs non-members: mean length {balance['member_mean_length']:.1f} vs "
            f"{balance['non_member_mean_length']:.1f} characters (standardized difference "
            f"{balance['standardized_length_difference']:+.3f}), control-code distance (total variation) "
            f"{balance['code_total_variation']:.3f}.",
            "",
        ]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def auc_cells(m: dict[str, Any]) -> list[str]:
        return [_ci_text(m["auc"][a], m["auc_interval"][a]) if a in m["auc"] else "" for a in attacks]

    for name, m in models.items():
        eps = "inf" if not math.isfinite(m["epsilon"]) else f"{m['epsilon']:.2f}"
        verdict = "LEAKS (" + ", ".join(m["flagged_attacks"]) + ")" if m.get("leaks") else "no leak detected"
        cells = [
            name,
            eps,
            *auc_cells(m),
            f"{verdict} vs {m.get('no_leak_model', '?')}",
            _ci_text(m["memorization_gap"], m["memorization_gap_interval"])
            if m.get("memorization_gap_interval")
            else f"{m['memorization_gap']:.3f}",
        ]
        cells += [f"{m['canary_exposure_by_repeats'].get(r, float('nan')):.2f}" for r in repeats]
        lines.append("| " + " | ".join(cells) + " |")
    for name, m in no_leak.items():
        cells = [f"{name} (no-leak)", "public", *auc_cells(m), "", ""] + [""] * len(repeats)
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Verdict rule: {summary.get('rule', '')}"]
    levels = {m.get("canary_no_leak_level") for m in models.values()} - {None}
    if levels:
        lines += [
            "",
            f"A canary is exposed above the no-leak level when a model that never saw it would rank its secret as "
            f"high with probability at most 0.05 / #canaries: an exact exposure above {max(levels):.2f} bits, an "
            "estimated one judged by the pessimistic end of its sampled fraction's interval (a model that never "
            "saw a canary gets 1 bit in the median). Exposed canaries: "
            + ", ".join(f"{n} {m.get('canaries_exposed')}" for n, m in models.items())
            + ".",
        ]
    return "\n".join(lines) + "\n"


def epsilon_cell(epsilon: float) -> str:
    """Epsilon as a results table shows it: inf is not private, 0 never saw the private data."""
    if not math.isfinite(epsilon):
        return "inf (not private)"
    return "0 (no private data)" if epsilon == 0 else f"{epsilon:.3f}"


def results_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| Method | epsilon | Test perplexity | Parameters |", "|---|---:|---:|---:|"]
    for r in rows:
        eps = epsilon_cell(r["epsilon"])
        if math.isfinite(r["epsilon"]) and not r.get("epsilon_is_upper_bound", True):
            eps = f"≈{eps} (GDP approximation)"
        lines.append(f"| {r['label']} | {eps} | {r['test_perplexity']:.2f} | {r['num_parameters']:,} |")
    return "\n".join(lines) + "\n"


def plot_results(rows: list[dict[str, Any]], path: Path) -> None:
    """Bar chart of test perplexity per method, epsilon in the labels."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4))
    ax = fig.add_subplot(1, 1, 1)
    labels = [
        f"{r['method']}\n(eps={'inf' if not math.isfinite(r['epsilon']) else format(r['epsilon'], '.2f')})"
        for r in rows
    ]
    ax.bar(range(len(rows)), [r["test_perplexity"] for r in rows], color="tab:blue")
    ax.set_xticks(range(len(rows)), labels, fontsize=7)
    ax.set_ylabel("test perplexity (lower is better)")
    ax.set_title("DistilDP and baselines")
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    from hf_dpkd._io import atomic_write_bytes

    atomic_write_bytes(path, buf.getvalue())
