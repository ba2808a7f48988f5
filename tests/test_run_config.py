"""Pipeline arguments: recipes and precedence (bad input: tests/test_bad_inputs.py)."""

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
    recipe.write_text("quick: true\nteacher_epochs: 3.0\nseed: 5\ntarget_delta: 1e-6\n")
    config = parse_run_config(["--config", str(recipe), "--seed", "9"])
    assert config.pipeline.target_delta == 1e-6  # YAML reads 1e-6 as a string; converted like the CLI
    assert config.data.demo_num_train == QUICK["demo_num_train"]  # quick preset
    assert config.teacher.teacher_epochs == 3.0  # recipe beats the preset
    assert config.pipeline.seed == 9  # command line beats the recipe


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
