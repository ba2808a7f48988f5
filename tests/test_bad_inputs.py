"""Bad input, table-driven: every case fails with a message naming the argument and the fix, and leaves
nothing half-written (no artifact, stage marker or temporary file appears; at most the run directory's
lock and settings file). A few inputs that look bad are handled instead, and tested as such at the end.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from datasets import Dataset
from transformers import DistilBertConfig, DistilBertForMaskedLM

from hf_dpkd import DistillationConfig, DistillationTrainer, DPConfig, DPTrainer
from hf_dpkd.privacy.accounting import PrivacyLedger
from hf_dpkd.run_config import parse_run_config
from tests.dp_models import tiny_gpt2

ROOT = Path(__file__).parents[1]
#: Files a failed pipeline run may leave: the run directory's lock and the settings it was started with.
RUN_DIR_BOOKKEEPING = {".lock", "config.json"}


def _main():
    spec = importlib.util.spec_from_file_location("run_dpkd", ROOT / "examples" / "run_dpkd.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


# -- inputs the cases start from --------------------------------------------------------------------
def _recipe(tmp: Path, text: str | bytes) -> str:
    path = tmp / "recipe.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


def _csv_dataset(tmp: Path, rows: int = 6, header: str = "category,stars,text") -> str:
    folder = tmp / "private"
    folder.mkdir(exist_ok=True)
    for split in ("train", "test"):
        lines = [header] + [f"Food,{1 + i % 5},review number {i} of the {split} split" for i in range(rows)]
        (folder / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return str(folder)


def _tiny_model_folder(tmp: Path, causal: bool = True) -> str:
    from hf_dpkd.data.models import train_demo_tokenizer

    folder = tmp / ("causal" if causal else "masked")
    if folder.is_dir():
        return str(folder)
    tokenizer = train_demo_tokenizer([f"a tiny public text number {i}" for i in range(50)], vocab_size=300)
    if causal:
        model = tiny_gpt2()
        model.resize_token_embeddings(len(tokenizer))
    else:
        model = DistilBertForMaskedLM(
            DistilBertConfig(vocab_size=len(tokenizer), dim=32, n_layers=1, n_heads=2, hidden_dim=64)
        )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def _pipeline(tmp: Path, *argv: str):
    from hf_dpkd.pipeline import Pipeline

    config = parse_run_config(["--run_dir", str(tmp / "run"), "--stages", "data", *argv])
    return Pipeline(config).run_stages()


def _pipeline_on_csv(*argv, header: str = "category,stars,text", rows: int = 6, controls="category,stars"):
    """A pipeline `data` stage on a small csv dataset; `argv` items may be callables of the tmp dir."""

    def run(tmp: Path):
        extra = [a(tmp) if callable(a) else a for a in argv]
        dataset = _csv_dataset(tmp, rows=rows, header=header)
        return _pipeline(tmp, "--dataset", dataset, "--control_columns", controls, *extra)

    return run


def _lm_dataset(n: int = 8) -> Dataset:
    ids = [[(i + j) % 60 + 1 for j in range(8)] for i in range(n)]
    return Dataset.from_dict({"input_ids": ids, "labels": ids})


def _fill_disk_after(monkeypatch, writes: int) -> None:
    """The device fills up: every write after the first `writes` atomic writes fails with ENOSPC."""
    import hf_dpkd._io as io_module

    real_fdopen = os.fdopen
    count = {"n": 0}

    class FullDisk:
        def __init__(self, f):
            self._f = f

        def write(self, data):
            count["n"] += 1
            if count["n"] > writes:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self._f.write(data)

        def __getattr__(self, name):
            return getattr(self._f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

    monkeypatch.setattr(io_module.os, "fdopen", lambda *a, **k: FullDisk(real_fdopen(*a, **k)))


def _under_accelerate_deepspeed(make):
    """As under `accelerate launch` with a DeepSpeed config: the launcher sets ACCELERATE_USE_DEEPSPEED."""
    previous = os.environ.get("ACCELERATE_USE_DEEPSPEED")
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    try:
        return make()
    finally:
        if previous is None:
            del os.environ["ACCELERATE_USE_DEEPSPEED"]
        else:
            os.environ["ACCELERATE_USE_DEEPSPEED"] = previous


# -- the table ---------------------------------------------------------------------------------------
@dataclass
class Case:
    id: str
    run: Callable[[Path], object]
    match: str  # regex over the message: the argument and the fix
    error: type[BaseException] | tuple[type[BaseException], ...] = ValueError


def _parse(*argv: str) -> Callable[[Path], object]:
    return lambda tmp: parse_run_config(["--run_dir", str(tmp / "run"), *argv])


def _with_recipe(text: str | bytes, *argv: str) -> Callable[[Path], object]:
    return lambda tmp: parse_run_config(
        ["--run_dir", str(tmp / "run"), "--config", _recipe(tmp, text), *argv]
    )


def _distillation_trainer(student_vocab: int = 64, layer_map: str = "last", teacher: bool = True):
    def run(tmp: Path):
        student = tiny_gpt2(seed=1)
        if student_vocab != 64:
            student.resize_token_embeddings(student_vocab)
        args = DistillationConfig(output_dir=str(tmp / "student"), alpha_hidden=1.0, layer_map=layer_map)
        return DistillationTrainer(
            model=student,
            teacher_model=tiny_gpt2() if teacher else None,
            args=args,
            train_dataset=_lm_dataset(),
        )

    return run


def _dp_trainer(dataset: Dataset, batch: int = 4):
    def run(tmp: Path):
        args = DPConfig(
            output_dir=str(tmp / "teacher"),
            target_epsilon=2.0,
            per_device_train_batch_size=batch,
            report_to=[],
        )
        return DPTrainer(model=tiny_gpt2(), args=args, train_dataset=dataset)

    return run


def _generate(num_samples=4, probs=(1.0,)):
    def run(tmp: Path):
        from hf_dpkd.privacy.histogram import ControlCodeDistribution
        from hf_dpkd.synthetic import ControlCodeFormat, SyntheticGenerationConfig, generate_synthetic_dataset

        folder = _tiny_model_folder(tmp)
        from hf_dpkd.pipeline import load_model_and_tokenizer

        model, tokenizer = load_model_and_tokenizer(folder)
        fmt = ControlCodeFormat(fields=[("stars", "Review Stars")])
        codes = [(str(i + 1),) for i in range(len(probs))]
        dist = ControlCodeDistribution(columns=("stars",), codes=codes, probs=list(probs), mode="uniform")
        return generate_synthetic_dataset(
            model,
            tokenizer,
            dist,
            num_samples=num_samples,
            output_dir=str(tmp / "synthetic"),
            fmt=fmt,
            generation=SyntheticGenerationConfig(max_length=24, min_words=1),
            batch_size=2,
            shard_size=2,
        )

    return run


def _enospc_generation(tmp: Path, monkeypatch) -> None:
    _tiny_model_folder(tmp)
    _fill_disk_after(monkeypatch, writes=1)  # the settings file fits, the first shard does not
    _generate(num_samples=6)(tmp)


CASES = [
    # user-level privacy and demo model sizes
    Case(
        "max-rows-per-unit-without-column",
        _parse("--max_rows_per_unit", "4"),
        r"--max_rows_per_unit 4 caps a user's rows per step; it needs --privacy_unit_column",
    ),
    Case(
        "privacy-unit-column-missing",
        _pipeline_on_csv("--privacy_unit_column", "user_id"),
        r"lacks column\(s\) \['user_id'\]",
    ),
    Case(
        "demo-student-shape",
        _parse("--demo_student_shape", "2x100"),
        r"--demo_student_shape='2x100': needs >= 1 layer and a width >= 16 that its 3 head\(s\) divide",
    ),
    Case(
        "demo-teacher-shape",
        _parse("--demo_teacher_shape", "big"),
        r"--demo_teacher_shape='big': write LAYERSxWIDTH",
    ),
    # recipes
    Case(
        "recipe-unknown-key",
        _with_recipe("teacher_epoch: 3\n"),
        r"unknown recipe key\(s\) teacher_epoch; run with --help",
    ),
    Case("recipe-malformed-yaml", _with_recipe("seed: [1, 2\n"), r"malformed YAML"),
    Case(
        "recipe-not-a-mapping",
        _with_recipe("- a\n- b\n"),
        r"a recipe is a mapping of argument names to values, got list",
    ),
    Case("recipe-non-utf8", _with_recipe(b"seed: \xff\xfe\n"), r"not a UTF-8 text file"),
    Case(
        "recipe-missing",
        _parse("--config", "nope/recipe.yaml"),
        r"--config .*nope/recipe.yaml: no such recipe file",
        FileNotFoundError,
    ),
    Case(
        "recipe-bad-type",
        _with_recipe("seed: abc\n"),
        r"--config .*recipe.yaml: seed: 'abc' is not a valid int; fix the recipe",
    ),
    Case(
        "recipe-bad-value",
        _with_recipe("target_epsilon: -1\n"),
        r"--target_epsilon -1.0: must be a positive finite number",
    ),
    # command line
    Case(
        "cli-stage", _parse("--stages", "teacher,train"), r"--stages: unknown stage\(s\) train; choose from"
    ),
    Case(
        "cli-method",
        _parse("--methods", "distildp,magic"),
        r"--methods: unknown method\(s\) magic; choose from",
    ),
    Case(
        "cli-epsilon",
        _parse("--target_epsilon", "0"),
        r"--target_epsilon 0.0: must be a positive finite number \(e.g. 2.0\)",
    ),
    Case(
        "cli-delta", _parse("--target_delta", "2"), r"--target_delta 2.0: must lie strictly between 0 and 1"
    ),
    Case(
        "cli-clip",
        _parse("--per_sample_max_grad_norm", "-1"),
        r"--per_sample_max_grad_norm -1.0: must be > 0 \(the per-sample clip norm C, e.g. 1.0\)",
    ),
    Case(  # on the command line the parser refuses it (test_the_command_line_prints_the_message_and_exits_2)
        "recipe-accountant",
        _with_recipe("accountant: moments\n"),
        r"--accountant 'moments': choose prv, rdp or gdp",
    ),
    Case(
        "cli-num-samples", _parse("--num_synthetic_samples", "0"), r"--num_synthetic_samples 0: must be > 0"
    ),
    Case(
        "cli-kd-lambda", _parse("--kd_lambda", "1.5"), r"--kd_lambda 1.5: must lie in \[0, 1\] \(paper: 0.4\)"
    ),
    Case(
        "cli-train-dropout",
        _parse("--train_dropout", "1"),
        r"--train_dropout '1': give a probability in \[0, 1\) or 'keep'",
    ),
    Case(
        "recipe-train-dropout",
        _with_recipe("train_dropout: half\n"),
        r"--train_dropout 'half': give a probability in \[0, 1\) or 'keep'",
    ),
    Case(
        "cli-temperature",
        _parse("--kd_temperature", "0"),
        r"--kd_temperature 0.0: must be > 0 \(paper: 1.0\)",
    ),
    Case(
        "recipe-code-distribution",
        _with_recipe("control_code_distribution: private\n"),
        r"--control_code_distribution 'private': choose dp, uniform or exact",
    ),
    Case("cli-epochs", _parse("--teacher_epochs", "0"), r"--teacher_epochs 0.0: must be > 0"),
    Case("cli-max-length", _parse("--max_length", "4"), r"--max_length 4: too short .*use >= 32"),
    Case(
        "cli-canary-candidates",
        _parse("--audit_canary_candidates", "5"),
        r"--audit_canary_candidates 5: must be >= 100",
    ),
    Case("cli-cpu-threads", _parse("--cpu_threads", "0"), r"--cpu_threads 0: must be >= 1"),
    Case("cli-cpu-workers", _parse("--cpu_workers", "0"), r"--cpu_workers 0: must be >= 1"),
    Case(
        "cli-hub-id",
        _parse("--push_student", "not a repo"),
        r"--push_student 'not a repo': repo_id='not a repo' is not a valid",
    ),
    Case(
        "cli-dp-teacher-missing",
        _parse("--dp_teacher", "./no/such/teacher"),
        r"--dp_teacher './no/such/teacher': no such folder, and not a Hub id",
    ),
    Case(
        "cli-push-what-was-given",
        _parse("--dp_teacher", "me/teacher", "--push_teacher", "me/t2"),
        r"--push_teacher with --dp_teacher: this run did not make that artifact",
    ),
    # the pipeline, on a dataset or models that cannot work (caught before anything is written)
    Case(
        "dataset-missing",
        lambda tmp: _pipeline(tmp, "--dataset", str(tmp / "nope.csv")),
        r"dataset='.*nope.csv': no such file or folder, and not a known name \(demo, ",
        FileNotFoundError,
    ),
    Case(
        "dataset-no-text-column",
        _pipeline_on_csv(header="category,stars,body"),
        r"has no 'text' column .* pass text_column \(--text_column\) naming the column",
    ),
    Case(
        "dataset-no-control-column",
        _pipeline_on_csv(controls="city,stars"),
        r"lacks column\(s\) \['city'\]; its columns are .* Pass text_column / control_columns that exist",
    ),
    Case(
        "dataset-empty",
        _pipeline_on_csv(rows=0),
        r"is empty \(a split file has no rows.*add rows or remove that file",
    ),
    Case(
        "model-missing",
        _pipeline_on_csv("--teacher_model", lambda tmp: str(tmp / "no_model")),
        r"--teacher_model .*no_model': no such folder; give a local model folder or a Hub id",
        FileNotFoundError,
    ),
    Case(
        "model-not-causal",
        _pipeline_on_csv(
            "--teacher_model",
            _tiny_model_folder,
            "--student_model",
            lambda tmp: _tiny_model_folder(tmp, causal=False),
        ),
        r"--student_model .* is not a causal language model \(a DistilBertConfig.*decoder-only",
    ),
    # the Python API
    Case(
        "dpconfig-epsilon",
        lambda tmp: DPConfig(output_dir=str(tmp / "o"), target_epsilon=-1.0),
        r"target_epsilon=-1.0 must be a positive finite number \(e.g. 2.0\)",
    ),
    Case(
        "dpconfig-neither",
        lambda tmp: DPConfig(output_dir=str(tmp / "o")),
        r"Give exactly one of target_epsilon .* or noise_multiplier",
    ),
    Case(
        "dpconfig-deepspeed-by-accelerate",
        lambda tmp: _under_accelerate_deepspeed(
            lambda: DPConfig(output_dir=str(tmp / "o"), target_epsilon=2.0, report_to=[])
        ),
        r"DeepSpeed is not supported for DP-SGD .* use DDP through accelerate for the DP stages",
    ),
    Case(
        "dpconfig-delta",
        lambda tmp: DPConfig(output_dir=str(tmp / "o"), target_epsilon=2.0, target_delta=1.5),
        r"target_delta=1.5 must lie strictly between 0 and 1",
    ),
    Case(
        "dpconfig-clip",
        lambda tmp: DPConfig(output_dir=str(tmp / "o"), target_epsilon=2.0, per_sample_max_grad_norm=0.0),
        r"per_sample_max_grad_norm=0.0 must be > 0",
    ),
    Case(
        "dpconfig-accountant",
        lambda tmp: DPConfig(output_dir=str(tmp / "o"), target_epsilon=2.0, accountant="moments"),
        r"accountant='moments' is not supported; use one of",
    ),
    Case("dptrainer-empty-dataset", _dp_trainer(_lm_dataset(0)), r"train_dataset is empty"),
    Case(
        "dptrainer-batch-above-dataset",
        _dp_trainer(_lm_dataset(4), batch=16),
        r"larger than the dataset .* lower per_device_train_batch_size",
    ),
    Case(
        "distill-alphas-zero",
        lambda tmp: DistillationConfig(output_dir=str(tmp / "o"), alpha_ce=0, alpha_kd=0, alpha_hidden=0),
        r"all 0: nothing to train; e.g. alpha_ce=0.6, alpha_kd=0.4",
    ),
    Case(
        "distill-alpha-negative",
        lambda tmp: DistillationConfig(output_dir=str(tmp / "o"), alpha_ce=-1),
        r"weights must be >= 0",
    ),
    Case(
        "distill-temperature",
        lambda tmp: DistillationConfig(output_dir=str(tmp / "o"), temperature=0.0),
        r"temperature=0.0 must be > 0 \(paper: 1.0\)",
    ),
    Case(
        "distill-kd-loss",
        lambda tmp: DistillationConfig(output_dir=str(tmp / "o"), kd_loss="kl"),
        r"kd_loss='kl' is not supported; use one of",
    ),
    Case("distill-no-teacher", _distillation_trainer(teacher=False), r"needs teacher_model="),
    Case(
        "distill-vocab-mismatch",
        _distillation_trainer(student_vocab=80),
        r"vocabularies differ .* Use a student built for the teacher's tokenizer",
    ),
    Case(
        "distill-layer-map",
        _distillation_trainer(layer_map="0:9"),
        r"layer_map pair \(0, 9\) is out of range",
    ),
    Case(
        "generation-no-codes",
        _generate(probs=(0.0,)),
        r"probabilities must be finite, non-negative and not all zero",
    ),
    Case("generation-num-samples", _generate(num_samples=0), r"num_samples=0 must be > 0"),
    Case(
        "ledger-missing",
        lambda tmp: PrivacyLedger.load(tmp / "no_teacher"),
        r"No privacy ledger at .* give a folder written by DPTrainer",
        FileNotFoundError,
    ),
    Case(
        "hub-id",
        lambda tmp: __import__("hf_dpkd.hub", fromlist=["x"]).push_folder_to_hub(tmp, "a/b/c"),
        r"repo_id='a/b/c' is not a valid",
    ),
]


def _files(tmp: Path) -> set[str]:
    return {str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file()}


def _assert_nothing_half_written(tmp: Path, before: set[str]) -> None:
    new = _files(tmp) - before
    leftovers = [f for f in new if Path(f).name not in RUN_DIR_BOOKKEEPING]
    assert not leftovers, f"a failed call left files behind: {sorted(leftovers)[:10]}"


def test_the_table_is_large_and_unique():
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_is_named_and_nothing_is_half_written(case: Case, tmp_path: Path):
    before = _files(tmp_path)
    # inputs the case builds itself (recipes, csv files, model folders) are part of "before"
    with pytest.raises(case.error) as raised:
        case.run(tmp_path)
    assert re.search(case.match, str(raised.value)), f"{case.id}: message {str(raised.value)!r}"
    inputs = {f for f in _files(tmp_path) if f.startswith(("recipe.yaml", "private/", "causal/", "masked/"))}
    _assert_nothing_half_written(tmp_path, before | inputs)


def test_a_run_that_failed_on_bad_input_reruns_with_the_fix(tmp_path):
    """The failed run's settings file does not make the corrected run look like a different run."""
    with pytest.raises(FileNotFoundError):
        _pipeline(tmp_path, "--dataset", str(tmp_path / "typo"), "--control_columns", "category,stars")
    good = _csv_dataset(tmp_path)
    model = _tiny_model_folder(tmp_path)
    _pipeline(
        tmp_path, "--dataset", good, "--control_columns", "category,stars",
        "--teacher_model", model, "--student_model", model,
    )  # fmt: skip
    assert (tmp_path / "run" / "stages" / "data.json").is_file()


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["--seed", "abc"], r"argument --seed: invalid int value: 'abc'"),
        (["--target_epsilon", "-3"], r"error: --target_epsilon -3.0: must be a positive finite number"),
        (["--config", "missing.yaml"], r"error: --config missing.yaml: no such recipe file"),
        (
            ["--accountant", "moments"],
            r"argument --accountant: invalid choice: 'moments' \(choose from '?prv'?, '?rdp'?, '?gdp'?\)",
        ),
    ],
)
def test_the_command_line_prints_the_message_and_exits_2(argv, expected, tmp_path, capsys):
    main = _main()
    try:
        code = main(["--run_dir", str(tmp_path / "run"), *argv])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    assert code == 2
    assert re.search(expected, capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


def test_a_full_disk_during_generation_keeps_finished_work_and_says_what_to_do(tmp_path, monkeypatch):
    with pytest.raises(OSError) as raised:
        _enospc_generation(tmp_path, monkeypatch)
    assert raised.value.errno == errno.ENOSPC
    assert re.search(
        r"No space left on the device of .*synthetic.*free some space .* re-run", str(raised.value)
    )
    assert not [p for p in (tmp_path / "synthetic").rglob("*") if p.name.endswith(".tmp")]
    assert not list((tmp_path / "synthetic").rglob("*.jsonl")), "no shard may be half-written"
    monkeypatch.undo()
    dataset = _generate(num_samples=6)(tmp_path)  # space freed: the same call finishes
    assert len(dataset) == 6


def test_a_full_disk_when_saving_the_ledger_leaves_the_previous_one(tmp_path, monkeypatch):
    ledger = PrivacyLedger(accountant="prv", delta=1e-5)
    ledger.record("dp_sgd", mechanism="subsampled_gaussian", noise_multiplier=1.0, sample_rate=0.01, steps=10)
    ledger.save(tmp_path)
    saved = (tmp_path / "privacy_ledger.json").read_text()
    ledger.record("histogram", mechanism="gaussian", noise_multiplier=10.0, sample_rate=1.0, steps=1)
    _fill_disk_after(monkeypatch, writes=0)
    with pytest.raises(OSError, match=r"No space left on the device of .* Nothing was half-written"):
        ledger.save(tmp_path)
    assert (tmp_path / "privacy_ledger.json").read_text() == saved
    assert sorted(p.name for p in tmp_path.iterdir()) == ["privacy_ledger.json"]


# -- inputs that look bad but are handled ------------------------------------------------------------
def test_a_tokenizer_without_pad_token_gets_one(tmp_path):
    from hf_dpkd.pipeline import ensure_pad_token, load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(_tiny_model_folder(tmp_path))
    tokenizer.pad_token = None
    rows = model.get_input_embeddings().weight.shape[0]
    ensure_pad_token(model, tokenizer)
    assert tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert model.get_input_embeddings().weight.shape[0] >= max(rows, len(tokenizer))


def test_texts_longer_than_the_context_are_truncated_and_counted(tmp_path, caplog):
    from hf_dpkd.pipeline import _tokenize_for_lm, load_model_and_tokenizer
    from hf_dpkd.synthetic import ControlCodeFormat

    _, tokenizer = load_model_and_tokenizer(_tiny_model_folder(tmp_path))
    fmt = ControlCodeFormat(fields=[("stars", "Review Stars")])
    texts = ["short text", "a tiny public text " * 40, "another long one " * 40]
    data = Dataset.from_dict({"stars": ["1", "2", "3"], "text": texts})
    with caplog.at_level("WARNING"):
        tokenized = _tokenize_for_lm(data, tokenizer, fmt, max_length=32)
    assert [len(ids) for ids in tokenized["input_ids"]] == [23, 32, 32]
    assert re.search(r"2 of 3 texts .*truncated", caplog.text), caplog.text
