"""Private datasets (Yelp, Big Patent, DBpedia, local files), the embedded demo corpus and its base models.

Names load lazily, so that reading a dataset does not import the Trainer stack.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DemoData": "demo",
    "make_demo_dataset": "demo",
    "KNOWN_DATASETS": "loaders",
    "known_dataset_names": "loaders",
    "load_private_dataset": "loaders",
    "build_demo_models": "models",
    "demo_config": "models",
    "demo_model": "models",
    "pretrain_on_public": "models",
    "train_demo_tokenizer": "models",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
