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


def test_control_domain_inline_file_and_recipe(tmp_path):
    from hf_dpkd.run_config import parse_control_domain

    inline = "category=Restaurants| Bars ;stars=1.0|2.0"
    config = parse_run_config(["--control_domain", inline])
    assert config.data.control_domain == inline
    assert parse_control_domain(inline) == {"category": ["Restaurants", "Bars"], "stars": ["1.0", "2.0"]}
    path = tmp_path / "domain.json"
    path.write_text(
        '{"cpc_section": ["Physics", "Performing Operations; Transporting"], "stars": [1.0, 5.0]}'
    )
    assert parse_control_domain(str(path)) == {
        "cpc_section": ["Physics", "Performing Operations; Transporting"],  # a file for values with ';'
        "stars": ["1.0", "5.0"],  # numbers written as the loaders write them
    }
    recipe = tmp_path / "r.yaml"
    recipe.write_text("control_domain:\n  category: [Restaurants, Bars]\n  stars: ['1.0', '2.0']\n")
    config = parse_run_config(["--config", str(recipe)])
    assert parse_control_domain(config.data.control_domain) == {
        "category": ["Restaurants", "Bars"],
        "stars": ["1.0", "2.0"],
    }


@pytest.mark.parametrize(
    "value,match",
    [
        ("missing.json", r"--control_domain 'missing.json': no such file"),
        ("category", r"--control_domain 'category': no such file; give a JSON file"),
        ("category=A|B;category=C", r"column 'category' is given twice"),
        ("category=A|B;stars", r"'stars' has no '='"),
        ("category=A||B", r"column 'category' has an empty value list or an empty value"),
        ("category=A|A", r"column 'category' repeats \['A'\]"),
        ("=A|B", r"a column name is empty"),
        ('{"category": "A"}', r"the values of 'category' must be a list"),
        ('{"category": [["A"]]}', r"the values of 'category' must be a list"),
        ("[1, 2]", r"not an object"),
        ("{bad json", r"not valid JSON"),
    ],
)
def test_bad_control_domain_names_the_argument_and_the_fix(tmp_path, value, match):
    if value == "[1, 2]":
        value = str(tmp_path / "list.json")
        (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=match):
        parse_run_config(["--control_domain", value])
