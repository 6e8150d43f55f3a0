"""Building blocks shared by the three resources: the camelCase base model, conditions, refs."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any, ClassVar, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, model_validator
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

GROUP = "tuneloop.dev"
VERSION = "v1alpha1"
API_VERSION: Final = "tuneloop.dev/v1alpha1"  # GROUP/VERSION, spelled out: the models' Literal["…"] default is checked against it
assert API_VERSION == f"{GROUP}/{VERSION}"


class ApiModel(BaseModel):
    """Base of every API object: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_enum_values=True,
        validate_default=True,
    )

    def wire(self) -> dict[str, Any]:
        """The object as it is written to Kubernetes: camelCase, no unset optionals."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def cel(rule: str, message: str, field_path: str | None = None) -> JsonDict:
    """One CEL rule for `x-kubernetes-validations`."""
    out: JsonDict = {"rule": rule, "message": message}
    if field_path:
        out["fieldPath"] = field_path
    return out


def one_of_rule(fields: list[str], what: str) -> JsonDict:
    """CEL: exactly one of `fields` is set."""
    terms = " + ".join(f"(has(self.{f}) ? 1 : 0)" for f in fields)
    return cel(f"{terms} == 1", f"exactly one of {', '.join(fields)} must be set for {what}")


class OneOf(ApiModel):
    """A union object: exactly one of `one_of` (wire names) must be set — checked by the models and, through
    the generated CEL rule, by the API server."""

    one_of: ClassVar[tuple[str, ...]] = ()
    one_of_what: ClassVar[str] = ""

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if cls.one_of:
            configured = cls.model_config.get("json_schema_extra") or {}
            extra: JsonDict = dict(configured) if isinstance(configured, dict) else {}
            existing = extra.get("x-kubernetes-validations")
            rules: list[JsonValue] = [one_of_rule(list(cls.one_of), cls.one_of_what), *(existing if isinstance(existing, list) else [])]
            cls.model_config = {**cls.model_config, "json_schema_extra": {**extra, "x-kubernetes-validations": rules}}
            cls.model_rebuild(force=True)

    @model_validator(mode="after")
    def _exactly_one(self) -> OneOf:
        if self.one_of:
            by_alias = {(f.alias or n): n for n, f in type(self).model_fields.items()}
            count = sum(getattr(self, by_alias[a]) is not None for a in self.one_of)
            if count != 1:
                raise ValueError(one_of_rule(list(self.one_of), self.one_of_what)["message"])
        return self


class ConditionStatus(str, Enum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(ApiModel):
    """A Kubernetes-style condition: the latest observation of one aspect of the object."""

    type: str = Field(description="Type of condition, e.g. Ready, DataValidated, Training.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(default="", description="One-word CamelCase reason for the last transition.")
    message: str = Field(default="", description="Human-readable details of the last transition.")
    last_transition_time: datetime | None = Field(
        default=None, description="When the condition last changed status."
    )
    observed_generation: int | None = Field(
        default=None, description="The .metadata.generation the condition was set from."
    )


class SecretKeyRef(ApiModel):
    """A key in a Secret in the object's namespace."""

    name: str = Field(min_length=1, description="Name of the Secret.")
    key: str = Field(default="token", min_length=1, description="Key within the Secret.")


class PvcPath(ApiModel):
    """A path inside a PersistentVolumeClaim in the object's namespace."""

    claim_name: str = Field(min_length=1, description="Name of the PersistentVolumeClaim.")
    path: str = Field(default="", description="Path inside the volume; empty means its root.")


class S3Location(ApiModel):
    """An S3 (or S3-compatible) object or prefix."""

    uri: str = Field(pattern=r"^s3://[^/]+(/.*)?$", description="s3://bucket/key-or-prefix.")
    endpoint: str | None = Field(default=None, description="Endpoint URL for S3-compatible stores.")
    credentials_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret holding AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY keys (key is ignored).",
    )


class ObjectRef(ApiModel):
    """A reference to another tuneloop object in the same namespace."""

    name: str = Field(min_length=1, description="Name of the object.")


class Toleration(ApiModel):
    """A Kubernetes pod toleration."""

    key: str | None = Field(default=None, description="Taint key the toleration applies to.")
    operator: Literal["Exists", "Equal"] = Field(default="Equal", description="Exists or Equal.")
    value: str | None = Field(default=None, description="Taint value to match with Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches all effects."
    )
    toleration_seconds: int | None = Field(
        default=None, description="For NoExecute: how long the pod stays bound after the taint."
    )


class ObjectMeta(BaseModel):
    """The subset of metadata the models read; everything else passes through untouched."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    namespace: str | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    generation: int | None = None
    uid: str | None = None
