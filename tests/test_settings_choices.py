"""Settings with fixed choices are Literal fields of the pipeline's arguments: `--help` lists the choices, the
parser refuses any other value on the command line, and the dataclass refuses it from a recipe or a dict.
The choices owned by the library (accountants, clipping modes, KD losses, peft methods) are the same
constants its own checks use. Other bad input: tests/test_bad_inputs.py."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from transformers import HfArgumentParser, SchedulerType

from hf_dpkd.peft_support import PEFT_METHODS
from hf_dpkd.privacy.accounting import ACCOUNTANTS
from hf_dpkd.privacy.engine import CLIPPING_MODES
from hf_dpkd.run_config import ARGUMENT_CLASSES, StudentArguments, _choices_of, parse_run_config
from hf_dpkd.trainers.losses import KD_LOSSES

ROOT = Path(__file__).parents[1]

#: Every fixed-choice setting of the pipeline and its choices.
CHOICES = {
    "accountant": ACCOUNTANTS,
    "lr_scheduler_type": tuple(s.value for s in SchedulerType),
    "control_code_distribution": ("dp", "uniform", "exact"),
    "clipping_mode": CLIPPING_MODES,
    "teacher_peft": PEFT_METHODS,
    "student_peft": PEFT_METHODS,
    "kd_loss": KD_LOSSES,
    "dp_opd_teacher": ("dp_half", "public"),
}


def _run_dpkd_main():
    spec = importlib.util.spec_from_file_location("run_dpkd", ROOT / "examples" / "run_dpkd.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _listed(choices) -> str:
    return ", ".join(choices[:-1]) + f" or {choices[-1]}"


def test_the_literal_fields_are_the_fixed_choice_settings():
    found = {name: c for cls in ARGUMENT_CLASSES for name, c in _choices_of(cls).items()}
    assert found == CHOICES
    assert set(ACCOUNTANTS) == {"prv", "rdp", "gdp"} and "auto" in CLIPPING_MODES
    assert KD_LOSSES == ("forward_kl", "reverse_kl", "jsd") and PEFT_METHODS == ("none", "lora")


def test_help_lists_the_choices_of_every_fixed_choice_setting(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit) as exited:
        _run_dpkd_main()(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for name, choices in CHOICES.items():
        assert f"--{name} {{{','.join(choices)}}}" in out, name


@pytest.mark.parametrize("name", sorted(CHOICES))
def test_the_parser_refuses_another_value_on_the_command_line(name, capsys):
    with pytest.raises(SystemExit) as exited:
        parse_run_config([f"--{name}", "bogus"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert re.search(rf"argument --{name}\b.*: invalid choice: 'bogus' \(choose from ", err), err
    listed = err.split("choose from", 1)[1]
    assert all(choice in listed for choice in CHOICES[name]), err


def test_the_command_line_exits_2_naming_the_choices(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        _run_dpkd_main()(["--run_dir", str(tmp_path / "run"), "--kd_loss", "kl"])
    assert exited.value.code == 2
    assert "invalid choice: 'kl'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", sorted(CHOICES))
def test_a_recipe_with_another_value_is_refused_naming_the_choices(name, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"{name}: bogus\n")
    with pytest.raises(ValueError) as raised:
        parse_run_config(["--run_dir", str(tmp_path / "run"), "--config", str(recipe)])
    assert str(raised.value) == f"--{name} 'bogus': choose {_listed(CHOICES[name])}."
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value", ["no", 3, None])
def test_a_recipe_value_of_another_type_is_refused(value, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"teacher_peft: {'null' if value is None else value}\n")
    with pytest.raises(ValueError, match=r"^--teacher_peft .*: choose none or lora\.$"):
        parse_run_config(["--config", str(recipe)])


def test_every_choice_is_accepted_from_a_recipe_and_the_command_line(tmp_path):
    for name, choices in CHOICES.items():
        for choice in choices:
            recipe = tmp_path / "r.yaml"
            recipe.write_text(f"{name}: {choice}\n")
            config = parse_run_config(["--config", str(recipe)]).to_dict()
            assert config[name] == choice
            assert parse_run_config([f"--{name}", choice]).to_dict()[name] == choice


def test_parse_dict_and_direct_construction_are_refused_too():
    parser = HfArgumentParser(ARGUMENT_CLASSES)
    with pytest.raises(ValueError, match=r"^--accountant 'moments': choose prv, rdp or gdp\.$"):
        parser.parse_dict({"accountant": "moments"})
    with pytest.raises(ValueError, match=r"^--dp_opd_teacher 'private': choose dp_half or public\.$"):
        StudentArguments(dp_opd_teacher="private")
    assert StudentArguments(kd_loss="jsd").kd_loss == "jsd"
