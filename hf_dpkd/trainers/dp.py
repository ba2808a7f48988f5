"""DPConfig and DPTrainer: DP-SGD inside the Hugging Face Trainer loop.

A fine-tuning script that swaps ``TrainingArguments -> DPConfig`` and ``Trainer -> DPTrainer`` trains
with DP-SGD: Poisson-sampled logical batches (``privacy/sampling.py``), split into physical
micro-batches, per-sample clipping by Opacus, one Gaussian noise draw per logical step
(``privacy/engine.py``), and a PrivacyLedger that composes this release with earlier ones
(``privacy/accounting.py``). The privacy unit is one training example (one row of `train_dataset`), or
with ``privacy_unit_column`` one user (``privacy/units.py``).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
import os
import secrets
import uuid
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from hf_dpkd._io import atomic_write_bytes, atomic_write_text
from hf_dpkd.privacy.accounting import (
    ACCOUNTANTS,
    UNIFORM,
    PrivacyLedger,
    calibrate_noise_multiplier,
    compute_epsilon,
    default_delta,
)
from hf_dpkd.privacy.engine import CLIPPING_MODES, DPSGDOptimizer, attach_grad_sampler
from hf_dpkd.privacy.sampling import PoissonBatchSampler
from hf_dpkd.privacy.units import (
    UNIT_KEY,
    UnitIndex,
    UnitLayout,
    check_unit_settings,
    micro_batch_bounds,
    unit_name,
)

logger = logging.getLogger(__name__)

DP_STATE_NAME = "dp_state.pt"
PRIVACY_REPORT_NAME = "privacy_report.json"
PRIVACY_UNIT = "one row of the training dataset"
#: Trainer hub strategies that upload checkpoints (which hold the secret DP state): refused under DP.
CHECKPOINT_HUB_STRATEGIES = ("checkpoint", "all_checkpoints")
#: Logged values computed from a private batch without noise: dropped from the logs under DP by default.
PRIVATE_LOG_KEYS = ("loss", "train_loss")
#: Prefix of the privacy report that every finished DP training logs once to the loggers of report_to.
PRIVACY_LOG_PREFIX = "privacy/"
#: The privacy report's entries that the loggers receive (all of them public: the settings and the guarantee).
PRIVACY_LOG_KEYS = ("epsilon", "delta", "noise_multiplier", "sample_rate", "steps", "accountant")


PACKED_ROWS_NOTE = (
    " (the rows look packed into fixed-length blocks: one text may span several rows and is then protected "
    "only at about k·ε for k rows)"
)


def _rows_look_packed(dataset, sample: int = 64) -> bool:
    """Whether tokenized rows look like run_clm-style packed blocks: equal lengths, no padding, labels == inputs."""
    columns = getattr(dataset, "column_names", None) or []
    if "input_ids" not in columns or len(dataset) < 2:
        return False
    rows = dataset.select(range(min(sample, len(dataset))))
    lengths = {len(x) for x in rows["input_ids"]}
    if len(lengths) != 1 or next(iter(lengths)) < 16:
        return False
    if "attention_mask" in columns and any(0 in m for m in rows["attention_mask"]):
        return False
    if "labels" in columns and any(list(a) != list(b) for a, b in zip(rows["labels"], rows["input_ids"])):
        return False
    return True


def _derived_seed(dp_seed: int, purpose: str) -> int:
    """Independent 63-bit seeds for each use of the DP seed."""
    digest = hashlib.sha256(f"{purpose}:{dp_seed}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _shared_secret_seed(device) -> int:
    """A seed from the OS's secure randomness; under torch.distributed every rank gets rank 0's."""
    seed = secrets.randbits(62)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        backend_device = device if dist.get_backend() == "nccl" else "cpu"
        value = torch.tensor([seed], dtype=torch.int64, device=backend_device)
        dist.broadcast(value, src=0)
        seed = int(value.item())
    return seed


@dataclass
class DPConfig(TrainingArguments):
    """TrainingArguments plus the DP-SGD settings. Give exactly one of `target_epsilon` / `noise_multiplier`.

    The expected logical batch is ``per_device_train_batch_size * gradient_accumulation_steps *
    world_size`` and the Poisson sample rate is that over the dataset size.
    """

    _privacy_required: ClassVar[bool] = True

    target_epsilon: float | None = field(
        default=None,
        metadata={
            "help": "Total epsilon of the privacy ledger after this training (prior releases in "
            "privacy_ledger_path included). The noise multiplier is calibrated to reach it over the planned steps."
        },
    )
    noise_multiplier: float | None = field(
        default=None, metadata={"help": "Gaussian noise std / clip norm. Alternative to target_epsilon."}
    )
    dp_seed: int | None = field(
        default=None,
        metadata={
            "help": "Seed of DP-SGD's noise and Poisson batches. Default: drawn from the operating system's "
            "secure randomness for each run, kept in checkpoints for resume (mode 0600) and never published: "
            "never pickled into training_args.bin, masked in to_dict(). Set it only for reproducible "
            "experiments: whoever knows it can regenerate the noise and the batches."
        },
    )
    target_delta: float | None = field(
        default=None,
        metadata={
            "help": "Delta of the guarantee. Default min(1e-5, 1/(10 N)) for N training rows (well below 1/N); "
            "N is treated as public."
        },
    )
    per_sample_max_grad_norm: float = field(
        default=1.0, metadata={"help": "Clip norm C of each example's gradient (DP-SGD sensitivity)."}
    )
    accountant: str = field(default="prv", metadata={"help": "Privacy accountant: 'prv', 'rdp' or 'gdp'."})
    poisson_sampling: bool = field(
        default=True,
        metadata={
            "help": "Poisson sampling of logical batches (what the accountants assume). False: fixed-size "
            "uniform subsampling, accounted only by accountant='gdp'."
        },
    )
    max_physical_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Largest micro-batch run at once (memory only; never changes the guarantee). "
            "Default: per_device_train_batch_size."
        },
    )
    clipping_mode: str = field(
        default="auto",
        metadata={
            "help": "Per-sample clipping: 'hooks' (per-sample gradients; any layer), 'ghost' (per-sample "
            "norms, two backward passes, least memory), 'bookkeeping' (one backward: norms and clipped sum "
            "from stored activations and output gradients; fastest) or 'auto' (bookkeeping when every "
            "trainable layer is supported, else hooks; the default). See docs/performance.md."
        },
    )
    disable_dp: bool = field(
        default=False,
        metadata={
            "help": "Same code path (sampling, clipping) without noise and without a guarantee: for "
            "baselines and debugging."
        },
    )
    privacy_ledger_path: str | None = field(
        default=None,
        metadata={
            "help": "A privacy_ledger.json (or a folder holding one) of earlier releases on the SAME private "
            "data (e.g. the control-code histogram); this training is composed with them."
        },
    )
    privacy_release_name: str = field(
        default="dp_sgd",
        metadata={
            "help": "Name of this training's entry in the privacy ledger (a name already taken by an earlier "
            "release gets a suffix: no release is ever replaced)."
        },
    )
    privacy_unit_column: str | None = field(
        default=None,
        metadata={
            "help": "User-level DP: the train_dataset column naming whom each row belongs to (e.g. 'user_id'). "
            "The protected unit becomes one user: users are Poisson-sampled, the SUM of a user's row gradients "
            "in a batch is clipped to per_sample_max_grad_norm, and the accountant counts users (N = number of "
            "users; per_device_train_batch_size is then the expected number of USERS per batch). Default: one row."
        },
    )
    max_rows_per_unit: int | None = field(
        default=None,
        metadata={
            "help": "With privacy_unit_column: at most this many of a sampled user's rows per step, drawn at "
            "random (bounds a micro-batch and a prolific user's weight; the guarantee does not depend on it). "
            "Default: all of the user's rows."
        },
    )
    log_private_loss: bool = field(
        default=False,
        metadata={
            "help": "Log the training loss of each private batch. It is computed without noise, so it is a "
            "release the ledger does not cover: off by default under DP (epsilon is logged instead)."
        },
    )
    max_length: int | None = field(
        default=None,
        metadata={
            "help": "Token limit of a train/eval dataset given as text ('text', or 'prompt' and 'completion' "
            "columns, trl's formats) that DPTrainer tokenizes itself. Default: the tokenizer's, at most 1024."
        },
    )
    max_grad_norm: float = field(
        default=0.0,
        metadata={
            "help": "Non-private global clipping of the Trainer. Must stay 0 with DP: DP-SGD clips per "
            "sample with per_sample_max_grad_norm."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        self._validate_privacy_arguments()

    def to_dict(self) -> dict[str, Any]:
        """As TrainingArguments.to_dict (what loggers record), with the secret DP seed masked."""
        d = super().to_dict()
        if d.get("dp_seed") is not None:
            d["dp_seed"] = "<DP_SEED>"
        return d

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (the Trainer's training_args.bin, which pushes upload) without the DP seed or the Hub token."""
        state = dict(self.__dict__)
        state["dp_seed"] = None
        state["hub_token"] = None
        return state

    @property
    def dp_enabled(self) -> bool:
        """Whether the DP-SGD path runs (it does also with disable_dp, only without noise)."""
        if self.disable_dp:
            return True
        return self._privacy_required or self.target_epsilon is not None or self.noise_multiplier is not None

    def _validate_privacy_arguments(self) -> None:
        given = [n for n in ("target_epsilon", "noise_multiplier") if getattr(self, n) is not None]
        if self.disable_dp and given:
            raise ValueError(f"disable_dp=True trains without noise; do not also set {given[0]}.")
        if not self.disable_dp and self._privacy_required and len(given) != 1:
            raise ValueError(
                "Give exactly one of target_epsilon (e.g. target_epsilon=2.0: the noise is calibrated) or "
                f"noise_multiplier (e.g. noise_multiplier=1.0); got {'both' if given else 'neither'}."
            )
        if not self._privacy_required and len(given) == 2:
            raise ValueError("Give at most one of target_epsilon and noise_multiplier; got both.")
        if self.target_epsilon is not None and not (
            self.target_epsilon > 0 and math.isfinite(self.target_epsilon)
        ):
            raise ValueError(
                f"target_epsilon={self.target_epsilon} must be a positive finite number (e.g. 2.0)."
            )
        if self.noise_multiplier is not None and not self.noise_multiplier > 0:
            raise ValueError(
                f"noise_multiplier={self.noise_multiplier} must be > 0; to train without noise set disable_dp=True."
            )
        if self.target_delta is not None and not 0 < self.target_delta < 1:
            raise ValueError(
                f"target_delta={self.target_delta} must lie strictly between 0 and 1 (e.g. 1e-6)."
            )
        if not self.per_sample_max_grad_norm > 0:
            raise ValueError(
                f"per_sample_max_grad_norm={self.per_sample_max_grad_norm} must be > 0 (the per-sample clip norm C, "
                "e.g. 1.0)."
            )
        if self.accountant not in ACCOUNTANTS:
            raise ValueError(
                f"accountant={self.accountant!r} is not supported; use one of {', '.join(ACCOUNTANTS)}."
            )
        if not self.poisson_sampling and self.accountant != "gdp" and self.dp_enabled and not self.disable_dp:
            raise ValueError(
                "poisson_sampling=False (fixed-size uniform subsampling) is only accounted by accountant='gdp'; "
                "set poisson_sampling=True (recommended) or accountant='gdp'."
            )
        if self.clipping_mode not in CLIPPING_MODES:
            raise ValueError(
                f"clipping_mode={self.clipping_mode!r} is not supported; use one of {CLIPPING_MODES}."
            )
        check_unit_settings(self.privacy_unit_column, self.max_rows_per_unit)
        if self.max_physical_batch_size is not None and self.max_physical_batch_size < 1:
            raise ValueError(
                f"max_physical_batch_size={self.max_physical_batch_size} must be >= 1 (or None)."
            )
        if self.dp_enabled:
            if self.max_grad_norm and self.max_grad_norm > 0:
                raise ValueError(
                    f"max_grad_norm={self.max_grad_norm} is the Trainer's non-private global clipping, which would "
                    "run on top of DP-SGD's per-sample clipping; set max_grad_norm=0 and use "
                    "per_sample_max_grad_norm for the clip norm."
                )
            if self.fp16:
                raise ValueError(
                    "fp16=True (loss scaling) is not supported with DP-SGD; use bf16=True or fp32."
                )
            # `deepspeed=` in the arguments, or `accelerate launch` with a DeepSpeed config (deepspeed_plugin)
            if self.deepspeed or getattr(self, "deepspeed_plugin", None) is not None:
                raise ValueError(
                    "DeepSpeed is not supported for DP-SGD (Opacus has no DeepSpeed path); use DDP through "
                    "accelerate for the DP stages. DeepSpeed works for distillation and generation."
                )
            # `fsdp=` in the arguments, or `accelerate launch` with an FSDP config
            if self.fsdp or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true", "yes"):
                raise ValueError(
                    f"FSDP (fsdp={self.fsdp!r}) is not supported for DP-SGD: sharded parameters bypass the "
                    "per-sample clipping engine. Use DDP through accelerate for the DP stages; FSDP and DeepSpeed "
                    "work for distillation and generation."
                )
        if self.dp_enabled and not self.disable_dp:
            strategy = getattr(self.hub_strategy, "value", self.hub_strategy)
            if self.push_to_hub and strategy in CHECKPOINT_HUB_STRATEGIES:
                raise ValueError(
                    f"hub_strategy={strategy!r} uploads checkpoints, which hold the secret DP state (the "
                    "seed of the noise and of the batches); with DP use hub_strategy='every_save' or 'end' "
                    "(model folders only)."
                )
            if self.ignore_data_skip:
                raise ValueError(
                    "ignore_data_skip=True would resume a DP run on the Poisson batches it already used (with "
                    "fresh noise), which the accountant does not assume; keep ignore_data_skip=False."
                )


