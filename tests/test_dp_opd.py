"""DP-OPD (`dp_opd=True`): DP-SGD on the student's own rollouts of private prompts, against a DP or public teacher.

The guarantee rests on three things, one test (or more) each: the teacher's release is composed into the
student's ledger (or the teacher is declared public, and a teacher of unknown privacy is refused); row i's
loss, rollout included, is a function of row i alone; and the whole per-example loss is clipped.
"""

import copy
import math
import shutil

import pytest
import torch
from datasets import Dataset
from transformers import (
    DataCollatorForSeq2Seq,
    GPT2LMHeadModel,
    Trainer,
    TrainingArguments,
)

from hf_dpkd.privacy.accounting import PrivacyLedger
from hf_dpkd.privacy.engine import CLIPPING_MODES
from hf_dpkd.trainers.distillation import TOPK_INDICES, TOPK_LOGPROBS
from hf_dpkd.trainers.dp import DPConfig, DPTrainer
from hf_dpkd.trainers.dp_distillation import DPDistillationConfig, DPDistillationTrainer
from hf_dpkd.trainers.losses import dp_forward_kwargs, kd_divergence
from tests.dp_models import tiny_word_lm, tiny_word_tokenizer
from tests.tolerances import assert_matches_reference

WORDS = ["good", "food", "nice", "staff", "great", "slow", "service", "bad", "cold", "fries"]


def _grammar(n, seed, min_words=2, max_words=9):
    """A code word, then 2-9 words whose choice depends on it (rows of different lengths: padding varies)."""
    g = torch.Generator().manual_seed(seed)
    texts = []
    for _ in range(n):
        pos = torch.rand(1, generator=g).item() < 0.5
        pool = WORDS[:5] if pos else WORDS[5:]
        k = int(torch.randint(min_words, max_words + 1, (1,), generator=g))
        words = [pool[int(torch.randint(len(pool), (1,), generator=g))] for _ in range(k)]
        texts.append(("POS" if pos else "NEG") + " : " + " ".join(words))
    return texts


TOK = tiny_word_tokenizer(_grammar(50, 0) + ["POS NEG :"])
COLLATE = DataCollatorForSeq2Seq(TOK, label_pad_token_id=-100, padding=True)
PROMPT = 2  # "POS :" / "NEG :": the control code, masked (labels -100) as the pipeline masks it


def _model(seed=0, n_embd=16):
    return tiny_word_lm(len(TOK), 1, n_embd, seed)


def _dataset(texts):
    rows = {"input_ids": [], "attention_mask": [], "labels": []}
    for t in texts:
        ids = TOK(t + " <eos>")["input_ids"]
        rows["input_ids"].append(ids)
        rows["attention_mask"].append([1] * len(ids))
        rows["labels"].append([-100] * PROMPT + ids[PROMPT:])
    return Dataset.from_dict(rows)


DATA = _dataset(_grammar(64, 1))  # the "private" data of every test
BASE = dict(
    use_cpu=True,
    report_to=[],
    save_strategy="no",
    per_device_train_batch_size=8,
    learning_rate=5e-3,
    seed=0,
    disable_tqdm=True,
    logging_strategy="no",
)
# RDP: calibrates in milliseconds (PRV composition is test_privacy_hardening's); the teacher uses it too.
OPD = dict(dp_opd=True, kd_loss="jsd", on_policy_max_new_tokens=6, dp_opd_prompt_tokens=2, accountant="rdp")


def _opd(out, teacher, student=None, data=None, **kw):
    args = DPDistillationConfig(output_dir=str(out), **{**BASE, "max_steps": 2, **OPD, **kw})
    return DPDistillationTrainer(
        model=student if student is not None else _model(seed=3),
        teacher_model=teacher,
        args=args,
        train_dataset=data if data is not None else DATA,
        data_collator=COLLATE,
        processing_class=TOK,
    )


@pytest.fixture(scope="module")
def dp_teacher_dir(tmp_path_factory):
    """A teacher trained with DP-SGD on DATA (epsilon 1) and saved with its ledger, as DPTrainer writes it."""
    out = tmp_path_factory.mktemp("dp_teacher")
    trainer = DPTrainer(
        model=_model(seed=1, n_embd=32),
        args=DPConfig(output_dir=str(out), target_epsilon=1.0, accountant="rdp", **{**BASE, "max_steps": 3}),
        train_dataset=DATA,
        data_collator=COLLATE,
    )
    trainer.train()
    trainer.save_model(str(out / "final"))
    return out / "final"


