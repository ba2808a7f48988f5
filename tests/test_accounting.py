"""Epsilon, calibration and the ledger against Opacus' accountants used directly."""

import json
import math

import pytest
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.analysis import gdp as gdp_analysis

from hf_dpkd.privacy.accounting import (
    CALIBRATION_RTOL,
    PrivacyLedger,
    calibrate_noise_multiplier,
    compute_epsilon,
    default_delta,
)

CASES = [(1.1, 0.01, 500, 1e-5), (0.8, 0.004, 3000, 1e-6), (2.5, 0.1, 50, 1e-4)]


@pytest.mark.parametrize("sigma,q,steps,delta", CASES)
@pytest.mark.parametrize("name,cls", [("prv", PRVAccountant), ("rdp", RDPAccountant)])
def test_epsilon_equals_opacus_accountant(sigma, q, steps, delta, name, cls):
    acc = cls()
    for _ in range(steps):
        acc.step(noise_multiplier=sigma, sample_rate=q)
    expected = acc.get_epsilon(delta=delta)
    assert math.isclose(compute_epsilon([(sigma, q, steps)], delta, name), expected, rel_tol=1e-6)


@pytest.mark.parametrize("sigma,q,steps,delta", CASES)
def test_gdp_epsilon_equals_opacus_gdp(sigma, q, steps, delta):
    expected = gdp_analysis.compute_eps_poisson(
        steps=steps, noise_multiplier=sigma, sample_rate=q, delta=delta
    )
    assert math.isclose(compute_epsilon([(sigma, q, steps)], delta, "gdp"), expected, rel_tol=1e-6)


def test_composition_of_two_releases_equals_opacus_history():
    history = [(4.0, 1.0, 1), (1.0, 0.02, 400)]
    acc = PRVAccountant()
    acc.history = list(history)
    assert math.isclose(compute_epsilon(history, 1e-5, "prv"), acc.get_epsilon(delta=1e-5), rel_tol=1e-6)
    assert compute_epsilon(history, 1e-5) > compute_epsilon(history[1:], 1e-5)


@pytest.mark.parametrize("accountant", ["prv", "rdp", "gdp"])
@pytest.mark.parametrize("target", [0.5, 2.0, 8.0])
def test_calibration_reaches_target_within_tolerance(accountant, target):
    sigma = calibrate_noise_multiplier(target, 1e-5, 0.01, 1000, accountant=accountant)
    eps = compute_epsilon([(sigma, 0.01, 1000)], 1e-5, accountant)
    assert eps <= target
    assert eps >= target * (1 - 2 * CALIBRATION_RTOL)


@pytest.mark.parametrize(
    ("accountant", "target", "q", "steps"),
    [("prv", 2.0, 0.1031, 10), ("prv", 8.0, 0.01, 1000), ("rdp", 0.5, 0.01, 1000), ("prv", 2.0, 0.5, 6)],
)
def test_noise_search_lands_in_the_window_with_fewer_evaluations_than_bisection(accountant, target, q, steps):
    """Against plain bisection (the obviously-correct search) on the same accountant: both answers have
    epsilon in [target (1 - rtol), target], so both lie between the sigmas of those two epsilons; the
    false-position search needs at most 8 accountant evaluations and fewer than bisection."""
    from hf_dpkd.privacy.accounting import _search_noise_multiplier

    calls = []

    def eps(sigma):
        calls.append(sigma)
        return compute_epsilon([(sigma, q, steps)], 1e-5, accountant)

    def bisection():
        lo, hi = 0.0, 1.0
        while eps(hi) > target:
            lo, hi = hi, hi * 2
        while not (target * (1 - CALIBRATION_RTOL) <= eps(hi) <= target):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if eps(mid) > target else (lo, mid)
        return hi

    ours = _search_noise_multiplier(eps, target, q, steps)
    ours_calls = len(calls)
    calls.clear()
    reference = bisection()
    for sigma in (ours, reference):
        assert (
            target * (1 - CALIBRATION_RTOL)
            <= compute_epsilon([(sigma, q, steps)], 1e-5, accountant)
            <= target
        )
    assert ours_calls <= 8 and ours_calls < len(set(calls)), (ours_calls, len(set(calls)))
    assert math.isclose(ours, reference, rel_tol=2e-3)


