"""Tokenizer and small GPT-2 base models for the embedded demo, trained on the PUBLIC split only.

Like the paper (which starts from pretrained GPT-2), the demo pipeline starts from pretrained models:
a teacher and a smaller student (different hidden size on purpose, so hidden-state distillation needs a
projection) briefly pretrained on the public split with the plain HF ``Trainer``.

Why public only: the tokenizer and the base models are released with every model and are NOT covered by
the DP guarantee. A BPE vocabulary learnt on private text would itself reveal private words (a rare name
becoming a single token tells that it was frequent in the data). Private text still encodes, byte by byte.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    DataCollatorForLanguageModeling,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    Trainer,
    TrainingArguments,
)

from hf_dpkd._io import atomic_write_text
from hf_dpkd.data import base_model_cache
from hf_dpkd.data.base_model_cache import COMPLETE

logger = logging.getLogger(__name__)

EOS, PAD = "<|endoftext|>", "<|pad|>"
N_POSITIONS = 128

TEACHER_CONFIG: dict[str, int] = dict(n_layer=4, n_embd=128, n_head=4, n_positions=N_POSITIONS)
STUDENT_CONFIG: dict[str, int] = dict(n_layer=2, n_embd=64, n_head=2, n_positions=N_POSITIONS)
KINDS = {"teacher": TEACHER_CONFIG, "student": STUDENT_CONFIG}


def train_demo_tokenizer(public_texts: list[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Byte-level BPE learnt from `public_texts` only, with an eos token and a distinct pad token.

    Never pass private text here: the vocabulary is released with every model and is not covered by the
    DP guarantee (see the module docstring).
    """
    texts = [t for t in public_texts if t]
    if not texts:
        raise ValueError("public_texts is empty: the demo tokenizer is learnt from the public split only.")
    if vocab_size < 260:
        raise ValueError(f"vocab_size={vocab_size} must be >= 260 (256 bytes + special tokens + merges).")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        bos_token=EOS,
        pad_token=PAD,
        model_max_length=N_POSITIONS,
        clean_up_tokenization_spaces=False,
    )


