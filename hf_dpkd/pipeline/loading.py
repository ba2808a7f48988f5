"""Base models and private records as every stage needs them: a causal LM with its tokenizer (a clear error
for a bad path, LoRA adapters merged), a pad token distinct from eos, records tokenized as control-code
prompt + text."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from datasets import Dataset, DatasetDict
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

logger = logging.getLogger(__name__)

#: The key under which a tokenizer records that it already gave its "sequence longer than the maximum" notice.
LONG_SEQUENCE_NOTICE = "sequence-length-is-longer-than-the-specified-maximum"
TRUNCATED = "_truncated"
_TRUNCATION_REPORTED: set[tuple[int, int, int]] = set()


def ensure_pad_token(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Give the tokenizer a pad token distinct from eos (the model's new row = mean embedding, as the paper does)."""
    if tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        model.config.pad_token_id = tokenizer.pad_token_id
        return
    tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
    old = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > old:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    model.config.pad_token_id = tokenizer.pad_token_id


#: Config keys and module attributes that hold a dropout probability, across architectures (GPT-2's attn_pdrop,
#: Llama's attention_dropout, OPT's activation_dropout, BERT's hidden_dropout_prob, T5's dropout_rate, ...).
_DROPOUT_NAME = re.compile(r"(^|_)(dropout|pdrop)(_prob|_rate|_p)?$")


def set_dropout(model: PreTrainedModel, p: float) -> None:
    """Set every dropout probability of `model` to `p`: its config (so a saved folder says how it was trained),
    every `nn.Dropout`, and float attributes modules read at call time (Llama's `attention_dropout`)."""
    from torch.nn.modules.dropout import _DropoutNd

    configs = [model.config, *(v for v in vars(model.config).values() if hasattr(v, "to_dict"))]
    for config in configs:  # nested text/vision configs too
        for key, value in list(vars(config).items()):
            if _DROPOUT_NAME.search(key) and isinstance(value, float | int) and not isinstance(value, bool):
                setattr(config, key, float(p))
    for module in model.modules():
        if isinstance(module, _DropoutNd):
            module.p = float(p)
        for key, value in list(vars(module).items()):
            if _DROPOUT_NAME.search(key) and isinstance(value, float):
                setattr(module, key, float(p))


def load_model_and_tokenizer(
    path: str | Path, argument: str = "model", base: str | Path | None = None, dropout: float | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from a folder or a Hub id, with a clear error for a bad path.

    A LoRA adapter folder loads as the adapter merged into a fresh copy of `base` (the public base model it was
    trained on; default: the base the adapter records), so every stage sees a plain model. `dropout`: every
    dropout probability set to it (a model about to be trained; None keeps the checkpoint's).
    """
    model, tokenizer = _load(path, argument, base)
    if dropout is not None:
        set_dropout(model, dropout)
    return model, tokenizer


def _load(
    path: str | Path, argument: str, base: str | Path | None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    from hf_dpkd.peft_support import is_adapter_folder, load_merged

    path = str(path)
    if (path.startswith((".", "/")) or os.sep in path and not _looks_like_hub_id(path)) and not Path(
        path
    ).exists():
        raise FileNotFoundError(
            f"--{argument} {path!r}: no such folder; give a local model folder or a Hub id (namespace/name)."
        )
    tokenizer = AutoTokenizer.from_pretrained(path)
    # Every use here cuts or windows its sequences to the model's length itself (training rows, perplexity
    # windows, audit scores), so the tokenizer's "longer than the maximum sequence length" notice is moot.
    tokenizer.deprecation_warnings[LONG_SEQUENCE_NOTICE] = True
    if is_adapter_folder(path):
        return load_merged(path, base), tokenizer
    try:
        model = AutoModelForCausalLM.from_pretrained(path)
    except ValueError as e:
        kind = type(AutoConfig.from_pretrained(path)).__name__
        raise ValueError(
            f"--{argument} {path!r} is not a causal language model (a {kind}, which AutoModelForCausalLM "
            "cannot load); DistilDP needs a decoder-only LM (e.g. a GPT-2, Llama or Qwen checkpoint)."
        ) from e
    return model, tokenizer


def _looks_like_hub_id(path: str) -> bool:
    return path.count("/") == 1 and not Path(path).exists()


def check_splits(private: DatasetDict, name: str) -> None:
    for split in ("train", "test"):
        if split not in private or len(private[split]) == 0:
            raise ValueError(
                f"--dataset {name!r} has no (or an empty) {split!r} split; give train and test data "
                "(files named train.* and test.*, or a Hub dataset with both splits)."
            )


def tokenize_for_lm(
    dataset: Dataset, tokenizer, fmt, max_length: int, mask_prompt: bool = False, keep: str | None = None
) -> Dataset:
    """Format each record as control-code prompt + text + eos and tokenize (truncated to `max_length`).

    With `mask_prompt` the prompt tokens get label -100 (students learn the text given the codes). `keep`:
    a column carried over as is (the privacy unit column of user-level DP-SGD).
    Truncated records are counted and reported: a large share means --max_length is too small.
    """
    eos = tokenizer.eos_token or ""
    columns = list(dataset.column_names)

    def encode(batch):
        out = {"input_ids": [], "attention_mask": [], "labels": [], TRUNCATED: []}
        for i in range(len(batch["text"])):
            record = {c: batch[c][i] for c in columns}
            prompt = fmt.format_prompt(record)
            full = tokenizer(prompt + record["text"] + eos, verbose=False)["input_ids"]  # cut below
            ids = full[:max_length]
            labels = list(ids)
            if mask_prompt:
                n = min(len(tokenizer(prompt)["input_ids"]), len(ids) - 1)
                labels[:n] = [-100] * n
            out["input_ids"].append(ids)
            out["attention_mask"].append([1] * len(ids))
            out["labels"].append(labels)
            out[TRUNCATED].append(len(full) > max_length)
        return out

    removed = [c for c in columns if c != keep]
    encoded = dataset.map(encode, batched=True, remove_columns=removed, desc="tokenizing")
    truncated = int(sum(encoded[TRUNCATED]))
    if truncated and (truncated, len(encoded), max_length) not in _TRUNCATION_REPORTED:
        _TRUNCATION_REPORTED.add((truncated, len(encoded), max_length))  # once per process, not per training
        logger.warning(
            "%d of %d texts are longer than max_length=%d tokens with their control codes and were truncated "
            "(raise --max_length to keep them whole).",
            truncated,
            len(encoded),
            max_length,
        )
    return encoded.remove_columns(TRUNCATED)
