"""Why does (or doesn't) the DistilDP student beat the DP-SGD student? One factor at a time, on VALIDATION data.

    python benchmarks/distildp_diagnosis.py --base runs/diag/base [--variants default,no_repeat_0,...]

`--base` is a finished run of the demo (stages data, histogram, teacher, and the dp_sgd_student). Each
variant re-uses its data, base models, control-code histogram and DP teacher (one DP draw shared by every
variant, so the variants differ only in the factor measured), re-generates the synthetic data and
re-trains the students with the variant's settings (post-processing: no privacy cost), then scores every
model on the private VALIDATION split. The test split is never read: settings are chosen here, and the
test numbers are reported once, by the pipeline, for the chosen defaults.

Prints one JSON line per (variant, model) and writes `<base>/diagnosis.md`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: variant -> command-line overrides of the demo, each changing one factor against "default".
VARIANTS: dict[str, list[str]] = {
    "default": [],
    "no_repeat_0": ["--no_repeat_ngram_size", "0"],
    "ancestral": ["--no_repeat_ngram_size", "0", "--top_k", "0", "--top_p", "1.0"],
    "ancestral_kd_0.8": [
        "--no_repeat_ngram_size",
        "0",
        "--top_k",
        "0",
        "--top_p",
        "1.0",
        "--kd_lambda",
        "0.8",
    ],
    "ancestral_kd_1.0": [
        "--no_repeat_ngram_size",
        "0",
        "--top_k",
        "0",
        "--top_p",
        "1.0",
        "--kd_lambda",
        "1.0",
    ],
    "ancestral_9000": [
        "--no_repeat_ngram_size",
        "0",
        "--top_k",
        "0",
        "--top_p",
        "1.0",
        "--num_synthetic_samples",
        "9000",
    ],
}
ANCESTRAL = ["--no_repeat_ngram_size", "0", "--top_k", "0", "--top_p", "1.0"]
VARIANTS.update(
    {
        "ancestral_kd_1.0_epochs_6": ANCESTRAL + ["--kd_lambda", "1.0", "--student_epochs", "6"],
        "ancestral_kd_1.0_9000": ANCESTRAL + ["--kd_lambda", "1.0", "--num_synthetic_samples", "9000"],
        # the same student steps as 3,000 texts x 3 epochs, but every text fresh
        "ancestral_9000_epochs_1": ANCESTRAL + ["--num_synthetic_samples", "9000", "--student_epochs", "1"],
        "ancestral_9000_epochs_2": ANCESTRAL + ["--num_synthetic_samples", "9000", "--student_epochs", "2"],
        "ancestral_kd_1.0_9000_epochs_1": ANCESTRAL
        + ["--kd_lambda", "1.0", "--num_synthetic_samples", "9000", "--student_epochs", "1"],
        "ancestral_kd_1.0_lr_5e-3": ANCESTRAL + ["--kd_lambda", "1.0", "--student_learning_rate", "5e-3"],
        "ancestral_kd_1.0_t_2": ANCESTRAL + ["--kd_lambda", "1.0", "--kd_temperature", "2.0"],
        "ancestral_kd_1.0_hidden": ANCESTRAL + ["--kd_lambda", "1.0", "--alpha_hidden", "1.0"],
        "ancestral_kd_1.0_reverse_kl": ANCESTRAL + ["--kd_lambda", "1.0", "--kd_loss", "reverse_kl"],
    }
)
SHARED = ("data", "base", "histogram", "teacher")


def clone_base(base: Path, out: Path) -> None:
    """A run directory holding the base run's finished data, histogram and teacher stages (copied)."""
    if out.exists():
        shutil.rmtree(out)
    (out / "stages").mkdir(parents=True)
    for name in SHARED:
        if (base / name).exists():
            shutil.copytree(base / name, out / name)
        if (base / "stages" / f"{name}.json").is_file():
            shutil.copy(base / "stages" / f"{name}.json", out / "stages" / f"{name}.json")
    if (base / "secrets").exists():
        shutil.copytree(base / "secrets", out / "secrets")


def validation_perplexities(run: Path, methods: list[str]) -> dict[str, float]:
    from datasets import load_from_disk

    from hf_dpkd.evaluation import perplexity
    from hf_dpkd.pipeline import load_model_and_tokenizer

    texts = list(load_from_disk(str(run / "data" / "private"))["validation"]["text"])
    out = {}
    for name in methods:
        path = run / ("teacher" if name == "teacher" else f"students/{name}") / "final"
        if not (path / "config.json").is_file():
            continue
        model, tokenizer = load_model_and_tokenizer(path)
        out[name] = perplexity(model, tokenizer, texts, window=128)["perplexity"]
    return out


def synthetic_quality(run: Path) -> dict[str, float]:
    """The headline numbers of the synthetic data's quality report (vs the validation split), if written."""
    from hf_dpkd.synthetic.quality import quality_summary

    path = run / "synthetic" / "quality.json"
    if not path.is_file():
        return {}
    return {k: round(v, 4) for k, v in quality_summary(json.loads(path.read_text())).items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--extra", default="", help="Overrides added to every variant (space separated).")
    args = parser.parse_args(argv)
    base = args.base.resolve()
    rows = []
    reference = validation_perplexities(base, ["teacher", "dp_sgd_student"])
    for name, ppl in reference.items():
        row = {"variant": "base", "model": name, "validation_perplexity": round(ppl, 3)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    for variant in args.variants.split(","):
        run = base.parent / f"{base.name}__{variant}"
        clone_base(base, run)
        command = [sys.executable, str(ROOT / "examples" / "run_dpkd.py"), "--run_dir", str(run)]
        command += ["--stages", "generate,students", "--methods", "distildp,dp_syn_data"]
        command += VARIANTS[variant] + args.extra.split()
        start = time.time()
        proc = subprocess.run(command, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return proc.returncode
        seconds = round(time.time() - start, 1)
        quality = synthetic_quality(run)
        for name, ppl in validation_perplexities(run, ["distildp", "dp_syn_data"]).items():
            row = {
                "variant": variant,
                "model": name,
                "validation_perplexity": round(ppl, 3),
                "seconds": seconds,
            }
            row.update(quality)
            print(json.dumps(row), flush=True)
            rows.append(row)
    keys = ["unigram_js", "bigram_js", "distinct_2", "reference_perplexity", "control_code_accuracy"]
    lines = [
        "| variant | model | validation perplexity | " + " | ".join(keys) + " |",
        "|---|---|---:|" + "---:|" * len(keys),
    ]
    for r in rows:
        cells = [f"{r[k]:.3g}" if isinstance(r.get(k), float) else "" for k in keys]
        lines.append(
            f"| {r['variant']} | {r['model']} | {r['validation_perplexity']:.2f} | "
            + " | ".join(cells)
            + " |"
        )
    (base / "diagnosis.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
