"""Opacus' RDP and PRV epsilons, computed with Opacus' own functions but with the RDP curve of each
(sample rate, noise multiplier) pair computed once per process.

Why: a history's RDP is ``steps`` times the curve of its (q, sigma) pair, and that curve (151 orders, the 99
fractional ones summed as series in Python) is nearly all of an epsilon's cost. Opacus recomputes it on every
call, including inside the PRV accountant, whose discretisation domain is bounded with RDP. A training asks
for the epsilon of the same pairs again and again with only the step counts changing: the bounded step
search, every checkpoint's ledger and report, every log line, and every composition with a fixed prior
release (the histogram). The results are the same floats as ``RDPAccountant().get_epsilon`` and
``PRVAccountant().get_epsilon`` (tests/test_opacus_epsilon.py compares them exactly).
"""

from __future__ import annotations

import functools

import numpy as np
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis import rdp as rdp_analysis
from opacus.accountants.analysis.prv import (
    Domain,
    PoissonSubsampledGaussianPRV,
    TruncatedPrivacyRandomVariable,
    compose_heterogeneous,
    discretize,
)

#: Opacus' RDP orders (RDPAccountant's default), the ones both of its accountants use.
ORDERS = tuple(RDPAccountant.DEFAULT_ALPHAS)
#: PRVAccountant.get_epsilon's default error in epsilon.
PRV_EPS_ERROR = 0.01

History = tuple[tuple[float, float, int], ...]  # (noise_multiplier, sample_rate, steps) per release


@functools.lru_cache(maxsize=4096)
def _rdp_curve(sample_rate: float, noise_multiplier: float) -> np.ndarray:
    """RDP of ONE step of the Poisson-subsampled Gaussian at every order of ORDERS (read-only)."""
    curve = rdp_analysis.compute_rdp(
        q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=list(ORDERS)
    )
    curve.setflags(write=False)
    return curve


def rdp_epsilon(history: History, delta: float) -> float:
    """``RDPAccountant`` with ``history`` -> ``get_epsilon(delta)``: the same sum over releases, the same
    conversion to (epsilon, delta) at the best order."""
    if not history:
        return 0.0
    rdp = sum([_rdp_curve(q, sigma) * steps for sigma, q, steps in history])
    eps, _ = rdp_analysis.get_privacy_spent(orders=list(ORDERS), rdp=rdp, delta=delta)
    return float(eps)


def _safe_domain_size(history: History, eps_error: float, delta_error: float) -> float:
    """Opacus' `compute_safe_domain_size` (remark 5.6 of Gopi et al.): the RDP epsilon of the whole
    composition at delta_error / 4, and of each single step at delta_error / (8 x total steps)."""
    total_steps = sum(steps for _, _, steps in history)
    bound = rdp_epsilon(history, delta_error / 4)
    for sigma, q, _ in history:
        bound = max(bound, rdp_epsilon(((sigma, q, 1),), delta_error / (8 * total_steps)))
    return max(bound, eps_error) + 3


def prv_epsilon(history: History, delta: float, eps_error: float = PRV_EPS_ERROR) -> float:
    """``PRVAccountant`` with ``history`` -> ``get_epsilon(delta)``: the upper bound on epsilon from the
    composed discretised privacy loss distributions, delta_error = delta / 1000 as Opacus sets it."""
    if not history:
        return 0.0
    delta_error = delta / 1000
    prvs = [PoissonSubsampledGaussianPRV(q, sigma) for sigma, q, _ in history]
    steps = [steps for _, _, steps in history]
    size = _safe_domain_size(history, eps_error, delta_error)
    mesh = eps_error / np.sqrt(sum(steps) * np.log(12 / delta_error) / 2)
    domain = Domain.create_aligned(-size, size, mesh)
    discrete = [
        discretize(TruncatedPrivacyRandomVariable(p, domain.t_min, domain.t_max), domain) for p in prvs
    ]
    composed = compose_heterogeneous(dprvs=discrete, num_self_compositions=steps)
    _, _, eps_upper = composed.compute_epsilon(delta, delta_error, eps_error)
    return float(eps_upper)
