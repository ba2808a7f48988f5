"""The DP control-code histogram (noise, ledger, code set), the other modes, and prompt allocation."""

import json
import logging
from collections import Counter

import numpy as np
import pytest
from datasets import Dataset
from scipy.stats import chisquare

from hf_dpkd.privacy.accounting import PrivacyLedger, compute_epsilon
from hf_dpkd.privacy.histogram import (
    ControlCodeDistribution,
    allocate_prompts,
    dp_control_code_distribution,
    exact_private_distribution,
    public_distribution,
    uniform_distribution,
)
from hf_dpkd.synthetic.control_codes import ControlCodeFormat

FMT = ControlCodeFormat(fields=[("category", "Business Category"), ("stars", "Review Stars")])
DOMAIN = {"category": ["Restaurants", "Bars", "Gyms"], "stars": ["1.0", "3.0", "5.0"]}


def _private(n=900, seed=0, categories=("Restaurants", "Bars", "Gyms"), p=(0.6, 0.3, 0.1)):
    rng = np.random.default_rng(seed)
    cats = rng.choice(list(categories), size=n, p=list(p))
    stars = rng.choice(DOMAIN["stars"], size=n)
    return Dataset.from_dict({"category": cats.tolist(), "stars": stars.tolist(), "text": ["x"] * n})


def test_noise_std_matches_sigma_and_probs_are_the_clipped_renormalised_counts():
    data = _private()
    exact = Counter(zip(data["category"], data["stars"]))  # slow, obvious reference counts
    sigma = 4.0
    noise = []
    for seed in range(600):
        dist = dp_control_code_distribution(
            data, FMT, sigma, PrivacyLedger(delta=1e-5), domain=DOMAIN, seed=seed
        )
        noisy = np.array(dist.meta["noisy_counts"])
        counts = np.array([exact.get(tuple(c), 0) for c in dist.codes])
        noise.append(noisy - counts)
        clipped = np.clip(noisy, 0, None)
        np.testing.assert_allclose(dist.probs, clipped / clipped.sum(), rtol=1e-12)
    noise = np.concatenate(noise)  # 600 draws x 9 codes
    assert abs(noise.std() - sigma) / sigma < 0.03
    assert abs(noise.mean()) < 4 * sigma / np.sqrt(noise.size)
    # different seeds give different noise; no seed gives fresh noise
    a = dp_control_code_distribution(data, FMT, sigma, PrivacyLedger(delta=1e-5), domain=DOMAIN)
    b = dp_control_code_distribution(data, FMT, sigma, PrivacyLedger(delta=1e-5), domain=DOMAIN)
    assert a.meta["noisy_counts"] != b.meta["noisy_counts"] and not a.meta["seeded_noise"]


@pytest.mark.parametrize("accountant", ["prv", "rdp", "gdp"])
def test_ledger_records_one_gaussian_release(accountant):
    sigma, delta = 7.0, 1e-6
    ledger = PrivacyLedger(accountant=accountant, delta=delta)
    dp_control_code_distribution(_private(), FMT, sigma, ledger, domain=DOMAIN, seed=0)
    (release,) = ledger.releases
    assert (release.name, release.mechanism, release.sample_rate, release.steps) == (
        "control_code_histogram",
        "gaussian",
        1.0,
        1,
    )
    assert ledger.epsilon() == pytest.approx(compute_epsilon([(sigma, 1.0, 1)], delta, accountant), rel=1e-12)
    # composed with a later DP-SGD release, the ledger is the composition of both
    ledger.record("dp_sgd", noise_multiplier=1.1, sample_rate=0.01, steps=200)
    both = compute_epsilon([(sigma, 1.0, 1), (1.1, 0.01, 200)], delta, accountant)
    assert ledger.epsilon() == pytest.approx(both, rel=1e-9)


def test_the_set_of_codes_does_not_depend_on_the_private_data():
    # "Gyms" appears in one dataset only: with a declared domain, both releases have the same code list.
    with_gyms = _private(seed=1)
    without = _private(seed=1, categories=("Restaurants", "Bars"), p=(0.7, 0.3))
    a = dp_control_code_distribution(with_gyms, FMT, 3.0, PrivacyLedger(delta=1e-5), domain=DOMAIN)
    b = dp_control_code_distribution(without, FMT, 3.0, PrivacyLedger(delta=1e-5), domain=DOMAIN)
    assert a.codes == b.codes and len(a.codes) == 9
    assert a.meta["domain_from_private_data"] is False
    # the format's declared domain is used when no domain= is given
    fmt = ControlCodeFormat(fields=FMT.fields, domain=DOMAIN)
    c = dp_control_code_distribution(without, fmt, 3.0, PrivacyLedger(delta=1e-5))
    assert c.codes == a.codes


