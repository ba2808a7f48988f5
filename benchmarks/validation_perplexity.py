"""Validation perplexity of a run's DP teacher and of its public base teacher, with the teacher stage's seconds;
with --students, also of every student the run trained (students/<method>/final) and of the public base student.

The pipeline's evaluate stage reports test perplexity; comparisons that choose a setting (docs/performance.md:
full vs LoRA DP teacher; docs/results.md: training without dropout) read the validation split instead:

    python benchmarks/validation_perplexity.py runs/lora_cmp/full runs/lora_cmp/lora
    python benchmarks/validation_perplexity.py --students runs/rep3/draws/draw-*

One JSON line per run directory (a LoRA teacher folder is merged into the run's base/teacher first).
"""

import argparse
import json
from pathlib import Path

from datasets import load_from_disk

from hf_dpkd.evaluation import perplexity
from hf_dpkd.pipeline import load_model_and_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument(
        "--window", type=int, default=128, help="perplexity window (the demo's protocol: 128)"
    )
    parser.add_argument("--students", action="store_true", help="Also every student of the run.")
    args = parser.parse_args()
    for run in args.run_dirs:
        texts = list(load_from_disk(str(run / "data" / "private"))["validation"]["text"])
        stage = json.loads((run / "stages" / "teacher.json").read_text())
        out = {"run": str(run), "teacher_stage_seconds": stage["seconds"]}
        base = run / "base" / "teacher"
        models = [("teacher", run / "teacher" / "final", base), ("base_teacher", base, base)]
        if args.students:
            student_base = run / "base" / "student"
            finals = sorted((run / "students").glob("*/final"))
            models += [(f.parent.name, f, student_base) for f in finals] + [
                ("base_student", student_base, None)
            ]
        for name, path, base_of in models:
            model, tokenizer = load_model_and_tokenizer(path, base=base_of)
            out[name] = perplexity(model, tokenizer, texts, window=args.window)["perplexity"]
        report = json.loads((run / "teacher" / "final" / "privacy_report.json").read_text())
        out.update({k: report[k] for k in ("epsilon", "noise_multiplier", "steps", "sample_rate")})
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
