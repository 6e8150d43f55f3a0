"""A stage's summary — DIR/result-<stage>.json and (fitted) its termination message — typed.

The trainer writes it (`tuneloop_trainer.__main__`, the local runner); the operator reads it back
from the pod status (`StageResult.read`). Stage-specific fields (counts, losses, verdict, …) ride
along as extra keys.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict

from .exits import Reason


class Outcome(str, Enum):
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class StageResult(BaseModel):
    """`{"stage", "outcome", "seconds"?, "reason"?, "error"?, "truncated"?, …stage fields}`."""

    model_config = ConfigDict(extra="allow")

    stage: str
    outcome: Outcome
    seconds: float | None = None
    reason: str | None = None  # a Reason value when failed
    error: str | None = None  # the one-line cause when failed
    truncated: bool | None = None  # the termination message was fitted

    @classmethod
    def succeeded(cls, stage: str, seconds: float, fields: dict[str, Any] | None = None) -> StageResult:
        # The stage's own fields come last and win, as they always have (built, not validated: they are the stage's).
        return cls.model_construct(**{"stage": stage, "outcome": Outcome.SUCCEEDED, "seconds": seconds, **(fields or {})})

    @classmethod
    def failed(cls, stage: str, reason: Reason | str, error: str) -> StageResult:
        return cls(stage=stage, outcome=Outcome.FAILED, reason=Reason(reason).value if isinstance(reason, Reason) else reason, error=error)

    @classmethod
    def read(cls, doc: dict[str, Any]) -> StageResult | None:
        """A summary read back (e.g. a termination message), or None when it is not one."""
        try:
            return cls.model_validate(doc)
        except ValueError:
            return None

    def wire(self) -> dict[str, Any]:
        """The JSON form: set fields in the usual order (stage, outcome, seconds / reason, error), then the stage's own."""
        core = self.model_dump(mode="json", exclude_none=True, include=set(type(self).model_fields))
        return {**core, **(self.__pydantic_extra__ or {})}  # the stage's own fields as they are (None kept)
