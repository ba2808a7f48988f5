"""Control-coded synthetic data from a (DP) teacher: batched, sharded, resumable, multi-process.

Work is cut into shards of `shard_size` prompts. Shard i draws its codes from the released distribution
with a seed derived from (seed, i) and samples with another seed derived from it, so a shard is a pure
function of its index: a killed run resumes by skipping the shard files it finds, and several processes
split the shards (i % world_size) with no overlap. Inside a shard, prompts are sorted by token length and
batched with LEFT padding (most batches need little), sampled with the KV cache under `inference_mode`;
each row stops at its own length budget (max_length counts its own prompt, not the padding) or at eos,
and the no-repeat-n-gram processor ignores the padding.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset, load_dataset
from tqdm.auto import tqdm
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from hf_dpkd._io import atomic_write_bytes, atomic_write_text
from hf_dpkd.privacy.histogram import ControlCodeDistribution, allocate_prompts
from hf_dpkd.synthetic.control_codes import ControlCodeFormat

logger = logging.getLogger(__name__)
DATA_FILE = "data/train-00000-of-00001.parquet"
INFO_FILE = "generation_info.json"
SHARDS_DIR = "shards"
SETTINGS_FILE = "settings.json"
DEFAULT_FILTERS = ("empty", "short", "duplicate")
_MAX_ROUNDS = 50


@dataclass
class SyntheticGenerationConfig:
    """Sampling settings. `min_words` is the "short" quality filter.

    The defaults sample the teacher's distribution as it is (no top-k / top-p truncation, no n-gram ban): the
    student learns that distribution from the samples, and truncation samples another one (measured on the
    demo in docs/results.md). :meth:`paper` gives the paper's settings (top_k 50, top_p 0.9,
    no_repeat_ngram_size 2).
    """

    top_k: int = 0
    top_p: float = 1.0
    temperature: float = 1.0
    no_repeat_ngram_size: int = 0
    max_length: int = 128  # tokens, prompt included
    num_return_sequences: int = 2
    min_words: int = (
        3  # texts with fewer whitespace-separated words are dropped (never looks at private data)
    )

    @classmethod
    def paper(cls, **overrides) -> SyntheticGenerationConfig:
        """The DistilDP paper's sampling: top_k 50, top_p 0.9, temperature 1, no_repeat_ngram_size 2."""
        return cls(**{"top_k": 50, "top_p": 0.9, "no_repeat_ngram_size": 2, **overrides})

    def __post_init__(self):
        checks = [
            ("top_k", self.top_k >= 0, ">= 0 (0 disables top-k)"),
            ("top_p", 0 < self.top_p <= 1, "in (0, 1]"),
            ("temperature", self.temperature > 0, "> 0"),
            ("no_repeat_ngram_size", self.no_repeat_ngram_size >= 0, ">= 0 (0 disables it)"),
            ("max_length", self.max_length >= 2, ">= 2 (tokens, prompt included)"),
            ("num_return_sequences", self.num_return_sequences >= 1, ">= 1"),
            ("min_words", self.min_words >= 0, ">= 0"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)!r} must be {rule}.")

    def sampling_dict(self) -> dict[str, Any]:
        """The settings a shard's content depends on (the filters act later, at assembly)."""
        d = asdict(self)
        d.pop("min_words")
        return d


