"""Stage generate: control-coded synthetic data sampled from the DP teacher (post-processing: it inherits the
teacher's and the histogram's ledger), its dataset card, and a local quality report against private text."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datasets import Dataset

from hf_dpkd.pipeline.loading import load_model_and_tokenizer
from hf_dpkd.workers import resolve_cpu_workers

if TYPE_CHECKING:
    from hf_dpkd.pipeline.context import RunContext

logger = logging.getLogger(__name__)

#: Texts drawn from each side for the quality report, and records scored for control-code fidelity
#: (50 codes each on the demo): about 7 s added to the demo's generate stage on one CPU thread.
QUALITY_RECORDS = 300
QUALITY_FIDELITY_RECORDS = 32


def run(ctx: RunContext) -> dict[str, Any]:
    from hf_dpkd.hub import write_dataset_card
    from hf_dpkd.synthetic.generation import (
        generate_synthetic_dataset,
        load_synthetic_dataset,
    )

    c, g = ctx.config, ctx.config.generation
    if g.synthetic_data:
        return {
            "source": g.synthetic_data,
            "num_samples": len(load_synthetic_dataset(ctx.synthetic_dir())),
        }
    teacher_dir = ctx.teacher_dir()
    model, tokenizer = load_model_and_tokenizer(teacher_dir, base=ctx.base_path("teacher"))
    gen = g.generation_config()
    out = ctx.run / "synthetic"
    dataset = generate_synthetic_dataset(
        model,
        tokenizer,
        ctx.control_distribution(),
        g.num_synthetic_samples,
        out,
        fmt=ctx.fmt(),
        generation=gen,
        seed=c.pipeline.seed,
        batch_size=g.generation_batch_size,
        cpu_workers=resolve_cpu_workers(c.pipeline.cpu_workers),
    )
    ledger = ctx.teacher_ledger()
    ledger.save(out)
    quality = _synthetic_quality(ctx, dataset, model, tokenizer, out)
    write_dataset_card(
        out,
        source_model=str(teacher_dir),
        ledger=ledger,
        control_code_mode=_card_code_mode(ctx),
        generation_config=vars(gen) if hasattr(gen, "__dict__") else dict(gen),
        num_samples=len(dataset),
        control_fields=[col for col, _ in ctx.fmt().fields],
        quality=quality if g.quality_in_card else None,
    )
    result: dict[str, Any] = {"num_samples": len(dataset)}
    if quality is not None:
        from hf_dpkd.synthetic.quality import quality_summary

        result["quality"] = {**quality_summary(quality), "seconds": quality["seconds"]}
    return result


def _synthetic_quality(
    ctx: RunContext, dataset: Dataset, model, tokenizer, out: Path
) -> dict[str, Any] | None:
    """The quality report of the synthetic data vs the PRIVATE validation split (never test), written to
    `out`/quality.json and quality.md (local: not in the push patterns). None when it cannot be computed."""
    from hf_dpkd.synthetic.quality import quality_report, write_quality_report

    start = time.time()
    data = ctx.data()
    real = list(data["validation"]["text"]) if "validation" in data else []
    try:
        reference, reference_tokenizer = load_model_and_tokenizer(ctx.base_path("teacher"))
        report = quality_report(
            dataset,
            real or None,
            tokenizer,
            reference_model=reference,
            reference_tokenizer=reference_tokenizer,
            fidelity_model=model,  # the DP teacher: post-processing of a DP model
            fmt=ctx.fmt(),
            codes=ctx.control_distribution().codes,
            max_records=QUALITY_RECORDS,
            fidelity_records=QUALITY_FIDELITY_RECORDS,
            seed=ctx.config.pipeline.seed,
        )
    except ValueError as e:  # a diagnostic: it never fails the stage whose data is finished
        logger.warning("synthetic data quality report skipped: %s", e)
        print(f"WARNING: synthetic data quality report skipped: {e}", flush=True)
        return None
    report["seconds"] = round(time.time() - start, 2)
    write_quality_report(report, out)
    m = report["metrics"]
    line = f"distinct-2 {m['distinct_2']['synthetic']:.3f}, self-BLEU {m['self_bleu']['synthetic']:.3f}"
    if "unigram_js" in m:
        line = f"unigram JS {m['unigram_js']:.3f}, bigram JS {m['bigram_js']:.3f}, " + line
    fid = m["control_code_fidelity"]
    against = (
        "vs PRIVATE validation text, local, not covered by the guarantee"
        if real
        else "no validation split: synthetic side only"
    )
    print(
        f"    synthetic quality ({report['seconds']:.1f} s; {out / 'quality.md'}; {against}): {line}, "
        f"control-code accuracy {fid['accuracy']:.2f} (chance {fid['chance']:.2f})",
        flush=True,
    )
    return report


def _card_code_mode(ctx: RunContext) -> str:
    return {"dp": "dp_histogram", "uniform": "uniform", "exact": "exact"}[
        ctx.config.data.control_code_distribution
    ]
