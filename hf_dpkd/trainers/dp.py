"""DPTrainer: DP-SGD inside the Hugging Face Trainer loop.

A fine-tuning script that swaps ``TrainingArguments -> DPConfig`` and ``Trainer -> DPTrainer`` trains
with DP-SGD: Poisson-sampled logical batches (``privacy/sampling.py``), split into physical
micro-batches, per-sample clipping by Opacus, one Gaussian noise draw per logical step
(``privacy/engine.py``), and a PrivacyLedger that composes this release with earlier ones
(``privacy/accounting.py``). The privacy state itself (calibration, seed, budget, releases, resume) is a
DPSession (``privacy/session.py``); this module wires it into the Trainer. The privacy unit is one
training example (one row of `train_dataset`), or with ``privacy_unit_column`` one user
(``privacy/units.py``).
"""

from __future__ import annotations

import logging
import os
import warnings

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from hf_dpkd.privacy.accounting import PrivacyLedger
from hf_dpkd.privacy.engine import DPSGDOptimizer, attach_grad_sampler
from hf_dpkd.privacy.session import DP_STATE_NAME, PRIVACY_UNIT, DPSession
from hf_dpkd.privacy.units import UNIT_KEY, UnitIndex, UnitLayout, unit_name
from hf_dpkd.trainers.checkpoints import last_complete_checkpoint
from hf_dpkd.trainers.dp_config import DPConfig
from hf_dpkd.trainers.inputs import (
    PACKED_ROWS_NOTE,
    EmptySafeCollator,
    EpochDataLoader,
    rows_look_packed,
    with_trl_formats,
)
from hf_dpkd.trainers.losses import causal_lm_labels, dp_forward_kwargs, per_sequence_nll
from hf_dpkd.trainers.micro_batches import micro_batches
from hf_dpkd.trainers.privacy_reporting import PRIVACY_REPORT_NAME, PrivacyReporting

__all__ = ["DP_STATE_NAME", "PRIVACY_REPORT_NAME", "DPConfig", "DPTrainer"]

logger = logging.getLogger(__name__)


class _PrivacyCallback(TrainerCallback):
    """Keeps the sampler's epoch, stops before the budget would be exceeded, writes the ledger at train end."""

    def __init__(self, trainer: DPTrainer):
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.trainer.dp_session.sampler.set_epoch(int(state.epoch or 0))

    def on_step_end(self, args, state, control, **kwargs):
        session = self.trainer.dp_session
        if (
            session.budget_reached
            and state.global_step < state.max_steps
            and not control.should_training_stop
        ):
            logger.warning(
                "Stopping DP training after %d steps: one more step would exceed target_epsilon=%s.",
                session.steps,
                args.target_epsilon,
            )
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        # First of the callbacks: the loggers of report_to are still open when the report reaches them.
        self.trainer.log_privacy_report()
        self.trainer.save_privacy_artifacts(args.output_dir)