class BatchedNoRepeatNGramLogitsProcessor(LogitsProcessor):
    """transformers' NoRepeatNGramLogitsProcessor, aware of left padding.

    A token is banned if emitting it would repeat an n-gram already in the sequence: every window whose
    first n-1 tokens equal the last n-1 tokens bans its last token. `pad_lengths` (left padding per row)
    excludes the windows that touch padding, so a padded row bans exactly what its unpadded prompt bans
    (the library's processor would, e.g. for n=1, ban the pad token, which is often also eos).
    """

    def __init__(self, ngram_size: int, pad_lengths: torch.Tensor | None = None):
        if ngram_size <= 0:
            raise ValueError(f"ngram_size={ngram_size} must be > 0.")
        self.n = ngram_size
        self.pad_lengths = pad_lengths

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        n, length = self.n, input_ids.shape[1]
        if length < n:
            return scores
        windows = input_ids.unfold(1, n, 1)  # [B, length - n + 1, n]
        last = input_ids[:, length - n + 1 :]  # [B, n - 1]
        match = (windows[:, :, :-1] == last[:, None, :]).all(-1)
        if self.pad_lengths is not None:
            starts = torch.arange(windows.shape[1], device=input_ids.device)
            match &= starts[None, :] >= self.pad_lengths.to(input_ids.device)[:, None]
        vocab = scores.shape[-1]  # non-matching windows write into a spare column past the vocabulary
        banned = scores.new_zeros((scores.shape[0], vocab + 1), dtype=torch.bool)
        banned.scatter_(1, torch.where(match, windows[:, :, -1].clamp(max=vocab), vocab), True)
        return scores.masked_fill(banned[:, :vocab], float("-inf"))


class _RowLengthBudget(StoppingCriteria):
    """Stop each row once it holds `max_length` tokens of its OWN prompt + text (left padding not counted)."""

    def __init__(self, ends: torch.Tensor):
        self.ends = ends

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        return input_ids.shape[1] >= self.ends.to(input_ids.device)


def process_state():
    """accelerate's PartialState; under torchrun on a machine without accelerator it is the gloo CPU group.

    (A bare ``PartialState()`` there reports a single process, so every rank would generate every shard.)
    """
    from accelerate import PartialState

    multi = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return PartialState(cpu=multi and not torch.accelerator.is_available())


