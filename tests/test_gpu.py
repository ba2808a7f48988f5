"""The CUDA paths: clipping on the GPU against the per-example reference, GPU noise, DPTrainer on a GPU.

CPU runs of the suite report these as skipped (``-ra`` prints the reason); on a machine with a CUDA GPU
``python -m pytest tests/test_gpu.py`` runs them. Matrix products stay in full float32 (PyTorch's default,
TF32 off), so the float32 limits of `tests.tolerances` apply unchanged.
"""

import pytest
import torch

from hf_dpkd.privacy.engine import NOISE_CHUNK, _add_gaussian_noise_
from tests.test_dp_engine import T, check_against_per_sample_loop
from tests.test_fast_clipping import train_tiny_gpt2
from tests.tolerances import assert_matches_reference

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (run tests/test_gpu.py on a GPU machine)"
)


@pytest.fixture(autouse=True)
def _full_float32_matmuls():
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


@pytest.mark.parametrize("mode", ["hooks", "bookkeeping", "ghost"])
@pytest.mark.parametrize("family", ["gpt2_tied", "llama", "lora_gpt2"])
def test_every_mode_matches_per_sample_loop_on_gpu(family, mode):
    """The CPU test of the same name, with the model, batch and reference on the GPU."""
    ours = check_against_per_sample_loop(family, mode, device="cuda")
    assert all(t.is_cuda for t in ours.values())


def test_gpu_noise_is_torch_normal_with_the_stated_std():
    """GPU noise: one torch.normal draw from the CUDA generator (replayed by its seed), std as stated."""
    n, std = 3 * NOISE_CHUNK + 5, 0.7
    out = torch.zeros(n, device="cuda")
    gen = torch.Generator(device="cuda").manual_seed(3)
    _add_gaussian_noise_(out, std, gen)
    again = torch.normal(
        0.0, std, (n,), generator=torch.Generator(device="cuda").manual_seed(3), device="cuda"
    )
    assert torch.equal(out, again)
    # 196613 draws: the sample std is within 1 % of std with probability 1 - 1e-9
    assert abs(out.std().item() / std - 1) < 0.01
    assert abs(out.mean().item()) < 6 * std / n**0.5


def _train_on_gpu(mode: str) -> dict[str, torch.Tensor]:
    """3 noisy DPTrainer steps on the GPU (the same dp_seed: the same batches and noise in every mode)."""
    weights = train_tiny_gpt2(
        mode, output_dir="/tmp/hf_dpkd_gpu", use_cpu=False, disable_dp=False, noise_multiplier=0.5
    )
    assert all(t.is_cuda for t in weights.values())
    return weights


def test_dp_trainer_on_gpu_modes_take_the_same_noisy_steps():
    """The real DPTrainer loop on the GPU (Poisson batches, micro-batches, CUDA noise): every mode moves the
    weights alike, and the noise (same dp_seed) is the same draw in each."""
    hooks = _train_on_gpu("hooks")
    for mode in ("bookkeeping", "ghost"):
        assert_matches_reference(_train_on_gpu(mode), hooks, what=f"{mode} vs hooks on GPU", terms=3 * 12 * T)
