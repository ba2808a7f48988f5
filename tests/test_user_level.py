"""User-level DP (privacy_unit_column): one user's rows are clipped, sampled and counted as ONE unit.

The reference is slow and obviously correct: for each user, one backward of the sum of that user's
per-row losses (each row run alone), clip that gradient to C, add. Every clipping mode must match it for
users holding 1 to 5 rows of the batch, with the rows of a user interleaved with other users' rows or kept
together over several micro-batches. Tolerances: tests/tolerances.py (float32 rounding of the summed
products). A broken variant, clipping each row on its own, gives a relative error of 0.3-0.6 here.
"""

import json
import math

import numpy as np
import pytest
import torch
from datasets import Dataset

from hf_dpkd.privacy.accounting import PrivacyLedger, compute_epsilon
from hf_dpkd.privacy.engine import DPSGDOptimizer, attach_grad_sampler, detach_grad_sampler
from hf_dpkd.privacy.sampling import PoissonBatchSampler
from hf_dpkd.privacy.units import UnitIndex, UnitLayout, micro_batch_bounds
from hf_dpkd.trainers.dp import DPConfig, DPTrainer
from hf_dpkd.trainers.losses import dp_forward_kwargs, per_sequence_nll
from tests.dp_models import MODEL_FACTORIES, VOCAB, random_batch
from tests.tolerances import assert_matches_reference, reference_errors

T = 10
# 15 rows: user 0 has 1 row, user 1 two, ..., user 4 five; interleaved in the batch.
USERS = torch.tensor([4, 3, 1, 4, 2, 0, 3, 4, 2, 1, 3, 4, 2, 3, 4])


