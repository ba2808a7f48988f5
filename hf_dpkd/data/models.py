"""Tokenizer and small GPT-2 base models for the embedded demo, pretrained on the PUBLIC split only.

Like the paper, the pipeline starts from pretrained models. The tokenizer is trained on public text
only: a tokenizer trained on the private split would itself leak (it is not covered by the guarantee).
"""

from __future__ import annotations

from pathlib import Path

import torch
from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    DataCollatorForLanguageModeling,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
    Trainer,
    TrainingArguments,
)

from hf_dpkd._io import atomic_write_text

EOS, PAD = "<|endoftext|>", "<|pad|>"
COMPLETE = "READY"

TEACHER_CONFIG = dict(n_layer=4, n_embd=128, n_head=4, n_positions=128)
STUDENT_CONFIG = dict(n_layer=2, n_embd=64, n_head=2, n_positions=128)


def train_demo_tokenizer(public_texts: list[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on public texts only (any private text still encodes, byte by byte)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS, PAD], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(public_texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=PAD)


def demo_model(tokenizer, kind: str, seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    sizes = TEACHER_CONFIG if kind == "teacher" else STUDENT_CONFIG
    config = GPT2Config(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **sizes,
    )
    return GPT2LMHeadModel(config)


def pretrain_on_public(
    model,
    tokenizer,
    texts: list[str],
    output_dir: Path,
    *,
    max_steps: int,
    max_length: int = 64,
    batch_size: int = 32,
    learning_rate: float = 3e-3,
    seed: int = 0,
) -> None:
    """A short non-private pretraining run on public texts with the plain HF Trainer."""
    data = Dataset.from_dict({"text": [t + tokenizer.eos_token for t in texts]})
    data = data.map(
        lambda b: tokenizer(b["text"], truncation=True, max_length=max_length),
        batched=True,
        remove_columns=["text"],
    )
    args = TrainingArguments(
        output_dir=str(output_dir / "_pretraining"),
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        warmup_steps=max(1, max_steps // 10),
        lr_scheduler_type="cosine",
        use_cpu=not torch.cuda.is_available(),
        report_to=[],
        save_strategy="no",
        logging_steps=max(1, max_steps // 5),
        seed=seed,
    )
    Trainer(
        model=model,
        args=args,
        train_dataset=data,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
    ).train()


def build_demo_models(
    run_dir: str | Path,
    tokenizer,
    public_texts: list[str],
    *,
    pretrain_steps: int = 300,
    max_length: int = 64,
    seed: int = 0,
) -> dict[str, Path]:
    """Pretrain the demo teacher and student on public text; cached in run_dir/base/{teacher,student}."""
    paths = {}
    for kind in ("teacher", "student"):
        out = Path(run_dir) / "base" / kind
        if not (out / COMPLETE).is_file():
            model = demo_model(tokenizer, kind, seed)
            pretrain_on_public(
                model,
                tokenizer,
                public_texts,
                out,
                max_steps=pretrain_steps,
                max_length=max_length,
                seed=seed,
            )
            model.save_pretrained(out)
            tokenizer.save_pretrained(out)
            atomic_write_text(out / COMPLETE, "pretrained on the public split only\n")
        paths[kind] = out
    return paths
