"""The ``--quick`` preset: defaults overridden below a recipe and the command line."""

from __future__ import annotations

from hf_dpkd.settings.arguments import METHODS

#: The --quick preset: the whole pipeline in about a minute, for smoke tests.
QUICK = {
    "run_dir": "runs/quick",
    "save_steps": 2,
    "methods": list(METHODS),  # the smoke run covers every method
    "demo_num_train": 600,
    "demo_num_public": 600,
    "max_length": 48,
    "pretrain_steps": 30,
    "teacher_epochs": 1.0,
    "teacher_batch_size": 64,
    "num_synthetic_samples": 128,
    "generation_max_length": 48,
    "student_epochs": 1.0,
    "dp_student_epochs": 1.0,
    "non_private_epochs": 1.0,
    "on_policy_epochs": 1.0,
    "audit_num_records": 32,
    "audit_mope_perturbations": 2,
    "audit_canary_candidates": 200,
}
