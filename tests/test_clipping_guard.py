"""Universal clipping guard: whatever the mode and the model, one example moves the weights by at most C.

Every clipping mode trusts per-module hooks: a trainable weight used outside the forward of a module that
owns it (a functional ``F.linear(h, emb.weight)``) gets gradient no hook measured, added unclipped
(``ghost``) or silently dropped (``hooks``, ``bookkeeping``). Such models are refused before their first
backward. With bf16 weights, norms, clipping factors and clipped sums are float32.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import CausalLMOutput

from hf_dpkd.privacy.engine import CLIPPING_MODES, DPSGDOptimizer, attach_grad_sampler, detach_grad_sampler
from hf_dpkd.trainers.losses import dp_forward_kwargs, per_sequence_nll
from tests.dp_models import MODEL_FACTORIES, VOCAB, random_batch, reference_clipped_sum

LOSS_SCALE = 1e6  # every example's gradient is far above C: each one is clipped to exactly C
CLIP = 0.5


class FunctionalHeadLM(nn.Module):
    """A causal LM whose output projection reuses the embedding matrix through ``F.linear`` (no module)."""

    def __init__(self, seed: int = 0, d: int = 16):
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(VOCAB, d)
        self.norm = nn.LayerNorm(d)
        self.mlp = nn.Linear(d, d)

    def hidden(self, input_ids):
        h = self.emb(input_ids)
        return h + self.mlp(self.norm(h))

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        return CausalLMOutput(logits=F.linear(self.hidden(input_ids), self.emb.weight))


class TiedHeadLM(FunctionalHeadLM):
    """The fix the refusal suggests: the same Parameter, called through an nn.Linear that owns it."""

    def __init__(self, seed: int = 0, d: int = 16):
        super().__init__(seed, d)
        self.head = nn.Linear(d, VOCAB, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        return CausalLMOutput(logits=self.head(self.hidden(input_ids)))


MODELS = {**MODEL_FACTORIES, "functional_head": FunctionalHeadLM, "tied_head": TiedHeadLM}
REFUSED = {"functional_head"}


def _dp_step(model, batch, mode, clip=CLIP, scale=LOSS_SCALE, remove_probe=False):
    """One DP-SGD step (noise 0, expected batch 1, SGD with lr=0): (trainable params, their clipped sums).

    The clipped sums are read before the step; the step leaves the applied gradient in p.grad."""
    gsm = attach_grad_sampler(model, mode, clip)
    if remove_probe:
        gsm.__dict__["_parameter_use_probe"].remove()
    try:
        params = [p for p in model.parameters() if p.requires_grad]
        opt = DPSGDOptimizer(
            torch.optim.SGD(params, lr=0.0),
            noise_multiplier=0.0,
            max_grad_norm=clip,
            expected_batch_size=1,
            grad_sample_module=gsm,
            clipping_mode=mode,
        )
        losses = per_sequence_nll(gsm(**dp_forward_kwargs(gsm, batch)).logits, batch["labels"]) * scale
        opt.backward_microbatch(losses)
        sums = {
            p: p.summed_grad.detach().clone() for p in params if getattr(p, "summed_grad", None) is not None
        }
        opt.step()  # the inner SGD reads p.grad: exactly what it would apply
        return params, sums
    finally:
        detach_grad_sampler(gsm)


def _applied_update(model, batch, mode, **kwargs) -> dict[str, torch.Tensor]:
    """The gradient the inner optimizer applies, per parameter name (zero where a parameter got none)."""
    params, _ = _dp_step(model, batch, mode, **kwargs)
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in params}


def _norm(grads) -> float:
    return torch.sqrt(sum((g.double() ** 2).sum() for g in grads)).item()


@pytest.mark.parametrize("family", list(MODELS))
@pytest.mark.parametrize("mode", CLIPPING_MODES)
def test_one_example_moves_the_weights_by_at_most_c(mode, family):
    """Every mode x every model: bounded by C, or (functional weight use only) refused before any step."""
    model = MODELS[family]()
    model.train()
    batch = random_batch(1, seed=2, pad_last=0)
    if family in REFUSED:
        with pytest.raises(ValueError, match="'emb.weight' is used by `linear`"):
            _applied_update(model, batch, mode)
        return
    norm = _norm(_applied_update(model, batch, mode).values())
    assert norm <= CLIP * (1 + 1e-5), f"{mode}/{family}: ||update|| = {norm / CLIP:.7g} C"
    assert norm >= CLIP * 0.999  # clipped, not vanished


@pytest.mark.parametrize("mode", CLIPPING_MODES)
def test_functional_weight_use_is_refused_with_the_fix(mode):
    model = FunctionalHeadLM()
    batch = random_batch(2)
    gsm = attach_grad_sampler(model, mode, CLIP)
    with torch.no_grad():  # an evaluation forward first: not probed, not refused
        gsm(**dp_forward_kwargs(gsm, batch))
    for _ in range(2):  # refused on every training forward, not only the first
        with pytest.raises(ValueError) as err:
            gsm(**dp_forward_kwargs(gsm, batch))
        msg = str(err.value)
        assert msg.startswith(f"clipping_mode={mode!r}"), msg
        if mode == "auto":
            assert "'auto' (runs as 'bookkeeping')" in msg
        assert "'emb.weight' is used by `linear` in the forward of <root> (FunctionalHeadLM)" in msg
        assert "call the weight through a module that owns it" in msg and "requires_grad=False" in msg
        effect = "without being clipped" if mode == "ghost" else "silently left out of the update"
        assert effect in msg
    # Refused before any backward: nothing was measured or accumulated.
    assert all(p.grad is None and getattr(p, "grad_sample", None) is None for p in model.parameters())
    detach_grad_sampler(gsm)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("mode", CLIPPING_MODES)
def test_without_the_refusal_every_mode_would_train_a_wrong_update(mode):
    """Why every mode refuses: ghost exceeds C; hooks and bookkeeping drop the head's gradient."""
    batch = random_batch(1, seed=2, pad_last=0)
    ours = _applied_update(FunctionalHeadLM(), batch, mode, scale=1.0, remove_probe=True)
    ref = reference_clipped_sum(FunctionalHeadLM(), batch, CLIP)
    if mode == "ghost":
        assert _norm(ours.values()) > CLIP * 1.01
    else:
        err = (ours["emb.weight"].double() - ref["emb.weight"]).norm() / ref["emb.weight"].norm()
        assert err > 0.1


