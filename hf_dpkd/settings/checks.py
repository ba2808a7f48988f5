"""The run-level checks: what no single library config can see (settings across arguments, files and Hub ids),
and the library configs' own checks run before any work starts, their errors naming the command-line flag."""

from __future__ import annotations

from pathlib import Path

from transformers import TrainingArguments

from hf_dpkd.pipeline.stages import STAGES
from hf_dpkd.settings.arguments import METHODS
from hf_dpkd.settings.config import RunConfig
from hf_dpkd.settings.control_domain import parse_control_domain


def validate_run_config(config: RunConfig) -> None:
    """Check the arguments before any work starts; every error names the argument and the fix."""
    p = config.pipeline
    bad_stages = [s for s in config.stage_list if s not in STAGES]
    if bad_stages:
        raise ValueError(
            f"--stages: unknown stage(s) {', '.join(bad_stages)}; choose from {', '.join(STAGES)} or 'all'."
        )
    bad_methods = [m for m in config.method_list if m not in METHODS]
    if bad_methods:
        raise ValueError(
            f"--methods: unknown method(s) {', '.join(bad_methods)}; choose from {', '.join(METHODS)}."
        )
    if p.repeats < 1:
        raise ValueError(f"--repeats {p.repeats}: must be >= 1 (the number of independent DP draws).")
    h = config.hub
    if p.repeats > 1 and (h.push_teacher or h.push_synthetic or h.push_student):
        raise ValueError(
            f"--repeats {p.repeats} measures several draws; push from a single-draw run (--repeats 1) so the "
            "pushed artifacts are one draw's, with that draw's ledger."
        )
    if p.cpu_threads is not None and p.cpu_threads < 1:
        raise ValueError(
            f"--cpu_threads {p.cpu_threads}: must be >= 1 (or left unset for every usable core)."
        )
    if p.cpu_workers is not None and p.cpu_workers < 1:
        raise ValueError(
            f"--cpu_workers {p.cpu_workers}: must be >= 1 (1 runs a stage's jobs one after another; unset: one "
            "per usable core)."
        )
    d = config.data
    if d.control_domain is not None:
        parse_control_domain(d.control_domain)
    from hf_dpkd.privacy.units import check_unit_settings

    check_unit_settings(d.privacy_unit_column, d.max_rows_per_unit, cli=True)
    if not d.histogram_noise_multiplier > 0:
        raise ValueError(f"--histogram_noise_multiplier {d.histogram_noise_multiplier}: must be > 0.")
    if d.max_length < 8:
        raise ValueError(
            f"--max_length {d.max_length}: too short for a control-code prompt and text; use >= 32."
        )
    if config.audit.audit_canary_candidates < 100:
        raise ValueError(
            f"--audit_canary_candidates {config.audit.audit_canary_candidates}: must be >= 100 (exposure is "
            "estimated from that many candidates; 2000 is a good default)."
        )
    t = config.teacher
    from hf_dpkd.data.models import parse_shape

    parse_shape(t.demo_teacher_shape, "--demo_teacher_shape")
    parse_shape(t.demo_student_shape, "--demo_student_shape")
    _check_dp_settings(config)
    t.lora_settings()
    t.train_dropout_probability()
    for name in (
        "teacher_epochs",
        "student_epochs",
        "dp_student_epochs",
        "teacher_learning_rate",
        "student_learning_rate",
    ):
        part = config.teacher if hasattr(config.teacher, name) else config.student
        if not getattr(part, name) > 0:
            raise ValueError(f"--{name} {getattr(part, name)}: must be > 0.")
    g = config.generation
    if g.num_synthetic_samples <= 0:
        raise ValueError(f"--num_synthetic_samples {g.num_synthetic_samples}: must be > 0.")
    try:
        g.generation_config()
    except ValueError as e:
        raise _flag_error(e, g.generation_flags()) from None
    s = config.student
    if not 0 <= s.kd_lambda <= 1:
        raise ValueError(f"--kd_lambda {s.kd_lambda}: must lie in [0, 1] (paper: 0.4).")
    _check_distillation_settings(config)
    for name, value in (("dp_teacher", t.dp_teacher), ("synthetic_data", g.synthetic_data)):
        if value is not None and not Path(value).expanduser().exists():
            from hf_dpkd.hub import validate_repo_id

            try:
                validate_repo_id(value)
            except ValueError:
                raise ValueError(
                    f"--{name} {value!r}: no such folder, and not a Hub id ('namespace/name'); give a folder "
                    "written by the pipeline or the id of a repo it pushed."
                ) from None
    for push, given in (("push_teacher", "dp_teacher"), ("push_synthetic", "synthetic_data")):
        if getattr(config.hub, push) and (t.dp_teacher if given == "dp_teacher" else g.synthetic_data):
            raise ValueError(
                f"--{push} with --{given}: this run did not make that artifact; push it from the run that did "
                f"(or drop --{push})."
            )
    for name in ("push_teacher", "push_synthetic", "push_student"):
        repo = getattr(config.hub, name)
        if repo is not None:
            from hf_dpkd.hub import validate_repo_id

            try:
                validate_repo_id(repo)
            except ValueError as e:
                raise ValueError(f"--{name} {repo!r}: {e}") from None


