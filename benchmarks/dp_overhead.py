"""DP-SGD step cost against the non-private step, in one run: step-time and peak-memory ratios per clipping mode.

    python benchmarks/dp_overhead.py            # all shapes below (long on a CPU: about 20 minutes)
    python benchmarks/dp_overhead.py --quick    # the GPT-2 4 x 256 shape only
    python benchmarks/dp_overhead.py --shapes gpt2-12x768-s512 --modes non_dp,bookkeeping

Every (shape, mode) runs in a fresh subprocess with the real `Trainer` (non-DP) or `DPTrainer` (DP) over the
same model, batch and data, and prints one JSON line with its ratios to the non-DP run of the same model:
- time: median step time (the first step is warm-up and dropped), with the system CPU seconds and minor page
  faults per step (the kernel zeroing fresh pages for large tensors; it varies between processes);
- memory: peak RSS of the process (`memory_ratio`), and the peak RSS increase during `train()` over the
  RSS after set-up (`train_memory_ratio`: activations, gradients, per-sample state, optimizer state),
  sampled from /proc every 2 ms; `torch.cuda.max_memory_allocated` instead when run on a GPU.
The DP runs use fixed-size batches (poisson_sampling=False, accountant 'gdp') so every step sees the same
number of examples as the non-DP step; Poisson sampling costs the same per example.
Opacus' ghost clipping refuses tied weights, so `ghost_opacus` runs on an untied model against an untied
non-DP run; every other mode runs on GPT-2 as it is (lm_head tied to wte).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time

#: name -> GPT-2 shape and the batch one step trains on. Batches of the 12 x 768 shapes are small enough to
#: run on a 2-core CPU; vocabulary 50257 everywhere (the tied lm_head dominates memory).
SHAPES = {
    "gpt2-4x256-s128": dict(n_layer=4, n_embd=256, n_head=4, batch=16, seq=128),
    "gpt2-12x768-s128": dict(n_layer=12, n_embd=768, n_head=12, batch=4, seq=128),
    "gpt2-12x768-s512": dict(n_layer=12, n_embd=768, n_head=12, batch=2, seq=512),
}
VOCAB = 50257
#: mode -> (tied embeddings, DPConfig.clipping_mode or None for non-DP, the non-DP mode it is compared with)
MODES = {
    "non_dp": (True, None, "non_dp"),
    "hooks": (True, "hooks", "non_dp"),
    "ghost": (True, "ghost", "non_dp"),
    "bookkeeping": (True, "bookkeeping", "non_dp"),
    "auto": (True, "auto", "non_dp"),
    "non_dp_untied": (False, None, "non_dp_untied"),
    "ghost_opacus": (False, "ghost", "non_dp_untied"),
}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class _PeakRss:
    """Samples the process RSS in a thread (no allocator tracing, which would slow the step)."""

    def __init__(self, interval_s: float = 0.002):
        self.interval_s, self.peak, self._stop = interval_s, _rss_mb(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_mb())
            time.sleep(self.interval_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())


def run_one(shape: str, mode: str, steps: int, bf16: bool) -> dict:
    """One (shape, mode) in this process: median step seconds and peak memory."""
    import torch
    from datasets import Dataset
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        default_data_collator,
    )

    from hf_dpkd.privacy.engine import resolve_clipping_mode
    from hf_dpkd.trainers.dp import DPConfig, DPTrainer

    torch.set_num_threads(int(os.environ.get("DP_BENCH_THREADS", "1")))
    s, (tied, clipping_mode, _) = SHAPES[shape], MODES[mode]
    cuda = torch.cuda.is_available()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(
            n_layer=s["n_layer"],
            n_embd=s["n_embd"],
            n_head=s["n_head"],
            vocab_size=VOCAB,
            n_positions=s["seq"],
            tie_word_embeddings=tied,
        )
    )
    ids = torch.randint(0, VOCAB, (s["batch"] * 4, s["seq"])).tolist()
    data = Dataset.from_dict({"input_ids": ids, "labels": ids})
    common = dict(
        output_dir="/tmp/hf_dpkd_dp_overhead",
        per_device_train_batch_size=s["batch"],
        use_cpu=not cuda,
        bf16=bf16,
        report_to=[],
        max_steps=steps,
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    if clipping_mode is None:
        trainer = Trainer(
            model=model,
            args=TrainingArguments(**common),
            train_dataset=data,
            data_collator=default_data_collator,
        )
    else:
        args = DPConfig(
            **common,
            noise_multiplier=1.0,
            clipping_mode=clipping_mode,
            max_physical_batch_size=s["batch"],
            poisson_sampling=False,
            accountant="gdp",
        )
        trainer = DPTrainer(model=model, args=args, train_dataset=data, data_collator=default_data_collator)
    times: list[float] = []
    system: list[tuple[float, int]] = []  # (system CPU seconds, minor page faults) of each step

    class StepTimer(TrainerCallback):
        start = 0.0
        usage = None

        def on_step_begin(self, *a, **k):
            if cuda:
                torch.cuda.synchronize()
            StepTimer.usage = resource.getrusage(resource.RUSAGE_SELF)
            StepTimer.start = time.perf_counter()

        def on_step_end(self, *a, **k):
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - StepTimer.start)
            now, then = resource.getrusage(resource.RUSAGE_SELF), StepTimer.usage
            system.append((now.ru_stime - then.ru_stime, now.ru_minflt - then.ru_minflt))

    trainer.add_callback(StepTimer())
    before = _rss_mb()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        before_cuda = torch.cuda.memory_allocated() / 2**20
    with _PeakRss() as peak:
        trainer.train()
    measured = sorted(times[1:])
    out = {
        "median_step_s": measured[len(measured) // 2],
        # the kernel's share of a step: mostly zeroing fresh pages for large tensors (glibc mmaps them)
        "system_s_per_step": sum(s for s, _ in system[1:]) / len(system[1:]),
        "page_faults_per_step": sum(f for _, f in system[1:]) // len(system[1:]),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "train_peak_mb": peak.peak - before,
        "resolved_mode": resolve_clipping_mode(model, clipping_mode) if clipping_mode else None,
        "device": torch.cuda.get_device_name() if cuda else f"cpu, {torch.get_num_threads()} thread(s)",
    }
    if cuda:
        out["peak_rss_mb"] = torch.cuda.max_memory_allocated() / 2**20
        out["train_peak_mb"] = out["peak_rss_mb"] - before_cuda
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="the GPT-2 4 x 256 shape only")
    parser.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, from {list(SHAPES)}")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, from {list(MODES)}")
    parser.add_argument("--steps", type=int, default=4, help="training steps per run (the first is warm-up)")
    parser.add_argument(
        "--repeats", type=int, default=1, help="rounds over all modes; each mode keeps its fastest round"
    )
    parser.add_argument(
        "--bf16", action="store_true", help="bf16 mixed precision (where the hardware has it)"
    )
    parser.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats={args.repeats} must be >= 1")
    if args.steps < 2:
        parser.error(f"--steps={args.steps} must be >= 2 (the first step is warm-up and not timed)")
    if args._child:
        print(json.dumps(run_one(args._child[0], args._child[1], args.steps, args.bf16)))
        return
    shapes = ["gpt2-4x256-s128"] if args.quick else args.shapes.split(",")
    modes = args.modes.split(",")
    for name in shapes + modes:
        if name not in SHAPES and name not in MODES:
            parser.error(f"{name!r} is neither a shape {list(SHAPES)} nor a mode {list(MODES)}")
    modes = modes + [MODES[m][2] for m in modes if MODES[m][2] not in modes]  # each baseline runs too
    for shape in shapes:
        results: dict[str, dict] = {}
        for _ in range(args.repeats):  # interleaved rounds: a busy spell on a shared machine hits every mode
            for mode in modes:
                cmd = [sys.executable, __file__, "--steps", str(args.steps), "--_child", shape, mode]
                out = subprocess.run(cmd + (["--bf16"] if args.bf16 else []), capture_output=True, text=True)
                if out.returncode != 0:
                    raise SystemExit(f"{shape} / {mode} failed:\n{out.stderr[-3000:]}")
                r = json.loads(out.stdout.strip().splitlines()[-1])
                if mode not in results or r["median_step_s"] < results[mode]["median_step_s"]:
                    results[mode] = r
        for mode in modes:
            r, base = results[mode], results[MODES[mode][2]]
            line = {
                "shape": shape,
                **{k: v for k, v in SHAPES[shape].items()},
                "vocab": VOCAB,
                "mode": mode,
                "device": r["device"],
                "resolved_mode": r["resolved_mode"],
                "tied_embeddings": MODES[mode][0],
                "baseline": MODES[mode][2],
                "bf16": args.bf16,
                "repeats": args.repeats,
                "median_step_s": round(r["median_step_s"], 4),
                "system_s_per_step": round(r["system_s_per_step"], 3),
                "page_faults_per_step": r["page_faults_per_step"],
                "peak_rss_mb": round(r["peak_rss_mb"], 1),
                "train_peak_mb": round(r["train_peak_mb"], 1),
                "time_ratio": round(r["median_step_s"] / base["median_step_s"], 3),
                "memory_ratio": round(r["peak_rss_mb"] / base["peak_rss_mb"], 3),
                "train_memory_ratio": round(r["train_peak_mb"] / max(base["train_peak_mb"], 1e-9), 3),
            }
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