def parse_shape(shape: str, argument: str = "shape") -> dict[str, int]:
    """'LAYERSxWIDTH' (e.g. '4x128') -> GPT-2 sizes, one attention head per 32 channels (at least one)."""
    try:
        layers, width = (int(x) for x in shape.lower().split("x"))
    except ValueError:
        raise ValueError(f"{argument}={shape!r}: write LAYERSxWIDTH, e.g. 4x128.") from None
    heads = max(1, width // 32)
    if layers < 1 or width < 16 or width % heads:
        raise ValueError(
            f"{argument}={shape!r}: needs >= 1 layer and a width >= 16 that its {heads} head(s) divide "
            "(one head per 32 channels), e.g. 2x48, 4x128, 6x192."
        )
    return dict(n_layer=layers, n_embd=width, n_head=heads, n_positions=N_POSITIONS)


def demo_config(tokenizer: PreTrainedTokenizerBase, kind: str, shape: str | None = None) -> GPT2Config:
    """The GPT-2 config of the demo `kind` ("teacher": 4 x 128, "student": 2 x 64, or `shape`) for `tokenizer`."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} must be one of {sorted(KINDS)}.")
    return GPT2Config(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **(parse_shape(shape) if shape else KINDS[kind]),
    )


def demo_model(
    tokenizer: PreTrainedTokenizerBase, kind: str, seed: int = 0, shape: str | None = None
) -> GPT2LMHeadModel:
    """A freshly initialised demo teacher or student (deterministic in `seed`)."""
    config = demo_config(tokenizer, kind, shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GPT2LMHeadModel(config)


def _pack(ids: list[list[int]], block: int) -> dict[str, list[list[int]]]:
    flat = [t for seq in ids for t in seq]
    n = len(flat) // block
    return {"input_ids": [flat[i * block : (i + 1) * block] for i in range(n)]}


def pretrain_on_public(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    output_dir: str | Path,
    *,
    max_steps: int,
    max_length: int = 64,
    batch_size: int = 32,
    learning_rate: float = 3e-3,
    seed: int = 0,
    pack: bool = True,
    use_cpu: bool | None = None,
) -> dict[str, float]:
    """A short, non-private causal-LM pretraining run on public `texts` with the plain HF ``Trainer``.

    With `pack` (default) the texts, each ended by eos, are concatenated and cut into blocks of
    `max_length` tokens, as in GPT-2 pretraining; otherwise each text is one (truncated) sequence.
    Trainer scratch files go to `output_dir/_pretraining` and are removed afterwards; the model is
    trained in place. Returns the Trainer's train metrics (train_loss, train_runtime, ...).
    """
    if max_steps <= 0:
        raise ValueError(f"max_steps={max_steps} must be > 0 (pretraining steps on the public split).")
    if not texts:
        raise ValueError("texts is empty: nothing to pretrain on.")
    eos = tokenizer.eos_token or ""
    data = Dataset.from_dict({"text": [t + eos for t in texts]})
    if pack:
        # As real pretraining: texts concatenated and cut into full blocks, so the model sees text starts
        # at every position (the paper's perplexity windows start anywhere in a text).
        data = data.map(
            lambda b: _pack(tokenizer(b["text"], verbose=False)["input_ids"], max_length),
            batched=True,
            remove_columns=["text"],
        )
    else:
        data = data.map(
            lambda b: tokenizer(b["text"], truncation=True, max_length=max_length),
            batched=True,
            remove_columns=["text"],
        )
    if len(data) == 0:
        raise ValueError(
            f"texts hold fewer tokens than one block of max_length={max_length}; pass more texts, a smaller "
            "max_length, or pack=False."
        )
    scratch = Path(output_dir) / "_pretraining"
    args = TrainingArguments(
        output_dir=str(scratch),
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        warmup_steps=max(1, max_steps // 10),
        lr_scheduler_type="cosine",
        weight_decay=0.01,
        use_cpu=(not torch.cuda.is_available()) if use_cpu is None else use_cpu,
        report_to=[],
        save_strategy="no",
        logging_steps=max(1, max_steps // 5),
        seed=seed,
        data_seed=seed,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
    )
    metrics = trainer.train().metrics
    model.eval()
    shutil.rmtree(scratch, ignore_errors=True)
    return metrics


def _fingerprint(
    tokenizer: PreTrainedTokenizerBase, public_texts: list[str], settings: dict[str, Any]
) -> str:
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    h.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
    for t in public_texts:
        h.update(t.encode("utf-8", "surrogatepass") + b"\0")
    return h.hexdigest()


def base_model_settings(
    kind: str,
    *,
    pretrain_steps: int = 200,
    max_length: int = 64,
    batch_size: int = 32,
    learning_rate: float = 3e-3,
    seed: int = 0,
    pack: bool = True,
    shapes: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Everything a demo base model of `kind` depends on besides the tokenizer and texts (its READY record)."""
    shape = (shapes or {}).get(kind)
    return {
        "kind": kind,
        "config": parse_shape(shape) if shape else KINDS[kind],
        "pretrain_steps": pretrain_steps,
        "max_length": max_length,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "seed": seed + list(KINDS).index(kind),  # the student's init differs from the teacher's
        "pack": pack,
    }


def build_demo_models(
    run_dir: str | Path,
    tokenizer: PreTrainedTokenizerBase,
    public_texts: list[str],
    *,
    pretrain_steps: int = 200,
    max_length: int = 64,
    batch_size: int = 32,
    learning_rate: float = 3e-3,
    seed: int = 0,
    pack: bool = True,
    shapes: dict[str, str] | None = None,
    use_cache: bool = True,
) -> dict[str, Path]:
    """Pretrain the demo teacher and student on public text, cached in ``run_dir/base/{teacher,student}``.

    `shapes` ({"teacher": "4x128", "student": "2x64"}, the defaults) sets each model's layers x width.

    Each folder holds ``save_pretrained`` of the model and the tokenizer, then a ``READY`` marker (written
    last, atomically) recording the settings and a fingerprint of tokenizer + texts. A folder whose marker
    exists and matches is reused as is; anything else (missing, partial, other settings) is rebuilt: copied
    from a shipped or cached base model with the same fingerprint (`hf_dpkd.data.base_model_cache`; not with
    `use_cache=False`), else pretrained here and then cached.
    """
    paths: dict[str, Path] = {}
    for kind in KINDS:
        out = Path(run_dir) / "base" / kind
        settings = base_model_settings(
            kind,
            pretrain_steps=pretrain_steps,
            max_length=max_length,
            batch_size=batch_size,
            learning_rate=learning_rate,
            seed=seed,
            pack=pack,
            shapes=shapes,
        )
        fingerprint = _fingerprint(tokenizer, public_texts, settings)
        if base_model_cache.fingerprint_of(out) == fingerprint:
            paths[kind] = out
            continue
        (out / COMPLETE).unlink(missing_ok=True)
        found = base_model_cache.find(fingerprint) if use_cache else None
        if found is not None:
            logger.info("base %s: the pretrained model %s (same public inputs and settings)", kind, found[1])
            base_model_cache.copy_finished(found[0], out, found[1])
            paths[kind] = out
            continue
        model = demo_model(tokenizer, kind, settings["seed"], (shapes or {}).get(kind))
        metrics = pretrain_on_public(
            model,
            tokenizer,
            public_texts,
            out,
            max_steps=pretrain_steps,
            max_length=max_length,
            batch_size=batch_size,
            learning_rate=learning_rate,
            seed=settings["seed"],
            pack=pack,
        )
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        record = {
            "note": "pretrained on the public split only",
            "settings": settings,
            "fingerprint": fingerprint,
            "train_loss": metrics.get("train_loss"),
            "train_runtime_s": metrics.get("train_runtime"),
        }
        atomic_write_text(out / COMPLETE, json.dumps(record, indent=2))
        if use_cache:
            base_model_cache.keep(out, fingerprint)
        paths[kind] = out
    return paths
