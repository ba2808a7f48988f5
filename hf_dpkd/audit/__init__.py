"""Privacy audit of a causal LM: membership inference, memorization, canary exposure, empirical epsilon.

Every number here is evidence of leakage or a LOWER bound on epsilon; none certifies privacy.
"""

from hf_dpkd.audit.blocks import find_transformer_blocks, per_block_mope
from hf_dpkd.audit.canaries import Canary, canary_exposure, canary_exposures
from hf_dpkd.audit.empirical_epsilon import (
    AuditCanary,
    audit_epsilon,
    audit_guesses,
    audit_p_value,
    epsilon_lower_bound,
    insert_audit_canaries,
    make_audit_canaries,
    one_run_audit,
    score_audit_canaries,
)
from hf_dpkd.audit.memorization import greedy_agreement, memorization_gap
from hf_dpkd.audit.metrics import membership_metrics, plot_roc, roc_auc, roc_curve, tpr_at_fpr
from hf_dpkd.audit.mia import (
    ATTACKS,
    compute_membership_scores,
    min_k_plus_plus_score,
    min_k_score,
    mope_scores,
    run_membership_inference,
)
from hf_dpkd.audit.report import write_audit_report
from hf_dpkd.audit.scoring import TextScores, record_losses, score_records

__all__ = [
    "ATTACKS",
    "AuditCanary",
    "Canary",
    "TextScores",
    "audit_epsilon",
    "audit_guesses",
    "audit_p_value",
    "canary_exposure",
    "canary_exposures",
    "compute_membership_scores",
    "epsilon_lower_bound",
    "find_transformer_blocks",
    "greedy_agreement",
    "insert_audit_canaries",
    "make_audit_canaries",
    "membership_metrics",
    "memorization_gap",
    "min_k_plus_plus_score",
    "min_k_score",
    "mope_scores",
    "one_run_audit",
    "per_block_mope",
    "plot_roc",
    "record_losses",
    "roc_auc",
    "roc_curve",
    "run_membership_inference",
    "score_audit_canaries",
    "score_records",
    "tpr_at_fpr",
    "write_audit_report",
]
