"""SyntheticDataCallback: generate a control-coded synthetic dataset from the DP teacher it is attached to.

Attach it to DPTrainer. At train end (and at the chosen epochs) it samples the dataset with
:func:`generate_synthetic_dataset`, writes a dataset card stating the guarantee read from the privacy
ledger that DPTrainer writes into its output_dir before user callbacks run, and optionally pushes the
card and data to the Hub. All processes generate their shards; the main process writes and pushes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from transformers import TrainerCallback

from hf_dpkd.privacy.accounting import LEDGER_FILENAME, PrivacyLedger
from hf_dpkd.privacy.histogram import ControlCodeDistribution
from hf_dpkd.synthetic.control_codes import ControlCodeFormat
from hf_dpkd.synthetic.generation import SyntheticGenerationConfig, generate_synthetic_dataset, process_state
from hf_dpkd.trainers.dp_config import adds_noise

logger = logging.getLogger(__name__)
#: Card wording of each distribution mode (see hf_dpkd.hub.write_dataset_card).
CARD_CODE_MODES = {"dp": "dp_histogram", "uniform": "uniform", "public": "public", "exact": "exact"}
PUSH_PATTERNS = ["README.md", "data/*"]

DistributionSpec = ControlCodeDistribution | str | Path | Callable[..., ControlCodeDistribution]


class SyntheticDataCallback(TrainerCallback):
    """Generate `num_samples` control-coded texts from the trained teacher; card and optional push.

    `distribution`: a ControlCodeDistribution, the path of one saved with ``.save()``, or a callable
    ``f(args) -> ControlCodeDistribution`` called at generation time. `output_dir` defaults to
    ``<args.output_dir>/synthetic``; epoch snapshots (`on_epochs`) go to ``<output_dir>/epoch-<k>`` and
    are never pushed. A teacher without a privacy ledger (not DP-trained) is refused unless
    `allow_non_private=True`, and then the card says the teacher is NOT private.
    """

    def __init__(
        self,
        num_samples: int,
        distribution: DistributionSpec,
        fmt: ControlCodeFormat,
        *,
        output_dir: str | Path | None = None,
        generation: SyntheticGenerationConfig | None = None,
        seed: int = 0,
        batch_size: int = 64,
        shard_size: int = 256,
        filters: Sequence[str | Callable[[str], bool]] | None = None,
        on_epochs: list[int] | None = None,
        push_to_hub: bool = False,
        hub_dataset_id: str | None = None,
        hub_private_repo: bool | None = None,
        hub_token: str | None = None,
        allow_non_private: bool = False,
    ):
        if not isinstance(num_samples, int) or num_samples <= 0:
            raise ValueError(
                f"num_samples={num_samples!r} must be > 0 (an int: the number of synthetic texts)."
            )
        if not isinstance(fmt, ControlCodeFormat):
            raise TypeError(f"fmt must be a ControlCodeFormat, got {type(fmt).__name__}.")
        if not isinstance(distribution, ControlCodeDistribution | str | Path) and not callable(distribution):
            raise TypeError(
                "distribution must be a ControlCodeDistribution, the path of a saved one, or a callable(args) "
                f"returning one; got {type(distribution).__name__}."
            )
        if push_to_hub and not hub_dataset_id:
            raise ValueError("push_to_hub=True needs hub_dataset_id='namespace/name' for the dataset repo.")
        if on_epochs is not None and any(not isinstance(e, int) or e < 1 for e in on_epochs):
            raise ValueError(f"on_epochs={on_epochs!r} must list epoch numbers >= 1 (e.g. [1, 5]).")
        if hub_dataset_id:
            try:
                from hf_dpkd.hub import validate_repo_id
            except ImportError:  # the Hub helpers are optional at construction time
                pass
            else:
                validate_repo_id(hub_dataset_id)
        self.num_samples, self.distribution, self.fmt = num_samples, distribution, fmt
        self.output_dir = output_dir
        self.generation = generation or SyntheticGenerationConfig()
        self.seed, self.batch_size, self.shard_size, self.filters = seed, batch_size, shard_size, filters
        self.on_epochs = sorted(set(on_epochs or []))
        self.push_to_hub, self.hub_dataset_id = push_to_hub, hub_dataset_id
        self.hub_private_repo, self.hub_token = hub_private_repo, hub_token
        self.allow_non_private = allow_non_private
        self.outputs: list[Path] = []
        self._snapshots: list[tuple[Path, int]] = []
        if isinstance(distribution, ControlCodeDistribution):
            self._check_mode(distribution)

    # -- what to generate -------------------------------------------------------------------------
    def _root(self, args) -> Path:
        return Path(self.output_dir) if self.output_dir else Path(args.output_dir) / "synthetic"

    def _resolve_distribution(self, args) -> ControlCodeDistribution:
        spec = self.distribution
        if isinstance(spec, ControlCodeDistribution):
            dist = spec
        elif isinstance(spec, str | Path):
            dist = ControlCodeDistribution.load(spec)
        else:
            dist = spec(args)
            if not isinstance(dist, ControlCodeDistribution):
                raise TypeError(
                    f"The distribution callable returned {type(dist).__name__}, not a distribution."
                )
        self._check_mode(dist)
        return dist

    def _check_mode(self, dist: ControlCodeDistribution) -> None:
        if dist.leaks_private_data and not self.allow_non_private:
            raise ValueError(
                f"distribution mode {dist.mode!r} uses the EXACT private control-code frequencies (NOT private); "
                "use a 'dp', 'uniform' or 'public' distribution, or pass allow_non_private=True for a comparison."
            )

    # -- privacy ------------------------------------------------------------------------------------
    def _ledger(self, args) -> PrivacyLedger | None:
        path = Path(args.output_dir) / LEDGER_FILENAME
        if path.is_file():
            return PrivacyLedger.load(args.output_dir)
        if not self.allow_non_private:
            raise ValueError(
                f"No privacy ledger in {args.output_dir}: the teacher was not trained with DP (DPTrainer writes "
                f"{LEDGER_FILENAME} there), so its synthetic data is NOT private. Train with DPTrainer, or pass "
                "allow_non_private=True (the card will say the teacher is NOT private)."
            )
        logger.warning("SyntheticDataCallback: no privacy ledger; the synthetic data is NOT private.")
        return None

    def _check_histogram_in(self, ledger: PrivacyLedger, dist: ControlCodeDistribution, where: str) -> None:
        name = dist.meta.get("release", "control_code_histogram")
        if dist.mode == "dp" and ledger.get(name) is None:
            raise ValueError(
                f"The control codes come from the DP histogram release {name!r}, which is not in the privacy "
                f"ledger {where}: its epsilon would be missing from the dataset card. Compose it with the "
                "teacher's training: DPConfig(privacy_ledger_path=<folder holding the histogram's ledger>)."
            )

    def on_train_begin(self, args, state, control, **kwargs):
        """Fail before training, not after it, when the result could not be published as private."""
        dist = self._resolve_distribution(args)
        dp = adds_noise(args)
        if not dp and not self.allow_non_private:
            raise ValueError(
                f"No privacy ledger will be written: {type(args).__name__} does not train with DP, so the "
                "synthetic data would NOT be private. Train with DPTrainer/DPConfig, or pass "
                "allow_non_private=True (the card will say the teacher is NOT private)."
            )
        prior = getattr(args, "privacy_ledger_path", None)
        if dp and dist.mode == "dp":
            if prior is not None:
                self._check_histogram_in(
                    PrivacyLedger.load_or_new(prior),
                    dist,
                    f"given to the trainer (privacy_ledger_path={prior!r})",
                )
            else:
                logger.warning(
                    "SyntheticDataCallback: the DP histogram release %r must be in the trainer's privacy ledger "
                    "(DPTrainer(privacy_ledger=...) or DPConfig(privacy_ledger_path=...)); checked at train end.",
                    dist.meta.get("release", "control_code_histogram"),
                )

    # -- generation ---------------------------------------------------------------------------------
    def on_epoch_end(self, args, state, control, **kwargs):
        epoch = round(state.epoch or 0)
        if epoch in self.on_epochs and all(e != epoch for _, e in self._snapshots):
            out = self._root(args) / f"epoch-{epoch}"
            self._generate(args, kwargs, out, self._resolve_distribution(args))
            self._snapshots.append((out, epoch))

    def on_train_end(self, args, state, control, **kwargs):
        process_state().wait_for_everyone()  # the main process has written the ledger before this callback
        ledger = self._ledger(args)
        dist = self._resolve_distribution(args)
        if ledger is not None:
            self._check_histogram_in(ledger, dist, f"{Path(args.output_dir) / LEDGER_FILENAME}")
        out = self._root(args)
        dataset = self._generate(args, kwargs, out, dist)
        if not args.should_save:
            return
        # Snapshots taken during training are covered by the whole run's guarantee (an upper bound).
        for snapshot, _ in self._snapshots:
            self._card(args, snapshot, ledger, dist, self.num_samples)
        if self._card(args, out, ledger, dist, len(dataset)) and self.push_to_hub:
            from hf_dpkd.hub import push_folder_to_hub

            push_folder_to_hub(
                out,
                self.hub_dataset_id,
                repo_type="dataset",
                private=self.hub_private_repo,
                token=self.hub_token,
                allow_patterns=PUSH_PATTERNS,
            )

    def _generate(self, args, kwargs, out: Path, dist: ControlCodeDistribution):
        model, tokenizer = kwargs.get("model"), kwargs.get("processing_class")
        tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a multimodal processor holds one
        if model is None or tokenizer is None:
            raise ValueError(
                "SyntheticDataCallback needs the model and its tokenizer: pass processing_class=tokenizer to "
                "the Trainer."
            )
        dataset = generate_synthetic_dataset(
            model,
            tokenizer,
            dist,
            self.num_samples,
            out,
            fmt=self.fmt,
            generation=self.generation,
            seed=self.seed,
            batch_size=self.batch_size,
            shard_size=self.shard_size,
            filters=self.filters,
        )
        self.outputs.append(out)
        return dataset

    def _card(self, args, out: Path, ledger, dist: ControlCodeDistribution, num_samples: int) -> bool:
        """Write README.md (and the ledger) next to the data; False if the Hub helpers are unavailable."""
        try:
            from hf_dpkd.hub import write_dataset_card
        except ImportError as exc:
            logger.warning("No dataset card written for %s (hf_dpkd.hub unavailable: %s).", out, exc)
            return False
        if ledger is not None:
            ledger.save(out)
        write_dataset_card(
            out,
            source_model=str(getattr(args, "hub_model_id", None) or args.output_dir),
            ledger=ledger,
            control_code_mode=CARD_CODE_MODES[dist.mode],
            generation_config=asdict(self.generation),
            num_samples=num_samples,
            control_fields=self.fmt.columns,
            repo_id=self.hub_dataset_id,
        )
        return True
