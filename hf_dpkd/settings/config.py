"""RunConfig: the parsed arguments of one run, and what a run directory records of them."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from hf_dpkd.pipeline.stages import STAGES
from hf_dpkd.settings.arguments import (
    AuditArguments,
    DataArguments,
    GenerationArguments,
    HubArguments,
    PipelineArguments,
)
from hf_dpkd.settings.fields import is_neutral, list_fields, split_list
from hf_dpkd.settings.training import StudentArguments, TeacherArguments

ARGUMENT_CLASSES = (
    PipelineArguments,
    DataArguments,
    TeacherArguments,
    GenerationArguments,
    StudentArguments,
    AuditArguments,
    HubArguments,
)

#: Settings that do not change what the stages compute (fields with ``neutral`` metadata): a run directory
#: may be resumed with other values of these.
NEUTRAL_SETTINGS = frozenset(f.name for cls in ARGUMENT_CLASSES for f in fields(cls) if is_neutral(f))
#: The list-valued settings (``list[str]`` fields).
LIST_SETTINGS = frozenset(name for cls in ARGUMENT_CLASSES for name in list_fields(cls))


@dataclass
class RunConfig:
    pipeline: PipelineArguments
    data: DataArguments
    teacher: TeacherArguments
    generation: GenerationArguments
    student: StudentArguments
    audit: AuditArguments
    hub: HubArguments

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for part in (
            self.pipeline,
            self.data,
            self.teacher,
            self.generation,
            self.student,
            self.audit,
            self.hub,
        ):
            out.update({f.name: getattr(part, f.name) for f in fields(part)})
        if out.get("hub_token") is not None:
            out["hub_token"] = "<HUB_TOKEN>"  # config.json and results.json never hold the token
        return out

    @property
    def stage_list(self) -> list[str]:
        return list(STAGES) if self.pipeline.stages == ["all"] else list(self.pipeline.stages)

    @property
    def method_list(self) -> list[str]:
        return list(self.pipeline.methods)


def changed_settings(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The settings, other than the neutral ones, whose value differs between two `to_dict()` records.

    A list setting recorded as a comma-separated string (config.json of a run written before list settings)
    compares as its list.
    """

    def value(record: dict[str, Any], name: str) -> Any:
        v = record[name]
        return split_list(v) if name in LIST_SETTINGS and isinstance(v, str) else v

    return sorted(k for k in new if k not in NEUTRAL_SETTINGS and k in old and value(old, k) != value(new, k))
