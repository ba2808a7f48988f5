"""Book-keeping and tied-weight ghost clipping: norms, cross terms, per-layer choices, errors, bf16, DPTrainer.

Reference comparisons use `tests.tolerances.assert_matches_reference`: a relative-norm limit (1e-5 in
float32) and an element-wise limit of 16 eps * sqrt(terms) * max|ref|, the same on every CPU or GPU. Each
docstring gives the error measured here (worst over the AVX-512, AVX2 and scalar kernels and MKL modes
tried) and the error of a deliberately broken variant, run once, which the test must reject.
"""

import pytest
import torch
from datasets import Dataset
from torch import nn
from transformers import default_data_collator

from hf_dpkd.privacy import bookkeeping
from hf_dpkd.privacy.bookkeeping import (
    FastClippingModule,
    _clipped,
    _cross,
    _materialise,
    _self_norm2,
    unsupported_layers,
)
from hf_dpkd.privacy.engine import attach_grad_sampler, detach_grad_sampler, resolve_clipping_mode
from hf_dpkd.trainers.dp import DPConfig, DPTrainer
from hf_dpkd.trainers.losses import dp_forward_kwargs, per_sequence_nll
from tests.dp_models import MODEL_FACTORIES, VOCAB, random_batch, reference_clipped_sum, tiny_gpt2
from tests.test_dp_engine import T, _clipped_sum, _median_norm, check_against_per_sample_loop
from tests.tolerances import assert_matches_reference


def _reference_norms(model, batch):
    """Per-example gradient norms (embedding and lm_head contributions summed before the norm) and,
    for the tied GPT-2, the two contributions' norms separately."""
    params = [p for p in model.parameters() if p.requires_grad]
    wte = model.transformer.wte.weight
    out, parts = [], []
    for i in range(batch["input_ids"].shape[0]):
        one = {k: v[i : i + 1] for k, v in batch.items()}
        hidden = model.transformer(**dp_forward_kwargs(model, one)).last_hidden_state
        logits = model.lm_head(hidden)
        loss = per_sequence_nll(logits, one["labels"]).sum()
        grads = torch.autograd.grad(loss, params, retain_graph=True)
        out.append(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)).item())
        # lm_head's share of the tied gradient alone: d loss / d W through logits = h^T dlogits
        (g_logits,) = torch.autograd.grad(loss, logits)
        head = torch.einsum("btv,btd->vd", g_logits, hidden.detach()).double()
        total_wte = grads[[id(p) for p in params].index(id(wte))].double()
        parts.append((head, total_wte - head))
    return torch.tensor(out, dtype=torch.float64), parts


@pytest.mark.parametrize("gram_block", [None, 3])
@pytest.mark.parametrize("mode", ["bookkeeping", "ghost"])
def test_tied_embedding_norm_is_norm_of_the_sum(mode, gram_block, monkeypatch):
    """The tied wte/lm_head per-sample norm includes the cross term; a sum of squares would be wrong.
    gram_block=3: the Gram matrices in blocks of 3 positions (the default block exceeds this T).

    Measured: relative error 6.9e-8 (limit 1e-5). Without the cross term: 1.6e-2; every norm 0.1 % too
    large: 1.0e-3."""
    if gram_block is not None:
        monkeypatch.setattr(bookkeeping, "GRAM_BLOCK", gram_block)
    model = tiny_gpt2(tied=True)
    batch = random_batch(5)
    ref, parts = _reference_norms(model, batch)
    # The test can fail: dropping the cross term changes the norms far beyond the tolerance.
    others = ref**2 - torch.tensor([((h + e) ** 2).sum().item() for h, e in parts], dtype=torch.float64)
    no_cross = torch.sqrt(others + torch.tensor([(h**2).sum() + (e**2).sum() for h, e in parts]))
    assert ((no_cross - ref).abs() / ref).max() > 1e-3

    gsm = attach_grad_sampler(model, mode, 1e9)
    loss = per_sequence_nll(gsm(**dp_forward_kwargs(gsm, batch)).logits, batch["labels"])
    gsm.clipped_sum(loss)
    ours = gsm.last_per_sample_norms.double()
    detach_grad_sampler(gsm)
    assert_matches_reference(ours, ref, what=f"{mode} per-sample norms", terms=5 * T)


