"""SyntheticDataCallback: generate a control-coded synthetic dataset from the DP teacher as it trains.

Attach it to DPTrainer. At train end (and at the chosen epochs) it samples the dataset, writes a
dataset card stating the guarantee (read from the privacy ledger DPTrainer writes into its output dir
before any user callback runs) and optionally pushes it to the Hub. All processes generate their
shards; the main process writes the card and pushes.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

from transformers import TrainerCallback

from hf_dpkd.privacy.accounting import LEDGER_FILENAME, PrivacyLedger
from hf_dpkd.privacy.histogram import ControlCodeDistribution
from hf_dpkd.synthetic.control_codes import ControlCodeFormat
from hf_dpkd.synthetic.generation import SyntheticGenerationConfig, generate_synthetic_dataset

logger = logging.getLogger(__name__)


class SyntheticDataCallback(TrainerCallback):
    def __init__(
        self,
        num_samples: int,
        distribution: ControlCodeDistribution,
        fmt: ControlCodeFormat,
        *,
        output_dir: str | None = None,
        generation: SyntheticGenerationConfig | None = None,
        seed: int = 0,
        batch_size: int = 64,
        on_epochs: list[int] | None = None,
        push_to_hub: bool = False,
        hub_dataset_id: str | None = None,
        hub_private_repo: bool | None = None,
        hub_token: str | None = None,
        allow_non_private: bool = False,
    ):
        if num_samples <= 0:
            raise ValueError(f"num_samples={num_samples} must be > 0.")
        if push_to_hub and not hub_dataset_id:
            raise ValueError("push_to_hub=True needs hub_dataset_id='namespace/name' for the dataset repo.")
        if hub_dataset_id:
            from hf_dpkd.hub import validate_repo_id

            validate_repo_id(hub_dataset_id)
        self.num_samples, self.distribution, self.fmt = num_samples, distribution, fmt
        self.output_dir, self.generation, self.seed, self.batch_size = (
            output_dir,
            generation,
            seed,
            batch_size,
        )
        self.on_epochs = set(on_epochs or [])
        self.push_to_hub, self.hub_dataset_id = push_to_hub, hub_dataset_id
        self.hub_private_repo, self.hub_token = hub_private_repo, hub_token
        self.allow_non_private = allow_non_private
        self.outputs: list[Path] = []

    def on_epoch_end(self, args, state, control, **kwargs):
        epoch = round(state.epoch or 0)
        if epoch in self.on_epochs:
            self._generate(
                args, kwargs, Path(self.output_dir or Path(args.output_dir) / "synthetic") / f"epoch-{epoch}"
            )

    def on_train_end(self, args, state, control, **kwargs):
        self._generate(args, kwargs, Path(self.output_dir or Path(args.output_dir) / "synthetic"))

    def _ledger(self, args) -> PrivacyLedger | None:
        path = Path(args.output_dir) / LEDGER_FILENAME
        if path.is_file():
            return PrivacyLedger.load(path)
        if not self.allow_non_private:
            raise ValueError(
                f"No privacy ledger in {args.output_dir}: the teacher was not trained with DPTrainer, so its synthetic "
                "data is NOT private. Train with DPTrainer, or pass allow_non_private=True (the card will say so)."
            )
        return None

    def _generate(self, args, kwargs, out: Path) -> None:
        ledger = self._ledger(args)
        model, tokenizer = kwargs["model"], kwargs["processing_class"]
        was_training = model.training
        dataset = generate_synthetic_dataset(
            model,
            tokenizer,
            self.distribution,
            self.num_samples,
            out,
            fmt=self.fmt,
            generation=self.generation,
            seed=self.seed,
            batch_size=self.batch_size,
        )
        model.train(was_training)
        self.outputs.append(out)
        if not args.should_save:
            return
        from hf_dpkd.hub import push_folder_to_hub, write_dataset_card

        if ledger is not None:
            ledger.save(out)
        mode = {"dp": "dp_histogram"}.get(self.distribution.mode, self.distribution.mode)
        write_dataset_card(
            out,
            source_model=str(getattr(model, "name_or_path", "") or args.output_dir),
            ledger=ledger,
            control_code_mode=mode,
            generation_config=asdict(self.generation or SyntheticGenerationConfig()),
            num_samples=len(dataset),
            control_fields=self.fmt.columns,
            repo_id=self.hub_dataset_id,
        )
        if self.push_to_hub:
            push_folder_to_hub(
                out,
                self.hub_dataset_id,
                repo_type="dataset",
                private=self.hub_private_repo,
                token=self.hub_token,
                allow_patterns=["README.md", "data/*", LEDGER_FILENAME],
            )