# -- 1. the teacher's release is paid for; the student's DP-OPD release is added; it trains -----------------
def test_dp_opd_composes_the_dp_teachers_release_and_trains(tmp_path, dp_teacher_dir):
    teacher_ledger = PrivacyLedger.load(dp_teacher_dir)
    teacher = GPT2LMHeadModel.from_pretrained(dp_teacher_dir)
    trainer = _opd(
        tmp_path / "s",
        teacher,
        target_epsilon=2.0,
        max_steps=3,
        logging_strategy="steps",
        logging_steps=1,
        log_private_loss=True,
    )
    # calibrated with the teacher's release composed: more noise than the same training with a free teacher
    free = _opd(tmp_path / "free", teacher, target_epsilon=2.0, teacher_is_public=True)
    assert trainer.dp_session.noise_multiplier > free.dp_session.noise_multiplier * 1.02
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    names = [r.name for r in trainer.privacy_ledger.releases]
    assert names == [teacher_ledger.releases[0].name, "dp_opd"]
    assert trainer.privacy_ledger.contains(teacher_ledger)
    report = trainer.privacy_report()
    assert report["release"] == "dp_opd" and report["steps"] == 3
    assert teacher_ledger.epsilon() < report["epsilon"] <= 2.0
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 3 and all(math.isfinite(h["loss"]) and h["loss"] > 0 for h in logs)
    assert all(0 < h["epsilon"] <= 2.0 for h in logs)
    assert any(not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters())
    trainer.save_model(str(tmp_path / "final"))
    saved = PrivacyLedger.load(tmp_path / "final")
    assert [r.name for r in saved.releases] == names
    assert trainer.model_card_method()["name"].startswith("DP-OPD")


# -- 2. a teacher of unknown privacy is refused; a declared-public one is free ---------------------------
def test_a_teacher_trained_on_the_private_data_without_dp_is_refused(tmp_path):
    plain = _model(seed=1, n_embd=32)
    Trainer(
        model=plain,
        args=TrainingArguments(output_dir=str(tmp_path / "plain"), max_steps=2, **BASE),
        train_dataset=DATA,
        data_collator=COLLATE,
    ).train()
    plain.save_pretrained(tmp_path / "plain_teacher")  # fine-tuned on the private data WITHOUT DP: no ledger
    teacher = GPT2LMHeadModel.from_pretrained(tmp_path / "plain_teacher")
    for candidate in (teacher, plain):  # from its folder, and in memory
        with pytest.raises(ValueError) as err:
            _opd(tmp_path / "s", candidate, target_epsilon=2.0)
        msg = str(err.value)
        assert msg.startswith(
            "DP-OPD (its 'frozen, non-private' teacher scores every private example's rollout)"
        )
        assert "privacy is unknown" in msg
        assert "trained on this private data without DP, every example's loss depends on other records" in msg
        assert "no epsilon holds" in msg and "teacher_is_public=True" in msg
    public = _opd(tmp_path / "s", teacher, target_epsilon=2.0, teacher_is_public=True)
    assert public.privacy_ledger.releases == []  # nothing to pay for: the student gets the whole budget


def test_a_dp_teachers_ledger_over_other_data_is_refused(tmp_path, dp_teacher_dir):
    teacher = GPT2LMHeadModel.from_pretrained(dp_teacher_dir)
    with pytest.raises(ValueError, match=r"was DP-SGD over 64 rows, but this training's data has 48"):
        _opd(tmp_path, teacher, data=DATA.select(range(48)), target_epsilon=2.0)


# -- 3. row i's loss, rollout included, depends on row i only -------------------------------------------
def _continuation(rollout, i):
    return rollout["input_ids"][i][rollout["labels"][i] != -100].tolist()


