"""Control-coded synthetic data from a (DP) teacher: batched, sharded, resumable, multi-process.

Work is cut into shards of `shard_prompts` prompts. Shard i draws its codes from the released
distribution with a seed derived from (seed, i) and is generated with the same derived seed, so a shard
is a pure function of its index: a killed run resumes by skipping the shard files it finds, and several
processes split the shards (i % world_size) with no overlap. Prompts of one code are identical, so a
batch holds one code and needs no padding at all (the KV cache does the rest).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset, load_dataset
from tqdm.auto import tqdm

from hf_dpkd._io import atomic_write_bytes, atomic_write_text
from hf_dpkd.privacy.histogram import ControlCodeDistribution, allocate_prompts
from hf_dpkd.synthetic.control_codes import ControlCodeFormat

logger = logging.getLogger(__name__)
DATA_FILE = "data/train-00000-of-00001.parquet"
INFO_FILE = "generation_info.json"


@dataclass
class SyntheticGenerationConfig:
    """Sampling settings; defaults are the paper's."""

    top_k: int = 50
    top_p: float = 0.9
    temperature: float = 1.0
    no_repeat_ngram_size: int = 2
    max_length: int = 128  # tokens, prompt included
    num_return_sequences: int = 2
    min_words: int = 3  # quality filter: shorter texts are dropped (never looks at private data)

    def __post_init__(self):
        if self.num_return_sequences < 1:
            raise ValueError(f"num_return_sequences={self.num_return_sequences} must be >= 1.")
        if not self.temperature > 0:
            raise ValueError(f"temperature={self.temperature} must be > 0.")


