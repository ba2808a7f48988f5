"""DPConfig: TrainingArguments plus the DP-SGD settings, checked before any work starts."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments

from hf_dpkd.privacy.accounting import ACCOUNTANTS, Accountant
from hf_dpkd.privacy.engine import CLIPPING_MODES, ClippingMode
from hf_dpkd.privacy.units import check_unit_settings

#: Trainer hub strategies that upload checkpoints (which hold the secret DP state): refused under DP.
CHECKPOINT_HUB_STRATEGIES = ("checkpoint", "all_checkpoints")


@dataclass
class DPConfig(TrainingArguments):
    """TrainingArguments plus the DP-SGD settings. Give exactly one of `target_epsilon` / `noise_multiplier`.

    The expected logical batch is ``per_device_train_batch_size * gradient_accumulation_steps *
    world_size`` and the Poisson sample rate is that over the dataset size.
    """

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
    accountant: Accountant = field(
        default="prv",
        metadata={
            "help": "Privacy accountant: 'prv' (tightest), 'rdp' or 'gdp' (also accounts poisson_sampling=False)."
        },
    )
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
    clipping_mode: ClippingMode = field(
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

    def _validate_privacy_arguments(self) -> None:
        given = [n for n in ("target_epsilon", "noise_multiplier") if getattr(self, n) is not None]
        if self.disable_dp and given:
            raise ValueError(f"disable_dp=True trains without noise; do not also set {given[0]}.")
        if not self.disable_dp and len(given) != 1:
            raise ValueError(
                "Give exactly one of target_epsilon (e.g. target_epsilon=2.0: the noise is calibrated) or "
                f"noise_multiplier (e.g. noise_multiplier=1.0); got {'both' if given else 'neither'}."
            )
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
        if not self.poisson_sampling and self.accountant != "gdp" and not self.disable_dp:
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
        self._validate_distribution()
        if not self.disable_dp:
            self._validate_publication()

    def _validate_distribution(self) -> None:
        """Settings of the Trainer that would bypass or undo per-sample clipping."""
        if self.max_grad_norm and self.max_grad_norm > 0:
            raise ValueError(
                f"max_grad_norm={self.max_grad_norm} is the Trainer's non-private global clipping, which would "
                "run on top of DP-SGD's per-sample clipping; set max_grad_norm=0 and use "
                "per_sample_max_grad_norm for the clip norm."
            )
        if self.fp16:
            raise ValueError("fp16=True (loss scaling) is not supported with DP-SGD; use bf16=True or fp32.")
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

    def _validate_publication(self) -> None:
        """What would publish the secret DP state or reuse its batches (only with noise: disable_dp has none)."""
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


def adds_noise(args: Any) -> bool:
    """Whether training arguments `args` train with DP-SGD noise (a DPConfig without disable_dp)."""
    return isinstance(args, DPConfig) and not args.disable_dp