@pytest.mark.parametrize("mode", CLIPPING_MODES)
def test_the_suggested_fix_trains_the_reference_update(mode):
    """The same tied weight called through an nn.Linear: accepted, and equal to the per-example loop."""
    batch = random_batch(5)
    clip = 1.0
    ref = reference_clipped_sum(TiedHeadLM(), batch, clip)
    ours = _applied_update(TiedHeadLM(), batch, mode, clip=clip, scale=1.0)
    for name in ref:
        err = (ours[name].double() - ref[name]).abs().max().item()
        assert err <= 1e-4 * ref[name].abs().max().item() + 1e-9, (mode, name, err)


@pytest.mark.parametrize("mode", CLIPPING_MODES)
def test_the_probe_runs_once(mode):
    """After one clean training forward the probe's hooks are gone: no per-step cost."""
    model = MODEL_FACTORIES["gpt2_tied"]()
    before = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    gsm = attach_grad_sampler(model, mode, CLIP)
    probe = gsm.__dict__["_parameter_use_probe"]
    assert probe.handles
    batch = random_batch(2)
    with torch.no_grad():
        gsm(**dp_forward_kwargs(gsm, batch))
    assert probe.handles  # evaluation forwards do not count
    gsm(**dp_forward_kwargs(gsm, batch))
    assert probe.handles == []
    hooks = [h for m in model.modules() for h in (*m._forward_hooks.values(), *m._forward_pre_hooks.values())]
    assert not any(getattr(h, "__self__", None) is probe for h in hooks)
    detach_grad_sampler(gsm)
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == before


