"""Distillation losses against slow references (explicit loops, torch.distributions), chunking, top-k."""

import math

import pytest
import torch
from torch.distributions import Categorical, kl_divergence

from hf_dpkd.trainers.losses import (
    HiddenProjections,
    cross_entropy_sums,
    hidden_alignment_sums,
    kd_beta,
    kd_divergence,
    kd_divergence_topk,
    resolve_layer_map,
)


def _data(b=3, t=5, v=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(b, t, v, generator=g) * 2
    te = torch.randn(b, t, v, generator=g) * 2
    mask = (torch.rand(b, t, generator=g) > 0.3).float()
    return s, te, mask


def _reference(s, te, mask, beta, temp):
    out = torch.zeros(s.shape[0], dtype=torch.float64)
    for i in range(s.shape[0]):
        for j in range(s.shape[1]):
            if not mask[i, j]:
                continue
            ps = Categorical(logits=s[i, j].double() / temp)
            pt = Categorical(logits=te[i, j].double() / temp)
            if beta == 0:
                d = kl_divergence(pt, ps)
            elif beta == 1:
                d = kl_divergence(ps, pt)
            else:
                m = Categorical(probs=beta * pt.probs + (1 - beta) * ps.probs)
                d = beta * kl_divergence(pt, m) + (1 - beta) * kl_divergence(ps, m)
            out[i] += d
    return out


@pytest.mark.parametrize("beta", [0.0, 1.0, 0.3, 0.5])
@pytest.mark.parametrize("temp", [1.0, 2.0])
def test_divergences_match_reference(beta, temp):
    s, te, mask = _data()
    ours, counts = kd_divergence(s, te, mask, beta=beta, temperature=temp, chunk_size=2)
    assert torch.allclose(ours.double(), _reference(s, te, mask, beta, temp), atol=1e-5)
    assert torch.equal(counts, mask.sum(1))


def test_forward_kl_is_ce_against_teacher_minus_teacher_entropy():
    s, te, mask = _data()
    ours, _ = kd_divergence(s, te, mask, beta=0.0)
    pt = torch.softmax(te, -1)
    ce = -(pt * torch.log_softmax(s, -1)).sum(-1)
    ent = -(pt * torch.log_softmax(te, -1)).sum(-1)
    assert torch.allclose(ours, ((ce - ent) * mask).sum(1), atol=1e-5)


def test_jsd_endpoints_are_the_kls():
    s, te, mask = _data()
    fwd, _ = kd_divergence(s, te, mask, beta=0.0)
    rev, _ = kd_divergence(s, te, mask, beta=1.0)
    assert torch.allclose(fwd.double(), _reference(s, te, mask, 0, 1.0), atol=1e-5)
    assert torch.allclose(rev.double(), _reference(s, te, mask, 1, 1.0), atol=1e-5)
    assert kd_beta("forward_kl") == 0.0 and kd_beta("reverse_kl") == 1.0 and kd_beta("jsd", 0.3) == 0.3


def test_matches_trl_generalized_jsd():
    from trl.experimental.gkd.gkd_trainer import GKDTrainer

    s, te, _ = _data()
    mask = torch.ones(s.shape[:2])
    for beta in (0.0, 0.5, 1.0):
        trl = GKDTrainer.generalized_jsd_loss(s, te, beta=beta, temperature=1.0, reduction="sum")
        ours, _ = kd_divergence(s, te, mask, beta=beta)
        assert math.isclose(ours.sum().item(), trl.item(), rel_tol=1e-5)


def test_chunked_equals_unchunked_values_and_gradients():
    s, te, mask = _data(b=2, t=9, v=11)
    grads = []
    for chunk in (None, 2, 4):
        x = s.clone().requires_grad_(True)
        kd, _ = kd_divergence(x, te, mask, beta=0.5, temperature=1.5, chunk_size=chunk)
        ce, _ = cross_entropy_sums(x, te.argmax(-1), mask, chunk_size=chunk)
        (kd.sum() + ce.sum()).backward()
        grads.append((kd.detach(), ce.detach(), x.grad))
    for other in grads[1:]:
        for a, b in zip(grads[0], other):
            assert torch.allclose(a, b, atol=1e-6)


def test_cross_entropy_matches_explicit_loop():
    s, te, mask = _data()
    targets = te.argmax(-1)
    ours, counts = cross_entropy_sums(s, targets, mask)
    for i in range(s.shape[0]):
        ref = sum(
            -torch.log_softmax(s[i, j], -1)[targets[i, j]].item() for j in range(s.shape[1]) if mask[i, j]
        )
        assert math.isclose(ours[i].item(), ref, rel_tol=1e-5, abs_tol=1e-6)


def test_topk_with_full_vocab_equals_online_forward_kl():
    s, te, mask = _data()
    logp = torch.log_softmax(te, -1)
    vals, idx = logp.topk(te.shape[-1], dim=-1)
    topk, _ = kd_divergence_topk(s, idx, vals, mask)
    full, _ = kd_divergence(s, te, mask, beta=0.0)
    assert torch.allclose(topk, full, atol=1e-5)
    small, _ = kd_divergence_topk(s, idx[..., :3], vals[..., :3], mask)
    assert not torch.allclose(small, full, atol=1e-3)  # the dropped tail is an approximation


def test_hidden_alignment_and_layer_maps():
    assert resolve_layer_map("last", 2, 4) == [(2, 4)]
    assert resolve_layer_map("uniform", 2, 4) == [(1, 2), (2, 4)]
    assert resolve_layer_map("0:0,2:3", 2, 4) == [(0, 0), (2, 3)]
    with pytest.raises(
        ValueError, match=r"layer_map pair \(3, 4\) is out of range: the student has hidden states 0..2"
    ):
        resolve_layer_map([(3, 4)], 2, 4)
    proj = HiddenProjections([(1, 1)], 3, 5)
    hs = (torch.randn(2, 4, 3), torch.randn(2, 4, 3))
    ht = (torch.randn(2, 4, 5), torch.randn(2, 4, 5))
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]).float()
    val = hidden_alignment_sums(hs, ht, mask, proj, "mse")
    ref = (((proj.maps[0](hs[1]) - ht[1]) ** 2).mean(-1) * mask).sum(1)
    assert torch.allclose(val, ref, atol=1e-6)
    val.sum().backward()
    assert proj.maps[0].weight.grad is not None and proj.maps[0].weight.grad.abs().sum() > 0