def _rand_outer(n, t, r, c, seed):
    g = torch.Generator().manual_seed(seed)
    return ("outer", torch.randn(n, t, r, generator=g), torch.randn(n, t, c, generator=g))


def _rand_embed(n, t, rows, d, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, rows, (n, t), generator=g)
    ids[:, 1] = ids[:, 0]  # repeated tokens: the ghost form must count them together
    return ("embed", ids, torch.randn(n, t, d, generator=g), rows)


@pytest.mark.parametrize(
    "contrib",
    [
        _rand_outer(3, 2, 16, 16, 0),  # ghost branch: T (r + c) <= r c
        _rand_outer(3, 40, 4, 5, 1),  # materialised branch: T (r + c) > r c
        _rand_outer(3, 1, 7, 5, 2),  # T = 1
        _rand_embed(3, 6, 9, 4, 3),
    ],
)
def test_norms_and_clipped_sums_match_materialised(contrib):
    """Measured: relative error at most 1.7e-7 (limit 1e-5). Counting repeated tokens apart in the
    embedding norm gives 6.3e-2; one example's factor off by 1e-4 in the clipped sum gives 2.1e-5."""
    full = _materialise(contrib).double()
    t = contrib[1].shape[1]
    assert_matches_reference(_self_norm2(contrib), (full**2).sum(1), what="squared norms", terms=t * t)
    coef = torch.tensor([0.3, 1.0, 0.7])
    shape = (contrib[1].shape[2], contrib[2].shape[2]) if contrib[0] == "outer" else (contrib[3], 4)
    expected = torch.einsum("n,nk->k", coef.double(), full).reshape(shape)
    ours = _clipped(contrib, coef, torch.Size(shape))
    assert_matches_reference(ours, expected, what="clipped sum", terms=3 * t)


@pytest.mark.parametrize(
    "contrib",
    [
        _rand_outer(3, 13, 32, 32, 20),  # 4 blocks, the last one short
        _rand_outer(3, 12, 32, 32, 21),  # 3 full blocks
        _rand_outer(3, 4, 32, 32, 22),  # one block
        _rand_embed(3, 13, 9, 4, 23),
    ],
)
def test_blocked_gram_norms_match_materialised(contrib, monkeypatch):
    """The ghost norm from the upper block triangle of the Gram matrices (blocks of 4 positions here).
    Measured: relative error at most 1.9e-7 (limit 1e-5); counting the off-diagonal blocks once: 2.3e-2 to
    1.0e-1 (the one-block case is the same either way)."""
    monkeypatch.setattr(bookkeeping, "GRAM_BLOCK", 4)
    t = contrib[1].shape[1]
    if contrib[0] == "outer":  # the ghost branch runs
        assert bookkeeping._gram_cost(t) * (contrib[1].shape[2] + contrib[2].shape[2]) <= t * 32 * 32
    full = _materialise(contrib).double()
    assert_matches_reference(_self_norm2(contrib), (full**2).sum(1), what="squared norms", terms=t * t)


@pytest.mark.parametrize(
    "a,b",
    [
        (_rand_outer(3, 5, 9, 4, 4), _rand_embed(3, 6, 9, 4, 5)),
        (_rand_embed(3, 6, 9, 4, 6), _rand_outer(3, 5, 9, 4, 7)),
        (_rand_embed(3, 6, 9, 4, 8), _rand_embed(3, 4, 9, 4, 9)),
        (_rand_outer(3, 5, 9, 4, 10), _rand_outer(3, 2, 9, 4, 11)),
        (_rand_outer(3, 5, 9, 4, 12), ("dense", torch.randn(3, 9, 4))),
    ],
)
def test_cross_terms_match_materialised(a, b):
    """Measured: relative error at most 4.3e-7 (limit 1e-5); token ids shifted by one position: 0.79."""
    expected = (_materialise(a).double() * _materialise(b).double()).sum(1)
    assert_matches_reference(_cross(a, b), expected, what="cross terms", terms=a[1].shape[1] * b[1].shape[1])


