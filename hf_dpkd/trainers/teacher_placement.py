"""Where the frozen teacher lives during distillation: sharded under ZeRO-3, a replica otherwise."""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

_BUCKET_KEYS = {
    "reduce_bucket_size": lambda h: h * h,
    "stage3_prefetch_bucket_size": lambda h: int(0.9 * h * h),
    "stage3_param_persistence_threshold": lambda h: 10 * h,
}


def teacher_inference_config(train_config: dict[str, Any], hidden_size: int | None) -> dict[str, Any]:
    """The student's DeepSpeed config turned into an inference one for the teacher.

    No optimizer, scheduler or optimizer offload (nothing of the teacher trains); the ZeRO bucket sizes
    the Trainer would fill from the student's hidden size ("auto") are filled from the teacher's; any
    other "auto" left unresolved is dropped so DeepSpeed uses its default.
    """
    config = copy.deepcopy(train_config)
    config.pop("optimizer", None)
    config.pop("scheduler", None)
    zero = config.setdefault("zero_optimization", {})
    zero.pop("offload_optimizer", None)
    for key, value in _BUCKET_KEYS.items():
        if zero.get(key) == "auto":
            if hidden_size is None:
                zero.pop(key)
            else:
                zero[key] = value(hidden_size)

    def drop_auto(d: dict) -> dict:
        return {k: drop_auto(v) if isinstance(v, dict) else v for k, v in d.items() if v != "auto"}

    return drop_auto(config)


def place_teacher(teacher: nn.Module, trainer) -> nn.Module:
    """Freeze the teacher and put it where the trainer computes.

    Under DeepSpeed ZeRO-3 the teacher is wrapped in an inference engine with the student's ZeRO-3
    settings, so each rank holds only its shard of the teacher's parameters (gathered layer by layer in
    the forward). Otherwise (one device, DDP, ZeRO-1/2) each rank holds a full replica.
    """
    for p in teacher.parameters():
        p.requires_grad_(False)
    teacher.eval()
    plugin = (
        getattr(trainer.accelerator.state, "deepspeed_plugin", None) if trainer.is_deepspeed_enabled else None
    )
    if plugin is not None and plugin.zero_stage == 3:
        import deepspeed

        hidden = getattr(teacher.config, "hidden_size", None)
        engine, *_ = deepspeed.initialize(
            model=teacher, config=teacher_inference_config(plugin.deepspeed_config, hidden)
        )
        engine.eval()
        return engine
    return teacher.to(device=trainer.args.device)
