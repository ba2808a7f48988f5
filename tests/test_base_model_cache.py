"""Shipped and cached demo base models: reused only for the same fingerprint, equal to a pretraining here."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from hf_dpkd.data import base_model_cache, models
from hf_dpkd.data.demo import make_demo_dataset
from hf_dpkd.data.models import COMPLETE, KINDS, build_demo_models, train_demo_tokenizer
from hf_dpkd.synthetic.control_codes import ControlCodeFormat

TINY = dict(pretrain_steps=2, max_length=32, batch_size=4)


@pytest.fixture(scope="module")
def public():
    demo = make_demo_dataset(num_train=200, num_validation=50, num_test=50, num_public=200, seed=0)
    texts = demo.public_texts(ControlCodeFormat(fields=tuple(demo.control_fields.items())))
    return texts, train_demo_tokenizer(texts, vocab_size=400)


def _weights(folder):
    model = AutoModelForCausalLM.from_pretrained(folder)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _no_pretraining(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("pretrained although a finished base model with the same fingerprint exists")

    monkeypatch.setattr(models, "pretrain_on_public", refuse)


def test_shipped_base_models_are_those_of_the_default_demo():
    """The default demo finds both base models in the package: their fingerprints are the defaults' (else
    rebuild them with `python -m hf_dpkd.pipeline.ship_base_models`), and they load as plain GPT-2 models."""
    from hf_dpkd.pipeline.ship_base_models import default_fingerprints, main

    wanted = default_fingerprints()
    for kind, fingerprint in wanted.items():
        folder = base_model_cache.SHIPPED / kind
        assert base_model_cache.fingerprint_of(folder) == fingerprint, kind
        assert base_model_cache.find(fingerprint) == (folder, "shipped with hf_dpkd")
        record = json.loads((folder / COMPLETE).read_text())
        model = AutoModelForCausalLM.from_pretrained(folder)
        config = record["settings"]["config"]
        assert config == KINDS[kind] and record["settings"]["pretrain_steps"] == 200
        assert (model.config.n_layer, model.config.n_embd) == (config["n_layer"], config["n_embd"])
    assert main(["--check"]) == 0


def test_second_build_copies_the_cached_model_instead_of_pretraining(public, tmp_path, monkeypatch):
    texts, tok = public
    monkeypatch.setenv("HF_DPKD_CACHE", str(tmp_path / "cache"))
    first = build_demo_models(tmp_path / "a", tok, texts, **TINY)
    for folder in first.values():
        fingerprint = base_model_cache.fingerprint_of(folder)
        assert (
            base_model_cache.fingerprint_of(tmp_path / "cache" / "base_models" / fingerprint) == fingerprint
        )
    _no_pretraining(monkeypatch)
    second = build_demo_models(tmp_path / "b", tok, texts, **TINY)
    for kind in KINDS:
        record = json.loads((second[kind] / COMPLETE).read_text())
        assert record["copied_from"] == "the user cache"
        assert record["fingerprint"] == base_model_cache.fingerprint_of(first[kind])
        ours, reference = _weights(second[kind]), _weights(first[kind])
        assert all(torch.equal(ours[k], reference[k]) for k in reference), kind
        assert (second[kind] / "tokenizer.json").read_text() == (first[kind] / "tokenizer.json").read_text()
    # other settings are another fingerprint: pretrained, never a near match
    with pytest.raises(AssertionError, match="pretrained although"):
        build_demo_models(tmp_path / "c", tok, texts, **{**TINY, "pretrain_steps": 3})


def test_cache_off_or_partial_entries_mean_pretraining(public, tmp_path, monkeypatch):
    texts, tok = public
    monkeypatch.setenv("HF_DPKD_CACHE", str(tmp_path / "cache"))
    first = build_demo_models(tmp_path / "a", tok, texts, **TINY)
    entry = tmp_path / "cache" / "base_models" / base_model_cache.fingerprint_of(first["teacher"])
    (entry / COMPLETE).unlink()  # as if killed while copying into the cache
    monkeypatch.setattr(base_model_cache, "SHIPPED", tmp_path / "nothing_shipped")
    _no_pretraining(monkeypatch)
    with pytest.raises(AssertionError, match="pretrained although"):
        build_demo_models(tmp_path / "b", tok, texts, **TINY)
    monkeypatch.setenv("HF_DPKD_CACHE", "off")
    assert base_model_cache.find(base_model_cache.fingerprint_of(first["student"])) is None


def test_a_shipped_model_is_found_before_the_cache(public, tmp_path, monkeypatch):
    texts, tok = public
    monkeypatch.setenv("HF_DPKD_CACHE", "off")
    built = build_demo_models(tmp_path / "a", tok, texts, **TINY)
    shipped = tmp_path / "shipped"
    for kind, folder in built.items():
        base_model_cache.copy_finished(folder, shipped / kind, "shipped with hf_dpkd")
    monkeypatch.setattr(base_model_cache, "SHIPPED", shipped)
    monkeypatch.setenv("HF_DPKD_CACHE", str(tmp_path / "cache"))
    _no_pretraining(monkeypatch)
    again = build_demo_models(tmp_path / "b", tok, texts, **TINY)
    for kind in KINDS:
        assert json.loads((again[kind] / COMPLETE).read_text())["copied_from"] == "shipped with hf_dpkd"
    assert not (tmp_path / "cache" / "base_models").exists()  # nothing pretrained, nothing cached