@pytest.mark.parametrize("keep", [True, False])
@pytest.mark.parametrize("family", list(MODEL_FACTORIES))
def test_kept_and_unkept_per_sample_gradients_match_per_sample_loop(family, keep, monkeypatch):
    """`bookkeeping` with each layer call's per-sample gradients kept (their squares give the norm, their
    weighted sum the clipped sum: what these tiny models get by default) or never kept (Gram matrices or
    materialised norms, then one product per layer), against the per-example loop.

    Measured (worst family): tensor error 2.0e-7 kept, 2.1e-7 not kept (limit 1e-5; element 0.3 of 16). Kept
    gradients summed without their clip factors: 0.22; norms added without the square: 0.69."""
    decisions = []
    real = bookkeeping._worth_keeping

    def spy(call, contribs):
        decisions.append(keep and real(call, contribs))
        return decisions[-1]

    monkeypatch.setattr(bookkeeping, "_worth_keeping", spy)
    check_against_per_sample_loop(family, "bookkeeping")
    assert any(decisions) == keep


@pytest.mark.parametrize(
    "n, t, r, c, kept",
    [
        (2, 512, 768, 2304, True),  # GPT-2 12 x 768 at seq 512: c_attn (1.13x the stored tensors)
        (2, 512, 768, 3072, True),  # c_fc (1.20x)
        (2, 512, 50257, 768, False),  # an untied lm_head (1.48x, +100 MB)
        (4, 128, 768, 3072, False),  # seq 128: c_fc would hold 4.8x, +30 MB
        (32, 48, 128, 512, True),  # the demo teacher's c_fc (2.1x, +4.5 MB)
        (32, 48, 128, 128, True),  # its attention projection (1.33x, +0.5 MB)
    ],
)
def test_per_sample_gradients_are_kept_only_where_memory_grows_little(n, t, r, c, kept):
    """The keep rule on real shapes (meta tensors: no memory): kept where the [n, r, c] gradients take at most
    8 MB or 25 % more than the stored input and output gradient they replace."""
    meta = dict(device="meta", dtype=torch.float32)
    call = bookkeeping._Call(nn.Linear(1, 1), "linear", torch.empty(n, t, r, **meta))
    call.grad = torch.empty(n, t, c, **meta)
    contribs = [(None, ("outer", call.grad, call.act)), (None, ("dense", torch.empty(n, c, **meta)))]
    assert bookkeeping._worth_keeping(call, contribs) == kept


def test_every_example_is_clipped_to_c():
    model = tiny_gpt2(tied=True)
    batch = random_batch(4)
    for i in range(4):
        one = {k: v[i : i + 1] for k, v in batch.items()}
        contrib = _clipped_sum(model, one, 0.05, mode="bookkeeping")
        norm = torch.sqrt(sum((g.double() ** 2).sum() for g in contrib.values())).item()
        assert 0.05 * 0.999 <= norm <= 0.05 * (1 + 1e-5)


def test_micro_batches_add_up_to_the_whole_batch():
    """Not bit-identical (matrix products reorder sums), but equal to float32 rounding.

    Measured: relative error 1.4e-7 (tensor 2.3e-7, limit 1e-5). One clip factor per micro-batch (its
    largest norm) gives 0.26 for micro-batches of 1 and 0.11 for micro-batches of 5."""
    model = tiny_gpt2(tied=True)
    batch = random_batch(12)
    whole = _clipped_sum(model, batch, 0.5, mode="bookkeeping")
    for micro in (1, 5):
        ours = _clipped_sum(model, batch, 0.5, mode="bookkeeping", micro=micro)
        assert_matches_reference(ours, whole, what=f"micro-batches of {micro}", terms=12 * T)


class _Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.scale = nn.Parameter(torch.ones(4))

    def forward(self, x):
        return self.lin(x) * self.scale


def test_unsupported_layer_is_named_and_auto_falls_back_to_hooks():
    model = _Scaled()
    assert unsupported_layers(model) == ["<root> (_Scaled)"]
    assert resolve_clipping_mode(model, "auto") == "hooks"
    assert resolve_clipping_mode(tiny_gpt2(), "auto") == "bookkeeping"
    with pytest.raises(
        ValueError, match=r"no per-sample formula for the trainable layer <root> \(_Scaled\).*'hooks'"
    ):
        attach_grad_sampler(model, "bookkeeping", 1.0)
    with pytest.raises(ValueError, match=r"clipping_mode='fast' is not supported"):
        attach_grad_sampler(tiny_gpt2(), "fast", 1.0)


