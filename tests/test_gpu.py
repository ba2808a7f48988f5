"""The CUDA paths: clipping on the GPU against the per-example reference, GPU noise, DPTrainer on a GPU.

CPU runs of the suite report these as skipped (``-ra`` prints the reason); on a machine with a CUDA GPU
``python -m pytest tests/test_gpu.py`` runs them. Matrix products stay in full float32 (PyTorch's default,
TF32 off), so the float32 limits of `tests.tolerances` apply unchanged.
"""

import pytest
import torch
from datasets import Dataset
from transformers import default_data_collator

from hf_dpkd.privacy.engine import NOISE_CHUNK, _add_gaussian_noise_
from hf_dpkd.trainers.dp import DPConfig, DPTrainer
from tests.dp_models import MODEL_FACTORIES, VOCAB, random_batch, reference_clipped_sum, tiny_gpt2
from tests.test_dp_engine import T, _clipped_sum, _median_norm
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
    model = MODEL_FACTORIES[family]().cuda()
    model.train()
    batch = {k: v.cuda() for k, v in random_batch(7).items()}
    clip = _median_norm(model, batch)
    ref = reference_clipped_sum(model, batch, clip)
    ours = _clipped_sum(model, batch, clip, mode=mode, micro=3)
    assert all(t.is_cuda for t in ours.values())
    assert_matches_reference(ours, ref, what=f"{mode} clipped sum on GPU, {family}", terms=7 * T)


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
    torch.manual_seed(0)
    model = tiny_gpt2(tied=True)
    ids = torch.randint(1, VOCAB, (48, 10), generator=torch.Generator().manual_seed(5)).tolist()
    data = Dataset.from_dict({"input_ids": ids, "labels": ids})
    args = DPConfig(
        output_dir="/tmp/hf_dpkd_gpu",
        per_device_train_batch_size=12,
        max_physical_batch_size=5,
        max_steps=3,
        learning_rate=0.5,
        optim="sgd",
        noise_multiplier=0.5,
        dp_seed=0,  # the same Poisson batches and the same noise for every mode
        per_sample_max_grad_norm=0.5,
        clipping_mode=mode,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    trainer = DPTrainer(model=model, args=args, train_dataset=data, data_collator=default_data_collator)
    trainer.train()
    assert next(model.parameters()).is_cuda and trainer.args.device.type == "cuda"
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_dp_trainer_on_gpu_modes_take_the_same_noisy_steps():
    """The real DPTrainer loop on the GPU (Poisson batches, micro-batches, CUDA noise): every mode moves the
    weights alike, and the noise (same dp_seed) is the same draw in each."""
    hooks = _train_on_gpu("hooks")
    for mode in ("bookkeeping", "ghost"):
        assert_matches_reference(_train_on_gpu(mode), hooks, what=f"{mode} vs hooks on GPU", terms=3 * 12 * T)