def _check_units_compose(ledger: PrivacyLedger, unit: str, disable_dp: bool) -> None:
    """A user-level training composed with a row-level release protects only rows: refuse that mix."""
    if disable_dp or unit == PRIVACY_UNIT or unit.startswith(PRIVACY_UNIT):
        return
    for r in ledger.releases:
        if r.is_private and r.meta.get("privacy_unit") != unit:
            raise ValueError(
                f"This training protects {unit}, but the earlier release {r.name!r} in its privacy ledger "
                f"protects {r.meta.get('privacy_unit') or 'one row'}: composed, the guarantee would hold per "
                "row only (a user with k rows is covered at about k times that release's epsilon). Make that "
                "release at the same unit (e.g. the control-code histogram with privacy_unit_column), or train "
                "at row level."
            )


def dp_forward_kwargs(model: nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Forward kwargs for a causal LM under per-sample hooks: contiguous ids and per-row position_ids [B, T].

    Opacus needs a batch dimension on every input of a layer with trainable parameters; GPT-2 would
    otherwise broadcast a [1, T] position tensor into its position embedding.
    """
    kwargs: dict[str, torch.Tensor] = {"input_ids": inputs["input_ids"].contiguous()}
    attention_mask = inputs.get("attention_mask")
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask
    if _accepts_position_ids(model):
        if attention_mask is not None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        else:
            b, t = kwargs["input_ids"].shape
            position_ids = torch.arange(t, device=kwargs["input_ids"].device).expand(b, t)
        kwargs["position_ids"] = position_ids.contiguous()
    return kwargs


def _accepts_position_ids(model: nn.Module) -> bool:
    forward = getattr(model, "forward", None)
    inner = getattr(model, "_module", None)  # Opacus wrapper
    if inner is not None:
        forward = inner.forward
    try:
        params = inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return False
    return "position_ids" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def causal_lm_labels(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """`labels` if the collator made them, else input_ids with padding masked (-100)."""
    labels = inputs.get("labels")
    if labels is not None:
        return labels
    labels = inputs["input_ids"].clone()
    if inputs.get("attention_mask") is not None:
        labels[inputs["attention_mask"] == 0] = -100
    return labels


def per_sequence_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token NLL of each sequence over its own non-masked tokens: shape [B].

    One sample's value never depends on another sample (unlike HF's batch-mean `labels=` loss). The labels
    are shifted (the last position gets -100), not the logits: slicing [B, T-1, V] logits would copy them
    and scatter their gradient back into a zero [B, T, V] tensor, the largest tensors of the step.
    """
    shift_labels = F.pad(labels[:, 1:], (0, 1), value=-100)
    nll = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(),
        shift_labels.reshape(-1),
        ignore_index=-100,
        reduction="none",
    ).view(shift_labels.shape)
    counts = (shift_labels != -100).sum(dim=1).clamp(min=1)
    return nll.sum(dim=1) / counts


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest `checkpoint-N` in `output_dir` that the Trainer finished writing (trainer_state.json is its last
    file); folders a kill interrupted are removed so they are never resumed from."""
    import shutil
    from pathlib import Path

    root = Path(output_dir)
    if not root.is_dir():
        return None
    found = sorted(
        (p for p in root.glob("checkpoint-*") if p.is_dir() and p.name.rsplit("-", 1)[-1].isdigit()),
        key=lambda p: int(p.name.rsplit("-", 1)[-1]),
    )
    complete = [p for p in found if (p / "trainer_state.json").is_file()]
    for p in found:
        if p not in complete:
            logger.warning("Removing %s: a checkpoint whose writing was interrupted.", p)
            shutil.rmtree(p, ignore_errors=True)
    return str(complete[-1]) if complete else None


class _EpochDataLoader(DataLoader):
    """A DataLoader whose `set_epoch` reaches the Poisson batch sampler (the Trainer calls it each epoch)."""

    def set_epoch(self, epoch: int) -> None:
        self.batch_sampler.set_epoch(epoch)


class _EmptySafeCollator:
    """Collates a (possibly empty) part of a Poisson batch; an empty part becomes a zero-row batch."""

    def __init__(self, collator, dataset):
        self.collator = collator
        self.dataset = dataset
        self._template: dict[str, Any] | None = None

    def __call__(self, features: list) -> dict[str, Any]:
        if features:
            units = [f[UNIT_KEY] for f in features] if UNIT_KEY in features[0] else None
            if units is None:
                return self.collator(features)
            batch = self.collator([{k: v for k, v in f.items() if k != UNIT_KEY} for f in features])
            batch[UNIT_KEY] = torch.tensor(units, dtype=torch.long)
            return batch
        if self._template is None:
            self._template = self([self.dataset[0]])
        return {k: (v[:0] if isinstance(v, torch.Tensor) else v) for k, v in self._template.items()}


def _with_trl_formats(args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The Trainer's arguments by name, with a train / eval dataset in one of trl's formats ('text', or 'prompt' and
    'completion': completion-only loss) tokenized by the processing_class, and a label-padding collator when none
    was given. Without a collator, a dataset in none of the formats is refused with its columns named."""
    from datasets import Dataset

    from hf_dpkd.data.formats import PaddingCollator, dataset_format, tokenize_lm_dataset

    names = list(inspect.signature(Trainer.__init__).parameters)[1:]
    kwargs = {**dict(zip(names, args)), **kwargs}
    tokenizer, collator = kwargs.get("processing_class"), kwargs.get("data_collator")
    formatted = False
    for key in ("train_dataset", "eval_dataset"):
        given = kwargs.get(key)
        parts = dict(given) if isinstance(given, dict) else {None: given}
        for name, dataset in parts.items():
            if not isinstance(dataset, Dataset) or "input_ids" in dataset.column_names:
                continue  # tokenized, or not a map-style datasets.Dataset: the caller's rows
            columns = dataset.column_names
            argument = key if name is None else f"{key}[{name!r}]"
            try:
                dataset_format(columns, argument)
            except ValueError:
                if collator is not None:
                    continue  # the caller's collator knows its own rows
                raise
            if tokenizer is None:
                raise ValueError(
                    f"{argument} holds raw text (columns {columns}); pass processing_class=<tokenizer> so DPTrainer "
                    "can tokenize it."
                )
            unit_column = getattr(kwargs.get("args"), "privacy_unit_column", None)
            parts[name] = tokenize_lm_dataset(
                dataset,
                tokenizer,
                getattr(kwargs.get("args"), "max_length", None),
                argument,
                keep=(unit_column,) if unit_column else (),
            )
            formatted = True
        kwargs[key] = parts if isinstance(given, dict) else parts[None]
    if formatted and collator is None:
        kwargs["data_collator"] = PaddingCollator(tokenizer)
    return kwargs


