"""Cards and pushes against a loopback Hub, with the real huggingface_hub, transformers and datasets clients.

Loading happens in fresh subprocesses that never import hf_dpkd: what this package pushes must load with
plain ``from_pretrained`` / ``load_dataset``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from hf_dpkd.hub import (
    PRIVATE_DATA_MARKER,
    HubPushError,
    card_epsilon,
    find_private_markers,
    mark_private_data,
    privacy_statement,
    push_folder_to_hub,
    write_dataset_card,
    write_model_card,
)
from hf_dpkd.privacy.accounting import PrivacyLedger
from tests.hub_server import HubServer, hub_fixture  # noqa: F401 - `hub_fixture` registers the `hub` fixture

SUBPROCESS_TIMEOUT_S = 120


def _ledger() -> PrivacyLedger:
    ledger = PrivacyLedger(accountant="rdp", delta=1e-6)
    ledger.record(
        "control_code_histogram", noise_multiplier=8.0, sample_rate=1.0, steps=1, mechanism="gaussian"
    )
    ledger.record("teacher_dp_sgd", noise_multiplier=0.9, sample_rate=0.02, steps=300, max_grad_norm=1.0)
    return ledger


def _read_front_matter(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def _snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    return {
        str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _tiny_gpt2(folder: Path):
    """A 2-layer GPT-2 and a byte-level BPE tokenizer trained here, saved with save_pretrained."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    corpus = [
        "Business Category: Restaurants\tReview Stars: 5.0\n\nGreat food and friendly staff.",
        "Business Category: Shopping\tReview Stars: 2.0\n\nThe store was closed twice.",
        "Human Necessities\n\nA method for cooling an engine with recycled water.",
    ] * 4
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    raw.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, eos_token="<|endoftext|>", bos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = GPT2LMHeadModel(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model, tokenizer


def _run_fresh_python(code: str, cwd: Path) -> dict:
    """Run `code` in a new interpreter (environment: the loopback Hub's) and return the JSON it prints last."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
    )
    assert proc.returncode == 0, f"subprocess failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------
# Cards
# ---------------------------------------------------------------------------------------------------
def test_privacy_statement_recomputes_epsilon_and_lists_releases_and_exclusions():
    ledger = _ledger()
    text = privacy_statement(ledger)
    assert repr(ledger.epsilon()) in text
    assert repr(ledger.delta) in text
    assert "RDP" in text and "Poisson" in text
    for release in ledger.releases:
        assert f"| {release.name} | {release.mechanism} | {release.noise_multiplier:.6g} |" in text
    assert "| teacher_dp_sgd | subsampled_gaussian | 0.9 | 0.02 | 300 | max_grad_norm=1.0 |" in text
    for excluded in ("tokenizer", "Hyperparameter search", "Evaluation numbers", "control-code domain"):
        assert excluded in text
    assert "one training example (one text)" in text
    assert "one user" in privacy_statement(ledger, privacy_unit="one user")

    # The statement follows the ledger, not a stored target: more steps, larger epsilon.
    ledger.record("teacher_dp_sgd", noise_multiplier=0.9, sample_rate=0.02, steps=3000)
    assert repr(ledger.epsilon()) in privacy_statement(ledger)


def test_privacy_statement_without_ledger_is_loud_and_bad_ledgers_fail():
    text = privacy_statement(None)
    assert "NOT DIFFERENTIALLY PRIVATE" in text
    assert "ε" not in text
    with pytest.raises(ValueError, match=r"ledger.delta is None.*PrivacyLedger\(delta="):
        privacy_statement(PrivacyLedger(accountant="rdp"))
    with pytest.raises(ValueError, match="privacy_unit=' ' must name"):
        privacy_statement(_ledger(), privacy_unit=" ")
    assert "no release over private data" in privacy_statement(PrivacyLedger(accountant="rdp", delta=1e-6))


def test_model_card_metadata_statement_and_usage(tmp_path):
    ledger = _ledger()
    path = write_model_card(
        tmp_path,
        kind="student",
        base_model="distilbert/distilgpt2",
        ledger=ledger,
        method={"name": "DistilDP", "alpha_kd": 0.4, "temperature": 1.0, "layer_map": [0, 2]},
        eval_results={"perplexity": {"value": 44.15, "dataset": "yelp-private-test", "split": "test"}},
        dataset_name="me/synthetic-yelp",
        repo_id="me/dpkd-student",
    )
    assert path == tmp_path / "README.md"
    assert card_epsilon(path) == ledger.epsilon()
    meta = _read_front_matter(path)
    assert meta["base_model"] == "distilbert/distilgpt2"
    assert meta["datasets"] == ["me/synthetic-yelp"]
    assert {"differential-privacy", "knowledge-distillation", "synthetic-data"} <= set(meta["tags"])
    assert meta["differential_privacy"]["delta"] == 1e-6
    assert meta["differential_privacy"]["releases"] == ["control_code_histogram", "teacher_dp_sgd"]
    result = meta["model-index"][0]["results"][0]
    assert result["metrics"][0] == {"type": "perplexity", "value": 44.15}
    assert result["dataset"]["name"] == "yelp-private-test"
    text = path.read_text(encoding="utf-8")
    assert "inherited by post-processing" in text
    assert 'AutoModelForCausalLM.from_pretrained("me/dpkd-student")' in text
    assert 'AutoTokenizer.from_pretrained("me/dpkd-student")' in text
    assert "import hf_dpkd" not in text and "from hf_dpkd" not in text
    assert "| alpha_kd | `0.4` |" in text and "| layer_map | `[0, 2]` |" in text
    assert "not differentially private" not in text.lower()


def test_model_card_teacher_without_ledger_and_bad_arguments(tmp_path):
    path = write_model_card(
        tmp_path,
        kind="teacher",
        base_model="/local/ckpt",
        ledger=None,
        method={},
        eval_results={"perplexity": 50},
    )
    meta = _read_front_matter(path)
    assert meta["model-index"][0]["results"][0]["dataset"]["name"] == "private-test-split"
    assert "base_model" not in meta  # a local path is not a Hub id; it is named in the text only
    assert "differential-privacy" not in meta["tags"]
    assert card_epsilon(path) is None
    text = path.read_text(encoding="utf-8")
    assert "NOT DIFFERENTIALLY PRIVATE" in text and "`/local/ckpt`" in text
    with pytest.raises(ValueError, match="kind='teacherx' is not supported; use one of teacher, student"):
        write_model_card(tmp_path, kind="teacherx", base_model=None, ledger=None, method={})
    with pytest.raises(ValueError, match=r"method\['student_data'\]='public' must be"):
        write_model_card(
            tmp_path, kind="student", base_model=None, ledger=None, method={"student_data": "public"}
        )
    with pytest.raises(ValueError, match=r"eval_results\['perplexity'\].*needs a 'value'"):
        write_model_card(
            tmp_path, kind="teacher", base_model=None, ledger=None, method={}, eval_results={"perplexity": {}}
        )


def test_dpkd_student_card_does_not_claim_post_processing(tmp_path):
    path = write_model_card(
        tmp_path, kind="student", base_model=None, ledger=_ledger(), method={"student_data": "private"}
    )
    text = path.read_text(encoding="utf-8")
    assert "post-processing" not in text.split("## Privacy")[0]
    assert "synthetic-data" not in _read_front_matter(path)["tags"]


def test_student_card_without_ledger_claims_neither_dp_sgd_nor_post_processing(tmp_path):
    for data in ("private", "synthetic"):
        path = write_model_card(
            tmp_path, kind="student", base_model=None, ledger=None, method={"student_data": data}
        )
        what = path.read_text(encoding="utf-8").split("## Privacy")[0]
        assert "trained WITHOUT differential privacy" in what, data
        assert "DP-SGD" not in what and "post-processing" not in what, data


def test_dataset_card_and_card_epsilon_detects_tampering(tmp_path):
    ledger = _ledger()
    path = write_dataset_card(
        tmp_path,
        source_model="me/dp-teacher",
        ledger=ledger,
        control_code_mode="dp_histogram",
        generation_config={"top_k": 50, "top_p": 0.9, "max_length": 128},
        num_samples=2500,
        control_fields=["Business Category", "Review Stars"],
        repo_id="me/synth",
    )
    assert card_epsilon(path) == ledger.epsilon()
    meta = _read_front_matter(path)
    assert meta["size_categories"] == ["1K<n<10K"]
    assert "synthetic-data" in meta["tags"]
    text = path.read_text(encoding="utf-8")
    assert 'load_dataset("me/synth", split="train")' in text
    assert "differentially private histogram" in text and "`Review Stars`" in text
    assert "| top_p | `0.9` |" in text

    leaky = write_dataset_card(
        tmp_path / "leaky",
        source_model="t",
        ledger=ledger,
        control_code_mode="exact",
        generation_config={},
        num_samples=5,
        control_fields=["c"],
    )
    assert "NOT covered" in leaky.read_text(encoding="utf-8").split("## Privacy")[0]
    with pytest.raises(ValueError, match="num_samples=0 must be a positive int"):
        write_dataset_card(
            tmp_path, source_model="t", ledger=None, control_code_mode="public", generation_config={},
            num_samples=0, control_fields=[],
        )  # fmt: skip

    teacher_only = PrivacyLedger(accountant="rdp", delta=1e-6)
    teacher_only.record("teacher_dp_sgd", noise_multiplier=0.9, sample_rate=0.02, steps=300)
    with pytest.raises(
        ValueError, match="control_code_mode='dp_histogram' but the ledger records no histogram"
    ):
        write_dataset_card(
            tmp_path, source_model="t", ledger=teacher_only, control_code_mode="dp_histogram",
            generation_config={}, num_samples=3, control_fields=["c"],
        )  # fmt: skip

    tampered = path.read_text(encoding="utf-8").replace(
        f"| epsilon (ε) | `{ledger.epsilon()!r}`", "| epsilon (ε) | `0.1`"
    )
    path.write_text(tampered, encoding="utf-8")
    with pytest.raises(ValueError, match="differs from the body's 0.1"):
        card_epsilon(path)
    (tmp_path / "plain.md").write_text("# a model\n", encoding="utf-8")
    with pytest.raises(ValueError, match="states no privacy guarantee"):
        card_epsilon(tmp_path / "plain.md")


# ---------------------------------------------------------------------------------------------------
# Pushing and loading through the loopback Hub
# ---------------------------------------------------------------------------------------------------
def test_push_model_and_load_with_plain_transformers(hub: HubServer, tmp_path):
    folder = tmp_path / "teacher"
    model, tokenizer = _tiny_gpt2(folder)
    ledger = _ledger()
    write_model_card(
        folder,
        kind="teacher",
        base_model="openai-community/gpt2",
        ledger=ledger,
        method={"name": "DistilDP", "learning_rate": 1e-4},
        eval_results={"perplexity": 321.0},
        repo_id="hf-dpkd-tester/tiny-dp-teacher",
    )
    before = _snapshot(folder)
    url = push_folder_to_hub(folder, "hf-dpkd-tester/tiny-dp-teacher")
    assert url == f"{hub.url}/hf-dpkd-tester/tiny-dp-teacher"
    assert _snapshot(folder) == before

    remote = hub.files("hf-dpkd-tester/tiny-dp-teacher")
    for name in before:
        assert remote[name] == (folder / name).read_bytes(), name
    assert hub.lfs_files("hf-dpkd-tester/tiny-dp-teacher") == {"model.safetensors"}
    assert hub.count("lfs_upload", status=200) == 1 and hub.count("lfs_verify", status=200) == 1
    (tmp_path / "remote_README.md").write_bytes(remote["README.md"])
    assert card_epsilon(tmp_path / "remote_README.md") == ledger.epsilon()

    text = "Business Category: Restaurants\tReview Stars: 5.0\n\nGreat food"
    out = _run_fresh_python(
        f"""
        import json, sys
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        model = AutoModelForCausalLM.from_pretrained("hf-dpkd-tester/tiny-dp-teacher")
        tokenizer = AutoTokenizer.from_pretrained("hf-dpkd-tester/tiny-dp-teacher")
        torch.save(model.state_dict(), "loaded_state.pt")
        print(json.dumps({{"ids": tokenizer({text!r})["input_ids"], "hf_dpkd": "hf_dpkd" in sys.modules,
                          "cls": type(model).__name__}}))
        """,
        cwd=tmp_path,
    )
    assert out["hf_dpkd"] is False
    assert out["cls"] == "GPT2LMHeadModel"
    assert out["ids"] == tokenizer(text)["input_ids"]
    loaded = torch.load(tmp_path / "loaded_state.pt")
    expected = model.state_dict()
    assert loaded.keys() == expected.keys()
    for key, tensor in expected.items():
        assert torch.equal(loaded[key], tensor), key
    # config, weights and tokenizer files came from the loopback Hub
    assert hub.count("resolve", status=200) >= 3


def test_push_synthetic_dataset_and_load_with_plain_datasets(hub: HubServer, tmp_path):
    from datasets import Dataset

    folder = tmp_path / "synthetic"
    rows = {
        "text": [f"synthetic review number {i} with some words" for i in range(40)],
        "Business Category": ["Restaurants", "Shopping"] * 20,
        "Review Stars": [float(1 + i % 5) for i in range(40)],
    }
    (folder / "data").mkdir(parents=True)
    Dataset.from_dict(rows).to_parquet(folder / "data" / "train-00000-of-00001.parquet")
    ledger = _ledger()
    write_dataset_card(
        folder,
        source_model="hf-dpkd-tester/tiny-dp-teacher",
        ledger=ledger,
        control_code_mode="dp_histogram",
        generation_config={"top_k": 50, "top_p": 0.9, "temperature": 1.0},
        num_samples=40,
        control_fields=["Business Category", "Review Stars"],
        repo_id="hf-dpkd-tester/tiny-synthetic",
    )
    push_folder_to_hub(folder, "hf-dpkd-tester/tiny-synthetic", repo_type="dataset")
    assert hub.lfs_files("hf-dpkd-tester/tiny-synthetic", "dataset") == {"data/train-00000-of-00001.parquet"}

    out = _run_fresh_python(
        """
        import json, sys
        from datasets import load_dataset
        ds = load_dataset("hf-dpkd-tester/tiny-synthetic", split="train")
        print(json.dumps({"rows": ds.to_dict(), "hf_dpkd": "hf_dpkd" in sys.modules}))
        """,
        cwd=tmp_path,
    )
    assert out["hf_dpkd"] is False
    assert out["rows"] == rows


def test_failed_push_keeps_local_files_and_a_re_push_completes(hub: HubServer, tmp_path):
    folder = tmp_path / "artifact"
    folder.mkdir()
    (folder / "weights.safetensors").write_bytes(os.urandom(4096))
    (folder / "config.json").write_text('{"a": 1}\n', encoding="utf-8")
    write_model_card(folder, kind="teacher", base_model=None, ledger=_ledger(), method={})
    before = _snapshot(folder)

    hub.fail_next("commit")  # the LFS upload succeeds, then the commit answers HTTP 500
    with pytest.raises(
        HubPushError, match=r"(?s)'me/failing'.*creating the commit.*files in .* are intact.*Re-run"
    ):
        push_folder_to_hub(folder, "me/failing")
    assert _snapshot(folder) == before
    assert hub.count("commit", status=500) == 1
    assert set(hub.files("me/failing")) == {".gitattributes"}  # nothing half-committed

    push_folder_to_hub(folder, "me/failing")
    remote = hub.files("me/failing")
    assert {name: remote[name] for name in before} == {name: (folder / name).read_bytes() for name in before}
    assert hub.count("lfs_upload", status=200) == 1  # the re-push reused the already uploaded LFS object
    assert _snapshot(folder) == before

    hub.fail_next("create_repo")
    with pytest.raises(HubPushError, match="failed while creating the repository"):
        push_folder_to_hub(folder, "me/another")


@pytest.mark.parametrize(
    ("kind", "stage"),
    [
        ("preupload", "uploading the files"),
        ("lfs_batch", "uploading the files"),
        ("lfs_upload", "uploading the files"),
        ("validate_yaml", "validating README.md and creating the commit"),
    ],
)
def test_failed_push_names_the_step_that_was_running(hub: HubServer, tmp_path, kind, stage):
    folder = tmp_path / "artifact"
    folder.mkdir()
    (folder / "weights.safetensors").write_bytes(os.urandom(4096))
    write_model_card(folder, kind="teacher", base_model=None, ledger=_ledger(), method={})
    hub.fail_next(kind, status=403)  # a 4xx: the client does not retry it
    with pytest.raises(HubPushError, match=f"failed while {stage}") as failed:
        push_folder_to_hub(folder, "me/steps")
    assert failed.value.stage.startswith(stage) and failed.value.repo_id == "me/steps"
    assert set(hub.files("me/steps")) == {".gitattributes"}  # nothing committed


@pytest.mark.parametrize(
    "bad", ["no-namespace", "me/a/b", "me/", "/name", "me/na me", "me/-x", "me/a--b", "me/x.git", 7]
)
def test_malformed_repo_id_is_refused_before_any_request(hub: HubServer, tmp_path, bad):
    (tmp_path / "f.txt").write_text("x", encoding="utf-8")
    with pytest.raises(
        ValueError, match=r"repo_id=.* is not a valid Hub repository id: expected 'namespace/name'"
    ):
        push_folder_to_hub(tmp_path, bad)
    assert hub.requests == []


def test_bad_folder_and_repo_type_are_refused(hub: HubServer, tmp_path):
    with pytest.raises(FileNotFoundError, match="folder=.*missing' does not exist"):
        push_folder_to_hub(tmp_path / "missing", "me/x")
    with pytest.raises(ValueError, match="repo_type='space' is not supported; use one of model, dataset"):
        push_folder_to_hub(tmp_path, "me/x", repo_type="space")
    with pytest.raises(ValueError, match="holds no files; nothing to push"):
        push_folder_to_hub(tmp_path, "me/x")
    assert hub.requests == []


def test_folder_with_private_data_marker_is_refused(hub: HubServer, tmp_path):
    folder = tmp_path / "run"
    (folder / "teacher").mkdir(parents=True)
    (folder / "teacher" / "config.json").write_text("{}", encoding="utf-8")
    marker = mark_private_data(folder / "private" / "train")
    (folder / "private" / "train" / "records.jsonl").write_text('{"text": "secret"}\n', encoding="utf-8")
    assert find_private_markers(folder) == [marker]
    assert marker.name == PRIVATE_DATA_MARKER
    with pytest.raises(
        PermissionError, match=rf"contains raw private data \(marker file .*{PRIVATE_DATA_MARKER}"
    ):
        push_folder_to_hub(folder, "me/run")
    # allow_patterns do not get around the refusal: the marker anywhere in the folder blocks the push.
    with pytest.raises(PermissionError, match="will not be pushed"):
        push_folder_to_hub(folder, "me/run", allow_patterns=["teacher/*"])
    assert hub.requests == []
    assert (folder / "private" / "train" / "records.jsonl").exists()
    push_folder_to_hub(folder / "teacher", "me/run")  # the artifact folder alone is fine
    assert set(hub.files("me/run")) == {".gitattributes", "config.json"}
