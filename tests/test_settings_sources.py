"""One source of truth per setting: list settings, `neutral` metadata, the generation converter, and the library
configs' own checks run early with the flag's name."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import HfArgumentParser

from hf_dpkd.pipeline.constants import STUDENT_METHODS
from hf_dpkd.pipeline.runner import Pipeline
from hf_dpkd.run_config import (
    ARGUMENT_CLASSES,
    LIST_SETTINGS,
    METHODS,
    NEUTRAL_SETTINGS,
    QUICK,
    GenerationArguments,
    changed_settings,
    parse_run_config,
)
from hf_dpkd.run_dir import RunDirMismatchError
from hf_dpkd.synthetic.generation import SyntheticGenerationConfig

ROOT = Path(__file__).resolve().parents[1]

#: The settings a run directory may be resumed with other values of (the list the runner held before the
#: fields carried it): a field losing or gaining `neutral` metadata shows here.
NEUTRAL_BEFORE = {
    "stages",
    "push_teacher",
    "push_synthetic",
    "push_student",
    "hub_private_repo",
    "hub_token",
    "run_dir",
    "audit_models",
    "audit_num_records",
    "audit_mope_perturbations",
    "audit_canary_candidates",
    "cpu_threads",
    "cpu_workers",
    "repeats",
    "verbose",
}


def _lists(config) -> dict[str, list[str] | None]:
    d = config.to_dict()
    return {name: d[name] for name in LIST_SETTINGS}


def test_the_list_settings_are_the_comma_separated_ones():
    assert LIST_SETTINGS == {"stages", "methods", "control_columns", "audit_models", "lora_target_modules"}


def test_list_settings_accept_commas_spaces_and_yaml_lists_alike(tmp_path):
    commas = parse_run_config(
        [
            "--stages", "data,teacher",
            "--methods", "distildp, dp_sgd_student",
            "--control_columns", "category,stars",
            "--audit_models", "teacher,distildp",
            "--lora_target_modules", "q_proj,v_proj",
        ]
    )  # fmt: skip
    spaces = parse_run_config(
        [
            "--stages", "data", "teacher",
            "--methods", "distildp", "dp_sgd_student",
            "--control_columns", "category", "stars",
            "--audit_models", "teacher", "distildp",
            "--lora_target_modules", "q_proj", "v_proj",
        ]
    )  # fmt: skip
    text = tmp_path / "text.yaml"
    text.write_text(
        "stages: data,teacher\nmethods: distildp,dp_sgd_student\ncontrol_columns: category,stars\n"
        "audit_models: teacher,distildp\nlora_target_modules: q_proj,v_proj\n"
    )
    lists = tmp_path / "lists.yaml"
    lists.write_text(
        "stages: [data, teacher]\nmethods: [distildp, dp_sgd_student]\ncontrol_columns: [category, stars]\n"
        "audit_models: [teacher, distildp]\nlora_target_modules: [q_proj, v_proj]\n"
    )
    expected = {
        "stages": ["data", "teacher"],
        "methods": ["distildp", "dp_sgd_student"],
        "control_columns": ["category", "stars"],
        "audit_models": ["teacher", "distildp"],
        "lora_target_modules": ["q_proj", "v_proj"],
    }
    for config in (commas, spaces, parse_run_config(["--config", str(text)])):
        assert _lists(config) == expected
    from_lists = parse_run_config(["--config", str(lists)])
    assert _lists(from_lists) == expected
    assert from_lists.stage_list == ["data", "teacher"]
    assert from_lists.method_list == ["distildp", "dp_sgd_student"]
    assert from_lists.teacher.lora_settings().target_modules == ("q_proj", "v_proj")


def test_list_defaults_the_quick_preset_and_direct_use():
    config = parse_run_config([])
    assert config.pipeline.stages == ["all"] and config.stage_list[0] == "data"
    assert config.method_list == ["distildp", "dp_syn_data", "dp_sgd_student"]
    assert config.data.control_columns is None
    assert parse_run_config(["--quick"]).method_list == list(METHODS) == QUICK["methods"]
    # any HfArgumentParser (parse_dict) and dataclasses.replace split a comma-separated string too
    (pipeline, *_) = HfArgumentParser(ARGUMENT_CLASSES).parse_dict({"methods": "dpkd,dp_opd"})
    assert pipeline.methods == ["dpkd", "dp_opd"]
    assert dataclasses.replace(pipeline, stages="data, histogram").stages == ["data", "histogram"]


def test_bad_list_values_are_named():
    with pytest.raises(
        ValueError, match=r"--methods: unknown method\(s\) magic; choose from non_private_teacher"
    ):
        parse_run_config(["--methods", "distildp", "magic"])
    with pytest.raises(ValueError, match=r"--stages: unknown stage\(s\) train; choose from data"):
        parse_run_config(["--stages", "data,train"])


def test_methods_derive_from_the_pipeline_students():
    assert set(METHODS) == {"non_private_teacher", *STUDENT_METHODS}
    assert len(METHODS) == len(set(METHODS))


def test_neutral_settings_come_from_the_fields_metadata():
    assert NEUTRAL_SETTINGS == NEUTRAL_BEFORE
    fields = {f.name: f for cls in ARGUMENT_CLASSES for f in dataclasses.fields(cls)}
    assert NEUTRAL_SETTINGS == {name for name, f in fields.items() if f.metadata.get("neutral")}
    assert "neutral" not in dict(fields["stages"].metadata)  # argparse never sees it


def test_changed_settings_ignore_neutral_ones_and_read_old_comma_strings():
    old = parse_run_config(["--run_dir", "a", "--audit_models", "teacher"]).to_dict()
    same = parse_run_config(["--run_dir", "b", "--stages", "data", "--verbose", "--repeats", "3"]).to_dict()
    assert changed_settings(old, json.loads(json.dumps(same))) == []
    other = parse_run_config(["--seed", "3", "--methods", "dpkd"]).to_dict()
    assert changed_settings(old, other) == ["methods", "seed"]
    # a config.json written when list settings were comma-separated strings resumes as before
    written_before = {
        **old,
        "methods": "distildp,dp_syn_data,dp_sgd_student",
        "lora_target_modules": "c_attn,c_proj,c_fc",
    }
    assert changed_settings(written_before, old) == []
    assert changed_settings({**written_before, "methods": "distildp"}, old) == ["methods"]


def test_the_runner_refuses_a_changed_setting_and_resumes_a_neutral_one(tmp_path):
    run = tmp_path / "run"
    first = parse_run_config(["--run_dir", str(run)]).to_dict()
    (run / "stages").mkdir(parents=True)
    (run / "stages" / "data.json").write_text("{}")
    (run / "config.json").write_text(json.dumps({**first, "methods": ",".join(first["methods"])}))
    for neutral in (["--audit_num_records", "7"], ["--cpu_threads", "1"], ["--stages", "data"]):
        Pipeline(parse_run_config(["--run_dir", str(run), *neutral]))._check_same_settings()
    pipeline = Pipeline(parse_run_config(["--run_dir", str(run), "--methods", "distildp"]))
    with pytest.raises(
        RunDirMismatchError, match=r"other settings \(methods: 'distildp,dp_syn_data,dp_sgd_student'"
    ):
        pipeline._check_same_settings()
    with pytest.raises(RunDirMismatchError, match=r"other settings \(demo_num_train: 3000 -> 10\)"):
        Pipeline(parse_run_config(["--run_dir", str(run), "--demo_num_train", "10"]))._check_same_settings()


def test_the_generation_converter_carries_every_shared_field():
    shared = GenerationArguments().generation_flags()
    names = {f.name for f in dataclasses.fields(SyntheticGenerationConfig)}
    # every sampling setting of the library config is a flag; only the quality filter keeps its default
    assert set(shared) == names - {"min_words"}
    assert shared["max_length"] == "generation_max_length"
    values = {
        "top_k": 7,
        "top_p": 0.5,
        "temperature": 0.7,
        "no_repeat_ngram_size": 3,
        "max_length": 33,
        "num_return_sequences": 4,
    }
    assert set(values) == set(shared)
    gen = GenerationArguments(**{shared[k]: v for k, v in values.items()}).generation_config()
    assert dataclasses.asdict(gen) == {**values, "min_words": SyntheticGenerationConfig().min_words}


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["--top_p", "2"], r"^--top_p 2.0: must be in \(0, 1\]\.$"),
        (
            ["--generation_max_length", "1"],
            r"^--generation_max_length 1: must be >= 2 \(tokens, prompt included\)\.$",
        ),
        (["--num_return_sequences", "0"], r"^--num_return_sequences 0: must be >= 1\.$"),
        (
            ["--target_epsilon", "inf"],
            r"^--target_epsilon inf: must be a positive finite number \(e.g. 2.0\)\.$",
        ),
        (["--max_physical_batch_size", "0"], r"^--max_physical_batch_size 0: must be >= 1"),
        (["--kd_temperature", "-1"], r"^--kd_temperature -1.0: must be > 0 \(paper: 1.0\)\.$"),
        (
            ["--alpha_hidden", "-1"],
            r"^--alpha_hidden: alpha_ce=0.6, alpha_kd=0.4, alpha_hidden=-1.0: weights must be >= 0",
        ),
        (["--on_policy_ratio", "2"], r"^--on_policy_ratio 2.0: must lie in \[0, 1\]\.$"),
    ],
)
def test_the_library_configs_checks_run_early_naming_the_flag(argv, expected):
    with pytest.raises(ValueError, match=expected):
        parse_run_config(argv)


def test_the_dp_launch_checks_wait_for_the_dp_stages(monkeypatch):
    """DPConfig refuses FSDP for DP-SGD, but the non-private stages may run under it: parsing does not refuse."""
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert parse_run_config(["--stages", "generate"]).stage_list == ["generate"]


def test_help_lists_the_list_settings():
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "run_dpkd.py"), "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--methods METHODS [METHODS ...]" in out
    assert "--stages STAGES [STAGES ...]" in out