class _PrivacyCallback(TrainerCallback):
    """Keeps the sampler's epoch, stops before the budget would be exceeded, writes the ledger at train end."""

    def __init__(self, trainer: DPTrainer):
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        if self.trainer._dp_sampler is not None:
            self.trainer._dp_sampler.set_epoch(int(state.epoch or 0))

    def on_step_end(self, args, state, control, **kwargs):
        limit = self.trainer._dp_max_steps
        reached = limit is not None and self.trainer._dp_steps >= limit
        if reached and state.global_step < state.max_steps and not control.should_training_stop:
            logger.warning(
                "Stopping DP training after %d steps: one more step would exceed target_epsilon=%s.",
                self.trainer._dp_steps,
                args.target_epsilon,
            )
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        # First of the callbacks: the loggers of report_to are still open when the report reaches them.
        self.trainer.log_privacy_report()
        self.trainer.save_privacy_artifacts(args.output_dir)


class DPTrainer(Trainer):
    """`transformers.Trainer` with DP-SGD. Without privacy settings (DistillationConfig) it is a plain Trainer.

    Extra keyword: `privacy_ledger` (a PrivacyLedger of earlier releases on the same data); otherwise
    `args.privacy_ledger_path` is read, or a fresh ledger is started. Datasets may be tokenized rows or in
    trl's formats (a `text` column, or `prompt` / `completion`: completion-only loss), tokenized here by
    `processing_class`. A peft model (LoRA) trains its adapters only and saves them as an adapter folder.
    """

    def __init__(self, *args, privacy_ledger: PrivacyLedger | None = None, **kwargs):
        super().__init__(**_with_trl_formats(args, kwargs))
        self._card_base_model: str | None = None
        self._dp_sampler: PoissonBatchSampler | None = None
        self._dp_optimizer: DPSGDOptimizer | None = None
        self._grad_sample_module: nn.Module | None = None
        self._dp_steps = 0
        self._dp_max_steps: int | None = None
        self._dp_release_name: str | None = None
        self.privacy_ledger: PrivacyLedger | None = None
        if not getattr(self.args, "dp_enabled", False):
            return
        if not isinstance(self.args, DPConfig):
            raise TypeError(f"DPTrainer needs args=DPConfig(...), got {type(self.args).__name__}.")
        self._setup_privacy(privacy_ledger)
        self.callback_handler.callbacks.insert(0, _PrivacyCallback(self))

    # -- set-up -----------------------------------------------------------------------------------
    def _setup_privacy(self, ledger: PrivacyLedger | None) -> None:
        args = self.args
        if self.train_dataset is None:
            raise ValueError("DPTrainer: DP-SGD needs a train_dataset (its size defines the sample rate).")
        try:
            n = len(self.train_dataset)
        except TypeError as e:
            raise ValueError(
                "DPTrainer needs a map-style train_dataset with a length (Poisson sampling draws from all N examples); "
                "an IterableDataset cannot be sampled with a known rate."
            ) from e
        if n == 0:
            raise ValueError("train_dataset is empty: DP-SGD needs at least one training example.")
        self.dp_num_rows = n
        self.dp_units = self._unit_index() if args.privacy_unit_column else None
        if self.dp_units is not None:
            n = self.dp_units.num_units
        world = max(1, args.world_size)
        expected = args.per_device_train_batch_size * args.gradient_accumulation_steps * world
        if expected > n:
            what = "users" if self.dp_units is not None else "examples"
            raise ValueError(
                f"The expected logical batch per_device_train_batch_size*gradient_accumulation_steps*world_size="
                f"{expected} is larger than the dataset ({n} {what}); lower per_device_train_batch_size or "
                "gradient_accumulation_steps."
            )
        self.dp_num_examples = n
        self.privacy_unit = PRIVACY_UNIT
        if self.dp_units is not None:
            self.privacy_unit = unit_name(args.privacy_unit_column)
        elif _rows_look_packed(self.train_dataset):
            self.privacy_unit = PRIVACY_UNIT + PACKED_ROWS_NOTE
            warnings.warn(
                "The training rows look packed (same length, no padding, labels equal to inputs): one text may "
                "span several rows and is then protected only at about k*epsilon for k rows. The privacy unit is "
                "one row; to protect each text, keep one text per row (truncate or pad, do not pack).",
                stacklevel=3,
            )
        self.dp_expected_batch_size = expected
        self.dp_sample_rate = expected / n
        self.dp_steps_per_epoch = max(1, int(round(n / expected)))
        if args.max_steps and args.max_steps > 0:
            planned = args.max_steps
        else:
            planned = math.ceil(args.num_train_epochs * self.dp_steps_per_epoch)
        self.dp_planned_steps = planned
        self.dp_max_physical_batch_size = args.max_physical_batch_size or args.per_device_train_batch_size

        delta = args.target_delta if args.target_delta is not None else default_delta(n)
        if delta >= 1.0 / n:
            warnings.warn(
                f"target_delta={delta} is >= 1/N = {1.0 / n:.3g}: such a delta allows releasing a whole example. "
                "Use a delta well below 1/N (the default is min(1e-5, 1/(10 N))).",
                stacklevel=2,
            )
        if ledger is None:
            try:
                ledger = PrivacyLedger.load_or_new(
                    args.privacy_ledger_path, accountant=args.accountant, delta=delta
                )
            except FileNotFoundError as e:
                raise ValueError(
                    f"privacy_ledger_path={args.privacy_ledger_path!r} holds no privacy_ledger.json: the earlier "
                    "releases it should hold would silently drop out of the guarantee. Give the folder (or the "
                    "privacy_ledger.json) written by the earlier DP stage, or no privacy_ledger_path for a fresh "
                    "ledger."
                ) from e
        ledger = self._prior_ledger(ledger)
        if ledger.accountant != args.accountant:
            raise ValueError(
                f"The privacy ledger uses accountant={ledger.accountant!r} but accountant={args.accountant!r} was "
                "given; use the ledger's accountant so every release is composed the same way."
            )
        ledger.delta = delta
        _check_units_compose(ledger, self.privacy_unit, args.disable_dp)
        self.privacy_ledger = ledger
        self._mechanism = "subsampled_gaussian" if args.poisson_sampling else UNIFORM
        # What this training is composed with; this run's own release is not in it (resume restores it later).
        self._dp_prior_history = ledger.history(private_only=True)
        if ledger.non_private_releases and not args.disable_dp:
            warnings.warn(
                "The privacy ledger holds releases made without DP ("
                + ", ".join(r.name for r in ledger.non_private_releases)
                + "): the total epsilon is infinite whatever this training's noise; the noise is calibrated to "
                "target_epsilon over the DP releases only.",
                stacklevel=2,
            )

        if args.disable_dp:
            self.dp_noise_multiplier = 0.0
        elif args.noise_multiplier is not None:
            self.dp_noise_multiplier = float(args.noise_multiplier)
        else:
            self.dp_noise_multiplier = calibrate_noise_multiplier(
                args.target_epsilon,
                delta,
                self.dp_sample_rate,
                planned,
                accountant=args.accountant,
                prior_history=self._dp_prior_history,
                mechanism=self._mechanism,
            )
            self._dp_max_steps = self._max_steps_within_budget(planned)
        self._dp_sampler = PoissonBatchSampler(
            n,
            self.dp_sample_rate,
            self.dp_steps_per_epoch,
            num_parts=args.gradient_accumulation_steps,
            seed=0,  # set below from the DP seed
            rank=args.process_index,
            world_size=world,
            poisson=args.poisson_sampling,
            units=self.dp_units,
            max_rows_per_unit=args.max_rows_per_unit,
        )
        self._noise_generator = torch.Generator(device=args.device)
        self._use_dp_seed(args.dp_seed if args.dp_seed is not None else _shared_secret_seed(args.device))
        self._grad_sample_module = attach_grad_sampler(
            self.model, args.clipping_mode, args.per_sample_max_grad_norm, per_unit=self.dp_units is not None
        )
        logger.info(
            "DP-SGD: N=%d, expected batch=%d, q=%.4g, steps=%d, noise_multiplier=%.4g, C=%s, accountant=%s, delta=%.3g",
            n,
            expected,
            self.dp_sample_rate,
            planned,
            self.dp_noise_multiplier,
            args.per_sample_max_grad_norm,
            args.accountant,
            delta,
        )

    def _unit_index(self) -> UnitIndex:
        """The users of the train_dataset, from its privacy_unit_column (read once, before any training)."""
        column = self.args.privacy_unit_column
        names = list(getattr(self.train_dataset, "column_names", None) or [])
        if column not in names:
            raise ValueError(
                f"privacy_unit_column={column!r} is not a column of the train_dataset"
                + (f" (it has {names})" if names else " (it is not a datasets.Dataset with named columns)")
                + ": give the column that names each row's user, or None for row-level DP."
            )
        return UnitIndex.from_values(column, self.train_dataset[column])

    def _release_entry(self, steps: int) -> tuple:
        entry = (self.dp_noise_multiplier, self.dp_sample_rate, steps)
        return entry + ((UNIFORM,) if self._mechanism == UNIFORM else ())

    def _max_steps_within_budget(self, planned: int) -> int:
        """Largest step count whose composed epsilon stays within target_epsilon (>= planned by calibration)."""
        prior = self._dp_prior_history

        def within(k: int) -> bool:
            eps = compute_epsilon(
                prior + [self._release_entry(k)], self.privacy_ledger.delta, self.args.accountant
            )
            return eps <= self.args.target_epsilon

        lo, hi = planned, planned * 2
        while within(hi) and hi < planned * 1024:
            lo, hi = hi, hi * 2
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if within(mid) else (lo, mid)
        return lo

    # -- data -------------------------------------------------------------------------------------
    def get_train_dataloader(self) -> DataLoader:
        if not self.args.dp_enabled:
            return super().get_train_dataloader()
        import datasets

        dataset, collator = self.train_dataset, self.data_collator
        if isinstance(dataset, datasets.Dataset):
            dataset = self._remove_unused_columns(dataset, description="Training")
        else:
            collator = self._get_collator_with_removed_columns(collator, description="Training")
        if self.dp_units is not None:
            if not isinstance(dataset, datasets.Dataset):
                raise ValueError("privacy_unit_column needs the train_dataset as a datasets.Dataset.")
            # the unit of each row travels with the batch (the column itself was removed as unused)
            dataset = dataset.add_column(UNIT_KEY, self.dp_units.row_unit.tolist())
        # Not passed through accelerator.prepare: the sampler already gives each rank its own shard.
        return _EpochDataLoader(
            dataset,
            batch_sampler=self._dp_sampler,
            collate_fn=_EmptySafeCollator(collator, dataset),
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )

    # -- model and optimizer ----------------------------------------------------------------------
    def _wrap_model(self, model, training: bool = True, dataloader=None):
        if not (self.args.dp_enabled and training):
            return super()._wrap_model(model, training=training, dataloader=dataloader)
        # No DDP wrapper: ranks take different numbers of micro-batches; the DP optimizer all-reduces.
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            with torch.no_grad():
                for p in self.model.parameters():
                    dist.broadcast(p.data, src=0)
        return self._grad_sample_module

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        if not self.args.dp_enabled or isinstance(optimizer, DPSGDOptimizer):
            return optimizer
        self._dp_optimizer = DPSGDOptimizer(
            optimizer,
            noise_multiplier=self.dp_noise_multiplier,
            max_grad_norm=self.args.per_sample_max_grad_norm,
            expected_batch_size=self.dp_expected_batch_size,
            grad_sample_module=self._grad_sample_module,
            clipping_mode=self.args.clipping_mode,
            generator=self._noise_generator,
            on_step=self._on_dp_step,
        )
        self.optimizer = self._dp_optimizer
        return self.optimizer

    def _on_dp_step(self) -> None:
        self._dp_steps += 1
        self._record_release()

    def _prior_ledger(self, ledger: PrivacyLedger) -> PrivacyLedger:
        """The ledger this training composes with; subclasses add what their loss depends on (a DP teacher)."""
        return ledger

    def _use_dp_seed(self, dp_seed: int) -> None:
        """Seed the Poisson sampler and the noise generator from `dp_seed` (secret unless the user set it)."""
        self._dp_seed = int(dp_seed)
        self._dp_sampler.seed = _derived_seed(self._dp_seed, "poisson-sampling")
        self._noise_generator.manual_seed(_derived_seed(self._dp_seed, "gaussian-noise"))
        # A public, random name for this run's draw (no relation to the seed): tells two training runs apart
        # in a composed ledger, and lets a resume update its own release and nothing else.
        self._noise_draw = uuid.uuid4().hex

    @property
    def privacy_release_name(self) -> str:
        """This training's name in the ledger: privacy_release_name, with a suffix if an earlier release had it."""
        return self._dp_release_name or self.args.privacy_release_name

    def _record_release(self) -> None:
        if self.args.disable_dp:
            return
        release = self.privacy_ledger.record(
            self.privacy_release_name,
            noise_multiplier=self.dp_noise_multiplier,
            sample_rate=self.dp_sample_rate,
            steps=self._dp_steps,
            mechanism=self._mechanism,
            max_grad_norm=self.args.per_sample_max_grad_norm,
            expected_batch_size=self.dp_expected_batch_size,
            num_examples=self.dp_num_examples,
            privacy_unit=self.privacy_unit,
            **({"num_rows": self.dp_num_rows} if self.dp_units is not None else {}),
            noise_draw=self._noise_draw,
        )
        self._dp_release_name = release.name

    # -- the DP step ------------------------------------------------------------------------------
    def compute_per_sample_loss(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-example training loss, shape [B]; element i must depend on example i only.

        Default: the causal-LM mean next-token NLL of each sequence. Subclasses (distillation)
        override it to train other objectives with DP-SGD.
        """
        outputs = model(**dp_forward_kwargs(model, inputs))
        return per_sequence_nll(outputs.logits, causal_lm_labels(inputs))

    def training_step(self, model, inputs, num_items_in_batch=None):
        if not self.args.dp_enabled:
            return super().training_step(model, inputs, num_items_in_batch)
        model.train()
        inputs = dict(self._prepare_inputs(inputs))
        unit_ids = inputs.pop(UNIT_KEY, None)
        n = inputs["input_ids"].shape[0]
        total = torch.zeros((), device=self.args.device)
        for start, stop in micro_batch_bounds(n, self.dp_max_physical_batch_size, unit_ids):
            micro = {
                k: (v[start:stop] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == n else v)
                for k, v in inputs.items()
            }
            with self.compute_loss_context_manager():
                losses = self.compute_per_sample_loss(model, micro)
            units = UnitLayout(unit_ids[start:stop]) if unit_ids is not None else None
            self._dp_optimizer.backward_microbatch(losses, units)
            total = total + losses.detach().float().sum()
        # Reported loss only (the update never uses it): the Trainer sums the accumulation parts, so
        # each part reports its mean per-example loss divided by the number of parts.
        return total / max(n, 1) / self.args.gradient_accumulation_steps

    def _get_grad_norm(self, model, grad_norm=None):
        if self.args.dp_enabled:
            return None  # the pre-noise gradient never exists as one tensor; its norm would be private
        return super()._get_grad_norm(model, grad_norm)

    # -- reporting --------------------------------------------------------------------------------
    def privacy_report(self) -> dict[str, Any]:
        """Epsilon recomputed from the steps actually taken, with everything the accountant used."""
        if not self.args.dp_enabled:
            return {"epsilon": math.inf, "dp": False}
        ledger = self.privacy_ledger
        release_eps = (
            compute_epsilon([self._release_entry(self._dp_steps)], ledger.delta, self.args.accountant)
            if not self.args.disable_dp
            else math.inf
        )
        return {
            "epsilon": ledger.epsilon() if not self.args.disable_dp else math.inf,
            "delta": ledger.delta,
            "accountant": self.args.accountant,
            "noise_multiplier": self.dp_noise_multiplier,
            "sample_rate": self.dp_sample_rate,
            "steps": self._dp_steps,
            "planned_steps": self.dp_planned_steps,
            "per_sample_max_grad_norm": self.args.per_sample_max_grad_norm,
            "expected_batch_size": self.dp_expected_batch_size,
            "num_examples": self.dp_num_examples,
            "num_rows": self.dp_num_rows,
            "sampling": "poisson" if self.args.poisson_sampling else "uniform_fixed_size",
            "privacy_unit": self.privacy_unit,
            "release": self.privacy_release_name,
            "epsilon_is_upper_bound": not ledger.approximate,
            "release_epsilon": release_eps,
            "disable_dp": self.args.disable_dp,
            "ledger": ledger.to_dict(),
        }

    @property
    def _states_guarantee(self) -> bool:
        """Whether this training adds noise, so that it has an (epsilon, delta) guarantee to report."""
        return bool(getattr(self.args, "dp_enabled", False) and not getattr(self.args, "disable_dp", False))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """The Trainer's logs, under DP without the noiseless private loss and with the epsilon spent so far."""
        if self._states_guarantee:
            if not self.args.log_private_loss:
                logs = {k: v for k, v in logs.items() if k not in PRIVATE_LOG_KEYS}
            is_report = any(k.startswith(PRIVACY_LOG_PREFIX) for k in logs)
            if self._dp_steps > 0 and not is_report:
                logs["epsilon"] = round(self.privacy_ledger.epsilon(), 6)
        super().log(logs, start_time)

    def log_privacy_report(self) -> None:
        """Log the guarantee of the training so far (epsilon, delta, noise multiplier, sample rate, steps,
        accountant) once, under `privacy/`, to every logger of report_to; called when training ends."""
        if not self._states_guarantee:
            return
        report = self.privacy_report()
        self.log({PRIVACY_LOG_PREFIX + k: report[k] for k in PRIVACY_LOG_KEYS})

    def save_privacy_artifacts(self, output_dir: str) -> None:
        """Write privacy_ledger.json and privacy_report.json into `output_dir` (main process only)."""
        if not self.args.dp_enabled or not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        if not self.args.disable_dp:
            self.privacy_ledger.save(output_dir)
        report = self.privacy_report()
        atomic_write_text(
            os.path.join(output_dir, PRIVACY_REPORT_NAME), json.dumps(report, indent=2, default=str)
        )

    def create_model_card(
        self, model_name: str | None = None, finetuned_from: str | None = None, **kwargs
    ) -> None:
        """The Trainer's `push_to_hub` card, replaced under DP by one that states the guarantee."""
        if not self._states_guarantee:
            return super().create_model_card(model_name=model_name, finetuned_from=finetuned_from, **kwargs)
        if finetuned_from:
            self._card_base_model = finetuned_from  # later saves write the same card
        self.write_privacy_card(self.args.output_dir)

    def write_privacy_card(self, output_dir: str) -> None:
        """README.md of `output_dir`: the model card that states the guarantee, with the ledger and report beside it.

        The one card of a DP model: `save_model` writes it into every model folder and `push_to_hub` into the
        folder it uploads, so a folder copied or uploaded by hand carries the same guarantee as a pushed one.
        """
        if not self._states_guarantee or not self.is_world_process_zero():
            return
        from hf_dpkd.hub import write_model_card

        self.save_privacy_artifacts(output_dir)
        base = self._card_base_model or getattr(self.model.config, "_name_or_path", None) or None
        write_model_card(
            output_dir,
            kind=self.model_card_kind,
            base_model=base,
            ledger=self.privacy_ledger,
            method=self.model_card_method(),
            repo_id=self.args.hub_model_id,
        )

    #: What the privacy card calls this model: a DP fine-tune (the pipeline writes its teacher's card itself).
    model_card_kind = "dp_finetune"

    def model_card_method(self) -> dict[str, Any]:
        report = self.privacy_report()
        return {
            "name": "DP-SGD fine-tuning (DPTrainer)",
            "privacy_unit": self.privacy_unit,
            "per_sample_max_grad_norm": report["per_sample_max_grad_norm"],
            "noise_multiplier": report["noise_multiplier"],
            "expected_batch_size": report["expected_batch_size"],
            "steps": report["steps"],
            "sampling": report["sampling"],
        }

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        super()._save(output_dir, state_dict=state_dict)
        if self.args.dp_enabled:
            output_dir = output_dir if output_dir is not None else self.args.output_dir
            is_checkpoint = os.path.basename(os.path.normpath(output_dir)).startswith(
                f"{PREFIX_CHECKPOINT_DIR}-"
            )
            if not is_checkpoint and self._states_guarantee:
                self.write_privacy_card(output_dir)  # a model folder states its guarantee, pushed or not
            else:
                self.save_privacy_artifacts(output_dir)
            # The resume state (with the secret DP seed) goes into checkpoints only, never into a model
            # folder that may be pushed; it is written before the Trainer's trainer_state.json.
            if self.args.should_save and is_checkpoint:
                import io

                buf = io.BytesIO()
                torch.save(
                    {
                        "noise_generator": self._noise_generator.get_state(),
                        "dp_seed": self._dp_seed,  # secret: checkpoints stay with the private data
                        "noise_draw": self._noise_draw,
                        "dp_steps": self._dp_steps,
                        "noise_multiplier": self.dp_noise_multiplier,
                        "sample_rate": self.dp_sample_rate,
                    },
                    buf,
                )
                atomic_write_bytes(os.path.join(output_dir, DP_STATE_NAME), buf.getvalue(), secret=True)

    # -- resume -----------------------------------------------------------------------------------
    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        if self.args.dp_enabled and resume_from_checkpoint:
            if resume_from_checkpoint is True:
                resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
                if resume_from_checkpoint is None:
                    raise ValueError(
                        f"resume_from_checkpoint=True but no checkpoint in {self.args.output_dir}."
                    )
            self._restore_privacy_state(resume_from_checkpoint)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _restore_privacy_state(self, checkpoint: str) -> None:
        """Restore the accountant history, DP step count and noise RNG saved with `checkpoint`."""
        state_path = os.path.join(checkpoint, DP_STATE_NAME)
        if not os.path.isfile(state_path):
            raise ValueError(
                f"Checkpoint {checkpoint} has no {DP_STATE_NAME}: it was not written by DPTrainer, so the privacy "
                "accounting cannot be resumed. Start from a DPTrainer checkpoint or from scratch."
            )
        state = torch.load(state_path, weights_only=False)
        if not math.isclose(
            state["noise_multiplier"], self.dp_noise_multiplier, rel_tol=1e-9
        ) or not math.isclose(state["sample_rate"], self.dp_sample_rate, rel_tol=1e-12):
            raise ValueError(
                f"The checkpoint was trained with noise_multiplier={state['noise_multiplier']:.6g}, "
                f"sample_rate={state['sample_rate']:.6g}, but the current settings give "
                f"{self.dp_noise_multiplier:.6g}, {self.dp_sample_rate:.6g}. Resume with the same DPConfig."
            )
        if "dp_seed" in state:  # the interrupted run's draws continue (sampler and noise)
            self._use_dp_seed(state["dp_seed"])
        self._noise_draw = state.get("noise_draw", self._noise_draw)
        self._noise_generator.set_state(state["noise_generator"])
        self._dp_steps = int(state["dp_steps"])
        if not self.args.disable_dp:
            saved = PrivacyLedger.load(checkpoint)
            saved.delta = self.privacy_ledger.delta
            self.privacy_ledger.releases = saved.releases
            own = [r for r in saved.releases if r.meta.get("noise_draw") == self._noise_draw]
            self._dp_release_name = own[0].name if own else None