# -- bf16 weights: float32 norms, clipping factors and sums ------------------------------------------------

BF16_MODES = ("hooks", "bookkeeping", "auto")


@pytest.mark.parametrize("family", ["gpt2_tied", "llama", "lora_gpt2"])
@pytest.mark.parametrize("mode", BF16_MODES)
def test_bf16_weights_are_clipped_in_float32(mode, family):
    """Each clipped example's contribution has norm C to float32 precision (1e-5). Rounding the norm or the
    sum to bf16 (8 significant bits) moves it by about 1e-4 to 5e-3 in either direction."""
    model = MODEL_FACTORIES[family]().to(torch.bfloat16)
    batch = random_batch(4, seed=2, pad_last=0)
    for i in range(4):
        one = {k: v[i : i + 1] for k, v in batch.items()}
        params, sums = _dp_step(model, one, mode, scale=1e3)
        assert sums and all(s.dtype == torch.float32 for s in sums.values())
        assert all(p.grad.dtype == torch.bfloat16 for p in params)  # rounded only after the (zero) noise
        norm = _norm(sums.values())
        assert abs(norm / CLIP - 1) <= 1e-5, f"{mode}/{family} example {i}: {norm / CLIP:.7g} C"


@pytest.mark.parametrize("mode", BF16_MODES)
def test_bf16_clipped_sum_matches_a_float64_loop(mode):
    """Against a per-example loop over the same bf16 model (its gradients clipped and summed in float64);
    the tolerance is bf16's: the engine's per-sample gradients round differently from autograd's."""
    model = MODEL_FACTORIES["llama"]().to(torch.bfloat16)
    batch = random_batch(6)
    clip = 1.0
    ref = reference_clipped_sum(model, batch, clip)
    _, sums = _dp_step(model, batch, mode, clip=clip, scale=1.0)
    names = {id(p): n for n, p in model.named_parameters()}
    ours = {names[id(p)]: s for p, s in sums.items()}
    assert ours.keys() == ref.keys()
    for name in ref:
        err = (ours[name].double() - ref[name]).norm() / ref[name].norm()
        assert err <= 3e-2, (name, err.item())


def test_bf16_step_with_noise_updates_bf16_weights():
    model = MODEL_FACTORIES["gpt2_tied"]().to(torch.bfloat16)
    batch = random_batch(2)
    gsm = attach_grad_sampler(model, "bookkeeping", CLIP)
    opt = DPSGDOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1),
        noise_multiplier=1.0,
        max_grad_norm=CLIP,
        expected_batch_size=2,
        grad_sample_module=gsm,
        generator=torch.Generator().manual_seed(0),
    )
    before = [p.detach().clone() for p in model.parameters()]
    opt.backward_microbatch(per_sequence_nll(gsm(**dp_forward_kwargs(gsm, batch)).logits, batch["labels"]))
    opt.step()
    detach_grad_sampler(gsm)
    assert all(p.dtype == torch.bfloat16 and p.grad.dtype == torch.bfloat16 for p in model.parameters())
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


@pytest.mark.parametrize("family", ["gpt2_tied", "llama"])
def test_ghost_refuses_a_low_precision_backward(family):
    """ghost's second backward in bf16 moves a clipped example by ~1e-3 C (measured up to 7e-3): refused."""
    with pytest.raises(ValueError, match=r"clipping_mode='ghost' .*torch.bfloat16.*'bookkeeping'"):
        attach_grad_sampler(MODEL_FACTORIES[family]().to(torch.bfloat16), "ghost", CLIP)
    model = MODEL_FACTORIES[family]()  # float32 weights, bf16 autocast: refused on the first forward
    gsm = attach_grad_sampler(model, "ghost", CLIP)
    batch = random_batch(2)
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(ValueError, match="autocast is on"):
        gsm(**dp_forward_kwargs(gsm, batch))
    detach_grad_sampler(gsm)