class DPTrainer(PrivacyReporting, Trainer):
    """`transformers.Trainer` with DP-SGD (`args` must be a DPConfig).

    Extra keyword: `privacy_ledger` (a PrivacyLedger of earlier releases on the same data); otherwise
    `args.privacy_ledger_path` is read, or a fresh ledger is started. Datasets may be tokenized rows or in
    trl's formats (a `text` column, or `prompt` / `completion`: completion-only loss), tokenized here by
    `processing_class`. A peft model (LoRA) trains its adapters only and saves them as an adapter folder.
    The privacy state is `self.dp_session` (a DPSession).
    """

    def __init__(self, *args, privacy_ledger: PrivacyLedger | None = None, **kwargs):
        kwargs = with_trl_formats(args, kwargs)
        if not isinstance(kwargs.get("args"), DPConfig):
            given = type(kwargs.get("args")).__name__
            raise TypeError(f"DPTrainer needs args=DPConfig(...) (the DP-SGD settings), got {given}.")
        super().__init__(**kwargs)
        self._card_base_model: str | None = None
        self._dp_optimizer: DPSGDOptimizer | None = None
        self.dp_session = self._start_session(privacy_ledger)
        self._grad_sample_module = attach_grad_sampler(
            self.model,
            self.args.clipping_mode,
            self.args.per_sample_max_grad_norm,
            per_unit=self.dp_session.units is not None,
        )
        self.callback_handler.callbacks.insert(0, _PrivacyCallback(self))

    # -- set-up -----------------------------------------------------------------------------------
    def _start_session(self, ledger: PrivacyLedger | None) -> DPSession:
        """Check the data, load the ledger of earlier releases and calibrate: fails before any training."""
        args = self.args
        if self.train_dataset is None:
            raise ValueError("DPTrainer: DP-SGD needs a train_dataset (its size defines the sample rate).")
        try:
            rows = len(self.train_dataset)
        except TypeError as e:
            raise ValueError(
                "DPTrainer needs a map-style train_dataset with a length (Poisson sampling draws from all N examples); "
                "an IterableDataset cannot be sampled with a known rate."
            ) from e
        if rows == 0:
            raise ValueError("train_dataset is empty: DP-SGD needs at least one training example.")
        units = self._unit_index() if args.privacy_unit_column else None
        n = units.num_units if units is not None else rows
        world = max(1, args.world_size)
        expected = args.per_device_train_batch_size * args.gradient_accumulation_steps * world
        if expected > n:
            what = "users" if units is not None else "examples"
            raise ValueError(
                f"The expected logical batch per_device_train_batch_size*gradient_accumulation_steps*world_size="
                f"{expected} is larger than the dataset ({n} {what}); lower per_device_train_batch_size or "
                "gradient_accumulation_steps."
            )
        privacy_unit = PRIVACY_UNIT
        if units is not None:
            privacy_unit = unit_name(args.privacy_unit_column)
        elif rows_look_packed(self.train_dataset):
            privacy_unit = PRIVACY_UNIT + PACKED_ROWS_NOTE
            warnings.warn(
                "The training rows look packed (same length, no padding, labels equal to inputs): one text may "
                "span several rows and is then protected only at about k*epsilon for k rows. The privacy unit is "
                "one row; to protect each text, keep one text per row (truncate or pad, do not pack).",
                stacklevel=3,
            )
        if ledger is None:
            try:
                ledger = PrivacyLedger.load_or_new(args.privacy_ledger_path, accountant=args.accountant)
            except FileNotFoundError as e:
                raise ValueError(
                    f"privacy_ledger_path={args.privacy_ledger_path!r} holds no privacy_ledger.json: the earlier "
                    "releases it should hold would silently drop out of the guarantee. Give the folder (or the "
                    "privacy_ledger.json) written by the earlier DP stage, or no privacy_ledger_path for a fresh "
                    "ledger."
                ) from e
        return DPSession(
            args,
            ledger=self._prior_ledger(ledger, n),
            num_rows=rows,
            units=units,
            privacy_unit=privacy_unit,
            expected_batch_size=expected,
            world_size=world,
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

    def _prior_ledger(self, ledger: PrivacyLedger, num_units: int) -> PrivacyLedger:
        """The ledger this training composes with; subclasses add what their loss depends on (a DP teacher)."""
        return ledger

    @property
    def privacy_ledger(self) -> PrivacyLedger:
        """Every release on the private data so far, this training's included (its steps up to now)."""
        return self.dp_session.ledger

    @property
    def privacy_unit(self) -> str:
        """What one unit of the guarantee is: one row, or one user of privacy_unit_column."""
        return self.dp_session.privacy_unit

    @property
    def privacy_release_name(self) -> str:
        """This training's name in the ledger: privacy_release_name, with a suffix if an earlier release had it."""
        return self.dp_session.release_name

    # -- data -------------------------------------------------------------------------------------
    def get_train_dataloader(self) -> DataLoader:
        import datasets

        dataset, collator = self.train_dataset, self.data_collator
        if isinstance(dataset, datasets.Dataset):
            dataset = self._remove_unused_columns(dataset, description="Training")
        else:
            collator = self._get_collator_with_removed_columns(collator, description="Training")
        units = self.dp_session.units
        if units is not None:
            if not isinstance(dataset, datasets.Dataset):
                raise ValueError("privacy_unit_column needs the train_dataset as a datasets.Dataset.")
            # the unit of each row travels with the batch (the column itself was removed as unused)
            dataset = dataset.add_column(UNIT_KEY, units.row_unit.tolist())
        # Not passed through accelerator.prepare: the sampler already gives each rank its own shard.
        return EpochDataLoader(
            dataset,
            batch_sampler=self.dp_session.sampler,
            collate_fn=EmptySafeCollator(collator, dataset),
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )

    # -- model and optimizer ----------------------------------------------------------------------
    def _wrap_model(self, model, training: bool = True, dataloader=None):
        if not training:
            return super()._wrap_model(model, training=training, dataloader=dataloader)
        # No DDP wrapper: ranks take different numbers of micro-batches; the DP optimizer all-reduces.
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            with torch.no_grad():
                for p in self.model.parameters():
                    dist.broadcast(p.data, src=0)
        return self._grad_sample_module

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        if isinstance(optimizer, DPSGDOptimizer):
            return optimizer
        session = self.dp_session
        self._dp_optimizer = DPSGDOptimizer(
            optimizer,
            noise_multiplier=session.noise_multiplier,
            max_grad_norm=self.args.per_sample_max_grad_norm,
            expected_batch_size=session.expected_batch_size,
            grad_sample_module=self._grad_sample_module,
            clipping_mode=self.args.clipping_mode,
            generator=session.noise_generator,
            on_step=session.on_step,
        )
        self.optimizer = self._dp_optimizer
        return self.optimizer

    # -- the DP step ------------------------------------------------------------------------------
    def compute_per_sample_loss(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-example training loss, shape [B]; element i must depend on example i only.

        Default: the causal-LM mean next-token NLL of each sequence. Subclasses (distillation)
        override it to train other objectives with DP-SGD.
        """
        outputs = model(**dp_forward_kwargs(model, inputs))
        return per_sequence_nll(outputs.logits, causal_lm_labels(inputs))

    def training_step(self, model, inputs, num_items_in_batch=None):
        model.train()
        inputs = dict(self._prepare_inputs(inputs))
        unit_ids = inputs.pop(UNIT_KEY, None)
        n = inputs["input_ids"].shape[0]
        total = torch.zeros((), device=self.args.device)
        physical = self.args.max_physical_batch_size or self.args.per_device_train_batch_size
        for micro, micro_units in micro_batches(inputs, physical, unit_ids):
            with self.compute_loss_context_manager():
                losses = self.compute_per_sample_loss(model, micro)
            units = UnitLayout(micro_units) if micro_units is not None else None
            self._dp_optimizer.backward_microbatch(losses, units)
            total = total + losses.detach().float().sum()
        # Reported loss only (the update never uses it): the Trainer sums the accumulation parts, so
        # each part reports its mean per-example loss divided by the number of parts.
        return total / max(n, 1) / self.args.gradient_accumulation_steps

    def _get_grad_norm(self, model, grad_norm=None):
        return None  # the pre-noise gradient never exists as one tensor; its norm would be private

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        super()._save(output_dir, state_dict=state_dict)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        is_checkpoint = os.path.basename(os.path.normpath(output_dir)).startswith(f"{PREFIX_CHECKPOINT_DIR}-")
        if not is_checkpoint and self._states_guarantee:
            self.write_privacy_card(output_dir)  # a model folder states its guarantee, pushed or not
        else:
            self.save_privacy_artifacts(output_dir)
        # The resume state (with the secret DP seed) goes into checkpoints only, never into a model
        # folder that may be pushed; it is written before the Trainer's trainer_state.json.
        if self.args.should_save and is_checkpoint:
            self.dp_session.save_state(output_dir)

    # -- resume -----------------------------------------------------------------------------------
    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        if resume_from_checkpoint:
            if resume_from_checkpoint is True:
                resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
                if resume_from_checkpoint is None:
                    raise ValueError(
                        f"resume_from_checkpoint=True but no checkpoint in {self.args.output_dir}."
                    )
            self.dp_session.restore(resume_from_checkpoint)
        if torch.get_float32_matmul_precision() != "highest":
            warnings.warn(
                f"float32 matrix products run at reduced precision (torch.get_float32_matmul_precision() = "
                f"{torch.get_float32_matmul_precision()!r}: TF32 on a GPU, e.g. tf32=True or "
                "torch.backends.cuda.matmul.allow_tf32 = True): per-sample norms are then off by up to about "
                "5e-5 of their value, so one example can move the update by slightly more than C. For DP "
                "training set tf32=False or call torch.set_float32_matmul_precision('highest').",
                stacklevel=2,
            )
        return super().train(resume_from_checkpoint, *args, **kwargs)
