"""The pipeline's arguments: dataclasses parsed by HfArgumentParser from a YAML recipe plus CLI overrides.

Precedence, lowest first: dataclass defaults, the ``--quick`` preset, the YAML recipe (``--config``),
command-line flags. Unknown recipe keys and malformed YAML are errors that name the key or the line.

The settings live in :mod:`hf_dpkd.settings` (one module per responsibility); this module is the one users
import from.
"""

from __future__ import annotations

from hf_dpkd.settings.arguments import (
    METHODS,
    AuditArguments,
    ControlCodeMode,
    DataArguments,
    GenerationArguments,
    HubArguments,
    LrSchedulerType,
    PipelineArguments,
)
from hf_dpkd.settings.checks import validate_run_config
from hf_dpkd.settings.config import (
    ARGUMENT_CLASSES,
    LIST_SETTINGS,
    NEUTRAL_SETTINGS,
    RunConfig,
    changed_settings,
)
from hf_dpkd.settings.control_domain import parse_control_domain
from hf_dpkd.settings.fields import Arguments as _Arguments
from hf_dpkd.settings.fields import choices_of as _choices_of
from hf_dpkd.settings.fields import one_of as _one_of
from hf_dpkd.settings.parsing import load_recipe, parse_run_config
from hf_dpkd.settings.presets import QUICK
from hf_dpkd.settings.training import DpOpdTeacher, StudentArguments, TeacherArguments

__all__ = [
    "ARGUMENT_CLASSES",
    "LIST_SETTINGS",
    "METHODS",
    "NEUTRAL_SETTINGS",
    "QUICK",
    "AuditArguments",
    "ControlCodeMode",
    "DataArguments",
    "DpOpdTeacher",
    "GenerationArguments",
    "HubArguments",
    "LrSchedulerType",
    "PipelineArguments",
    "RunConfig",
    "StudentArguments",
    "TeacherArguments",
    "_Arguments",
    "_choices_of",
    "_one_of",
    "changed_settings",
    "load_recipe",
    "parse_control_domain",
    "parse_run_config",
    "validate_run_config",
]
