"""Tiny causal LMs of every family DP-SGD must support, and a slow per-sample reference."""

from __future__ import annotations

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from hf_dpkd.trainers.losses import dp_forward_kwargs, per_sequence_nll

VOCAB = 64


def tiny_gpt2(tied: bool = True, seed: int = 0, dropout: float = 0.0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=2,
        vocab_size=VOCAB,
        n_positions=32,
        tie_word_embeddings=tied,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        bos_token_id=0,
        eos_token_id=0,
    )
    return GPT2LMHeadModel(cfg)


def tiny_word_lm(vocab_size: int, n_layer: int = 1, n_embd: int = 16, seed: int = 0) -> GPT2LMHeadModel:
    """A dropout-free GPT-2 for a word-level tokenizer (tiny_word_tokenizer: pad 0, bos/eos 1), 32 positions."""
    torch.manual_seed(seed)
    return GPT2LMHeadModel(
        GPT2Config(
            n_layer=n_layer,
            n_embd=n_embd,
            n_head=2,
            vocab_size=vocab_size,
            n_positions=32,
            bos_token_id=1,
            eos_token_id=1,
            pad_token_id=0,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
    )


def tiny_llama(seed: int = 0, attention_dropout: float = 0.0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=32,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        tie_word_embeddings=False,
        attention_dropout=attention_dropout,
    )
    return LlamaForCausalLM(cfg)


def tiny_lora_gpt2(seed: int = 0):
    from peft import LoraConfig, get_peft_model

    base = tiny_gpt2(tied=True, seed=seed)
    model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True)
    )
    # LoRA initialises B to zero; give it values so every LoRA parameter has a non-zero gradient.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    return model


MODEL_FACTORIES = {
    "gpt2_tied": lambda: tiny_gpt2(tied=True),
    "gpt2_untied": lambda: tiny_gpt2(tied=False),
    "llama": tiny_llama,
    "lora_gpt2": tiny_lora_gpt2,
}


def random_batch(n: int, t: int = 10, seed: int = 1, pad_last: int = 3) -> dict[str, torch.Tensor]:
    """Token ids with some right padding (masked out of the loss) on a few rows."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, t), generator=g)
    mask = torch.ones(n, t, dtype=torch.long)
    for i in range(0, n, 3):
        mask[i, t - pad_last :] = 0
    labels = ids.clone()
    labels[mask == 0] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def reference_clipped_sum(model, batch, clip: float) -> dict[str, torch.Tensor]:
    """Slow and obviously correct: one backward per example, clip its whole gradient, sum."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    total = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in params}
    for i in range(batch["input_ids"].shape[0]):
        one = {k: v[i : i + 1] for k, v in batch.items()}
        loss = per_sequence_nll(model(**dp_forward_kwargs(model, one)).logits, one["labels"]).sum()
        grads = torch.autograd.grad(loss, [p for _, p in params], allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for (_, p), g in zip(params, grads)]
        norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads))
        factor = min(1.0, clip / (norm.item() + 1e-6))
        for (n, _), g in zip(params, grads):
            total[n] += factor * g.double()
    return total


def tiny_word_tokenizer(texts: list[str]):
    """A word-level fast tokenizer built offline from `texts` (with eos and pad tokens)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for t in texts for w in t.split()})
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )
