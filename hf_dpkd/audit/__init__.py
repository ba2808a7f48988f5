"""Privacy audit of a causal LM: membership inference, memorization, canary exposure, empirical epsilon.

Every number here is evidence of leakage or a LOWER bound on epsilon; none certifies privacy. Each comes with
its uncertainty (a bootstrap or exact interval) and is read against what a model that never saw the private
data scores on the same records (the no-leak level), not against 0.5 or 0.
"""

from hf_dpkd.audit.blocks import find_transformer_blocks, per_block_mope
from hf_dpkd.audit.canaries import Canary, canary_exposure, canary_exposures, compare_exposures
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
from hf_dpkd.audit.matching import match_non_members, record_balance
from hf_dpkd.audit.memorization import greedy_agreement, memorization_gap
from hf_dpkd.audit.metrics import (
    binomial_interval,
    bootstrap_counts,
    bootstrap_intervals,
    membership_metrics,
    paired_auc_difference,
    plot_roc,
    resampled_metrics,
    roc_auc,
    roc_curve,
    tpr_at_fpr,
)
from hf_dpkd.audit.mia import (
    ATTACKS,
    LEAK_RULE,
    compare_with_no_leak,
    compute_membership_scores,
    membership_verdict,
    min_k_plus_plus_score,
    min_k_score,
    mope_scores,
    run_membership_inference,
)
from hf_dpkd.audit.report import write_audit_report
from hf_dpkd.audit.scoring import TextScores, record_losses, score_records

__all__ = [
    "ATTACKS",
    "LEAK_RULE",
    "AuditCanary",
    "Canary",
    "TextScores",
    "audit_epsilon",
    "audit_guesses",
    "audit_p_value",
    "binomial_interval",
    "bootstrap_counts",
    "bootstrap_intervals",
    "canary_exposure",
    "canary_exposures",
    "compare_exposures",
    "compare_with_no_leak",
    "compute_membership_scores",
    "epsilon_lower_bound",
    "find_transformer_blocks",
    "greedy_agreement",
    "insert_audit_canaries",
    "make_audit_canaries",
    "match_non_members",
    "membership_metrics",
    "membership_verdict",
    "memorization_gap",
    "min_k_plus_plus_score",
    "min_k_score",
    "mope_scores",
    "one_run_audit",
    "paired_auc_difference",
    "per_block_mope",
    "plot_roc",
    "record_balance",
    "record_losses",
    "resampled_metrics",
    "roc_auc",
    "roc_curve",
    "run_membership_inference",
    "score_audit_canaries",
    "score_records",
    "tpr_at_fpr",
    "write_audit_report",
]
