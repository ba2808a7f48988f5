"""The main job end to end (`--quick`): every stage, the results, the ledgers, skip-when-done, kill-and-resume."""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time

from hf_dpkd.hub import card_epsilon
from hf_dpkd.privacy.accounting import PrivacyLedger
from tests.hub_server import HubServer, hub_fixture  # noqa: F401  (the `hub` fixture)
from tests.pipeline_runs import quick_command, quick_env
from tests.pipeline_runs import run_quick as _run


def test_quick_run_produces_every_artifact(quick_run):
    run_dir, proc, _ = quick_run
    results = json.loads((run_dir / "results.json").read_text())
    rows = {r["method"]: r for r in results["rows"]}
    assert set(rows) == {
        "teacher",
        "non_private_teacher",
        "non_private_student",
        "distildp",
        "dp_syn_data",
        "dp_sgd_student",
        "dpkd",
        "on_policy",
        "dp_opd",
        "public_teacher",
        "public_student",
    }
    for name, row in rows.items():
        assert math.isfinite(row["test_perplexity"]) and row["test_perplexity"] > 1
        if name.startswith("non_private_"):
            assert row["epsilon"] == math.inf
        elif name.startswith("public_"):  # the public base models never saw the private data
            assert row["epsilon"] == 0.0
        else:
            assert 1.9 < row["epsilon"] <= 2.0, (name, row["epsilon"])
    for f in ("results.md", "results.png", "audit/audit.json", "audit/audit.md", "audit/teacher/roc.png"):
        assert (run_dir / f).is_file(), f
    assert "| DistilDP student (CE + KD) |" in proc.stdout and "DistilDP total guarantee" in proc.stdout
    # the end summary reads the verdict against the no-leak model, with intervals (not a bare AUC vs 0.5)
    assert re.search(
        r"^audit teacher: .*; loss AUC 0\.\d{3} \[0\.\d{3}, [01]\.\d{3}\] vs no-leak \S+ 0\.\d{3} \[",
        proc.stdout,
        re.M,
    )
    # per-stage seconds in results.json (the audit's too, though evaluate wrote the file) and printed at the end
    seconds = json.loads((run_dir / "results.json").read_text())["stage_seconds"]
    assert list(seconds) == ["data", "histogram", "teacher", "generate", "students", "evaluate", "audit"]
    assert all(s >= 0 for s in seconds.values()) and re.search(
        r"^stage times \(\d+ CPU cores\): data \d+ s", proc.stdout, re.M
    )
    teacher = PrivacyLedger.load(run_dir / "teacher" / "final")
    assert [r.name for r in teacher.releases] == ["control_code_histogram", "teacher_dp_sgd"]
    # the student inherits the teacher's ledger (post-processing: nothing added)
    assert PrivacyLedger.load(run_dir / "students" / "distildp" / "final").to_dict() == teacher.to_dict()
    dpkd = PrivacyLedger.load(run_dir / "students" / "dpkd" / "final")
    assert [r.name for r in dpkd.releases] == ["dpkd_teacher_dp_sgd", "dpkd_student_dp_sgd"]
    # DP-OPD reuses DPKD's eps/2 teacher (trained once) and composes its release
    dp_opd = PrivacyLedger.load(run_dir / "students" / "dp_opd" / "final")
    assert [r.name for r in dp_opd.releases] == ["dpkd_teacher_dp_sgd", "dp_opd_student_dp_sgd"]
    assert dp_opd.releases[0] == dpkd.releases[0]
    assert "| DP-OPD student (DP-SGD, on-policy) |" in proc.stdout
    synth = run_dir / "synthetic"
    info = json.loads((synth / "generation_info.json").read_text())
    assert info["num_samples"] == 128 and (synth / "README.md").is_file()
    assert (run_dir / "data" / "private" / ".hf_dpkd_private").is_file()


