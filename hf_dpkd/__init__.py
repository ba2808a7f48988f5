"""hf_dpkd: differentially private knowledge distillation through synthetic text (DistilDP).

The public API; everything else is reachable from its module. Names are imported on first use (PEP 562), so
that `import hf_dpkd.privacy.accounting` or a command that fails on its arguments does not pay for torch,
transformers, scipy and every stage (several seconds a process).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: module -> the public names it provides
_EXPORTS = {
    "hf_dpkd.audit": (
        "AuditCanary",
        "Canary",
        "audit_epsilon",
        "canary_exposures",
        "epsilon_lower_bound",
        "insert_audit_canaries",
        "make_audit_canaries",
        "memorization_gap",
        "one_run_audit",
        "per_block_mope",
        "run_membership_inference",
        "write_audit_report",
    ),
    "hf_dpkd.evaluation": ("perplexity", "perplexity_metric_path"),
    "hf_dpkd.hub": (
        "PRIVATE_DATA_MARKER",
        "HubPushError",
        "card_epsilon",
        "mark_private_data",
        "privacy_statement",
        "push_folder_to_hub",
        "write_dataset_card",
        "write_model_card",
    ),
    "hf_dpkd.privacy.accounting": ("PrivacyLedger", "calibrate_noise_multiplier", "compute_epsilon"),
    "hf_dpkd.privacy.histogram": (
        "ControlCodeDistribution",
        "dp_control_code_distribution",
        "uniform_distribution",
    ),
    "hf_dpkd.synthetic.callback": ("SyntheticDataCallback",),
    "hf_dpkd.synthetic.control_codes": ("ControlCodeFormat",),
    "hf_dpkd.synthetic.generation": (
        "SyntheticGenerationConfig",
        "generate_synthetic_dataset",
        "load_synthetic_dataset",
    ),
    "hf_dpkd.synthetic.quality": ("quality_report",),
    "hf_dpkd.trainers.distillation": ("DistillationConfig", "DistillationTrainer"),
    "hf_dpkd.trainers.dp": ("DPConfig", "DPTrainer"),
    "hf_dpkd.trainers.dp_distillation": ("DPDistillationConfig", "DPDistillationTrainer"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [*_MODULE_OF, "__version__"]


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'hf_dpkd' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