def test_each_rows_rollout_and_loss_depend_on_that_row_only(tmp_path):
    trainer = _opd(tmp_path, _model(seed=1, n_embd=32), noise_multiplier=1.0, teacher_is_public=True)
    first = DATA.select(range(6))
    others = _dataset(_grammar(5, 9, min_words=6, max_words=12))  # longer: other padding, other prompts
    batches = {
        "batch": COLLATE(list(first)),
        "other rows": COLLATE([first[0], *others]),
        "alone": COLLATE([first[0]]),
    }
    rollouts = {k: trainer._dp_opd_rollouts(b) for k, b in batches.items()}
    losses = {k: trainer.compute_per_sample_loss(trainer.model, b).detach() for k, b in batches.items()}
    row0 = _continuation(rollouts["batch"], 0)
    assert len(row0) >= 2  # a real rollout, not only an eos
    for k in ("other rows", "alone"):
        assert _continuation(rollouts[k], 0) == row0, k
        assert math.isclose(losses[k][0].item(), losses["batch"][0].item(), rel_tol=1e-5), (k, losses[k][0])
    # the other rows did change, and so did their rollouts and losses
    assert [_continuation(rollouts["batch"], i) for i in range(1, 6)] != [
        _continuation(rollouts["other rows"], i) for i in range(1, 6)
    ]
    assert not torch.allclose(losses["batch"][1:], losses["other rows"][1:])
    # fresh draws at every optimizer step (the seed is the public seed, the step and the row's own tokens)
    trainer.state.global_step = 1
    assert _continuation(trainer._dp_opd_rollouts(batches["alone"]), 0) != row0


def test_the_prompt_is_the_control_code_and_the_first_text_tokens():
    batch = COLLATE([DATA[i] for i in range(4)])
    prompts = DPDistillationTrainer._dp_opd_prompts(batch, 2)
    for i, p in enumerate(prompts):
        n = int(batch["attention_mask"][i].sum())
        want = min(PROMPT + 2, n - 1)
        assert p.tolist() == batch["input_ids"][i][:want].tolist()
    # unmasked labels: no prefix, the first text tokens; a short row always leaves a token to continue
    short = COLLATE([{"input_ids": [4, 5, 1], "attention_mask": [1, 1, 1], "labels": [4, 5, 1]}])
    assert DPDistillationTrainer._dp_opd_prompts(short, 1)[0].tolist() == [4]
    assert DPDistillationTrainer._dp_opd_prompts(short, 8)[0].tolist() == [4, 5]


# -- 4. the whole per-example loss is clipped ---------------------------------------------------------------
CLIP = 0.5


def _clipped_sum(trainer, batch, scale=1.0):
    """One micro-batch through the DP optimizer: {parameter name: sum_i clip_C(g_i)} (no noise, no step)."""
    trainer.create_optimizer()
    opt, gsm = trainer._dp_optimizer, trainer._grad_sample_module
    losses = trainer.compute_per_sample_loss(gsm, batch) * scale
    opt.backward_microbatch(losses)
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    sums = {names[id(p)]: p.summed_grad.detach().clone() for p in opt.params if p.summed_grad is not None}
    opt.zero_grad()
    return sums


@pytest.mark.parametrize("mode", CLIPPING_MODES)
def test_one_example_moves_the_weights_by_at_most_c(tmp_path, mode):
    trainer = _opd(
        tmp_path,
        _model(seed=1, n_embd=32),
        disable_dp=True,  # the same clipping path without noise
        clipping_mode=mode,
        per_sample_max_grad_norm=CLIP,
    )
    sums = _clipped_sum(trainer, COLLATE([DATA[0]]), scale=1e6)
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in sums.values())).item()
    assert norm <= CLIP * (1 + 1e-5), f"{mode}: ||update|| = {norm / CLIP:.7g} C"
    assert norm >= CLIP * 0.999  # clipped, not vanished


def test_clipped_sum_equals_a_per_example_loop(tmp_path):
    """Against one backward per example on a copy of the student (its own rollout, its own loss, clipped).

    A broken variant that clips the batch's summed gradient once, or scores row i on another row's rollout,
    is off by more than 1e-2; the float32 comparison resolves 1e-5."""
    teacher, student = _model(seed=1, n_embd=32), _model(seed=3)
    reference_model = copy.deepcopy(student)
    rows = [DATA[i] for i in range(4)]
    sampler = _opd(tmp_path / "r", teacher, student=copy.deepcopy(student), disable_dp=True)  # rollouts only
    params = [(n, p) for n, p in reference_model.named_parameters() if p.requires_grad]
    grads = []
    for row in rows:
        rollout = sampler._dp_opd_rollouts(COLLATE([row]))
        s_logits = reference_model(**dp_forward_kwargs(reference_model, rollout)).logits[:, :-1]
        with torch.no_grad():
            t_logits = teacher(**dp_forward_kwargs(teacher, rollout)).logits[:, :-1]
        mask = (rollout["labels"][:, 1:] != -100).float()
        kd, counts = kd_divergence(s_logits, t_logits, mask, beta=0.5)  # OPD's jsd, jsd_beta 0.5, t 1
        g = torch.autograd.grad((kd / counts).sum(), [p for _, p in params])
        grads.append([x.double() for x in g])
    norms = [torch.sqrt(sum((x**2).sum() for x in g)).item() for g in grads]
    clip = sorted(norms)[len(norms) // 2]  # about half of the examples are clipped
    reference = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in params}
    for g, norm in zip(grads, norms):
        for (n, _), x in zip(params, g):
            reference[n] += min(1.0, clip / (norm + 1e-6)) * x
    trainer = _opd(tmp_path / "s", teacher, student=student, disable_dp=True, per_sample_max_grad_norm=clip)
    ours = _clipped_sum(trainer, COLLATE(rows))
    assert_matches_reference(ours, reference, what="DP-OPD clipped sum", terms=4 * 16)


