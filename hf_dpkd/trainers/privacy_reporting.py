"""What a DP training tells the world: its logs (epsilon, never the noiseless private loss), the privacy
report, and the model card that states the guarantee. Mixed into DPTrainer, which provides `dp_session`."""

from __future__ import annotations

import json
import os
from typing import Any

from transformers import Trainer

from hf_dpkd._io import atomic_write_text

PRIVACY_REPORT_NAME = "privacy_report.json"
#: Logged values computed from a private batch without noise: dropped from the logs under DP by default.
PRIVATE_LOG_KEYS = ("loss", "train_loss")
#: Prefix of the privacy report that every finished DP training logs once to the loggers of report_to.
PRIVACY_LOG_PREFIX = "privacy/"
#: The privacy report's entries that the loggers receive (all of them public: the settings and the guarantee).
PRIVACY_LOG_KEYS = ("epsilon", "delta", "noise_multiplier", "sample_rate", "steps", "accountant")


class PrivacyReporting(Trainer):
    """Logging, privacy report and privacy card of a Trainer that holds a DPSession as `self.dp_session`."""

    #: What the privacy card calls this model: a DP fine-tune (the pipeline writes its teacher's card itself).
    model_card_kind = "dp_finetune"
    _card_base_model: str | None = None

    def privacy_report(self) -> dict[str, Any]:
        """Epsilon recomputed from the steps actually taken, with everything the accountant used."""
        return self.dp_session.report()

    @property
    def _states_guarantee(self) -> bool:
        """Whether this training adds noise, so that it has an (epsilon, delta) guarantee to report."""
        return not self.args.disable_dp

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """The Trainer's logs, under DP without the noiseless private loss and with the epsilon spent so far."""
        if self._states_guarantee:
            if not self.args.log_private_loss:
                logs = {k: v for k, v in logs.items() if k not in PRIVATE_LOG_KEYS}
            is_report = any(k.startswith(PRIVACY_LOG_PREFIX) for k in logs)
            if self.dp_session.steps > 0 and not is_report:
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
        if not self.args.should_save:
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