def _flag_error(error: ValueError, flags: dict[str, str]) -> ValueError:
    """A library config's error (``field=value must ...``) naming the command-line flag that set the field."""
    message = str(error)
    for name, flag in flags.items():
        if message.startswith(f"{name}="):
            value, _, rest = message[len(name) + 1 :].partition(" ")
            return ValueError(f"--{flag} {value}: {rest}")
    named = [f"--{flag}" for name, flag in flags.items() if name in message]
    return ValueError(f"{', '.join(named) or 'the run settings'}: {message}")


class _WithoutTrainerSetup(TrainingArguments):
    """Skips TrainingArguments.__post_init__ (it sets up the devices, and under a multi-process launch the
    distributed state): the probes below run only the checks of the library's own config."""

    def __post_init__(self):
        pass


def _check_dp_settings(config: RunConfig) -> None:
    """DPConfig's checks of the privacy arguments (epsilon, delta, clip norm, accountant, clipping mode), run
    before any work starts. Its checks of the launch (DeepSpeed, FSDP, fp16, hub_strategy) run when a DP stage
    builds its trainer: the non-private stages may run under them."""
    from hf_dpkd.trainers.dp import DPConfig

    p, t = config.pipeline, config.teacher
    flags = {
        "target_epsilon": "target_epsilon",
        "target_delta": "target_delta",
        "accountant": "accountant",
        "per_sample_max_grad_norm": "per_sample_max_grad_norm",
        "max_physical_batch_size": "max_physical_batch_size",
        "clipping_mode": "clipping_mode",
    }
    values = {
        "target_epsilon": p.target_epsilon,
        "target_delta": p.target_delta,
        "accountant": p.accountant,
        "per_sample_max_grad_norm": t.per_sample_max_grad_norm,
        "max_physical_batch_size": t.max_physical_batch_size,
        "clipping_mode": t.clipping_mode,
    }
    probe = type(
        "DPConfigProbe",
        (DPConfig, _WithoutTrainerSetup),
        {"_validate_distribution": lambda self: None, "_validate_publication": lambda self: None},
    )
    try:
        probe(output_dir=p.run_dir, **values)
    except ValueError as e:
        raise _flag_error(e, flags) from None


def _check_distillation_settings(config: RunConfig) -> None:
    """DistillationConfig's checks of the distillation flags, run before any work starts."""
    from hf_dpkd.trainers.distillation import DistillationConfig

    s = config.student
    flags = {
        "temperature": "kd_temperature",
        "kd_loss": "kd_loss",
        "alpha_hidden": "alpha_hidden",
        "on_policy_ratio": "on_policy_ratio",
    }
    probe = type("DistillationConfigProbe", (DistillationConfig, _WithoutTrainerSetup), {})
    try:
        probe(
            output_dir=config.pipeline.run_dir,
            alpha_ce=1 - s.kd_lambda,
            alpha_kd=s.kd_lambda,
            temperature=s.kd_temperature,
            kd_loss=s.kd_loss,
            alpha_hidden=s.alpha_hidden,
            on_policy_ratio=s.on_policy_ratio,
        )
    except ValueError as e:
        raise _flag_error(e, flags) from None
