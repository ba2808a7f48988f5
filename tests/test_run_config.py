"""Pipeline arguments: recipes, precedence and bad input, before any work starts."""

from pathlib import Path

import pytest

from hf_dpkd.run_config import QUICK, parse_run_config
from hf_dpkd.run_dir import RunDir

RECIPES = sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_recipe_parses(recipe):
    config = parse_run_config(["--config", str(recipe)])
    assert config.pipeline.target_epsilon > 0


def test_precedence_defaults_quick_recipe_cli(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("quick: true\nteacher_epochs: 3.0\nseed: 5\n")
    config = parse_run_config(["--config", str(recipe), "--seed", "9"])
    assert config.data.demo_num_train == QUICK["demo_num_train"]  # quick preset
    assert config.teacher.teacher_epochs == 3.0  # recipe beats the preset
    assert config.pipeline.seed == 9  # command line beats the recipe


@pytest.mark.parametrize(
    "text,argv,match",
    [
        ("teacher_epoch: 3\n", [], r"unknown recipe key\(s\) teacher_epoch; run with --help"),
        ("seed: [1, 2\n", [], r"malformed YAML"),
        ("- a\n- b\n", [], r"a recipe is a mapping of argument names to values, got list"),
        ("", ["--stages", "teacher,train"], r"--stages: unknown stage\(s\) train; choose from"),
        ("", ["--methods", "distildp,magic"], r"--methods: unknown method\(s\) magic"),
        ("", ["--target_epsilon", "0"], r"--target_epsilon 0.0: must be > 0"),
        ("", ["--target_delta", "2"], r"--target_delta 2.0: must lie strictly between 0 and 1"),
        ("", ["--accountant", "moments"], r"--accountant 'moments': choose prv, rdp or gdp"),
        ("", ["--per_sample_max_grad_norm", "-1"], r"--per_sample_max_grad_norm -1.0: must be > 0"),
        ("", ["--num_synthetic_samples", "0"], r"--num_synthetic_samples 0: must be > 0"),
        ("", ["--kd_lambda", "1.5"], r"--kd_lambda 1.5: must lie in \[0, 1\]"),
        ("", ["--kd_temperature", "0"], r"--kd_temperature 0.0: must be > 0"),
        ("", ["--control_code_distribution", "private"], r"--control_code_distribution 'private': choose dp"),
        ("", ["--push_student", "not a repo"], r"--push_student 'not a repo': repo_id='not a repo' is not a valid"),
        ("", ["--teacher_epochs", "0"], r"--teacher_epochs 0.0: must be > 0"),
    ],
)
def test_bad_arguments_are_named(tmp_path, text, argv, match):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    with pytest.raises(ValueError, match=match):
        parse_run_config(["--config", str(recipe), *argv])


def test_missing_recipe_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"--config .*nope.yaml: no such recipe file"):
        parse_run_config(["--config", str(tmp_path / "nope.yaml")])


def test_non_utf8_recipe(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_bytes(b"seed: \xff\xfe\n")
    with pytest.raises(ValueError, match="not a UTF-8 text file"):
        parse_run_config(["--config", str(recipe)])


def test_second_process_on_the_same_run_dir_is_refused(tmp_path):
    import subprocess
    import sys

    with RunDir(tmp_path / "run"):
        code = (
            "from hf_dpkd.run_dir import RunDir, RunDirLockedError\n"
            f"try:\n    RunDir({str(tmp_path / 'run')!r}).acquire()\nexcept RunDirLockedError as e:\n"
            "    print(e)\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
        assert "is in use by pid" in out and "pass another --run_dir" in out
    run = RunDir(tmp_path / "run")  # released: a later run takes it
    run.acquire()
    run.release()