def _shard_seed(seed: int, shard: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{shard}".encode()).digest()[:4], "little")


def _settings_key(distribution, num_samples, fmt, gen, seed, shard_prompts) -> dict[str, Any]:
    return {
        "generation": asdict(gen),
        "seed": seed,
        "shard_prompts": shard_prompts,
        "format": fmt.to_dict(),
        "distribution": hashlib.sha256(
            json.dumps([distribution.codes, distribution.probs]).encode()
        ).hexdigest(),
    }


def _generate_shard(model, tokenizer, fmt, codes, gen: SyntheticGenerationConfig, batch_size: int, seed: int):
    """Rows (one dict per sample: control columns + text) of one shard."""
    device = next(model.parameters()).device
    rows = []
    by_code: dict[tuple[str, ...], int] = {}
    for code in codes:
        by_code[code] = by_code.get(code, 0) + 1
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for code, count in sorted(by_code.items()):
            record = dict(zip(fmt.columns, code))
            prompt = fmt.format_prompt(record)
            ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(device)
            if ids.shape[1] >= gen.max_length:
                raise ValueError(
                    f"max_length={gen.max_length} is not longer than the prompt ({ids.shape[1]} tokens for "
                    f"{prompt!r}); raise generation max_length."
                )
            remaining = count
            while remaining > 0:
                n = min(remaining, max(1, batch_size // gen.num_return_sequences))
                out = model.generate(
                    input_ids=ids.expand(n, -1),
                    attention_mask=torch.ones(n, ids.shape[1], dtype=torch.long, device=device),
                    do_sample=True,
                    top_k=gen.top_k,
                    top_p=gen.top_p,
                    temperature=gen.temperature,
                    no_repeat_ngram_size=gen.no_repeat_ngram_size,
                    max_length=gen.max_length,
                    num_return_sequences=gen.num_return_sequences,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
                texts = tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
                rows.extend({**record, "text": t.strip()} for t in texts)
                remaining -= n
    finally:
        torch.random.set_rng_state(state)
    return rows


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
    shard_prompts: int = 128,
    show_progress: bool = True,
) -> Dataset:
    """Generate exactly `num_samples` filtered synthetic texts into `output_dir` (resumable) and return them."""
    from accelerate import PartialState

    gen = generation or SyntheticGenerationConfig()
    if num_samples <= 0:
        raise ValueError(f"num_samples={num_samples} must be > 0.")
    if distribution.columns != fmt.columns:
        raise ValueError(
            f"The distribution's control fields {distribution.columns} differ from the format's {fmt.columns}."
        )
    if distribution.leaks_private_data:
        logger.warning(
            "Generating from the EXACT private control-code histogram: the synthetic data is NOT private."
        )
    output_dir = Path(output_dir)
    final = output_dir / DATA_FILE
    if final.is_file() and (output_dir / INFO_FILE).is_file():
        info = json.loads((output_dir / INFO_FILE).read_text())
        if info.get("num_samples") == num_samples and info.get("settings") == _settings_key(
            distribution, num_samples, fmt, gen, seed, shard_prompts
        ):
            return load_synthetic_dataset(output_dir)
    shards_dir = output_dir / "shards"
    shards_dir.mkdir(parents=True, exist_ok=True)
    settings = _settings_key(distribution, num_samples, fmt, gen, seed, shard_prompts)
    settings_file = shards_dir / "settings.json"
    state = PartialState()
    if settings_file.is_file():
        if json.loads(settings_file.read_text()) != settings:
            raise ValueError(
                f"{shards_dir} holds shards generated with other settings; use another output_dir or delete it."
            )
    elif state.is_main_process:
        atomic_write_text(settings_file, json.dumps(settings, indent=2))
    state.wait_for_everyone()

    model.eval()
    per_shard = shard_prompts * gen.num_return_sequences
    needed = math.ceil(num_samples / per_shard)
    progress = tqdm(
        total=num_samples,
        unit="sample",
        desc="synthetic",
        disable=not (show_progress and state.is_main_process),
    )
    start = time.time()
    while True:
        for shard in range(needed):
            path = shards_dir / f"shard-{shard:05d}.jsonl"
            if shard % state.num_processes != state.process_index or path.is_file():
                continue
            codes = allocate_prompts(distribution, shard_prompts, seed=_shard_seed(seed, shard))
            with torch.inference_mode():
                rows = _generate_shard(
                    model, tokenizer, fmt, codes, gen, batch_size, _shard_seed(seed, shard) + 1
                )
            atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in rows).encode("utf-8"))
            progress.update(min(len(rows), max(0, num_samples - progress.n)))
            progress.set_postfix(samples_per_s=f"{progress.n / max(time.time() - start, 1e-9):.1f}")
        state.wait_for_everyone()
        rows, report = _assemble(shards_dir, needed, gen, fmt)
        if len(rows) >= num_samples:
            break
        # Filters removed rows: generate further shards (all processes see the same files).
        missing = num_samples - len(rows)
        needed += max(1, math.ceil(missing / max(1, per_shard * len(rows) / max(1, report["generated"]))))
    progress.close()
    rows = rows[:num_samples]
    dataset = Dataset.from_list(rows)
    if state.is_main_process:
        tmp = output_dir / "data" / ".train.parquet.tmp"
        tmp.parent.mkdir(parents=True, exist_ok=True)
        dataset.to_parquet(str(tmp))
        tmp.replace(final)
        report.update(
            {
                "num_samples": num_samples,
                "num_shards": needed,
                "settings": settings,
                "distribution_mode": distribution.mode,
                "leaks_private_data": distribution.leaks_private_data,
            }
        )
        atomic_write_text(output_dir / INFO_FILE, json.dumps(report, indent=2))
    state.wait_for_everyone()
    return dataset


def _assemble(shards_dir: Path, needed: int, gen: SyntheticGenerationConfig, fmt: ControlCodeFormat):
    """Rows of shards 0..needed-1 in order, with the quality filters (empty, too short, exact duplicates)."""
    rows, seen = [], set()
    report = {"generated": 0, "dropped_empty": 0, "dropped_short": 0, "dropped_duplicate": 0}
    for shard in range(needed):
        for line in (shards_dir / f"shard-{shard:05d}.jsonl").read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            report["generated"] += 1
            text = row["text"]
            if not text:
                report["dropped_empty"] += 1
            elif len(text.split()) < gen.min_words:
                report["dropped_short"] += 1
            elif text in seen:
                report["dropped_duplicate"] += 1
            else:
                seen.add(text)
                rows.append(row)
    return rows, report


def load_synthetic_dataset(output_dir: str | Path) -> Dataset:
    """The finished synthetic dataset of `output_dir` (the same file `datasets.load_dataset(repo)` reads)."""
    path = Path(output_dir) / DATA_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"No finished synthetic dataset in {output_dir} (expected {DATA_FILE}); run generation."
        )
    return load_dataset("parquet", data_files=str(path), split="train")