def test_domain_read_off_private_data_is_loud_and_recorded(caplog):
    ledger = PrivacyLedger(delta=1e-5)
    with (
        caplog.at_level(logging.WARNING),
        pytest.warns(UserWarning, match="read off the private data and is NOT"),
    ):
        dist = dp_control_code_distribution(_private(), FMT, 5.0, ledger, seed=0)
    assert "NOT covered" in caplog.text
    assert dist.meta["domain_from_private_data"] is True
    assert ledger.releases[0].meta["domain_from_private_data"] is True
    # ...and recorded as a NON-private release: a value held by one record is revealed with certainty,
    # so the ledger's epsilon (and every epsilon composing it) is infinite
    domain = ledger.get("control_code_domain")
    assert domain is not None and not domain.is_private and domain.meta["columns"] == FMT.columns
    assert "read off the private training data" in domain.meta["reason"]
    assert dist.meta["domain_release"] == "control_code_domain"
    assert ledger.epsilon() == float("inf")
    assert PrivacyLedger(delta=1e-5).compose(ledger).epsilon() == float("inf")


def test_declared_domain_records_nothing_non_private():
    ledger = PrivacyLedger(delta=1e-5)
    dp_control_code_distribution(_private(), FMT, 5.0, ledger, domain=DOMAIN, seed=0)
    assert ledger.non_private_releases == [] and np.isfinite(ledger.epsilon())


def test_uniform_and_exact_record_what_they_read_off_the_private_data(caplog):
    # uniform over a declared domain: free, nothing recorded even when a ledger is given
    ledger = PrivacyLedger(delta=1e-5)
    uni = uniform_distribution(FMT, DOMAIN, ledger=ledger)
    assert ledger.releases == [] and uni.meta == {}
    # uniform over the values of the private data: recorded as non-private, epsilon infinite
    with pytest.warns(UserWarning, match="read off the private data"):
        read = uniform_distribution(FMT, dataset=_private(), ledger=ledger)
    assert sorted(read.codes) == sorted(uniform_distribution(FMT, DOMAIN).codes)
    assert read.meta["domain_from_private_data"] is True
    assert [r.name for r in ledger.non_private_releases] == ["control_code_domain"]
    assert ledger.epsilon() == float("inf")
    with pytest.raises(ValueError, match="pass ledger= to record that release"):
        uniform_distribution(FMT, dataset=_private())
    # exact: always a non-private release when a ledger is given
    ledger = PrivacyLedger(delta=1e-5)
    with caplog.at_level(logging.WARNING):
        exact = exact_private_distribution(_private(), FMT, ledger=ledger)
    assert "NOT differentially private" in caplog.text and "recorded in the privacy ledger" in caplog.text
    release = ledger.get("control_code_histogram_exact")
    assert release is not None and not release.is_private and release.meta["num_codes"] == len(exact.codes)
    assert exact.leaks_private_data and exact.meta["release"] == "control_code_histogram_exact"
    assert ledger.epsilon() == float("inf")


def test_all_zero_noisy_counts_fall_back_to_uniform(caplog):
    data = Dataset.from_dict({"category": ["Bars"], "stars": ["1.0"]})
    domain = {"category": ["Bars"], "stars": ["1.0"]}
    with caplog.at_level(logging.WARNING):
        for seed in range(50):
            ledger = PrivacyLedger(delta=1e-5)
            dist = dp_control_code_distribution(data, FMT, 100.0, ledger, domain=domain, seed=seed)
            if dist.meta["noisy_counts"][0] <= 0:
                break
    assert dist.meta["fallback"] == "uniform" and dist.probs == [1.0]
    assert "falling back to the uniform distribution" in caplog.text
    assert ledger.get("control_code_histogram") is not None  # the release happened and is counted


