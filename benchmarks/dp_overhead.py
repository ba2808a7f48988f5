"""DP-SGD step cost against the non-private step, in one run: step-time and peak-memory ratios.

    python benchmarks/dp_overhead.py            # GPT-2 shape: 4 layers x 256, vocab 50257, batch 16, seq 128
    python benchmarks/dp_overhead.py --quick    # a small shape, for a smoke run

Each mode runs in a fresh subprocess (so peak RSS is its own) over the same model, batch and data, with
the real Trainer / DPTrainer training_step; prints one JSON line per mode with its ratios to non-DP.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

SHAPES = {
    "gpt2-4x256": dict(n_layer=4, n_embd=256, n_head=4, vocab_size=50257, batch=16, seq=128),
    "tiny": dict(n_layer=2, n_embd=64, n_head=2, vocab_size=4096, batch=16, seq=64),
}
#: (mode, tied embeddings, the non-DP run it is compared with). Ghost clipping cannot clip tied weights,
#: so it is compared with an untied non-DP model of the same shape.
MODES = [
    ("non_dp", True, "non_dp"),
    ("hooks", True, "non_dp"),
    ("non_dp_untied", False, "non_dp_untied"),
    ("ghost", False, "non_dp_untied"),
]


def run_one(shape: str, mode: str, steps: int) -> dict:
    import torch
    from datasets import Dataset
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments, default_data_collator

    from hf_dpkd import DPConfig, DPTrainer

    torch.set_num_threads(1)
    s = SHAPES[shape]
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(
            n_layer=s["n_layer"],
            n_embd=s["n_embd"],
            n_head=s["n_head"],
            vocab_size=s["vocab_size"],
            n_positions=s["seq"],
            tie_word_embeddings=mode in ("non_dp", "hooks"),
        )
    )
    ids = torch.randint(0, s["vocab_size"], (s["batch"] * 4, s["seq"])).tolist()
    data = Dataset.from_dict({"input_ids": ids, "labels": ids})
    common = dict(
        output_dir="/tmp/dp_overhead",
        per_device_train_batch_size=s["batch"],
        use_cpu=True,
        report_to=[],
        max_steps=steps,
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
    )
    if mode.startswith("non_dp"):
        trainer = Trainer(
            model=model,
            args=TrainingArguments(**common),
            train_dataset=data,
            data_collator=default_data_collator,
        )
    else:
        args = DPConfig(
            **common, noise_multiplier=1.0, clipping_mode=mode, max_physical_batch_size=s["batch"]
        )
        trainer = DPTrainer(model=model, args=args, train_dataset=data, data_collator=default_data_collator)
    times = []

    from transformers import TrainerCallback

    class Timer:
        t = 0.0

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            Timer.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - Timer.t)

    trainer.add_callback(StepTimer())
    trainer.train()
    measured = sorted(times[1:])  # drop the warm-up step
    return {
        "median_step_s": measured[len(measured) // 2],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        print(json.dumps(run_one(args._child[0], args._child[1], args.steps)))
        return
    shapes = ["tiny"] if args.quick else ["gpt2-4x256"]
    for shape in shapes:
        results = {}
        for mode, _, _ in MODES:
            out = subprocess.run(
                [sys.executable, __file__, "--steps", str(args.steps), "--_child", shape, mode],
                capture_output=True,
                text=True,
                check=True,
            )
            results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        for mode, tied, baseline in MODES:
            r, base = results[mode], results[baseline]
            print(
                json.dumps(
                    {
                        "tied_embeddings": tied,
                        "baseline": baseline,
                        "shape": shape,
                        "mode": mode,
                        "median_step_s": round(r["median_step_s"], 4),
                        "peak_rss_mb": round(r["peak_rss_mb"], 1),
                        "time_ratio_vs_non_dp": round(r["median_step_s"] / base["median_step_s"], 3),
                        "memory_ratio_vs_non_dp": round(r["peak_rss_mb"] / base["peak_rss_mb"], 3),
                    }
                )
            )


if __name__ == "__main__":
    main()
