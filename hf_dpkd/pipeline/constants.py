"""Names the stages, the runner and the reports share: the finished-folder marker, what is never pushed, the
student methods and their labels in results tables."""

COMPLETE = ".complete"  # marker of a finished model folder
#: Never uploaded from a model folder: checkpoints and DP state (the secret seed), pickled arguments, and the
#: loggers' folders (the Trainer's logs of private batches).
NEVER_PUSHED = ["checkpoint-*", "*.pt", "training_args.bin", COMPLETE, "runs/*", "runs/**", "logs/**"]
STUDENT_METHODS = (
    "distildp",
    "dp_syn_data",
    "dp_sgd_student",
    "non_private_student",
    "dpkd",
    "on_policy",
    "dp_opd",
)
METHOD_LABELS = {
    "non_private_teacher": "Teacher, non-private (reference)",
    "teacher": "DP teacher",
    "distildp": "DistilDP student (CE + KD)",
    "dp_syn_data": "DP Syn Data student (CE only)",
    "dp_sgd_student": "DP-SGD student",
    "non_private_student": "Student, non-private (reference)",
    "public_teacher": "Public base teacher (no private data)",
    "public_student": "Public base student (no private data)",
    "dpkd": "DPKD student",
    "on_policy": "On-policy student (DP teacher)",
    "dp_opd": "DP-OPD student (DP-SGD, on-policy)",
}
