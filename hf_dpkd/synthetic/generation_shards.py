"""One shard of synthetic text: its seed, and the rows it holds.

A shard is a pure function of (seed, shard index), which is what makes generation resumable (a finished
shard file is never regenerated) and splittable over processes (shard i on process i % world_size). Its
prompts are sorted by token length, batched with LEFT padding and sampled with the KV cache, finished rows
dropped from the batch (generation_loop).
"""

from __future__ import annotations

import hashlib
from functools import partial
from typing import TYPE_CHECKING

import torch
from transformers import LogitsProcessorList

from hf_dpkd.synthetic.generation_decoding import BatchedNoRepeatNGramLogitsProcessor, sampling_processors
from hf_dpkd.synthetic.generation_loop import sample_rows
from hf_dpkd.synthetic.generation_prompts import prompt_ids, special_ids

if TYPE_CHECKING:
    from hf_dpkd.synthetic.generation import SyntheticGenerationConfig


def shard_seed(seed: int, shard: int) -> int:
    """The seed of shard `shard` of a run seeded `seed` (its codes; its sampling uses this + 1)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{shard}".encode()).digest()[:4], "little")


def _processors(ngram: int, pads: torch.Tensor, sampling, rows: torch.Tensor) -> LogitsProcessorList:
    """The logits processors of the running `rows`: the padding-aware n-gram ban, then sampling as processors
    (run greedily: the same law as do_sample=True, without multinomial)."""
    processors = LogitsProcessorList()
    if ngram > 0:
        processors.append(BatchedNoRepeatNGramLogitsProcessor(ngram, pads[rows]))
    processors.extend(sampling)
    return processors


def generate_shard(model, tokenizer, fmt, codes, gen: SyntheticGenerationConfig, batch_size: int, seed: int):
    """Rows (control columns + text) of one shard, in the order of `codes`, num_return_sequences per code."""
    device = next(model.parameters()).device
    eos_id, pad_id = special_ids(tokenizer)
    ids = prompt_ids(tokenizer, fmt, codes)
    order = sorted(range(len(codes)), key=lambda i: (len(ids[codes[i]]), codes[i]))
    r = gen.num_return_sequences
    stop = {eos_id, pad_id}
    texts: dict[int, list[str]] = {}
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        for batch in (order[s : s + batch_size] for s in range(0, len(order), batch_size)):
            prompts = [ids[codes[i]] for i in batch]
            width = max(map(len, prompts))
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, p in enumerate(prompts):  # left padding: every prompt ends at column `width`
                input_ids[row, width - len(p) :] = torch.tensor(p)
                mask[row, width - len(p) :] = 1
            # r rows per prompt, adjacent (as num_return_sequences would lay them out)
            input_ids, mask = input_ids.repeat_interleave(r, dim=0), mask.repeat_interleave(r, dim=0)
            pads = torch.tensor([width - len(p) for p in prompts]).repeat_interleave(r)
            sampling = sampling_processors(gen.top_k, gen.top_p, gen.temperature)
            processors_for = partial(_processors, gen.no_repeat_ngram_size, pads.to(device), sampling)
            new = sample_rows(
                model,
                input_ids.to(device),
                mask.to(device),
                processors_for,
                ends=pads + gen.max_length,
                stop_ids=stop,
                pad_id=pad_id,
            )
            kept = []
            for j, toks in enumerate(new):
                toks = toks[: gen.max_length - len(prompts[j // r])]  # max_length counts the own prompt
                end = next((k for k, t in enumerate(toks) if t in stop), len(toks))
                kept.append(toks[:end])
            decoded = tokenizer.batch_decode(kept, skip_special_tokens=True)
            for k, i in enumerate(batch):
                texts[i] = [t.strip() for t in decoded[k * r : (k + 1) * r]]
    return [{**fmt.record_of(codes[i]), "text": t} for i in range(len(codes)) for t in texts[i]]