def test_broadcast_position_ids_are_refused_with_the_fix():
    model = tiny_gpt2(tied=True)
    batch = random_batch(3)
    gsm = attach_grad_sampler(model, "bookkeeping", 1.0)
    out = gsm(input_ids=batch["input_ids"], position_ids=torch.arange(10).unsqueeze(0))
    with pytest.raises(ValueError, match=r"batch of 1 rows but there are 3 per-sample losses.*\[B, T\]"):
        gsm.clipped_sum(per_sequence_nll(out.logits, batch["labels"]))
    detach_grad_sampler(gsm)


def test_gradient_checkpointing_is_refused():
    model = tiny_gpt2()
    model.gradient_checkpointing_enable()
    with pytest.raises(ValueError, match=r"gradient checkpointing.*gradient_checkpointing_disable"):
        FastClippingModule(model, 1.0)
    assert resolve_clipping_mode(model, "auto") == "hooks"


def test_outside_training_the_wrapper_is_a_plain_model():
    model = tiny_gpt2()
    batch = random_batch(2)
    gsm = attach_grad_sampler(model, "bookkeeping", 1.0)
    with torch.no_grad():
        a = gsm(**dp_forward_kwargs(gsm, batch)).logits
        b = model(**dp_forward_kwargs(model, batch)).logits
    assert torch.equal(a, b) and gsm._calls == []
    assert all(p.requires_grad for p in model.parameters())
    detach_grad_sampler(gsm)


