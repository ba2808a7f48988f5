"""What every stage reads about its run: the layout of the run directory, the settings, the private data,
the inputs given by argument (downloaded once), the ledgers of earlier releases and the run's secret DP seed.
Stages receive it as `ctx`; it writes nothing but the secret seed file."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict, load_from_disk

from hf_dpkd._io import atomic_write_text
from hf_dpkd.pipeline.constants import COMPLETE, STUDENT_METHODS
from hf_dpkd.privacy.accounting import PrivacyLedger, default_delta
from hf_dpkd.run_config import RunConfig
from hf_dpkd.run_dir import RunDir


class RunContext:
    """The run of `config` over `config.pipeline.run_dir`, as the stages see it."""

    def __init__(self, config: RunConfig):
        self.config = config
        self.run = RunDir(config.pipeline.run_dir)
        self._data: DatasetDict | None = None
        self._fmt = None
        self._resolved: dict[str, Path] = {}

    # -- the private data -------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.run / "data" / "private"

    def data(self) -> DatasetDict:
        if self._data is None:
            self._data = load_from_disk(str(self.data_dir))
        return self._data

    def forget_data(self) -> None:
        """Reload the private data on next use (the data stage has just rewritten it)."""
        self._data = None

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

    # -- models and artifacts ---------------------------------------------------------------------
    def base_path(self, which: str) -> Path:
        return self.run / "base" / which

    def base_of(self, name: str) -> Path:
        """The public base model of the model folder `name` (what a LoRA adapter of it is merged into)."""
        return self.base_path("student" if name in STUDENT_METHODS or name == "public_student" else "teacher")

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

    def synthetic(self) -> Dataset:
        from hf_dpkd.synthetic.generation import load_synthetic_dataset

        return load_synthetic_dataset(self.synthetic_dir())

    def control_distribution(self):
        from hf_dpkd.privacy.histogram import ControlCodeDistribution

        return ControlCodeDistribution.load(self.run / "histogram" / "control_codes.json")

    def model_dirs(self) -> dict[str, Path]:
        """The finished model folders of the run (and a given DP teacher), by method."""
        dirs = {
            "teacher": self.teacher_dir(),
            "non_private_teacher": self.run / "non_private_teacher" / "final",
        }
        for m in STUDENT_METHODS:
            dirs[m] = self.run / "students" / m / "final"
        given = {"teacher"} if self.config.teacher.dp_teacher else set()  # a pushed folder has no marker
        return {k: v for k, v in dirs.items() if k in given or (v / COMPLETE).is_file()}

    def summary(self) -> dict[str, Any]:
        """results.json of the run ({} before the evaluate stage)."""
        results = self.run / "results.json"
        return json.loads(results.read_text()) if results.is_file() else {}

    # -- ledgers and the DP seed ------------------------------------------------------------------
    def ledger_for(self, path: Path) -> PrivacyLedger | None:
        return PrivacyLedger.load(path) if (path / "privacy_ledger.json").is_file() else None

    def epsilon_of(self, path: Path) -> float:
        ledger = self.ledger_for(path)
        return ledger.epsilon() if ledger and ledger.releases else math.inf

    def composed(self, *folders: Path) -> PrivacyLedger:
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
        return self.composed(*folders)

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