def _shard_seed(seed: int, shard: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{shard}".encode()).digest()[:4], "little")


def _model_fingerprint(model) -> str:
    """Shapes and a few exact values of the weights: a different model (or dtype) changes it."""
    params = [p for p in model.parameters()]
    picked = params[:: max(1, len(params) // 4)][:5]
    data = [sum(p.numel() for p in params), [list(p.shape) for p in params]]
    data += [p.detach().flatten()[:32].float().cpu().tolist() for p in picked if p.numel()]
    return hashlib.sha256(json.dumps(data).encode()).hexdigest()


def _prompt_ids(tokenizer, fmt: ControlCodeFormat, codes) -> dict[tuple[str, ...], list[int]]:
    out = {}
    for code in dict.fromkeys(codes):
        out[code] = list(tokenizer(fmt.format_prompt(fmt.record_of(code)))["input_ids"])
    return out


def _special_ids(tokenizer) -> tuple[int, int]:
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    if eos is None and pad is None:
        raise ValueError("The tokenizer has neither an eos nor a pad token; set tokenizer.eos_token first.")
    return (pad if eos is None else eos), (eos if pad is None else pad)


def _generate_shard(model, tokenizer, fmt, codes, gen: SyntheticGenerationConfig, batch_size: int, seed: int):
    """Rows (control columns + text) of one shard, in the order of `codes`, num_return_sequences per code."""
    device = next(model.parameters()).device
    eos_id, pad_id = _special_ids(tokenizer)
    ids = _prompt_ids(tokenizer, fmt, codes)
    order = sorted(range(len(codes)), key=lambda i: (len(ids[codes[i]]), codes[i]))
    r = gen.num_return_sequences
    stop = {eos_id, pad_id}
    texts: dict[int, list[str]] = {}
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        limit = _position_limit(model)
        batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
        for batch in (part for b in batches for part in _fit_positions(b, ids, codes, gen.max_length, limit)):
            prompts = [ids[codes[i]] for i in batch]
            width, shortest = max(map(len, prompts)), min(map(len, prompts))
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, p in enumerate(prompts):  # left padding: every prompt ends at column `width`
                input_ids[row, width - len(p) :] = torch.tensor(p)
                mask[row, width - len(p) :] = 1
            pads = torch.tensor([width - len(p) for p in prompts]).repeat_interleave(r)  # r rows per prompt
            processors = LogitsProcessorList()
            if gen.no_repeat_ngram_size > 0:
                processors.append(BatchedNoRepeatNGramLogitsProcessor(gen.no_repeat_ngram_size, pads))
            stopping = StoppingCriteriaList([_RowLengthBudget(pads + gen.max_length)])
            out = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=mask.to(device),
                do_sample=True,
                top_k=gen.top_k,
                top_p=gen.top_p,
                temperature=gen.temperature,
                no_repeat_ngram_size=0,
                logits_processor=processors,
                stopping_criteria=stopping,
                max_new_tokens=gen.max_length - shortest,
                num_return_sequences=r,
                pad_token_id=pad_id,
                eos_token_id=eos_id,
                use_cache=True,
            )
            new = out[:, width:].tolist()
            kept = []
            for j, toks in enumerate(new):
                toks = toks[: gen.max_length - len(prompts[j // r])]  # max_length counts the own prompt
                end = next((k for k, t in enumerate(toks) if t in stop), len(toks))
                kept.append(toks[:end])
            decoded = tokenizer.batch_decode(kept, skip_special_tokens=True)
            for k, i in enumerate(batch):
                texts[i] = [t.strip() for t in decoded[k * r : (k + 1) * r]]
    return [{**fmt.record_of(codes[i]), "text": t} for i in range(len(codes)) for t in texts[i]]


def _position_limit(model) -> int | None:
    limit = getattr(model.config, "n_positions", None) or getattr(
        model.config, "max_position_embeddings", None
    )
    return limit if isinstance(limit, int) else None


def _fit_positions(batch: list[int], ids, codes, max_length: int, limit: int | None) -> list[list[int]]:
    """`batch`, or its runs of equal prompt length when left padding would run past the model's positions.

    A batch decodes until its shortest prompt has max_length tokens, so its longest-prompt rows reach
    position width + max_length - shortest - 1 (their extra tokens are discarded, but the forward still
    sees them): past `limit`, the position embedding has no row for them.
    """
    lengths = [len(ids[codes[i]]) for i in batch]
    if limit is None or max(lengths) + max_length - min(lengths) <= limit:
        return [batch]
    groups: dict[int, list[int]] = {}
    for i, n in zip(batch, lengths):
        groups.setdefault(n, []).append(i)
    return list(groups.values())


def _filter_names(filters) -> list[str]:
    names = []
    for f in filters:
        if isinstance(f, str):
            if f not in DEFAULT_FILTERS:
                raise ValueError(
                    f"filters: unknown filter {f!r}; use {DEFAULT_FILTERS} or a callable(text) -> bool."
                )
            names.append(f)
        elif callable(f):
            names.append(getattr(f, "__name__", type(f).__name__))
        else:
            raise ValueError(
                f"filters: {f!r} is neither a filter name {DEFAULT_FILTERS} nor a callable(text) -> bool."
            )
    return names


def _assemble(
    shards_dir: Path, num_shards: int, gen: SyntheticGenerationConfig, filters
) -> tuple[list, dict]:
    """Rows of shards 0..num_shards-1 in order, through the quality filters, and the filter report."""
    names = _filter_names(filters)
    rows, seen = [], set()
    report: dict[str, int] = {"generated": 0, **{f"dropped_{n}": 0 for n in names}}
    for shard in range(num_shards):
        for line in (shards_dir / f"shard-{shard:05d}.jsonl").read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            report["generated"] += 1
            text = row["text"]
            for name, f in zip(names, filters):
                if f == "empty":
                    drop = not text
                elif f == "short":
                    drop = len(text.split()) < gen.min_words
                elif f == "duplicate":
                    drop = text in seen
                else:
                    drop = not f(text)
                if drop:
                    report[f"dropped_{name}"] += 1
                    break
            else:
                seen.add(text)
                rows.append(row)
    report["kept"] = len(rows)
    return rows, report


def _check_inputs(model, tokenizer, distribution, num_samples, fmt, gen, batch_size, shard_size) -> None:
    if not isinstance(num_samples, int) or num_samples <= 0:
        raise ValueError(
            f"num_samples={num_samples!r} must be > 0 (an int: the number of synthetic texts to produce)."
        )
    for name, value in (("batch_size", batch_size), ("shard_size", shard_size)):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name}={value!r} must be an int > 0.")
    if not isinstance(distribution, ControlCodeDistribution):
        raise TypeError(
            f"distribution must be a ControlCodeDistribution (see hf_dpkd.privacy.histogram), got {type(distribution)}."
        )
    if not distribution.codes:
        raise ValueError("The control-code distribution has no codes; build it with a non-empty domain.")
    if distribution.columns != fmt.columns:
        unknown = sorted(set(distribution.columns) ^ set(fmt.columns))
        raise ValueError(
            f"Unknown control field(s) {unknown}: the distribution has fields {distribution.columns} but the format "
            f"has {fmt.columns}; build both from the same ControlCodeFormat."
        )
    for code in distribution.codes:
        fmt.code_of(fmt.record_of(code))
    lengths = _prompt_ids(tokenizer, fmt, distribution.codes)
    longest = max(lengths, key=lambda c: len(lengths[c]))
    if gen.max_length <= len(lengths[longest]):
        raise ValueError(
            f"max_length={gen.max_length} is not longer than the prompt "
            f"{fmt.format_prompt(fmt.record_of(longest))!r} ({len(lengths[longest])} tokens, the longest prompt); "
            "raise SyntheticGenerationConfig.max_length (it counts the prompt)."
        )
    limit = _position_limit(model)
    if limit is not None and gen.max_length > limit:
        raise ValueError(
            f"max_length={gen.max_length} exceeds the model's {limit} positions; lower "
            "SyntheticGenerationConfig.max_length."
        )
    _special_ids(tokenizer)


def generate_synthetic_dataset(
    model,
    tokenizer,
    distribution: ControlCodeDistribution,
    num_samples: int,
    output_dir: str | Path,
    *,
    fmt: ControlCodeFormat,
    generation: SyntheticGenerationConfig | None = None,
    seed: int = 0,
    batch_size: int = 64,
    shard_size: int = 256,
    filters: Sequence[str | Callable[[str], bool]] | None = None,
    show_progress: bool = True,
) -> Dataset:
    """Generate exactly `num_samples` filtered synthetic texts into `output_dir` (resumable) and return them.

    `batch_size`: prompts per `generate` call (each gives `num_return_sequences` texts). `shard_size`:
    prompts per shard file. `filters`: names among
    ("empty", "short", "duplicate") (default: all three) and/or callables ``text -> keep?``. Under several
    processes (accelerate/torchrun) every process generates its shards and every process returns the dataset;
    the main process writes ``data/train-00000-of-00001.parquet`` and ``generation_info.json``.
    """
    gen = generation or SyntheticGenerationConfig()
    filters = list(DEFAULT_FILTERS if filters is None else filters)
    filter_names = _filter_names(filters)
    _check_inputs(model, tokenizer, distribution, num_samples, fmt, gen, batch_size, shard_size)
    if distribution.leaks_private_data:
        logger.warning(
            "Generating from the EXACT private control-code histogram: the synthetic data is NOT private."
        )
    state = process_state()
    if next(model.parameters()).device.type == "cpu" and state.device.type != "cpu":
        model.to(state.device)
    output_dir = Path(output_dir)
    shards_dir = output_dir / SHARDS_DIR
    settings = {
        "generation": gen.sampling_dict(),
        "seed": seed,
        "shard_size": shard_size,
        "format": fmt.to_dict(),
        "distribution": distribution.fingerprint(),
        "model": _model_fingerprint(model),
        "tokenizer": hashlib.sha256(
            json.dumps(
                [_special_ids(tokenizer), sorted(_prompt_ids(tokenizer, fmt, distribution.codes).items())]
            ).encode()
        ).hexdigest(),
    }
    assembly = {"num_samples": num_samples, "filters": filter_names, "min_words": gen.min_words}
    info_path = output_dir / INFO_FILE
    if (output_dir / DATA_FILE).is_file() and info_path.is_file():
        info = json.loads(info_path.read_text(encoding="utf-8"))
        if info.get("settings") == settings and info.get("assembly") == assembly:
            return load_synthetic_dataset(output_dir)
    settings_path = shards_dir / SETTINGS_FILE
    if settings_path.is_file():
        saved = json.loads(settings_path.read_text(encoding="utf-8"))
        if saved != settings:
            changed = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
            raise ValueError(
                f"{shards_dir} holds shards generated with other settings (changed: {changed}); resume with the "
                "same model, tokenizer, distribution, format, seed, shard_size and sampling settings, or use "
                "another output_dir (or delete it)."
            )
    state.wait_for_everyone()
    if state.is_main_process and not settings_path.is_file():
        atomic_write_text(settings_path, json.dumps(settings, indent=2))
    state.wait_for_everyone()

    per_shard = shard_size * gen.num_return_sequences
    num_shards = math.ceil(num_samples / per_shard)
    progress = tqdm(
        total=num_samples,
        unit="sample",
        desc=f"synthetic (rank {state.process_index}/{state.num_processes})",
        disable=not (show_progress and state.is_main_process),
    )
    was_training = model.training
    model.eval()
    generated, start, rounds = 0, time.perf_counter(), 0
    try:
        while True:
            rounds += 1
            for shard in range(num_shards):
                path = shards_dir / f"shard-{shard:05d}.jsonl"
                if shard % state.num_processes != state.process_index or path.is_file():
                    continue
                shard_seed = _shard_seed(seed, shard)
                codes = allocate_prompts(distribution, shard_size, seed=shard_seed)
                with torch.inference_mode():
                    rows = _generate_shard(model, tokenizer, fmt, codes, gen, batch_size, shard_seed + 1)
                atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in rows).encode("utf-8"))
                generated += len(rows)
                progress.update(min(len(rows) * state.num_processes, num_samples - progress.n))
                progress.set_postfix(samples_per_s=f"{generated / (time.perf_counter() - start):.1f}")
            state.wait_for_everyone()
            rows, report = _assemble(shards_dir, num_shards, gen, filters)
            if len(rows) >= num_samples:
                break
            if rounds >= _MAX_ROUNDS or (not rows and report["generated"] >= 2 * num_samples):
                raise RuntimeError(
                    f"The quality filters removed {report['generated'] - len(rows)} of {report['generated']} generated "
                    f"texts ({report}); the teacher yields too few usable texts: lower min_words, raise max_length, "
                    "pass fewer filters, or check the teacher."
                )
            # Filters removed rows: add shards (the same number on every process: they read the same files).
            rate = max(len(rows) / max(report["generated"], 1), 0.05)
            extra = math.ceil((num_samples - len(rows)) / (per_shard * rate))
            num_shards += min(max(1, extra), max(1, num_shards))
    finally:
        model.train(was_training)
        progress.close()
    rows = rows[:num_samples]
    dataset = Dataset.from_list(rows)
    if state.is_main_process:
        final = output_dir / DATA_FILE
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.tmp")
        dataset.to_parquet(str(tmp))
        tmp.replace(final)
        counts = Counter(tuple(r[c] for c in fmt.columns) for r in rows)
        info = {
            "num_samples": num_samples,
            "num_shards": num_shards,
            "world_size": state.num_processes,
            "control_fields": fmt.columns,
            "distribution_mode": distribution.mode,
            "leaks_private_data": distribution.leaks_private_data,
            "distribution_meta": distribution.meta,
            "generation": asdict(gen),
            **report,
            "filter_report": report,
            "code_counts": [{**fmt.record_of(c), "count": n} for c, n in sorted(counts.items())],
            "settings": settings,
            "assembly": assembly,
        }
        atomic_write_text(info_path, json.dumps(info, indent=2))
    state.wait_for_everyone()
    return dataset


def load_synthetic_dataset(output_dir: str | Path) -> Dataset:
    """The finished synthetic dataset of `output_dir` (the same file `datasets.load_dataset(dir)` reads)."""
    path = Path(output_dir) / DATA_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"No finished synthetic dataset in {output_dir} (expected {DATA_FILE}); run generate_synthetic_dataset."
        )
    return load_dataset("parquet", data_files=str(path), split="train")
