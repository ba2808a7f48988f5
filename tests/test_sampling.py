"""Poisson sampling: the rate the accountant assumes is the rate that happens."""

import numpy as np
import pytest

from hf_dpkd.privacy.sampling import PoissonBatchSampler


def test_mean_batch_is_qn_and_sizes_vary():
    n, q = 2000, 0.02
    sampler = PoissonBatchSampler(n, q, steps_per_epoch=50)
    sizes = []
    for epoch in range(20):
        sampler.set_epoch(epoch)
        sizes += [len(b) for b in sampler]
    sizes = np.array(sizes)
    # 1000 draws of Binomial(2000, 0.02): mean 40, std 6.26; the sample mean's std is 0.2
    assert abs(sizes.mean() - q * n) < 1.0
    assert abs(sizes.std() - np.sqrt(n * q * (1 - q))) < 0.6
    assert len(set(sizes.tolist())) > 10


def test_each_example_is_included_with_probability_q():
    n, q, steps = 50, 0.3, 4000
    sampler = PoissonBatchSampler(n, q, steps_per_epoch=steps)
    counts = np.zeros(n)
    for batch in sampler:
        counts[batch] += 1
    assert np.all(np.abs(counts / steps - q) < 0.035)  # ~4.9 binomial std


def test_batches_are_a_pure_function_of_seed_epoch_step():
    a = PoissonBatchSampler(100, 0.1, 5, seed=3)
    b = PoissonBatchSampler(100, 0.1, 5, seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b)
    b.set_epoch(3)
    assert list(a) != list(b)


def test_parts_concatenate_to_the_logical_batch():
    sampler = PoissonBatchSampler(300, 0.1, 4, num_parts=3, seed=1)
    parts = list(sampler)
    assert len(parts) == len(sampler) == 12
    for step in range(4):
        joined = sum(parts[3 * step : 3 * step + 3], [])
        assert joined == sampler.logical_batch(step).tolist()


def test_ranks_sample_disjoint_shards_covering_the_data():
    world = 3
    shards = [PoissonBatchSampler(100, 1.0, 1, rank=r, world_size=world) for r in range(world)]
    seen = [set(next(iter(s))) for s in shards]
    assert set().union(*seen) == set(range(100))
    assert sum(len(s) for s in seen) == 100


def test_empty_batches_happen_and_are_yielded():
    sampler = PoissonBatchSampler(10, 0.05, 200)
    assert any(len(b) == 0 for b in sampler)


def test_fixed_size_uniform_sampling():
    sampler = PoissonBatchSampler(100, 0.1, 20, poisson=False)
    assert all(len(b) == 10 and len(set(b)) == 10 for b in sampler)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"num_examples": 0, "sample_rate": 0.1, "steps_per_epoch": 1}, "training dataset is empty"),
        (
            {"num_examples": 10, "sample_rate": 1.5, "steps_per_epoch": 1},
            r"sample_rate=1.5 must lie in \(0, 1\]",
        ),
    ],
)
def test_bad_sampler_inputs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PoissonBatchSampler(**kwargs)
