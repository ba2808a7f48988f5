"""Synthetic generation throughput, in one run over the same teacher and prompts:
(a) one prompt at a time with model.generate, (b) naive batched generate as reference scripts do (batch 64,
mixed codes, padded, 2 sequences per prompt), (c) generate_synthetic_dataset. Generated tokens/s and ratios.

    python benchmarks/generation_throughput.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    from hf_dpkd.data.demo import CONTROL_FIELDS, make_demo_dataset
    from hf_dpkd.data.models import demo_model, train_demo_tokenizer
    from hf_dpkd.privacy.histogram import allocate_prompts, uniform_distribution
    from hf_dpkd.synthetic.control_codes import ControlCodeFormat
    from hf_dpkd.synthetic.generation import SyntheticGenerationConfig, generate_synthetic_dataset

    torch.set_num_threads(1)
    demo = make_demo_dataset(num_train=200, num_public=1000)
    tok = train_demo_tokenizer(list(demo.dataset["public"]["text"]))
    model = demo_model(tok, "teacher").eval()
    fmt = ControlCodeFormat(fields=tuple(CONTROL_FIELDS.items()))
    dist = uniform_distribution(fmt, demo.domain)
    n_prompts = 32 if args.quick else 128
    gen = SyntheticGenerationConfig(max_length=64, min_words=0)
    kw = dict(
        do_sample=True,
        top_k=gen.top_k,
        top_p=gen.top_p,
        no_repeat_ngram_size=gen.no_repeat_ngram_size,
        max_length=gen.max_length,
        num_return_sequences=2,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    prompts = [
        fmt.format_prompt(dict(zip(fmt.columns, c))) for c in allocate_prompts(dist, n_prompts, seed=0)
    ]

    def count(out, prompt_len):
        return int((out[:, prompt_len:] != tok.pad_token_id).sum())

    results = {}
    torch.manual_seed(0)
    t, toks = time.perf_counter(), 0
    with torch.inference_mode():
        for p in prompts[: max(8, n_prompts // 4)]:  # a quarter of the prompts: this path is slow
            ids = tok(p, return_tensors="pt")
            toks += count(model.generate(**ids, **kw), ids["input_ids"].shape[1])
    results["a_one_at_a_time"] = toks / (time.perf_counter() - t)
    tok.padding_side = "left"
    t, toks = time.perf_counter(), 0
    with torch.inference_mode():
        for i in range(0, n_prompts, 64):
            enc = tok(prompts[i : i + 64], return_tensors="pt", padding=True)
            toks += count(model.generate(**enc, **kw), enc["input_ids"].shape[1])
    results["b_naive_batched"] = toks / (time.perf_counter() - t)
    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        ds = generate_synthetic_dataset(
            model,
            tok,
            dist,
            n_prompts * 2,
            out,
            fmt=fmt,
            generation=gen,
            batch_size=128,
            shard_prompts=n_prompts,
            show_progress=False,
        )
        elapsed = time.perf_counter() - t
        toks = sum(len(tok(x)["input_ids"]) for x in ds["text"])
    results["c_ours"] = toks / elapsed
    for name, v in results.items():
        print(json.dumps({"method": name, "tokens_per_s": round(v, 1)}))
    print(
        json.dumps(
            {
                "ratio_c_over_a": round(results["c_ours"] / results["a_one_at_a_time"], 2),
                "ratio_c_over_b": round(results["c_ours"] / results["b_naive_batched"], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