@pytest.mark.parametrize("family", ["gpt2_tied", "llama"])
def test_bf16_autocast_matches_the_same_reference_in_bf16(family):
    """bf16 mixed precision: the clipped sum equals the per-example loop run under the same autocast.

    bf16 limits (relative 2e-2, element eps_bf16 * sqrt(terms) * max|ref|): measured 2.3e-3 (tensor 3.8e-3,
    element 0.11). One clip factor per micro-batch gives 6e-2 to 1.1e-1 (element 2 to 4) and fails; a
    dropped cross term (1.1e-2) is below bf16's resolution and is caught by the float32 tests."""
    model = MODEL_FACTORIES[family]()
    batch = random_batch(5)
    clip = _median_norm(model, batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = reference_clipped_sum(model, batch, clip)
        ours = _clipped_sum(model, batch, clip, mode="bookkeeping", micro=2)
    assert_matches_reference(ours, ref, what=f"bf16 clipped sum, {family}", terms=5 * T, dtype=torch.bfloat16)
    assert all(g.dtype == torch.float32 for g in ours.values())


def train_tiny_gpt2(mode: str, **overrides) -> dict[str, torch.Tensor]:
    """The weights of a tiny tied GPT-2 after 3 DPTrainer steps (no noise unless `overrides` ask for it)."""
    torch.manual_seed(0)
    model = tiny_gpt2(tied=True)
    ids = torch.randint(1, VOCAB, (48, 10), generator=torch.Generator().manual_seed(5)).tolist()
    data = Dataset.from_dict({"input_ids": ids, "labels": ids})
    settings = dict(
        output_dir="/tmp/hf_dpkd_fast_clipping",
        per_device_train_batch_size=12,
        max_physical_batch_size=5,
        max_steps=3,
        learning_rate=0.5,
        optim="sgd",
        disable_dp=True,
        dp_seed=0,  # the same Poisson batches (and noise, if any) for every mode
        per_sample_max_grad_norm=0.5,
        clipping_mode=mode,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    args = DPConfig(**{**settings, **overrides})
    trainer = DPTrainer(model=model, args=args, train_dataset=data, data_collator=default_data_collator)
    trainer.train()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_dp_trainer_modes_take_the_same_steps():
    """The real DPTrainer loop (Poisson batches, micro-batches, SGD): every mode moves the weights alike.

    Weights after 3 steps, against hooks: measured relative error 4.2e-9 (tensor 5.4e-7: a bias that
    started at zero; element 0.34), limits 1e-5 and 16. Without the tied cross term: tensor 2.0e-2."""
    hooks = train_tiny_gpt2("hooks")
    for mode in ("bookkeeping", "auto", "ghost"):
        other = train_tiny_gpt2(mode)
        # 3 steps of 12 examples x T positions; Poisson batches vary, so count 3 x 12 x T products
        assert_matches_reference(other, hooks, what=f"{mode} weights vs hooks", terms=3 * 12 * T)


@pytest.mark.parametrize("mode", ["bookkeeping", "ghost"])
def test_two_forwards_in_one_loss_are_clipped_together(mode):
    """A loss that runs the model twice per example: each layer has two contributions per sample.

    Measured: relative error 1.8e-7 (tensor 3.4e-7, element 0.44; limits 1e-5 and 16). The old element-wise
    bound 1e-7 * max|ref| failed here with AVX2 or scalar ATen kernels. Broken variants: clipping each
    forward on its own gives 0.95, dropping the cross terms 0.30, every norm 0.1 % too large 1.0e-3."""
    model = MODEL_FACTORIES["llama"]()
    x = random_batch(4)
    y = {k: v.roll(1, dims=1) for k, v in x.items()}

    def losses(m, a, b):
        la = per_sequence_nll(m(**dp_forward_kwargs(m, a)).logits, a["labels"])
        return la + 0.5 * per_sequence_nll(m(**dp_forward_kwargs(m, b)).logits, b["labels"])

    params = [p for p in model.parameters() if p.requires_grad]
    clip = 1.0
    ref = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    for i in range(4):
        one = [{k: v[i : i + 1] for k, v in d.items()} for d in (x, y)]
        grads = torch.autograd.grad(losses(model, *one).sum(), params)
        norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads)).item()
        for r, g in zip(ref, grads):
            r += min(1.0, clip / (norm + 1e-6)) * g.double()
    gsm = FastClippingModule(model, clip, mode=mode)
    ours = gsm.clipped_sum(losses(gsm, x, y))
    gsm.remove_hooks()
    ours = {str(i): ours[p] for i, p in enumerate(params)}
    ref = {str(i): r for i, r in enumerate(ref)}
    assert_matches_reference(ours, ref, what=f"{mode}, two forwards", terms=4 * T * 2)


def _tiny_other(family: str):
    from transformers import AutoModelForCausalLM, GPTNeoXConfig, OPTConfig, Qwen2Config

    small = dict(
        num_hidden_layers=2, vocab_size=VOCAB, max_position_embeddings=32, bos_token_id=0, eos_token_id=0
    )
    cfg = {
        "neox": lambda: GPTNeoXConfig(
            hidden_size=32, intermediate_size=64, num_attention_heads=2, hidden_dropout=0.0, **small
        ),
        "qwen2_tied": lambda: Qwen2Config(
            hidden_size=32,
            intermediate_size=64,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=True,
            **small,
        ),
        "opt": lambda: OPTConfig(
            hidden_size=32, ffn_dim=64, num_attention_heads=2, word_embed_proj_dim=32, dropout=0.0, **small
        ),
    }[family]()
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg)


@pytest.mark.parametrize("family", ["neox", "qwen2_tied"])
def test_other_families_match_per_sample_loop(family):
    """Measured: relative error 1.0e-7 (tensor 4.0e-7); without the Qwen2 tied cross term 5.3e-2."""
    model = _tiny_other(family)
    assert resolve_clipping_mode(model, "auto") == "bookkeeping"
    batch = random_batch(5)
    clip = _median_norm(model, batch)
    ours = _clipped_sum(model, batch, clip, mode="bookkeeping", micro=2)
    assert_matches_reference(ours, reference_clipped_sum(model, batch, clip), what=family, terms=5 * T)


def test_opt_learned_positions_fall_back_to_hooks():
    model = _tiny_other("opt")
    assert any("OPTLearnedPositionalEmbedding" in b for b in unsupported_layers(model))
    assert resolve_clipping_mode(model, "auto") == "hooks"
