"""The demo's private training rows as the pipeline tokenizes them and its DP-SGD step, for benchmarks."""

from __future__ import annotations


def demo_training_rows(kind: str = "teacher"):
    """(config, tokenizer, rows, collate): the no-argument demo's settings, the shipped base `kind`'s tokenizer,
    the private training rows (input_ids, attention_mask, labels) and the pipeline's padding collator."""
    from transformers import AutoTokenizer

    from hf_dpkd.data.base_model_cache import SHIPPED
    from hf_dpkd.data.demo import make_demo_dataset
    from hf_dpkd.data.formats import PaddingCollator
    from hf_dpkd.pipeline.loading import tokenize_for_lm
    from hf_dpkd.run_config import parse_run_config
    from hf_dpkd.synthetic.control_codes import ControlCodeFormat

    config = parse_run_config([])
    demo = make_demo_dataset(
        num_train=config.data.demo_num_train,
        num_public=config.data.demo_num_public,
        seed=config.pipeline.seed,
        public_coverage=config.data.demo_public_coverage,
    )
    tokenizer = AutoTokenizer.from_pretrained(SHIPPED / kind)
    fmt = ControlCodeFormat(fields=tuple(demo.control_fields.items()))
    rows = tokenize_for_lm(demo.dataset["train"], tokenizer, fmt, config.data.max_length)
    rows = [{k: rows[i][k] for k in ("input_ids", "attention_mask", "labels")} for i in range(len(rows))]
    return config, tokenizer, rows, PaddingCollator(tokenizer)


def dp_sgd(model, config):
    """(grad-sample module, optimizer) of the demo teacher's DP-SGD (`auto` clipping, clip 1, lr 0)."""
    import torch

    from hf_dpkd.privacy.engine import DPSGDOptimizer, attach_grad_sampler

    gsm = attach_grad_sampler(model.train(), "auto", 1.0)
    opt = DPSGDOptimizer(
        torch.optim.SGD(gsm.parameters(), lr=0.0),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        expected_batch_size=config.teacher.teacher_batch_size,
        grad_sample_module=gsm,
        clipping_mode="auto",
    )
    return gsm, opt


def dp_step(gsm, opt, batch, plan, max_rows: int) -> int:
    """One DP-SGD step over `batch` in the micro-batches of `plan`; returns the tokens it computed over."""
    from hf_dpkd.trainers.losses import causal_lm_labels, dp_forward_kwargs, per_sequence_nll

    computed = 0
    for micro, _ in plan(batch, max_rows):
        computed += micro["input_ids"].numel()
        opt.backward_microbatch(
            per_sequence_nll(gsm(**dp_forward_kwargs(gsm, micro)).logits, causal_lm_labels(micro))
        )
    opt.step()
    opt.zero_grad()
    return computed
