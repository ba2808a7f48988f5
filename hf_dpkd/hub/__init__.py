"""Model and dataset cards that state the privacy guarantee, and pushes of artifact folders to the Hub.

Every artifact this package pushes (the DP teacher, the synthetic dataset, the student) carries a card
whose epsilon is recomputed from the run's :class:`~hf_dpkd.privacy.accounting.PrivacyLedger`, that lists
every release composed into it, and that names what the guarantee does not cover. The cards' usage
snippets need only ``transformers`` / ``datasets``: nothing pushed requires ``hf_dpkd`` to load.

Directories holding raw private records carry a marker file (:data:`PRIVATE_DATA_MARKER`, written by
:func:`mark_private_data`); :func:`push_folder_to_hub` refuses any folder that contains one.

Modules: :mod:`~hf_dpkd.hub.statement` (the privacy section and metadata), :mod:`~hf_dpkd.hub.cards` (the
cards, rendered from the Jinja templates in ``templates/`` by ``huggingface_hub``'s card classes) and
:mod:`~hf_dpkd.hub.push` (pushes, the private-data marker, Hub ids).
"""

from hf_dpkd.hub.cards import MODEL_KINDS, card_epsilon, write_dataset_card, write_model_card
from hf_dpkd.hub.push import (
    PRIVATE_DATA_MARKER,
    REPO_TYPES,
    HubPushError,
    find_private_markers,
    mark_private_data,
    push_folder_to_hub,
    resolve_artifact,
    validate_repo_id,
)
from hf_dpkd.hub.statement import CARD_PRIVACY_KEY, DEFAULT_PRIVACY_UNIT, privacy_metadata, privacy_statement

__all__ = [
    "CARD_PRIVACY_KEY",
    "DEFAULT_PRIVACY_UNIT",
    "MODEL_KINDS",
    "PRIVATE_DATA_MARKER",
    "REPO_TYPES",
    "HubPushError",
    "card_epsilon",
    "find_private_markers",
    "mark_private_data",
    "privacy_metadata",
    "privacy_statement",
    "push_folder_to_hub",
    "resolve_artifact",
    "validate_repo_id",
    "write_dataset_card",
    "write_model_card",
]
