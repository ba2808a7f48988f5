"""Synthetic generation throughput, in one run over the same teacher and the same prompts:

(a) one prompt at a time with ``model.generate`` (2 sequences per prompt),
(b) naive batched ``generate`` as reference scripts do it: batches of 64 prompts in allocation order (codes
    mixed), padded by the tokenizer to the longest prompt of the batch, 2 sequences per prompt, the
    library's no-repeat-n-gram processor,
(c) ``generate_synthetic_dataset`` (length-sorted batches of 64 prompts, per-row length budget, shards of 256;
    finished rows leave the batch and the KV cache),
(e) (c) with every row decoded until the last row of its batch stops, as ``generate`` does (ratio c/e: what
    dropping finished rows saves; it depends on how much the sample lengths vary),
(d) the decode-step bound of (c): the time (c) spends inside the model's forward (prefill, then one token
    per step on the KV cache, at (c)'s own batch sizes and KV lengths), timed around each forward while (c)
    runs, so both meet the same machine load. (d)'s tokens/s is (c)'s token count over those seconds, and
    ``c_share_of_bound`` = seconds(d) / seconds(c) the share of (c)'s time spent in the forward; the rest
    (sampling, processors, stopping checks, input preparation, decoding to text) is what a faster loop
    could save.

All use the pipeline's sampling settings (``--sampling default``: the teacher's distribution as it is, no
truncation) or the paper's (``--sampling paper``: top_k 50, top_p 0.9, no_repeat_ngram_size 2), with the
pipeline's max_length 128. Prints one JSON line per method (generated tokens/s, samples/s) and the ratios c/a, c/b, c/e. Generated
tokens are counted the same way for all three: new tokens up to the first eos/pad, within the prompt's
own max_length budget.

    python benchmarks/generation_throughput.py [--prompts 256] [--quick] [--model demo|gpt2_124m]
        [--sampling default|paper]

``--model demo``: the public base teacher shipped with the package (4 x 128, pretrained on the demo's public
reviews, so its samples end where reviews end). ``--model gpt2_124m``: GPT-2 124M's shape (12 layers, width 768, 12 heads; random weights) over the demo
tokenizer's 1,024-token vocabulary, where the forward, not Python, dominates a decode step.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", type=int, default=256, help="Prompts (2 samples each) for (b) and (c).")
    parser.add_argument("--quick", action="store_true", help="64 prompts.")
    parser.add_argument(
        "--model",
        choices=("demo", "gpt2_124m"),
        default="demo",
        help="The shipped public base teacher (4 x 128) or GPT-2 124M's shape with random weights.",
    )
    parser.add_argument("--max_length", type=int, default=128, help="Tokens per sample, prompt included.")
    parser.add_argument(
        "--sampling",
        choices=("default", "paper"),
        default="default",
        help="The pipeline's sampling (no truncation) or the paper's (top_k 50, top_p 0.9, no repeated 2-grams).",
    )
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import hf_dpkd.synthetic.generation_loop as generation_loop
    import hf_dpkd.synthetic.generation_shards as generation_shards
    from hf_dpkd.data.base_model_cache import SHIPPED
    from hf_dpkd.data.demo import CONTROL_FIELDS, make_demo_dataset
    from hf_dpkd.data.models import demo_config
    from hf_dpkd.privacy.histogram import allocate_prompts, uniform_distribution
    from hf_dpkd.synthetic import generation
    from hf_dpkd.synthetic.control_codes import ControlCodeFormat

    torch.set_num_threads(1)
    torch.manual_seed(0)
    demo = make_demo_dataset(num_train=200, num_public=1000)
    tok = AutoTokenizer.from_pretrained(SHIPPED / "teacher")
    if args.model == "demo":
        model = AutoModelForCausalLM.from_pretrained(SHIPPED / "teacher").eval()
    else:  # GPT-2 124M's layers and heads over the demo vocabulary (random weights: throughput only)
        from transformers import GPT2LMHeadModel

        config = demo_config(tok, "teacher", "12x768")
        config.n_head = 12
        model = GPT2LMHeadModel(config).eval()
    fmt = ControlCodeFormat(fields=tuple(CONTROL_FIELDS.items()))
    dist = uniform_distribution(fmt, demo.domain)
    n_prompts = 64 if args.quick else args.prompts
    # the default 256 (several batches per shard, sorted by prompt length), never more than the prompts asked:
    # (c) then generates exactly the prompts (a) and (b) do
    shard_size, seed = min(256, n_prompts), 0
    settings = dict(max_length=args.max_length, min_words=0)
    gen = (
        generation.SyntheticGenerationConfig.paper(**settings)
        if args.sampling == "paper"
        else generation.SyntheticGenerationConfig(**settings)
    )
    # the exact prompts (c) will draw, shard by shard
    codes = [
        c
        for shard in range(-(-n_prompts // shard_size))
        for c in allocate_prompts(dist, shard_size, seed=generation._shard_seed(seed, shard))
    ][:n_prompts]
    prompts = [fmt.format_prompt(fmt.record_of(c)) for c in codes]
    stop = {tok.eos_token_id, tok.pad_token_id}
    kw = dict(
        do_sample=True,
        top_k=gen.top_k,
        top_p=gen.top_p,
        temperature=gen.temperature,
        no_repeat_ngram_size=gen.no_repeat_ngram_size,
        max_length=gen.max_length,
        num_return_sequences=gen.num_return_sequences,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    counted = {"tokens": 0, "samples": 0}

    def count(out: torch.Tensor, width: int, prompt_lens: list[int]) -> None:
        r = out.shape[0] // len(prompt_lens)
        for j, row in enumerate(out[:, width:].tolist()):
            row = row[: gen.max_length - prompt_lens[j // r]]
            counted["tokens"] += next((k for k, t in enumerate(row) if t in stop), len(row))
            counted["samples"] += 1

    def timed(name: str, fn) -> dict:
        counted.update(tokens=0, samples=0)
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        line = {
            "method": name,
            "tokens_per_s": round(counted["tokens"] / elapsed, 1),
            "samples_per_s": round(counted["samples"] / elapsed, 2),
            "samples": counted["samples"],
            "tokens": counted["tokens"],
            "seconds": round(elapsed, 2),
        }
        print(json.dumps(line), flush=True)
        return line

    def one_at_a_time():  # a quarter of the prompts: this path is slow
        with torch.inference_mode():
            for p in prompts[: max(8, n_prompts // 4)]:
                enc = tok(p, return_tensors="pt")
                width = enc["input_ids"].shape[1]
                count(model.generate(**enc, **kw), width, [width])

    def naive_batched():
        side = tok.padding_side
        tok.padding_side = "left"  # right padding would sample after the pads
        try:
            with torch.inference_mode():
                for i in range(0, n_prompts, 64):
                    batch = prompts[i : i + 64]
                    enc = tok(batch, return_tensors="pt", padding=True)
                    lens = [len(tok(p)["input_ids"]) for p in batch]
                    count(model.generate(**enc, **kw), enc["input_ids"].shape[1], lens)
        finally:
            tok.padding_side = side

    bound = {"seconds": 0.0, "calls": 0}

    def ours(keep_rows: bool = False):
        forward, sample_rows = model.forward, generation_shards.sample_rows
        share = generation_loop.COMPACT_SHARE

        def timed_forward(*a, **k):  # (d): the model's own forwards inside (c), timed as they run
            start = time.perf_counter()
            out = forward(*a, **k)
            bound["seconds"] += time.perf_counter() - start
            bound["calls"] += 1
            return out

        def counting(model, input_ids, mask, *a, **k):
            rows = sample_rows(model, input_ids, mask, *a, **k)
            lens = mask.sum(1).tolist()
            for j, row in enumerate(rows):
                row = row[: gen.max_length - lens[j]]
                counted["tokens"] += next((i for i, t in enumerate(row) if t in stop), len(row))
                counted["samples"] += 1
            return rows

        if not keep_rows:
            model.forward = timed_forward
        else:  # (e): a share above 1 never drops a row before the whole batch has stopped
            generation_loop.COMPACT_SHARE = 2.0
        generation_shards.sample_rows = counting
        try:
            made.append(
                generation.generate_synthetic_dataset(
                    model,
                    tok,
                    dist,
                    n_prompts * gen.num_return_sequences,
                    f"{workdir}/{len(made)}",
                    fmt=fmt,
                    generation=gen,
                    seed=seed,
                    batch_size=64,
                    shard_size=shard_size,
                    filters=[],
                    show_progress=False,
                )
            )
        finally:
            model.__dict__.pop("forward", None)
            generation_shards.sample_rows, generation_loop.COMPACT_SHARE = sample_rows, share

    made, workdir = [], tempfile.mkdtemp()  # (c)'s and (e)'s datasets, checked outside the timing
    a = timed("a_one_at_a_time", one_at_a_time)
    b = timed("b_naive_batched", naive_batched)
    c = timed("c_ours", ours)
    e = timed("e_ours_rows_kept_until_batch_ends", lambda: ours(keep_rows=True))
    for ds in made:
        assert sorted(zip(ds["category"], ds["stars"])) == sorted(
            (c[0], c[1]) for c in codes for _ in range(gen.num_return_sequences)
        )  # the same prompts as (a) and (b)
    shutil.rmtree(workdir)
    bound_s = bound["seconds"]
    d = {
        "method": "d_decode_step_bound",
        "tokens_per_s": round(c["tokens"] / bound_s, 1),
        "seconds": round(bound_s, 2),
        "forwards": bound["calls"],
    }
    print(json.dumps(d), flush=True)
    print(
        json.dumps(
            {
                "model": args.model,
                "ratio_c_over_a": round(c["tokens_per_s"] / a["tokens_per_s"], 2),
                "ratio_c_over_b": round(c["tokens_per_s"] / b["tokens_per_s"], 2),
                "ratio_c_over_e": round(c["tokens_per_s"] / e["tokens_per_s"], 2),
                "c_share_of_bound": round(bound_s / c["seconds"], 2),
                "prompts": n_prompts,
                "sampling": args.sampling,
                "device": "cpu, 1 thread",
            }
        )
    )


if __name__ == "__main__":
    main()
