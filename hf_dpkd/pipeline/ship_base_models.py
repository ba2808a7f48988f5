"""Rebuild the base models shipped with the package: ``python -m hf_dpkd.pipeline.ship_base_models``.

They are the default demo's two public base models, pretrained exactly as the data stage would (same public
split, tokenizer and settings, with the cache off), then copied to ``hf_dpkd/data/base_models/{teacher,student}``.
Run it after changing the demo's public data, tokenizer, model shapes or pretraining settings:
``tests/test_base_model_cache.py`` fails until the shipped fingerprints match the defaults again.
``--check`` only compares the shipped fingerprints with those of the defaults (exit status 1 if they differ).
"""

from __future__ import annotations

import argparse
import sys
import tempfile

from hf_dpkd.data import base_model_cache
from hf_dpkd.data.models import KINDS, _fingerprint, base_model_settings, build_demo_models
from hf_dpkd.pipeline.stages.data import demo_base_model_settings, demo_public_inputs
from hf_dpkd.run_config import parse_run_config


def default_fingerprints() -> dict[str, str]:
    """The fingerprint of each base model the default demo's data stage needs."""
    config = parse_run_config([])
    _, public_texts, tokenizer = demo_public_inputs(config)
    settings = demo_base_model_settings(config)
    return {
        kind: _fingerprint(tokenizer, public_texts, base_model_settings(kind, **settings)) for kind in KINDS
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="Compare fingerprints only; build nothing.")
    args = parser.parse_args(argv)
    wanted = default_fingerprints()
    shipped = {kind: base_model_cache.fingerprint_of(base_model_cache.SHIPPED / kind) for kind in KINDS}
    if args.check:
        for kind in KINDS:
            state = "matches" if shipped[kind] == wanted[kind] else "differs: rebuild with this module"
            print(f"{kind}: shipped {shipped[kind]} {state}")
        return 0 if shipped == wanted else 1
    config = parse_run_config([])
    _, public_texts, tokenizer = demo_public_inputs(config)
    with tempfile.TemporaryDirectory() as scratch:
        paths = build_demo_models(
            scratch, tokenizer, public_texts, **demo_base_model_settings(config), use_cache=False
        )
        for kind, folder in paths.items():
            base_model_cache.copy_finished(
                folder, base_model_cache.SHIPPED / kind, "python -m hf_dpkd.pipeline.ship_base_models"
            )
            print(f"{kind}: {base_model_cache.SHIPPED / kind} ({wanted[kind]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