def _row_grads(model, batch, i, params):
    one = {k: v[i : i + 1] for k, v in batch.items()}
    loss = per_sequence_nll(model(**dp_forward_kwargs(model, one)).logits, one["labels"]).sum()
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def reference_user_clipped_sum(model, batch, users, clip, per_row=False):
    """sum over users of clip_C(sum of the user's per-row gradients); `per_row`: the broken variant."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    total = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in named}
    groups = (
        [[i] for i in range(len(users))]
        if per_row
        else [[i for i in range(len(users)) if users[i] == u] for u in users.unique().tolist()]
    )
    for rows in groups:
        summed = [torch.zeros_like(p, dtype=torch.float64) for p in params]
        for i in rows:
            for s, g in zip(summed, _row_grads(model, batch, i, params)):
                s += g.double()
        norm = torch.sqrt(sum((s**2).sum() for s in summed)).item()
        factor = min(1.0, clip / (norm + 1e-6))
        for (n, _), s in zip(named, summed):
            total[n] += factor * s
    return total


def _median_user_norm(model, batch, users):
    params = [p for p in model.parameters() if p.requires_grad]
    norms = []
    for u in users.unique().tolist():
        summed = None
        for i in (users == u).nonzero().flatten().tolist():
            g = _row_grads(model, batch, i, params)
            summed = g if summed is None else [a + b for a, b in zip(summed, g)]
        norms.append(torch.sqrt(sum((s**2).sum() for s in summed)).item())
    return float(np.median(norms))


def _engine_sum(model, batch, users, clip, mode, bounds):
    gsm = attach_grad_sampler(model, mode, clip, per_unit=True)
    opt = DPSGDOptimizer(
        torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0),
        noise_multiplier=0.0,
        max_grad_norm=clip,
        expected_batch_size=5,
        grad_sample_module=gsm,
        clipping_mode=mode,
    )
    for a, b in bounds:
        mb = {k: v[a:b] for k, v in batch.items()}
        losses = per_sequence_nll(gsm(**dp_forward_kwargs(gsm, mb)).logits, mb["labels"])
        opt.backward_microbatch(losses, UnitLayout(users[a:b]))
    names = {id(p): n for n, p in model.named_parameters()}
    out = {names[id(p)]: p.summed_grad.clone() for p in opt.params}
    units_seen = opt.num_samples_in_step
    opt.zero_grad()
    detach_grad_sampler(gsm)
    return out, units_seen


@pytest.mark.parametrize("mode", ["hooks", "ghost", "bookkeeping", "auto"])
@pytest.mark.parametrize("family", list(MODEL_FACTORIES))
def test_user_clipped_sum_matches_reference_in_every_mode(family, mode):
    """Interleaved rows in one micro-batch, then the same users sorted and cut into micro-batches of <= 6
    rows at user boundaries: both equal the per-user reference (users with 1..5 rows)."""
    model = MODEL_FACTORIES[family]()
    model.train()
    batch = random_batch(len(USERS), t=T)
    clip = _median_user_norm(model, batch, USERS)
    ref = reference_user_clipped_sum(model, batch, USERS, clip)
    ours, seen = _engine_sum(model, batch, USERS, clip, mode, [(0, len(USERS))])
    assert seen == 5  # five units, not fifteen rows
    assert_matches_reference(ours, ref, what=f"{mode} per-user clipped sum, {family}", terms=5 * T * 5)

    order = torch.argsort(USERS, stable=True)
    sorted_batch = {k: v[order] for k, v in batch.items()}
    bounds = micro_batch_bounds(len(USERS), 6, USERS[order])
    assert max(b - a for a, b in bounds) <= 6 and len(bounds) > 1
    ours, _ = _engine_sum(model, sorted_batch, USERS[order], clip, mode, bounds)
    assert_matches_reference(ours, ref, what=f"{mode} micro-batched, {family}", terms=5 * T * 5)


def test_clipping_rows_separately_is_caught():
    """The reference tells per-user clipping from per-row clipping (the bug this feature guards against)."""
    model = MODEL_FACTORIES["gpt2_untied"]()
    batch = random_batch(len(USERS), t=T)
    clip = _median_user_norm(model, batch, USERS)
    ref = reference_user_clipped_sum(model, batch, USERS, clip)
    wrong = reference_user_clipped_sum(model, batch, USERS, clip, per_row=True)
    assert reference_errors(wrong, ref, terms=5 * T * 5)["global"] > 0.1


def test_every_user_sum_is_clipped_to_c():
    model = MODEL_FACTORIES["gpt2_tied"]()
    batch = random_batch(len(USERS), t=T)
    gsm = attach_grad_sampler(model, "bookkeeping", 1e-3, per_unit=True)
    losses = per_sequence_nll(gsm(**dp_forward_kwargs(gsm, batch)).logits, batch["labels"])
    gsm.clipped_sum(losses, UnitLayout(USERS))
    assert gsm.last_per_sample_norms.shape == (5,)
    assert (gsm.last_per_sample_norms > 1e-3).all()  # every user is clipped at this C


def test_unit_layout_and_micro_batch_bounds():
    layout = UnitLayout(torch.tensor([7, 3, 7, 9, 3, 7]))
    assert layout.num_units == 3 and layout.max_rows == 3
    assert layout.per_row(torch.tensor([10.0, 20.0, 30.0])).tolist() == [20, 10, 20, 30, 10, 20]
    x = torch.arange(6.0).view(6, 1, 1)
    stacked = layout.stack(x)  # [3 units, 3 rows * 1 step, 1]
    assert stacked[:, :, 0].tolist() == [[1, 4, 0], [0, 2, 5], [3, 0, 0]]
    assert layout.sum_rows(torch.arange(6.0)).tolist() == [5, 7, 3]
    ids = torch.tensor([0, 0, 1, 2, 2, 2, 2, 3])
    assert micro_batch_bounds(8, 3, ids) == [(0, 3), (3, 7), (7, 8)]  # the 4-row user alone, never split
    assert micro_batch_bounds(5, 2) == [(0, 2), (2, 4), (4, 5)]
    with pytest.raises(ValueError, match="not consecutive"):
        micro_batch_bounds(3, 3, torch.tensor([0, 1, 0]))


def test_sampler_draws_users_not_rows():
    """Each user is in a batch with probability q (whatever their row count), with all their rows (or
    max_rows_per_unit of them), consecutive, and parts never split a user."""
    users = [f"u{i % 40}" if i < 160 else f"solo{i}" for i in range(200)]  # 40 users x 4 rows + 40 singles
    index = UnitIndex.from_values("user_id", users)
    assert index.num_units == 80 and index.num_rows == 200
    q, steps = 0.25, 400
    sampler = PoissonBatchSampler(80, q, steps, num_parts=3, seed=1, units=index)
    counts = np.zeros(80)
    parts = list(iter(sampler))
    for s in range(steps):
        rows = [r for part in parts[3 * s : 3 * s + 3] for r in part]
        owners = index.row_unit[rows]
        for part in parts[3 * s : 3 * s + 3]:
            u = index.row_unit[part]
            assert all(np.sum(index.row_unit[rows] == x) == np.sum(u == x) for x in set(u))  # not split
        for u in set(owners.tolist()):
            assert sorted(np.asarray(rows)[owners == u].tolist()) == index.rows[u].tolist()  # all rows
            counts[u] += 1
    many, single = counts[:40].mean() / steps, counts[40:].mean() / steps
    assert abs(many - q) < 0.03 and abs(single - q) < 0.03  # 4-row users are not 4x more likely

    capped = PoissonBatchSampler(80, q, 50, seed=1, units=index, max_rows_per_unit=2)
    for s in range(50):
        batch = capped.logical_batch(s)
        _, per_user = np.unique(index.row_unit[batch], return_counts=True)
        assert per_user.max() <= 2


def _user_dataset(rows_per_user=(1, 2, 3, 4, 5) * 8):
    ids, users = [], []
    g = torch.Generator().manual_seed(0)
    for u, k in enumerate(rows_per_user):
        for _ in range(k):
            ids.append(torch.randint(1, VOCAB, (T,), generator=g).tolist())
            users.append(f"user-{u}")
    return Dataset.from_dict({"input_ids": ids, "labels": ids, "user_id": users})


def _trainer(tmp_path, ds, ledger=None, **kw):
    from transformers import default_data_collator

    args = dict(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to=[],
        per_device_train_batch_size=8,
        num_train_epochs=2,
        learning_rate=1e-3,
        save_strategy="no",
        target_epsilon=3.0,
        max_physical_batch_size=6,
        privacy_unit_column="user_id",
        dp_seed=3,
    )
    args.update(kw)
    return DPTrainer(
        model=MODEL_FACTORIES["gpt2_tied"](),
        args=DPConfig(**args),
        train_dataset=ds,
        data_collator=default_data_collator,
        privacy_ledger=ledger,
    )


@pytest.mark.parametrize("mode", ["hooks", "auto"])
def test_trainer_counts_users_in_q_n_and_the_accountant(tmp_path, mode):
    ds = _user_dataset()  # 40 users, 120 rows
    trainer = _trainer(tmp_path / mode, ds, clipping_mode=mode)
    assert trainer.dp_session.num_examples == 40 and trainer.dp_session.num_rows == 120
    assert trainer.dp_session.sample_rate == pytest.approx(8 / 40)
    assert trainer.dp_session.steps_per_epoch == 5
    trainer.train()
    report = trainer.privacy_report()
    assert report["privacy_unit"] == "one user, identified by column user_id"
    assert report["num_examples"] == 40 and report["num_rows"] == 120
    release = trainer.privacy_ledger.get(trainer.privacy_release_name)
    assert release.sample_rate == pytest.approx(8 / 40) and release.meta["num_examples"] == 40
    assert release.meta["privacy_unit"] == report["privacy_unit"]
    expected = compute_epsilon(
        [(trainer.dp_session.noise_multiplier, 8 / 40, trainer.dp_session.steps)], report["delta"], "prv"
    )
    assert report["epsilon"] == pytest.approx(expected) and report["epsilon"] <= 3.0
    assert report["delta"] == pytest.approx(min(1e-5, 1 / (10 * 40)))  # delta from the USER count
    trainer.save_model(str(tmp_path / mode / "final"))
    card = (tmp_path / mode / "final" / "README.md").read_text()
    assert "one user, identified by column user_id" in card


def test_bad_user_level_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="max_rows_per_unit=2 .* needs privacy_unit_column"):
        DPConfig(
            output_dir=str(tmp_path), use_cpu=True, report_to=[], target_epsilon=1.0, max_rows_per_unit=2
        )
    with pytest.raises(ValueError, match="privacy_unit_column='author' is not a column"):
        _trainer(tmp_path, _user_dataset(), privacy_unit_column="author")
    ds = _user_dataset().map(lambda r, i: {"user_id": None if i == 3 else r["user_id"]}, with_indices=True)
    with pytest.raises(ValueError, match="row 3 .* has no value"):
        _trainer(tmp_path, ds)
    with pytest.raises(ValueError, match=r"larger than the dataset \(40 users\)"):
        _trainer(tmp_path, _user_dataset(), per_device_train_batch_size=64)


def test_a_row_level_release_in_the_ledger_is_refused(tmp_path):
    """Composing with a release that protects rows would leave a user with k rows at ~k x its epsilon."""
    ledger = PrivacyLedger("prv")
    ledger.record(
        "control_code_histogram", noise_multiplier=10.0, sample_rate=1.0, steps=1, mechanism="gaussian"
    )
    with pytest.raises(ValueError, match="protects one row: composed, the guarantee would hold per row only"):
        _trainer(tmp_path, _user_dataset(), ledger=ledger)
    user_ledger = PrivacyLedger("prv")
    user_ledger.record(
        "control_code_histogram",
        noise_multiplier=10.0,
        sample_rate=1.0,
        steps=1,
        mechanism="gaussian",
        privacy_unit="one user, identified by column user_id",
    )
    trainer = _trainer(tmp_path, _user_dataset(), ledger=user_ledger)
    assert math.isfinite(trainer.privacy_ledger.epsilon())


def test_ghost_at_user_level_refuses_layers_without_a_closed_form():
    from tests.test_fast_clipping import _Scaled

    with pytest.raises(
        ValueError, match="user level.*clipping_mode='hooks'|user-level DP.*clipping_mode='hooks'"
    ):
        attach_grad_sampler(_Scaled(), "ghost", 1.0, per_unit=True)


def test_pipeline_at_user_level_names_the_unit_everywhere(tmp_path):
    """`--privacy_unit_column user_id` on the quick demo: the histogram, the DP teacher and the DP-SGD
    students all protect one user; the cards state it with the ledger's epsilon; N is the user count."""
    from datasets import load_from_disk

    from hf_dpkd.hub import card_epsilon
    from tests.pipeline_runs import run_quick

    run = tmp_path / "user_level"
    proc = run_quick(
        run,
        "--privacy_unit_column",
        "user_id",
        "--max_rows_per_unit",
        "4",
        "--methods",
        "distildp,dp_sgd_student",
        "--stages",
        "data,histogram,teacher,generate,students,evaluate",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    unit = "one user, identified by column user_id"
    assert f"  privacy unit: {unit}" in proc.stdout
    train = load_from_disk(str(run / "data" / "private"))["train"]
    users = len(set(train["user_id"]))
    assert users < len(train) / 2
    results = json.loads((run / "results.json").read_text())
    assert results["privacy_unit"] == unit and results["num_privacy_units"] == users
    assert results["delta"] == pytest.approx(min(1e-5, 1 / (10 * users)))
    for row in results["rows"]:
        if not row["method"].startswith("public_"):
            assert row["privacy_unit"] == unit, row["method"]
    for folder in ("teacher/final", "students/distildp/final", "students/dp_sgd_student/final"):
        ledger = PrivacyLedger.load(run / folder)
        assert ledger.privacy_unit == unit, folder
        card = run / folder / "README.md"
        assert math.isclose(card_epsilon(card), ledger.epsilon(), rel_tol=1e-9), folder
        assert unit in card.read_text()
    histogram = PrivacyLedger.load(run / "teacher" / "final").get("control_code_histogram")
    assert "1/k" in histogram.meta["user_bounding"]
    for folder in ("teacher/final", "students/dp_sgd_student/final"):
        sgd = [r for r in PrivacyLedger.load(run / folder).releases if r.sample_rate < 1][-1]
        assert sgd.meta["num_examples"] == users and sgd.meta["num_rows"] == len(train)
        assert sgd.sample_rate == pytest.approx(sgd.meta["expected_batch_size"] / users)


def test_histogram_at_user_level_counts_each_user_once():
    """A user with k rows adds 1/k to each of their rows' codes: at most 1 in total (sensitivity 1 per user),
    and the release names the unit in the ledger."""
    from hf_dpkd.privacy.histogram import dp_control_code_distribution, private_counts
    from hf_dpkd.synthetic.control_codes import ControlCodeFormat

    fmt = ControlCodeFormat(fields=[("category", "Business Category"), ("stars", "Review Stars")])
    rows = {
        "category": ["A", "A", "A", "A", "B", "B"],
        "stars": ["1", "1", "2", "1", "1", "1"],
        "text": ["t"] * 6,
        "user_id": ["ann", "ann", "ann", "bob", "cy", "cy"],
    }
    ds = Dataset.from_dict(rows)
    counts = private_counts(ds, fmt, "user_id")
    assert counts[("A", "1")] == pytest.approx(2 / 3 + 1) and counts[("A", "2")] == pytest.approx(1 / 3)
    assert counts[("B", "1")] == pytest.approx(1.0)
    assert sum(counts.values()) == pytest.approx(3.0)  # one unit of count per user
    assert private_counts(ds, fmt)[("A", "1")] == 3  # row level: one per row
    ledger = PrivacyLedger("prv", delta=1e-5)
    domain = {"category": ["A", "B"], "stars": ["1", "2"]}
    dist = dp_control_code_distribution(ds, fmt, 5.0, ledger, domain=domain, privacy_unit_column="user_id")
    release = ledger.get("control_code_histogram")
    assert release.meta["privacy_unit"] == "one user, identified by column user_id"
    assert (
        dist.meta["privacy_unit"] == release.meta["privacy_unit"]
        and ledger.privacy_unit == dist.meta["privacy_unit"]
    )
    with pytest.raises(ValueError, match="privacy_unit_column='author' is not a column"):
        private_counts(ds, fmt, "author")


def test_loader_keeps_the_unit_column(tmp_path):
    from hf_dpkd.data.loaders import load_private_dataset

    path = tmp_path / "reviews.jsonl"
    rows = [
        {"text": f"review {i}", "label": str(i % 2), "author": 100 + i % 3, "extra": 1} for i in range(30)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    ds, _ = load_private_dataset(str(path), control_columns=["label"], unit_column="author")
    assert ds["train"].column_names == ["label", "text", "author"]
    assert set(ds["train"]["author"]) <= {"100", "101", "102"}
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['user'\]"):
        load_private_dataset(str(path), control_columns=["label"], unit_column="user")


def test_text_dataset_keeps_its_unit_column(tmp_path):
    """A trl-style 'text' dataset with a user column: DPTrainer tokenizes it and still samples users."""
    from tests.dp_models import tiny_word_lm, tiny_word_tokenizer

    texts = [f"user {u} wrote review {i} about the cat" for u in range(12) for i in range(u % 3 + 1)]
    users = [f"u{u}" for u in range(12) for _ in range(u % 3 + 1)]
    tokenizer = tiny_word_tokenizer(texts)
    trainer = DPTrainer(
        model=tiny_word_lm(len(tokenizer)),
        args=DPConfig(
            output_dir=str(tmp_path),
            use_cpu=True,
            report_to=[],
            per_device_train_batch_size=4,
            max_steps=2,
            noise_multiplier=1.0,
            privacy_unit_column="user_id",
        ),
        train_dataset=Dataset.from_dict({"text": texts, "user_id": users}),
        processing_class=tokenizer,
    )
    assert trainer.dp_session.num_examples == 12 and trainer.dp_session.num_rows == len(texts)
    trainer.train()
    assert trainer.privacy_report()["steps"] == 2