def test_bad_histogram_inputs():
    ledger = PrivacyLedger(delta=1e-5)
    with pytest.raises(ValueError, match=r"noise_multiplier=0 must be > 0"):
        dp_control_code_distribution(_private(), FMT, 0, ledger, domain=DOMAIN)
    with pytest.raises(ValueError, match="outside the declared domain, e.g. \\('Gyms'"):
        dp_control_code_distribution(
            _private(),
            FMT,
            1.0,
            ledger,
            domain={"category": ["Restaurants", "Bars"], "stars": DOMAIN["stars"]},
        )
    with pytest.raises(ValueError, match=r"lacks control field column\(s\) \['stars'\]"):
        dp_control_code_distribution(Dataset.from_dict({"category": ["Bars"]}), FMT, 1.0, ledger)
    with pytest.raises(ValueError, match="dataset is empty"):
        dp_control_code_distribution(
            Dataset.from_dict({"category": [], "stars": []}), FMT, 1.0, ledger, domain=DOMAIN
        )
    assert ledger.releases == []  # nothing was released by the failed calls


def test_uniform_public_and_exact_modes(caplog):
    uni = uniform_distribution(FMT, DOMAIN)
    assert uni.mode == "uniform" and len(uni.codes) == 9 and set(uni.probs) == {1 / 9}
    pub = public_distribution(FMT, [{"category": "Bars", "stars": "1.0"}, ("Gyms", "5.0")], [3, 1])
    assert pub.codes == [("Bars", "1.0"), ("Gyms", "5.0")] and pub.probs == [0.75, 0.25]
    assert pub.records() == [{"category": "Bars", "stars": "1.0"}, {"category": "Gyms", "stars": "5.0"}]
    with caplog.at_level(logging.WARNING):
        exact = exact_private_distribution(_private(), FMT)
    assert "NOT differentially private" in caplog.text
    assert exact.mode == "exact" and exact.leaks_private_data and exact.meta["leaks_private_data"] is True
    assert not uni.leaks_private_data and not pub.leaks_private_data


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: uniform_distribution(FMT), "needs the public domain"),
        (
            lambda: uniform_distribution(FMT, {"category": ["Bars"]}),
            r"domain lacks control field\(s\) \['stars'\]",
        ),
        (
            lambda: uniform_distribution(FMT, {"category": ["Bars"], "stars": []}),
            r"domain\['stars'\] is empty",
        ),
        (lambda: uniform_distribution(FMT, {"category": ["B", "B"], "stars": ["1"]}), "repeats a value"),
        (lambda: uniform_distribution(FMT, {"category": ["B\tC"], "stars": ["1"]}), "contains the separator"),
        (lambda: public_distribution(FMT, [("Bars", "1"), ("Bars", "1")], [1, 1]), "appears twice"),
        (lambda: public_distribution(FMT, [("Bars", "1")], [-1]), "non-negative"),
        (lambda: public_distribution(FMT, [("Bars", "1")], [1, 2]), "1 codes but 2 probabilities"),
        (lambda: ControlCodeDistribution(FMT.columns, [], [], "uniform"), "needs at least one code"),
        (lambda: ControlCodeDistribution(FMT.columns, [("a",)], [1], "dp"), "one value per control field"),
        (lambda: ControlCodeDistribution(FMT.columns, [("a", "b")], [1], "magic"), "mode='magic'"),
    ],
)
def test_bad_distributions(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_save_load_round_trip(tmp_path):
    dist = dp_control_code_distribution(
        _private(), FMT, 2.0, PrivacyLedger(delta=1e-5), domain=DOMAIN, seed=3
    )
    path = dist.save(tmp_path / "codes.json")
    back = ControlCodeDistribution.load(path)
    assert back == dist and back.fingerprint() == dist.fingerprint()
    assert json.loads(path.read_text())["mode"] == "dp"
    assert not list(tmp_path.glob(".*tmp"))
    recs = ControlCodeDistribution.from_records(dist.records(), dist.probs, "public")
    assert recs.codes == dist.codes and recs.columns == dist.columns


def test_allocated_frequencies_match_the_distribution():
    dist = public_distribution(
        FMT, [("Bars", "1.0"), ("Gyms", "3.0"), ("Bars", "5.0"), ("Gyms", "1.0")], [5, 3, 1.5, 0.5]
    )
    n = 20_000
    codes = allocate_prompts(dist, n, seed=1)
    observed = [codes.count(c) for c in dist.codes]
    assert chisquare(observed, f_exp=[p * n for p in dist.probs]).pvalue > 1e-3
    # and the test can fail: the same counts do not fit a different distribution
    assert chisquare(observed, f_exp=[n / 4] * 4).pvalue < 1e-6
    assert allocate_prompts(dist, 50, seed=2) == allocate_prompts(dist, 50, seed=2)
    assert allocate_prompts(dist, 50, seed=2) != allocate_prompts(dist, 50, seed=3)
    with pytest.raises(ValueError, match="num_prompts=0 must be an int > 0"):
        allocate_prompts(dist, 0)
