"""The orchestrator: runs the stages of the registry not yet done over one run directory (holding its lock),
timing each, and refuses a run directory produced with other settings."""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from hf_dpkd._io import atomic_write_text
from hf_dpkd.pipeline.context import RunContext
from hf_dpkd.pipeline.stages import STAGES, stage
from hf_dpkd.run_config import RunConfig, changed_settings
from hf_dpkd.run_dir import RunDirMismatchError

logger = logging.getLogger(__name__)


class Pipeline:
    """Runs the stages of `config` over `config.pipeline.run_dir`.

    Each stage of the registry is also a method, `stage_<name>()`, that runs it alone (no marker, no lock);
    attributes of the run's context (`dp_seed`, `teacher_dir`, `data`, ...) read through.
    """

    def __init__(self, config: RunConfig):
        self.config = config
        self.ctx = RunContext(config)
        self.run = self.ctx.run

    def __getattr__(self, name: str) -> Any:
        if name == "ctx":  # not yet set (e.g. during unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.ctx, name)

    def run_stages(self) -> dict[str, Any]:
        """Run the stages not yet done, printing one line as each starts and its seconds as it ends."""
        from hf_dpkd.console import run_log

        with self.run, run_log(verbose=self.config.pipeline.verbose):
            self._check_same_settings()
            atomic_write_text(self.run / "config.json", json.dumps(self.config.to_dict(), indent=2))
            for name in self.config.stage_list:
                # pushes are idempotent: redone whenever a repo is given, else nothing to do
                if name == "push":
                    h = self.config.hub
                    if not (h.push_teacher or h.push_synthetic or h.push_student):
                        continue
                elif self.run.is_done(name):
                    logger.info("stage %s: already done, skipped", name)
                    continue
                start = time.time()
                print(f"==> stage {name}", flush=True)
                result = stage(name)(self.ctx) or {}
                result["seconds"] = round(time.time() - start, 1)
                self.run.mark_done(name, result)
                print(f"    stage {name} done in {result['seconds']:.1f} s", flush=True)
            self._record_stage_seconds()
            return self.summary()

    def stage_seconds(self) -> dict[str, float]:
        """Seconds each finished stage took (from its marker; a resumed run keeps the times of earlier runs)."""
        seconds = {}
        for name in self.config.stage_list:
            result = self.run.stage_result(name)
            if result and "seconds" in result:
                seconds[name] = result["seconds"]
        return seconds

    def _record_stage_seconds(self) -> None:
        """Write the per-stage seconds into results.json (the evaluate stage writes it before the audit runs)."""
        results = self.run / "results.json"
        if results.is_file():
            data = json.loads(results.read_text())
            data["stage_seconds"] = self.stage_seconds()
            atomic_write_text(results, json.dumps(data, indent=2, default=str))

    def _check_same_settings(self) -> None:
        """Refuse to continue a run directory produced with other settings (its finished stages would be stale)."""
        previous = self.run / "config.json"
        if not previous.is_file() or not any((self.run / "stages").glob("*.json")):
            return  # nothing finished yet: a run that failed on bad input is re-run with the fixed settings
        old = json.loads(previous.read_text())
        new = json.loads(json.dumps(self.config.to_dict()))
        changed = changed_settings(old, new)
        if changed:
            details = ", ".join(f"{k}: {old[k]!r} -> {new[k]!r}" for k in changed[:5])
            raise RunDirMismatchError(
                f"run_dir={str(self.run.path)!r} was produced with other settings ({details}); use a new --run_dir, "
                "or the original settings to resume it."
            )

    def summary(self) -> dict[str, Any]:
        return self.ctx.summary()


def _stage_method(run: Callable[[RunContext], dict[str, Any]], name: str):
    @functools.wraps(run)  # inspect.getsource(Pipeline.stage_<name>) shows the stage's code
    def method(self: Pipeline) -> dict[str, Any]:
        return run(self.ctx)

    method.__name__, method.__qualname__ = f"stage_{name}", f"Pipeline.stage_{name}"
    return method


for _name in STAGES:
    setattr(Pipeline, f"stage_{_name}", _stage_method(stage(_name), _name))
