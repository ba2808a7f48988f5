"""The calibration cache proposes, the accountant decides: a cached noise multiplier is used only after one
accountant evaluation confirms it, so a wrong entry never weakens the guarantee."""

import json
import math

import pytest

from hf_dpkd.privacy import accounting, calibration_cache
from hf_dpkd.privacy.accounting import CALIBRATION_RTOL, calibrate_noise_multiplier, compute_epsilon

ARGS = dict(target_epsilon=2.0, delta=1e-5, sample_rate=0.1, steps=20, accountant="rdp")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DPKD_CACHE", str(tmp_path))
    return tmp_path / "calibration"


@pytest.fixture
def count_evaluations(monkeypatch):
    calls = []

    def counting(*args, **kwargs):
        calls.append(args)
        return compute_epsilon(*args, **kwargs)

    monkeypatch.setattr(accounting, "compute_epsilon", counting)
    return calls


def uncached(monkeypatch) -> float:
    monkeypatch.setenv("HF_DPKD_CACHE", "off")
    return calibrate_noise_multiplier(**ARGS)


def entry(cache_folder) -> tuple:
    files = list(cache_folder.glob("*.json"))
    assert len(files) == 1
    return files[0], json.loads(files[0].read_text())


def test_a_repeated_calibration_costs_one_accountant_evaluation(cache, count_evaluations):
    first = calibrate_noise_multiplier(**ARGS)
    searched = len(count_evaluations)
    assert searched > 5
    path, data = entry(cache)
    assert data["noise_multiplier"] == first and data["inputs"]["steps"] == 20
    count_evaluations.clear()
    assert calibrate_noise_multiplier(**ARGS) == first
    assert len(count_evaluations) == 1  # the re-check


def test_every_input_is_part_of_the_key(cache):
    calibrate_noise_multiplier(**ARGS)
    for change in (
        {"steps": 21},
        {"sample_rate": 0.11},
        {"delta": 1e-6},
        {"target_epsilon": 3.0},
        {"accountant": "prv"},
    ):
        calibrate_noise_multiplier(**{**ARGS, **change})
    calibrate_noise_multiplier(**ARGS, prior_history=[(10.0, 1.0, 1)])
    assert len(list(cache.glob("*.json"))) == 7


@pytest.mark.parametrize("factor", [0.5, 3.0])
def test_a_wrong_entry_is_recomputed(cache, monkeypatch, factor):
    """Too little noise (epsilon above the target) or too much (far below it): neither is used."""
    truth = calibrate_noise_multiplier(**ARGS)
    path, data = entry(cache)
    path.write_text(json.dumps({**data, "noise_multiplier": truth * factor}))
    got = calibrate_noise_multiplier(**ARGS)
    assert got == truth == uncached(monkeypatch)
    eps = compute_epsilon([(got, ARGS["sample_rate"], ARGS["steps"])], ARGS["delta"], ARGS["accountant"])
    assert ARGS["target_epsilon"] * (1 - CALIBRATION_RTOL) <= eps <= ARGS["target_epsilon"]


@pytest.mark.parametrize(
    "content", ["not json", '{"noise_multiplier": "x"}', '{"noise_multiplier": -1}', "{}"]
)
def test_an_unreadable_entry_is_recomputed(cache, monkeypatch, content):
    truth = calibrate_noise_multiplier(**ARGS)
    path, _ = entry(cache)
    path.write_text(content)
    assert calibrate_noise_multiplier(**ARGS) == truth
    assert math.isclose(json.loads(path.read_text())["noise_multiplier"], truth)  # rewritten


def test_off_writes_nothing_and_an_unwritable_cache_is_skipped(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DPKD_CACHE", "off")
    assert calibration_cache.cache_dir() is None
    truth = calibrate_noise_multiplier(**ARGS)
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder would go")
    monkeypatch.setenv("HF_DPKD_CACHE", str(blocker))
    assert calibrate_noise_multiplier(**ARGS) == truth
    assert not list(tmp_path.rglob("*.json"))
