"""LoRA adapters (peft) for the DP trainings: only the adapters see the private data.

Why here: DP fine-tuning of large models is mostly LoRA (fewer trainable parameters, so less noise in the
update for the same guarantee, and far less memory). The clipping engine already clips LoRA's nn.Linear
factors per example; this module is the only place that knows about peft, so the pipeline trains an adapter,
saves the adapter folder (adapter_config.json + weights, with the privacy card), and every later stage loads
a plain model: the adapter merged into a fresh copy of the PUBLIC base. peft is imported lazily.
"""

from __future__ import annotations

import json
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from torch import nn

ADAPTER_CONFIG = "adapter_config.json"
#: peft choices of the pipeline's --teacher_peft / --student_peft.
PeftMethod = Literal["none", "lora"]
PEFT_METHODS: tuple[str, ...] = get_args(PeftMethod)
#: GPT-2's attention and MLP projections (transformers' Conv1D): the demo's models and GPT-2 checkpoints.
DEFAULT_TARGET_MODULES = ("c_attn", "c_proj", "c_fc")


@dataclass(frozen=True)
class LoraSettings:
    """Rank, scaling (alpha / r), the modules that get adapters (names as in the model), and LoRA dropout."""

    r: int = 8
    alpha: float = 16.0
    target_modules: tuple[str, ...] = DEFAULT_TARGET_MODULES
    dropout: float = 0.0

    def __post_init__(self):
        if self.r < 1:
            raise ValueError(f"--lora_r {self.r}: the LoRA rank must be >= 1 (e.g. 8).")
        if not self.alpha > 0:
            raise ValueError(f"--lora_alpha {self.alpha}: must be > 0 (the update is scaled by alpha / r).")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"--lora_dropout {self.dropout}: must lie in [0, 1).")
        if not self.target_modules or any(not t for t in self.target_modules):
            raise ValueError(
                f"--lora_target_modules {','.join(self.target_modules)!r}: name at least one module, "
                "comma-separated (e.g. c_attn,c_proj,c_fc for GPT-2, q_proj,v_proj for Llama)."
            )


@contextmanager
def _quiet_peft():
    """peft 0.21 reads transformers' deprecated `is_gradient_checkpointing` when it wraps a model: an expected
    FutureWarning on every wrap, silenced here only (any other warning still shows)."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
        )
        yield


def _adaptable_kinds() -> tuple[type, ...]:
    from transformers.pytorch_utils import Conv1D

    return (nn.Linear, Conv1D)


def add_lora(model: nn.Module, settings: LoraSettings):
    """`model` wrapped by peft with LoRA adapters on `settings.target_modules`; only the adapters train.

    Only Linear and transformers' Conv1D layers are accepted: their adapters are two nn.Linear factors that
    every clipping mode clips per example. LoRA on an embedding uses its factors outside any module that owns
    them, which no per-sample hook sees, so it is refused here, before any training.
    """
    from peft import LoraConfig, get_peft_model
    from transformers.pytorch_utils import Conv1D

    wanted = set(settings.target_modules)
    matched = {name: m for name, m in model.named_modules() if name.rsplit(".", 1)[-1] in wanted}
    names = ",".join(settings.target_modules)
    if not matched:
        kinds = _adaptable_kinds()
        known = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, kinds)})
        raise ValueError(
            f"--lora_target_modules {names!r}: no module of the model has that name; its Linear/Conv1D layers "
            f"are named {', '.join(known)}."
        )
    bad = [(n, type(m).__name__) for n, m in matched.items() if not isinstance(m, _adaptable_kinds())]
    if bad:
        raise ValueError(
            f"--lora_target_modules {names!r}: {bad[0][0]!r} is a {bad[0][1]}; DP-SGD clips LoRA adapters on "
            "Linear and Conv1D layers only (an embedding's adapter is used outside the modules that own it, so "
            "no per-example hook would clip it). Name only the attention and MLP projections."
        )
    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=sorted(wanted),
        # GPT-2's Conv1D stores its weight transposed; peft must know (it would warn and fix it per layer)
        fan_in_fan_out=all(isinstance(m, Conv1D) for m in matched.values()),
    )
    with _quiet_peft():
        return get_peft_model(model, config)


def is_adapter_folder(path: str | Path) -> bool:
    """Whether `path` is a peft adapter folder (adapter_config.json, no full model)."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def adapter_base(path: str | Path) -> str | None:
    """The base model the adapter in `path` records (peft's base_model_name_or_path), if any."""
    return json.loads((Path(path) / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")


def adapter_description(path: str | Path) -> str:
    """One line for a card: which parameters the adapter in `path` trains (its rank, alpha, target modules)."""
    c = json.loads((Path(path) / ADAPTER_CONFIG).read_text())
    targets = c.get("target_modules") or []
    targets = ", ".join(sorted(targets)) if isinstance(targets, list) else str(targets)
    return (
        f"LoRA adapters only (peft): r={c.get('r')}, alpha={c.get('lora_alpha')}, dropout={c.get('lora_dropout')}, "
        f"on {targets}; the base weights are frozen"
    )


def load_merged(path: str | Path, base: str | Path | None = None):
    """The adapter in `path` merged into a fresh copy of `base` (default: the base the adapter records).

    A plain transformers model (merge_and_unload), so generation, distillation and evaluation run on it as on
    a fully fine-tuned one; the public base stays untouched on disk.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = base if base is not None else adapter_base(path)
    if not base:
        raise ValueError(
            f"{str(path)!r} is a LoRA adapter without a recorded base model; load it with the public base "
            "model it was trained on: PeftModel.from_pretrained(base, path).merge_and_unload()."
        )
    model = AutoModelForCausalLM.from_pretrained(str(base))
    with _quiet_peft():
        merged = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
    # The merged model is the adapter's release: it is found where its ledger is (the adapter folder), not
    # where the public base is (a DistillationTrainer reads its teacher's ledger from _name_or_path).
    merged.config._name_or_path = merged.name_or_path = str(path)
    return merged


def merged_copy(model: nn.Module) -> nn.Module:
    """A merged copy of a peft model (the adapters folded into the weights); `model` itself is left as it is."""
    import copy

    return copy.deepcopy(model).merge_and_unload()


def usage_snippet(repo_or_path: str, base: str) -> str:
    """The card's code that loads the adapter in `repo_or_path` onto its public `base` and merges it."""
    return (
        "```python\n"
        "from peft import PeftModel\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        f'base = AutoModelForCausalLM.from_pretrained("{base}")  # the public base model, unchanged\n'
        f'model = PeftModel.from_pretrained(base, "{repo_or_path}").merge_and_unload()\n'
        f'tokenizer = AutoTokenizer.from_pretrained("{repo_or_path}")\n\n'
        "# Control-coded prompt: the control-code fields joined by a tab, then a blank line.\n"
        'inputs = tokenizer("Field: value\\n\\n", return_tensors="pt")\n'
        "out = model.generate(**inputs, do_sample=True, top_k=50, top_p=0.9, max_new_tokens=64)\n"
        "print(tokenizer.decode(out[0], skip_special_tokens=True))\n"
        "```\n"
    )