def test_calibration_accounts_for_prior_releases():
    prior = [(6.0, 1.0, 1)]
    alone = calibrate_noise_multiplier(2.0, 1e-5, 0.01, 500)
    composed = calibrate_noise_multiplier(2.0, 1e-5, 0.01, 500, prior_history=prior)
    assert composed > alone
    assert compute_epsilon(prior + [(composed, 0.01, 500)], 1e-5) <= 2.0


def test_calibration_refuses_a_spent_budget():
    with pytest.raises(ValueError, match="already spends epsilon.*raise target_epsilon"):
        calibrate_noise_multiplier(0.1, 1e-5, 0.01, 10, prior_history=[(0.5, 1.0, 1)])


def test_ledger_round_trip_and_replace(tmp_path):
    ledger = PrivacyLedger(accountant="prv", delta=1e-6)
    ledger.record("control_code_histogram", 5.0, 1.0, 1, mechanism="gaussian")
    ledger.record("teacher", 1.0, 0.01, 100, noise_draw="run-a")
    ledger.record("teacher", 1.0, 0.01, 200, noise_draw="run-a")  # the same run continuing updates its entry
    assert [r.name for r in ledger.releases] == ["control_code_histogram", "teacher"]
    path = ledger.save(tmp_path)
    data = json.loads(path.read_text())
    loaded = PrivacyLedger.load(tmp_path)
    assert loaded.history() == ledger.history()
    assert math.isclose(data["epsilon"], ledger.epsilon(), rel_tol=1e-12)
    assert math.isclose(
        loaded.epsilon(), compute_epsilon([(5.0, 1.0, 1), (1.0, 0.01, 200)], 1e-6), rel_tol=1e-9
    )


def test_default_delta_is_below_one_over_n():
    for n in (10, 1000, 3000, 1_900_000):
        assert default_delta(n) <= min(1e-5, 1 / (10 * n))
        assert default_delta(n) * n <= 0.1


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"history": [(1.0, 0.1, 10)], "delta": 0.0}, r"delta=0.0 must lie strictly between 0 and 1"),
        ({"history": [(1.0, 0.1, 10)], "delta": 1.5}, r"delta=1.5 must lie strictly between 0 and 1"),
        ({"history": [(1.0, 0.1, 10)], "delta": 1e-5, "accountant": "moments"}, r"accountant='moments'"),
        ({"history": [(1.0, 1.5, 10)], "delta": 1e-5}, r"sample_rate=1.5 must lie in \(0, 1\]"),
    ],
)
def test_bad_accounting_inputs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        compute_epsilon(**kwargs)


def test_compose_counts_a_shared_release_once_and_distinct_draws_twice():
    from hf_dpkd.privacy.histogram import dp_control_code_distribution
    from hf_dpkd.synthetic.control_codes import ControlCodeFormat

    fmt = ControlCodeFormat(fields=(("label", "Label"),))
    data = {"label": ["a", "b", "a"], "text": ["x", "y", "z"]}
    teacher = PrivacyLedger(delta=1e-5)
    dp_control_code_distribution(data, fmt, 10.0, teacher, domain={"label": ["a", "b"]}, seed=None)
    teacher.record("teacher_dp_sgd", 1.0, 0.01, 100, seed=0)
    synthetic = PrivacyLedger.from_dict(teacher.to_dict())  # the ledger copied next to the generated data
    both = teacher.compose(synthetic)
    assert both.to_dict() == teacher.to_dict()
    # another run: a fresh histogram draw and a DP-SGD run with another seed are new releases
    other = PrivacyLedger(delta=1e-5)
    dp_control_code_distribution(data, fmt, 10.0, other, domain={"label": ["a", "b"]}, seed=None)
    other.record("teacher_dp_sgd", 1.0, 0.01, 100, seed=1)
    composed = teacher.compose(other)
    assert [r.name for r in composed.releases] == [
        "control_code_histogram",
        "teacher_dp_sgd",
        "control_code_histogram#2",
        "teacher_dp_sgd#2",
    ]
    reference = compute_epsilon([r.history_entry() for r in teacher.releases + other.releases], 1e-5, "prv")
    assert composed.epsilon() == pytest.approx(reference, rel=1e-12)
    assert composed.epsilon() > teacher.epsilon()
    assert teacher.compose(PrivacyLedger()).to_dict() == teacher.to_dict()
