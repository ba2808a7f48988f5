"""In which regime does DistilDP beat the DP-SGD student? Whole demo runs per setting, scored on VALIDATION data.

    python benchmarks/distildp_regime.py --out runs/regime --settings coverage_0,coverage_0.5,n_10000

Where `benchmarks/distildp_diagnosis.py` varies post-processing settings under one DP teacher, this script
varies what the private run itself depends on: the private set size N, how much of the private domain's
language public pretraining covers, public pretraining steps, the teacher / student sizes. Each setting is a full demo run (data, DP
histogram, DP teacher, generation, students; one DP draw each) in `<out>/<setting>`, scored on the private
VALIDATION split (the test split is never read here). Besides the DP models it scores the public base
teacher and student, which never saw private data: the floor any private method must beat.

Prints one JSON line per (setting, model) and writes `<out>/regime.md`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from distildp_diagnosis import validation_perplexities  # noqa: E402

#: setting -> command-line overrides of the demo, one factor at a time against the demo's defaults.
SETTINGS: dict[str, list[str]] = {
    # The demo's default coverage is 0.1 (settings that name no coverage run at 0.1).
    "coverage_0": ["--demo_public_coverage", "0"],
    "coverage_0.1": ["--demo_public_coverage", "0.1"],
    "coverage_0.2": ["--demo_public_coverage", "0.2"],
    "coverage_0.5": ["--demo_public_coverage", "0.5"],
    "coverage_1": ["--demo_public_coverage", "1.0"],
    "n_10000": ["--demo_num_train", "10000"],
    "coverage_0.5_n_10000": ["--demo_public_coverage", "0.5", "--demo_num_train", "10000"],
    "pretrain_600": ["--pretrain_steps", "600"],
    # teacher / student capacity: 940K / 174K parameters (5.4x) by default; the paper distils 9.4x
    "student_2x48": ["--demo_student_shape", "2x48"],  # 111K parameters: 8.5x
    "teacher_6x192": ["--demo_teacher_shape", "6x192"],  # 2.9M parameters: 16.6x
    "coverage_0.5_pretrain_600": ["--demo_public_coverage", "0.5", "--pretrain_steps", "600"],
}
MODELS = ("base_teacher", "base_student", "teacher", "distildp", "dp_syn_data", "dp_sgd_student")


def score(run: Path) -> dict[str, float]:
    """Validation perplexity of every model of `run`, the public base models included."""
    from datasets import load_from_disk

    from hf_dpkd.evaluation import perplexity
    from hf_dpkd.pipeline import load_model_and_tokenizer

    out = validation_perplexities(run, ["teacher", "distildp", "dp_syn_data", "dp_sgd_student"])
    texts = list(load_from_disk(str(run / "data" / "private"))["validation"]["text"])
    for kind in ("teacher", "student"):
        path = run / "base" / kind
        if (path / "config.json").is_file():
            model, tokenizer = load_model_and_tokenizer(path)
            out[f"base_{kind}"] = perplexity(model, tokenizer, texts, window=128)["perplexity"]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/regime"))
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--extra", default="", help="Overrides added to every setting (space separated).")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    rows = []
    for name in args.settings.split(","):
        if name not in SETTINGS:
            parser.error(f"--settings: unknown setting {name!r}; known: {', '.join(SETTINGS)}")
        run = out / name
        command = [sys.executable, str(ROOT / "examples" / "run_dpkd.py"), "--run_dir", str(run)]
        command += ["--stages", "data,histogram,teacher,generate,students"]
        command += ["--methods", "distildp,dp_syn_data,dp_sgd_student"]
        command += SETTINGS[name] + args.extra.split()
        start = time.time()
        proc = subprocess.run(command, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return proc.returncode
        seconds = round(time.time() - start, 1)
        ppl = score(run)
        row = {"setting": name, "seconds": seconds}
        row.update({m: round(ppl[m], 2) for m in MODELS if m in ppl})
        print(json.dumps(row), flush=True)
        rows.append(row)
    lines = [
        "| setting | " + " | ".join(MODELS) + " | seconds |",
        "|---|" + "---:|" * (len(MODELS) + 1),
    ]
    for r in rows:
        lines.append(
            f"| {r['setting']} | "
            + " | ".join(f"{r[m]:.2f}" if m in r else "" for m in MODELS)
            + f" | {r['seconds']} |"
        )
    (out / "regime.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