# -- configuration errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"dp_opd": True}, r"Give exactly one of target_epsilon"),  # DP-OPD is DP-SGD: no noise, no DP-OPD
        (
            {"dp_opd": True, "target_epsilon": 2.0, "on_policy_ratio": 0.5},
            r"on_policy_ratio=0.5 \(a share of steps, without DP only\) must be 0 or 1",
        ),
        ({"target_epsilon": 2.0, "on_policy_ratio": 1.0}, r"on-policy training under DP-SGD is dp_opd=True"),
        ({"dp_opd": True, "target_epsilon": 2.0, "dp_opd_prompt_tokens": -1}, r"dp_opd_prompt_tokens=-1"),
        (
            {"dp_opd": True, "target_epsilon": 2.0, "on_policy_max_new_tokens": 0},
            r"on_policy_max_new_tokens=0",
        ),
        ({"dp_opd": True, "target_epsilon": 2.0, "alpha_hidden": 1.0}, r"set alpha_hidden=0"),
    ],
)
def test_bad_config(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        DPDistillationConfig(output_dir=str(tmp_path), **{**BASE, **kwargs})


def test_bad_trainer_inputs(tmp_path):
    teacher = _model(seed=1)
    with pytest.raises(ValueError, match=r"on_policy_max_new_tokens=40 leaves no room .* 32 positions"):
        _opd(tmp_path, teacher, target_epsilon=2.0, teacher_is_public=True, on_policy_max_new_tokens=40)
    cached = DATA.add_column(TOPK_INDICES, [[[0]]] * len(DATA)).add_column(
        TOPK_LOGPROBS, [[[0.0]]] * len(DATA)
    )
    with pytest.raises(ValueError, match=r"dp_opd=True: the teacher scores the student's own rollouts"):
        _opd(tmp_path, teacher, data=cached, target_epsilon=2.0, teacher_is_public=True)
    args = DPDistillationConfig(output_dir=str(tmp_path), target_epsilon=2.0, **{**BASE, **OPD})
    assert args.privacy_release_name == "dp_opd"  # the default DPKD name is replaced by what ran


# -- the pipeline -------------------------------------------------------------------------------------------
def test_pipeline_dp_opd_from_the_public_base_teacher_gets_the_whole_budget(quick_run, tmp_path):
    """`--dp_opd_teacher public`: the public base teacher, declared public; the student's release is all."""
    from hf_dpkd.pipeline import Pipeline
    from hf_dpkd.run_config import parse_run_config

    reference, _, _ = quick_run
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir, ignore=shutil.ignore_patterns("students", "synthetic", "audit"))
    config = parse_run_config(
        ["--quick", "--run_dir", str(run_dir), "--methods", "dp_opd", "--dp_opd_teacher", "public"]
    )
    result = Pipeline(config).stage_students()
    final = run_dir / "students" / "dp_opd" / "final"
    assert result == {"dp_opd": str(final)}
    assert not (run_dir / "students" / "dpkd_teacher").exists()  # no teacher trained for it
    ledger = PrivacyLedger.load(final)
    assert [r.name for r in ledger.releases] == ["dp_opd_student_dp_sgd"]
    assert 1.9 < ledger.epsilon() <= 2.0
    # the default (dp_half) run composed the eps/2 teacher instead: same total, half of it for the student
    half = PrivacyLedger.load(reference / "students" / "dp_opd" / "final")
    assert [r.name for r in half.releases] == ["dpkd_teacher_dp_sgd", "dp_opd_student_dp_sgd"]
    assert half.get("dp_opd_student_dp_sgd").noise_multiplier > ledger.releases[0].noise_multiplier
