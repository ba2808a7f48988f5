"""Stage push: the Hub pushes asked for (the DP teacher, the synthetic data, the DistilDP student), each with
its card restated first. Pushes are idempotent, so the runner redoes this stage whenever a repository is given."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hf_dpkd.pipeline.cards import write_card
from hf_dpkd.pipeline.constants import NEVER_PUSHED

if TYPE_CHECKING:
    from hf_dpkd.pipeline.context import RunContext


def run(ctx: RunContext) -> dict[str, Any]:
    from hf_dpkd.hub import push_folder_to_hub

    h = ctx.config.hub
    pushed = {}
    if h.push_teacher:
        folder = ctx.run / "teacher" / "final"
        write_card(ctx, "teacher", folder, repo_id=h.push_teacher)
        pushed["teacher"] = push_folder_to_hub(
            folder,
            h.push_teacher,
            private=h.hub_private_repo,
            token=h.hub_token,
            ignore_patterns=NEVER_PUSHED,
        )
    if h.push_synthetic:
        pushed["synthetic"] = push_folder_to_hub(
            ctx.run / "synthetic",
            h.push_synthetic,
            repo_type="dataset",
            private=h.hub_private_repo,
            token=h.hub_token,
            allow_patterns=["README.md", "data/*", "privacy_ledger.json"],
        )
    if h.push_student:
        folder = ctx.run / "students" / "distildp" / "final"
        write_card(ctx, "distildp", folder, repo_id=h.push_student)
        pushed["student"] = push_folder_to_hub(
            folder,
            h.push_student,
            private=h.hub_private_repo,
            token=h.hub_token,
            ignore_patterns=NEVER_PUSHED,
        )
    return pushed
