"""Control-coded synthetic data from a (DP) teacher: batched, sharded, resumable, multi-process.

Work is cut into shards of `shard_size` prompts. Shard i draws its codes from the released distribution
with a seed derived from (seed, i) and samples with another seed derived from it, so a shard is a pure
function of its index: a killed run resumes by skipping the shard files it finds, and several processes
split the shards (i % world_size) with no overlap. Inside a shard, prompts are sorted by token length and
batched with LEFT padding (most batches need little), sampled with the KV cache under `inference_mode`;
each row stops at its own length budget (max_length counts its own prompt, not the padding) or at eos and
then leaves the batch, and the no-repeat-n-gram processor ignores the padding.

This module holds the public entry points (the sampling settings, generate and load a dataset) with
what makes a run resumable (the settings a shard depends on, the assembly of the shard files through the
quality filters). One shard's sampling is :mod:`.generation_shards`, its decode loop :mod:`.generation_loop`,
the padding-aware processor and the sampler :mod:`.generation_decoding`, prompt ids and position fitting
:mod:`.generation_prompts`.
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

from hf_dpkd._io import atomic_write_bytes, atomic_write_text
from hf_dpkd.privacy.histogram import ControlCodeDistribution, allocate_prompts
from hf_dpkd.synthetic.control_codes import ControlCodeFormat
from hf_dpkd.synthetic.generation_decoding import BatchedNoRepeatNGramLogitsProcessor
from hf_dpkd.synthetic.generation_prompts import position_limit, prompt_ids, special_ids

# Module attributes looked up at call time: tests wrap `generation._generate_shard`, and scripts use
# `generation._shard_seed` to draw the prompts a run draws.
from hf_dpkd.synthetic.generation_shards import generate_shard as _generate_shard
from hf_dpkd.synthetic.generation_shards import shard_seed as _shard_seed
from hf_dpkd.workers import run_jobs

__all__ = [
    "DATA_FILE",
    "DEFAULT_FILTERS",
    "INFO_FILE",
    "SETTINGS_FILE",
    "SHARDS_DIR",
    "BatchedNoRepeatNGramLogitsProcessor",
    "SyntheticGenerationConfig",
    "generate_synthetic_dataset",
    "load_synthetic_dataset",
    "process_state",
]

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


def process_state():
    """accelerate's PartialState; under torchrun on a machine without accelerator it is the gloo CPU group.

    (A bare ``PartialState()`` there reports a single process, so every rank would generate every shard.)
    """
    from accelerate import PartialState

    multi = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return PartialState(cpu=multi and not torch.accelerator.is_available())


def _model_fingerprint(model) -> str:
    """Shapes and a few exact values of the weights: a different model (or dtype) changes it."""
    params = [p for p in model.parameters()]
    picked = params[:: max(1, len(params) // 4)][:5]
    data = [sum(p.numel() for p in params), [list(p.shape) for p in params]]
    data += [p.detach().flatten()[:32].float().cpu().tolist() for p in picked if p.numel()]
    return hashlib.sha256(json.dumps(data).encode()).hexdigest()


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


def _check_inputs(
    model, tokenizer, distribution, num_samples, fmt, gen, batch_size, shard_size, cpu_workers
) -> None:
    if not isinstance(num_samples, int) or num_samples <= 0:
        raise ValueError(
            f"num_samples={num_samples!r} must be > 0 (an int: the number of synthetic texts to produce)."
        )
    for name, value in (("batch_size", batch_size), ("shard_size", shard_size), ("cpu_workers", cpu_workers)):
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
    lengths = prompt_ids(tokenizer, fmt, distribution.codes)
    longest = max(lengths, key=lambda c: len(lengths[c]))
    if gen.max_length <= len(lengths[longest]):
        raise ValueError(
            f"max_length={gen.max_length} is not longer than the prompt "
            f"{fmt.format_prompt(fmt.record_of(longest))!r} ({len(lengths[longest])} tokens, the longest prompt); "
            "raise SyntheticGenerationConfig.max_length (it counts the prompt)."
        )
    limit = position_limit(model)
    if limit is not None and gen.max_length > limit:
        raise ValueError(
            f"max_length={gen.max_length} exceeds the model's {limit} positions; lower "
            "SyntheticGenerationConfig.max_length."
        )
    special_ids(tokenizer)


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
    cpu_workers: int = 1,
) -> Dataset:
    """Generate exactly `num_samples` filtered synthetic texts into `output_dir` (resumable) and return them.

    `batch_size`: prompts per `generate` call (each gives `num_return_sequences` texts). `shard_size`:
    prompts per shard file. `filters`: names among
    ("empty", "short", "duplicate") (default: all three) and/or callables ``text -> keep?``. Under several
    processes (accelerate/torchrun) every process generates its shards and every process returns the dataset;
    the main process writes ``data/train-00000-of-00001.parquet`` and ``generation_info.json``. `cpu_workers`
    > 1 in a single CPU process: shards are generated on that many forked processes (hf_dpkd.workers) with the
    process's torch threads divided among them; the shards, a function of (seed, shard) only, are the same.
    """
    gen = generation or SyntheticGenerationConfig()
    filters = list(DEFAULT_FILTERS if filters is None else filters)
    filter_names = _filter_names(filters)
    _check_inputs(model, tokenizer, distribution, num_samples, fmt, gen, batch_size, shard_size, cpu_workers)
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
                [special_ids(tokenizer), sorted(prompt_ids(tokenizer, fmt, distribution.codes).items())]
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

    def write_shard(shard: int) -> int:
        """Generate and write one shard (a pure function of seed and shard: any process may run it)."""
        shard_seed = _shard_seed(seed, shard)
        codes = allocate_prompts(distribution, shard_size, seed=shard_seed)
        with torch.inference_mode():
            rows = _generate_shard(model, tokenizer, fmt, codes, gen, batch_size, shard_seed + 1)
        atomic_write_bytes(shard_path(shard), "".join(json.dumps(r) + "\n" for r in rows).encode("utf-8"))
        return len(rows)

    def shard_path(shard: int) -> Path:
        return shards_dir / f"shard-{shard:05d}.jsonl"

    # several processes of a launch split the shards; a single CPU process may fork local workers for its own
    local_workers = cpu_workers if state.num_processes == 1 and model.device.type == "cpu" else 1
    try:
        while True:
            rounds += 1
            todo = [
                shard
                for shard in range(num_shards)
                if shard % state.num_processes == state.process_index and not shard_path(shard).is_file()
            ]
            for _, num_rows in run_jobs(write_shard, todo, local_workers):
                generated += num_rows
                progress.update(min(num_rows * state.num_processes, num_samples - progress.n))
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
