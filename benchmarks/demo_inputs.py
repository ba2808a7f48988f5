"""The demo's private training rows as the pipeline tokenizes them, for benchmarks of its training steps."""

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
