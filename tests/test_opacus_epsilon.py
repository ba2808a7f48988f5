"""The memoised RDP curve gives exactly Opacus' RDP and PRV epsilons, on first and on repeated calls."""

import warnings

import pytest
from opacus.accountants import PRVAccountant, RDPAccountant

from hf_dpkd.privacy import accounting, opacus_epsilon
from hf_dpkd.privacy.accounting import compute_epsilon

HISTORIES = [
    ((1.222, 0.1031, 10),),  # the --quick teacher
    ((10.0, 1.0, 1), (1.222, 0.1031, 10)),  # composed with the DP histogram (q = 1)
    ((0.8, 0.01, 1000),),
    ((2.0, 0.5, 6), (1.1, 0.05, 12), (2.0, 0.5, 2)),  # a pair seen twice, different step counts
    ((0.6, 0.2, 3),),
]


def _opacus(accountant_class, history, delta):
    acc = accountant_class()
    acc.history = list(history)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(acc.get_epsilon(delta=delta))


@pytest.mark.parametrize("history", HISTORIES)
@pytest.mark.parametrize("delta", [1e-5, 1e-3])
def test_same_floats_as_opacus_first_and_repeated(history, delta):
    prv, rdp = _opacus(PRVAccountant, history, delta), _opacus(RDPAccountant, history, delta)
    opacus_epsilon._rdp_curve.cache_clear()
    for _ in range(2):  # computed, then from the memo
        assert opacus_epsilon.prv_epsilon(history, delta) == prv
        assert opacus_epsilon.rdp_epsilon(history, delta) == rdp


def test_a_pair_curve_is_computed_once_whatever_the_steps():
    opacus_epsilon._rdp_curve.cache_clear()
    accounting._opacus_epsilon.cache_clear()
    for steps in (1, 5, 17, 40):
        history = ((10.0, 1.0, 1), (1.3, 0.07, steps))
        assert compute_epsilon(list(history), 1e-5, "prv") == _opacus(PRVAccountant, history, 1e-5)
    assert opacus_epsilon._rdp_curve.cache_info().misses == 2  # one per (q, sigma) pair


def test_the_memoised_curve_cannot_be_changed_in_place():
    curve = opacus_epsilon._rdp_curve(0.1, 1.0)
    with pytest.raises(ValueError):
        curve *= 2
