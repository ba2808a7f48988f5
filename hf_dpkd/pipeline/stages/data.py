"""Stage data: the private splits, the public split, the tokenizer and the base models (the embedded demo, or
a loaded dataset and the given models), and data/info.json with the control columns' public domain."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from datasets import DatasetDict

from hf_dpkd._io import atomic_write_text
from hf_dpkd.pipeline.loading import check_splits, ensure_pad_token, load_model_and_tokenizer

if TYPE_CHECKING:
    from hf_dpkd.pipeline.context import RunContext
    from hf_dpkd.run_config import RunConfig


def run(ctx: RunContext) -> dict[str, Any]:
    from hf_dpkd.hub import mark_private_data

    c = ctx.config
    info: dict[str, Any] = {"dataset": c.data.dataset}
    if c.data.dataset == "demo":
        from hf_dpkd.data.models import build_demo_models

        demo, public_texts, tokenizer = demo_public_inputs(c)
        public = demo.dataset["public"]
        private = DatasetDict({k: v for k, v in demo.dataset.items() if k != "public"})
        info["control_fields"] = [list(x) for x in demo.control_fields.items()]
        # declared public: the categories and star values of the demo (or --control_domain)
        info.update(_public_domain(ctx, info["control_fields"], demo.domain))
        info["canaries"] = demo.canaries
        public.save_to_disk(str(ctx.run / "data" / "public"))
        paths = build_demo_models(ctx.run.path, tokenizer, public_texts, **demo_base_model_settings(c))
        info["base_models"] = {k: str(v) for k, v in paths.items()}
    else:
        from hf_dpkd.data.loaders import declared_domain, load_private_dataset

        controls = c.data.control_columns or None
        private, control_fields = load_private_dataset(
            c.data.dataset,
            text_column=c.data.text_column,
            control_columns=controls,
            unit_column=c.data.privacy_unit_column,
        )
        info["control_fields"] = [list(x) for x in control_fields]
        # the loader's public domain of the datasets it knows, and --control_domain (never the records)
        info.update(
            _public_domain(ctx, info["control_fields"], declared_domain(c.data.dataset, control_fields))
        )
        check_splits(private, c.data.dataset)
        # both models load (and fail on a bad path) before anything is written
        bases = {
            which: load_model_and_tokenizer(source, argument=f"{which}_model")
            for which, source in (
                ("teacher", c.teacher.teacher_model),
                ("student", c.teacher.student_model),
            )
        }
        for which, (model, tokenizer) in bases.items():
            ensure_pad_token(model, tokenizer)
            model.save_pretrained(ctx.base_path(which))
            tokenizer.save_pretrained(ctx.base_path(which))
        info["base_models"] = {
            "teacher": str(ctx.base_path("teacher")),
            "student": str(ctx.base_path("student")),
        }
    if c.data.max_train_samples:
        private["train"] = private["train"].select(
            range(min(c.data.max_train_samples, len(private["train"])))
        )
    check_splits(private, c.data.dataset)
    private.save_to_disk(str(ctx.data_dir))
    mark_private_data(ctx.data_dir)
    info["sizes"] = {k: len(v) for k, v in private.items()}
    atomic_write_text(ctx.run / "data" / "info.json", json.dumps(info, indent=2))
    ctx.forget_data()
    return {"sizes": info["sizes"]}


def demo_public_inputs(c: RunConfig) -> tuple[Any, list[str], Any]:
    """The embedded demo of `c`, its public texts (control-coded) and the tokenizer learnt from them only."""
    from hf_dpkd.data.demo import make_demo_dataset
    from hf_dpkd.data.models import train_demo_tokenizer
    from hf_dpkd.synthetic.control_codes import ControlCodeFormat

    demo = make_demo_dataset(
        num_train=c.data.demo_num_train,
        num_public=c.data.demo_num_public,
        seed=c.pipeline.seed,
        public_coverage=c.data.demo_public_coverage,
    )
    public_texts = demo.public_texts(ControlCodeFormat(fields=tuple(demo.control_fields.items())))
    return demo, public_texts, train_demo_tokenizer(public_texts)


def demo_base_model_settings(c: RunConfig) -> dict[str, Any]:
    """The keyword arguments of `build_demo_models` that `c` sets."""
    return {
        "pretrain_steps": c.teacher.pretrain_steps,
        "max_length": c.data.max_length,
        "seed": c.pipeline.seed,
        "shapes": {"teacher": c.teacher.demo_teacher_shape, "student": c.teacher.demo_student_shape},
    }


def _public_domain(
    ctx: RunContext, fields: list[list[str]], declared: dict[str, list[str]]
) -> dict[str, Any]:
    """info's ``domain`` (the public values of each control column known without the records) and
    ``domain_source``: `declared` by the dataset (loader or demo), overridden per column by --control_domain."""
    from hf_dpkd.synthetic.control_codes import ControlCodeFormat

    columns = [col for col, _ in fields]
    domain = {col: [str(v) for v in declared[col]] for col in columns if col in declared}
    source = {col: "dataset" for col in domain}
    given = ctx.config.data.control_domain
    if given is not None:
        from hf_dpkd.run_config import parse_control_domain

        user = parse_control_domain(given)
        unknown = sorted(set(user) - set(columns))
        if unknown:
            raise ValueError(
                f"--control_domain names column(s) {unknown} that are not control-code columns of "
                f"dataset={ctx.config.data.dataset!r} ({columns}); declare the values of those columns."
            )
        fmt = ControlCodeFormat(fields=tuple(tuple(f) for f in fields))
        for col, values in user.items():
            for v in values:
                try:
                    fmt.check_value(col, v)
                except ValueError as e:
                    raise ValueError(f"--control_domain: {e}") from None
            domain[col] = values
            source[col] = "--control_domain"
    return {
        "domain": {col: domain[col] for col in columns if col in domain},
        "domain_source": {col: source[col] for col in columns if col in source},
    }