def test_bad_loss_inputs():
    s, te, mask = _data()
    with pytest.raises(ValueError, match="temperature=0 must be > 0"):
        kd_divergence(s, te, mask, temperature=0)
    with pytest.raises(ValueError, match="kd_loss='mse' is not supported"):
        kd_beta("mse")


def test_per_sequence_nll_matches_an_explicit_loop():
    """Each sequence's mean NLL of token t+1 given its prefix, over its own unmasked targets (labels -100
    skipped, a sequence with none gives 0); the labels are shifted, the logits are not copied."""
    from hf_dpkd.trainers.losses import per_sequence_nll

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, 11, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 11, (3, 6), generator=g)
    labels[0, 4:] = -100
    labels[2, 1:] = -100  # no target at all
    expected = []
    for b in range(3):
        terms = [
            -torch.log_softmax(logits[b, t], -1)[labels[b, t + 1]]
            for t in range(5)
            if labels[b, t + 1] != -100
        ]
        expected.append(torch.stack(terms).mean() if terms else torch.tensor(0.0, dtype=torch.float64))
    torch.testing.assert_close(
        per_sequence_nll(logits, labels).double(), torch.stack(expected), rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("chunk", [None, 3])
def test_fused_cross_entropy_and_forward_kl_match_autograd_in_float64(temperature, chunk):
    """Against autograd through cross_entropy_sums and kd_divergence (beta 0) in float64: the sums and the
    gradient of an arbitrary per-sequence weighting of both; masked positions (label -100) included.
    Measured: relative errors at most 3e-7 (float32 rounding); the KD gradient without its 1/T: 7e-3."""
    from hf_dpkd.trainers.losses import cross_entropy_and_forward_kl_sums
    from tests.tolerances import assert_matches_reference

    s, te, mask = _data(b=3, t=7, v=50, seed=4)
    targets = torch.randint(0, 50, (3, 7), generator=torch.Generator().manual_seed(1))
    targets = targets.masked_fill(mask == 0, -100)
    w_ce, w_kd = torch.tensor([0.3, 1.0, 2.0]), torch.tensor([1.5, 0.2, 0.7])

    def run(fn, dtype):
        logits = s.to(dtype).clone().requires_grad_(True)
        ce, kd, counts = fn(logits, te.to(dtype))
        ((w_ce * ce).sum() + (w_kd * kd).sum()).backward()
        return {"ce": ce, "kd": kd, "counts": counts, "grad": logits.grad}

    def reference(logits, teacher):
        ce, counts = cross_entropy_sums(logits, targets, mask.to(logits.dtype), None)
        kd, _ = kd_divergence(logits, teacher, mask.to(logits.dtype), beta=0.0, temperature=temperature)
        return ce, kd, counts

    def fused(logits, teacher):
        return cross_entropy_and_forward_kl_sums(
            logits, targets, teacher, mask, temperature=temperature, chunk_size=chunk
        )

    ours, ref = run(fused, torch.float32), run(reference, torch.float64)
    assert_matches_reference(ours, ref, what="fused CE + forward KL", terms=50 * 7)
    assert ours["grad"][mask == 0].abs().max() == 0  # masked positions get no gradient