def test_rerun_skips_finished_stages(quick_run, tmp_path):
    import shutil

    # a copy: the push test runs a stage in the shared folder, and a run there holds the folder's lock
    run_dir = tmp_path / "run"
    shutil.copytree(quick_run[0], run_dir)
    before = (run_dir / "results.json").read_text()
    proc = _run(run_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "==> stage" not in proc.stdout
    changed = _run(run_dir, "--target_epsilon", "4.0")
    assert (
        changed.returncode != 0
        and "was produced with other settings (target_epsilon: 2.0 -> 4.0)" in changed.stderr
    )
    assert (run_dir / "results.json").read_text() == before


def test_killed_during_distillation_resumes_to_the_same_results(quick_run, tmp_path):
    """Resume a copy of the finished run from its synthetic data on (the DP histogram draws fresh noise, so
    only a continuation of the same run can be compared), killed mid-distillation, against the original."""
    import shutil

    reference, _, _ = quick_run
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    shutil.rmtree(run_dir / "students")
    for stage in ("students", "evaluate", "audit"):
        (run_dir / "stages" / f"{stage}.json").unlink()
    (run_dir / "results.json").unlink()
    stages = (
        "--stages",
        "students,evaluate",
    )  # what the comparison reads; the audit is tested in test_faults
    proc = subprocess.Popen(
        quick_command(run_dir, *stages),
        env=quick_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    target = run_dir / "students" / "distildp"
    deadline = time.time() + 300
    while time.time() < deadline and not list(target.glob("checkpoint-*")):
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(target.glob("checkpoint-*")), "the run never reached distillation"
    assert not (target / "final").exists()
    again = _run(run_dir, *stages)
    assert again.returncode == 0, again.stderr[-3000:]
    ours = {r["method"]: r for r in json.loads((run_dir / "results.json").read_text())["rows"]}
    ref = {r["method"]: r for r in json.loads((reference / "results.json").read_text())["rows"]}
    for method in ref:
        assert ours[method]["epsilon"] == ref[method]["epsilon"], method
        assert math.isclose(ours[method]["test_perplexity"], ref[method]["test_perplexity"], rel_tol=1e-3), (
            method
        )
    assert (
        PrivacyLedger.load(run_dir / "teacher" / "final").to_dict()
        == PrivacyLedger.load(reference / "teacher" / "final").to_dict()
    )


def test_bad_command_line_fails_before_any_work(tmp_path):
    proc = _run(tmp_path / "run", "--target_epsilon", "-1")
    assert proc.returncode == 2
    assert "--target_epsilon -1.0: must be a positive finite number" in proc.stderr
    assert not (tmp_path / "run").exists()


LOAD_BACK = """
import json, sys
import torch
from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
out = {}
for repo in ("demo-user/dp-teacher", "demo-user/distildp-student"):
    model = AutoModelForCausalLM.from_pretrained(repo)
    AutoTokenizer.from_pretrained(repo)
    out[repo] = float(sum(p.double().sum() for p in model.parameters()))
out["rows"] = len(load_dataset("demo-user/dp-synthetic", split="train"))
out["imported_hf_dpkd"] = "hf_dpkd" in sys.modules
print(json.dumps(out))
"""


def test_push_teacher_synthetic_and_student_then_load_without_hf_dpkd(quick_run, hub: HubServer, tmp_path):
    run_dir, _, _ = quick_run
    proc = _run(
        run_dir,
        "--stages",
        "push",
        "--push_teacher",
        "demo-user/dp-teacher",
        "--push_synthetic",
        "demo-user/dp-synthetic",
        "--push_student",
        "demo-user/distildp-student",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    loaded = subprocess.run(
        [sys.executable, "-c", LOAD_BACK], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert loaded.returncode == 0, loaded.stderr[-4000:]
    result = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert result["imported_hf_dpkd"] is False and result["rows"] == 128
    from transformers import AutoModelForCausalLM

    for repo, local in (
        ("demo-user/dp-teacher", "teacher/final"),
        ("demo-user/distildp-student", "students/distildp/final"),
    ):
        model = AutoModelForCausalLM.from_pretrained(run_dir / local)
        assert math.isclose(
            result[repo], float(sum(p.detach().double().sum() for p in model.parameters())), rel_tol=1e-12
        )
        readme = run_dir / local / "README.md"
        assert math.isclose(card_epsilon(readme), PrivacyLedger.load(run_dir / local).epsilon(), rel_tol=1e-3)
    assert not any("private" in str(p) for p in hub.files("demo-user/dp-synthetic", "dataset", "main"))

    # A later run reuses the pushed DP teacher and synthetic data by Hub id: no teacher training, no
    # generation, and the student's ledger composes the teacher's, the data's and this run's histogram.
    reuse = tmp_path / "reuse"
    proc = _run(
        reuse,
        "--stages",
        "data,histogram,teacher,generate,students",
        "--methods",
        "distildp",
        "--dp_teacher",
        "demo-user/dp-teacher",
        "--synthetic_data",
        "demo-user/dp-synthetic",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert not (reuse / "teacher").exists() and not (reuse / "synthetic").exists()
    assert json.loads((reuse / "stages" / "generate.json").read_text())["source"] == "demo-user/dp-synthetic"
    student = PrivacyLedger.load(reuse / "students" / "distildp" / "final")
    original = PrivacyLedger.load(run_dir / "students" / "distildp" / "final")
    names = sorted(r.name for r in student.releases)
    # the original run's histogram and teacher releases once each (shared by teacher and data)...
    assert [r for r in student.releases if r.name in {o.name for o in original.releases}] == original.releases
    # ...and nothing else: this run's own histogram only reaches generation, which was skipped
    assert names == sorted(r.name for r in original.releases), names
    assert math.isclose(student.epsilon(), original.epsilon(), rel_tol=1e-9)


def test_given_teacher_or_synthetic_data_must_exist_and_carry_a_ledger(quick_run, tmp_path):
    run_dir, _, _ = quick_run
    proc = _run(tmp_path / "a", "--synthetic_data", str(tmp_path / "missing"))
    assert proc.returncode == 2 and "--synthetic_data" in proc.stderr and "no such folder" in proc.stderr
    assert not (tmp_path / "a").exists()
    proc = _run(tmp_path / "b", "--dp_teacher", str(run_dir / "teacher" / "final"), "--push_teacher", "u/t")
    assert proc.returncode == 2 and "--push_teacher with --dp_teacher" in proc.stderr
    no_ledger = tmp_path / "plain"
    no_ledger.mkdir()
    proc = _run(tmp_path / "c", "--stages", "data,histogram,teacher", "--dp_teacher", str(no_ledger))
    assert proc.returncode != 0 and "--dp_teacher" in proc.stderr and "privacy_ledger.json" in proc.stderr
