"""SIGKILL at a random point of a stage, then the same command again: it finishes, with the same results.

Each test continues a copy of the shared `--quick` run from just before one stage (the DP histogram
draws fresh noise, so only a continuation of the same run can be compared with it), kills the command
a seeded-random time after the stage starts, re-runs the exact same command, and compares what the
stage produced with the uninterrupted run. Generation and distillation are covered in
tests/test_generation.py and tests/test_pipeline.py.
"""

import json
import random
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_dpkd.pipeline import COMPLETE
from hf_dpkd.privacy.accounting import PrivacyLedger
from tests.hub_server import HubServer, hub_fixture  # noqa: F401  (the `hub` fixture)
from tests.pipeline_runs import quick_command, quick_env, run_quick

LATER = {
    "teacher": ("teacher", "generate", "students", "evaluate", "audit"),
    "evaluate": ("evaluate", "audit"),
    "audit": ("audit",),
}


def _continue_from(reference: Path, stage: str, tmp_path: Path) -> Path:
    """A copy of the finished run with `stage` and everything after it undone."""
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    for name in LATER[stage]:
        (run_dir / "stages" / f"{name}.json").unlink(missing_ok=True)
    undo = {
        "teacher": ["teacher", "non_private_teacher"],
        "evaluate": ["results.json", "results.md", "results.png"],
        "audit": ["audit"],
    }[stage]
    for name in undo:
        path = run_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    return run_dir


def _kill_during(command: list[str], stage: str, delay: float) -> subprocess.Popen:
    """Start `command`, SIGKILL it `delay` seconds after it announces `stage`; fail if it ended by itself."""
    proc = subprocess.Popen(
        command, env=quick_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    for line in proc.stdout:
        if line.startswith(f"==> stage {stage}"):
            break
    else:
        proc.wait()
        pytest.fail(f"the command never reached stage {stage} (exit {proc.returncode})")
    time.sleep(delay)
    proc.kill()
    proc.wait()
    assert proc.returncode == -9, f"stage {stage} finished within {delay:.2f}s: the kill landed after it"
    return proc


def _delay(stage: str, low: float, high: float) -> float:
    return random.Random(f"kill-{stage}").uniform(low, high)


def test_killed_during_teacher_training_gives_the_same_teacher_and_ledger(quick_run, tmp_path):
    reference, _, _ = quick_run
    run_dir = _continue_from(reference, "teacher", tmp_path)
    command = quick_command(run_dir, "--stages", "teacher")
    _kill_during(command, "teacher", _delay("teacher", 1.0, 4.0))
    assert not (run_dir / "stages" / "teacher.json").exists()
    assert not (run_dir / "teacher" / "final" / COMPLETE).exists()
    again = subprocess.run(command, env=quick_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    for folder in ("teacher/final", "non_private_teacher/final"):
        ours = load_file(run_dir / folder / "model.safetensors")
        ref = load_file(reference / folder / "model.safetensors")
        assert ours.keys() == ref.keys()
        for name in ref:
            torch.testing.assert_close(ours[name], ref[name], rtol=1e-5, atol=1e-6, msg=f"{folder}: {name}")
    ours, ref = (
        PrivacyLedger.load(run_dir / "teacher" / "final"),
        PrivacyLedger.load(reference / "teacher" / "final"),
    )
    assert ours.epsilon() == ref.epsilon()
    # the same releases; only the random id of the draw differs (a new process, which restores no checkpoint of the
    # reference, names its run afresh: the id is unrelated to the secret seed, which both runs share here)
    ours, ref = ours.to_dict(), ref.to_dict()
    for ledger in (ours, ref):
        for release in ledger["releases"]:
            release["meta"].pop("noise_draw", None)
    assert ours == ref


def _kill_then_rerun(reference: Path, stage: str, low: float, high: float, tmp_path: Path) -> Path:
    """Continue `reference` from before `stage`, kill it during the stage, re-run the same command."""
    run_dir = _continue_from(reference, stage, tmp_path)
    _kill_during(quick_command(run_dir, "--stages", stage), stage, _delay(stage, low, high))
    assert not (run_dir / "stages" / f"{stage}.json").exists()
    again = run_quick(run_dir, "--stages", stage)
    assert again.returncode == 0, again.stderr[-3000:]
    return run_dir


def test_killed_during_evaluation_gives_the_same_results(quick_run, tmp_path):
    reference, _, _ = quick_run
    run_dir = _kill_then_rerun(reference, "evaluate", 0.5, 1.5, tmp_path)
    ours = json.loads((run_dir / "results.json").read_text())
    ref = json.loads((reference / "results.json").read_text())
    strip = [{k: v for k, v in row.items() if k != "path"} for row in ref["rows"]]
    assert [{k: v for k, v in row.items() if k != "path"} for row in ours["rows"]] == strip
    assert (run_dir / "results.md").read_text() == (reference / "results.md").read_text()
    assert (run_dir / "results.png").stat().st_size > 0


def test_killed_during_audit_gives_the_same_audit(quick_run, tmp_path):
    reference, _, _ = quick_run
    run_dir = _kill_then_rerun(reference, "audit", 0.5, 2.0, tmp_path)
    ours = json.loads((run_dir / "audit" / "audit.json").read_text())
    ref = json.loads((reference / "audit" / "audit.json").read_text())
    assert set(ours["models"]) == set(ref["models"])
    for name, model in ref["models"].items():
        assert ours["models"][name]["epsilon"] == model["epsilon"]
        for attack, auc in model["auc"].items():
            assert ours["models"][name]["auc"][attack] == pytest.approx(auc, abs=1e-6), (name, attack)
        assert ours["models"][name]["memorization_gap"] == pytest.approx(model["memorization_gap"], abs=1e-6)


def test_killed_during_push_then_the_same_command_completes_it(quick_run, hub: HubServer, tmp_path):
    reference, _, _ = quick_run
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    command = quick_command(
        run_dir,
        "--stages",
        "push",
        "--push_teacher",
        "faults/teacher",
        "--push_synthetic",
        "faults/synthetic",
        "--push_student",
        "faults/student",
    )
    hub.request_delay = 0.3  # every request slow: the kill lands between requests of the push
    _kill_during(command, "push", _delay("push", 0.5, 2.5))
    hub.request_delay = 0.0
    again = subprocess.run(command, env=quick_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    for repo, repo_type, folder in (
        ("faults/teacher", "model", "teacher/final"),
        ("faults/synthetic", "dataset", "synthetic"),
        ("faults/student", "model", "students/distildp/final"),
    ):
        remote = hub.files(repo, repo_type, "main")
        remote.pop(".gitattributes", None)  # the Hub's own file
        assert {"README.md", "privacy_ledger.json"} <= set(remote), (repo, sorted(remote))
        assert (
            "model.safetensors" in remote
            if repo_type == "model"
            else any(n.startswith("data/") for n in remote)
        )
        for name, data in remote.items():  # what was pushed arrived whole
            assert (run_dir / folder / name).read_bytes() == data, (repo, name)
    ours = PrivacyLedger.load(run_dir / "teacher" / "final")
    assert ours.to_dict() == PrivacyLedger.load(reference / "teacher" / "final").to_dict()
