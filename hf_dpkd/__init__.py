"""hf_dpkd: differentially private knowledge distillation through synthetic text (DistilDP).

The public API; everything else is reachable from its module.
"""

from hf_dpkd.audit import (
    AuditCanary,
    Canary,
    audit_epsilon,
    canary_exposures,
    epsilon_lower_bound,
    insert_audit_canaries,
    make_audit_canaries,
    memorization_gap,
    one_run_audit,
    per_block_mope,
    run_membership_inference,
    write_audit_report,
)
from hf_dpkd.evaluation import perplexity, perplexity_metric_path
from hf_dpkd.hub import (
    PRIVATE_DATA_MARKER,
    HubPushError,
    card_epsilon,
    mark_private_data,
    privacy_statement,
    push_folder_to_hub,
    write_dataset_card,
    write_model_card,
)
from hf_dpkd.privacy.accounting import PrivacyLedger, calibrate_noise_multiplier, compute_epsilon
from hf_dpkd.privacy.histogram import (
    ControlCodeDistribution,
    dp_control_code_distribution,
    uniform_distribution,
)
from hf_dpkd.synthetic.callback import SyntheticDataCallback
from hf_dpkd.synthetic.control_codes import ControlCodeFormat
from hf_dpkd.synthetic.generation import (
    SyntheticGenerationConfig,
    generate_synthetic_dataset,
    load_synthetic_dataset,
)
from hf_dpkd.synthetic.quality import quality_report
from hf_dpkd.trainers.distillation import DistillationConfig, DistillationTrainer
from hf_dpkd.trainers.dp import DPConfig, DPTrainer
from hf_dpkd.trainers.dp_distillation import DPDistillationConfig, DPDistillationTrainer

__version__ = "0.1.0"

__all__ = [
    "ControlCodeDistribution",
    "ControlCodeFormat",
    "DistillationConfig",
    "DistillationTrainer",
    "SyntheticDataCallback",
    "SyntheticGenerationConfig",
    "dp_control_code_distribution",
    "generate_synthetic_dataset",
    "load_synthetic_dataset",
    "perplexity",
    "perplexity_metric_path",
    "quality_report",
    "uniform_distribution",
    "PRIVATE_DATA_MARKER",
    "AuditCanary",
    "Canary",
    "DPConfig",
    "DPDistillationConfig",
    "DPDistillationTrainer",
    "DPTrainer",
    "HubPushError",
    "PrivacyLedger",
    "audit_epsilon",
    "calibrate_noise_multiplier",
    "canary_exposures",
    "card_epsilon",
    "compute_epsilon",
    "epsilon_lower_bound",
    "insert_audit_canaries",
    "make_audit_canaries",
    "mark_private_data",
    "memorization_gap",
    "one_run_audit",
    "per_block_mope",
    "privacy_statement",
    "push_folder_to_hub",
    "run_membership_inference",
    "write_audit_report",
    "write_dataset_card",
    "write_model_card",
    "__version__",
]
