"""The shadow (mirror) step of a Rollout and its status (issue 23, item 4).

A mirror step sends a copy of a share of the live requests to the candidate without returning its answers, and
compares the candidate's answers with the stable's on the same requests: agreement, the output contract, latency —
judged by analysis metrics (the built-ins shadow-*). Gateway API's RequestMirror filter discards the mirrored
responses, so nothing in the traffic layer sees both answers; the output guard in each stable pod does (it answers the
client with the stable's answer, then sends the same request to the candidate and compares: tuneloop.guard.mirror).
The step therefore needs serving.guard, and the candidate's role Service (trafficRouting.gatewayAPI).
"""

from __future__ import annotations

from datetime import datetime

from pydantic import Field, model_validator

from .common import ApiModel, cel
from .durations import DURATION, parse_duration

MIN_MIRROR_DURATION = "1s"
MIRROR_DURATION_FLOOR = f"mirror duration must be at least {MIN_MIRROR_DURATION}"
# the analysis built-ins that read the stable guards' shadow counters (tuneloop_shadow_*), by candidate
SHADOW_METRICS = ("shadow-agreement-rate", "shadow-contract-violation-rate", "shadow-latency-ratio", "shadow-error-rate")
MIRROR_GUARD_MESSAGE = (
    "a mirror step needs serving.guard: the output guard in each stable pod copies requests to the candidate and compares "
    "the two answers (Gateway API RequestMirror discards the mirrored responses, so nothing in the traffic layer sees both)")
MIRROR_ROUTING_MESSAGE = (
    "a mirror step needs trafficRouting.gatewayAPI: the mirrored requests go to the candidate's role Service "
    "(<rollout>-canary), which only the Gateway API mode has")
SHADOW_RELATIVE_MESSAGE = (
    "a shadow-* built-in already compares the candidate with the stable on the same requests: give it max or min, "
    "not maxRelativeToStable")


class MirrorStep(ApiModel):
    """Shadow the candidate: for `duration`, `percent` % of the live requests the stable answers are copied to the
    candidate (its answers are never returned), and the two answers are compared by the stable pods' output guards;
    the step's metrics (the shadow-* built-ins, or any analysis metric) are measured every analysis.interval. A Failed
    or Error verdict rolls back; at the end every metric needs a Successful measurement, else the Rollout pauses for a
    human. The canary weight stays where it is."""

    percent: int = Field(ge=1, le=100, description="Percent of the stable's non-streamed completion requests copied to the candidate.")
    duration: str = Field(pattern=DURATION, description=f"How long the requests are mirrored and compared (at least {MIN_MIRROR_DURATION}).")
    metrics: list[str] = Field(default_factory=list, max_length=16, description=(
        "Names of analysis metrics judged during the step; empty: every analysis metric with a shadow-* built-in."))

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [cel(f"duration(self.duration) >= duration('{MIN_MIRROR_DURATION}')", MIRROR_DURATION_FLOOR)]
        }
    }

    @model_validator(mode="after")
    def _floor(self) -> MirrorStep:
        """The pydantic twin of the CEL rule above."""
        if parse_duration(self.duration) < parse_duration(MIN_MIRROR_DURATION):
            raise ValueError(f"{MIRROR_DURATION_FLOOR}; got {self.duration}")
        return self


class MirrorStatus(ApiModel):
    """The mirror of the current (or last) mirror step, as the operator asks the stable pods' guards to run it."""

    step_index: int = Field(ge=0, description="The mirror step (0-based).")
    candidate_model_version: str = Field(description="The candidate the requests are mirrored to.")
    percent: int = Field(ge=1, le=100, description="Percent of the requests mirrored.")
    requested_at: datetime = Field(description="When the step asked the guards to mirror.")
    until: datetime = Field(description="When the guards stop mirroring by themselves (even without the operator).")
    started_at: datetime | None = Field(default=None, description="When every stable pod's guard held the mirror: comparisons count from here.")
    ends_at: datetime | None = Field(default=None, description="The end of the step: startedAt + duration.")
    ended_at: datetime | None = Field(default=None, description="When the mirror was ended (step passed, rolled back, aborted, paused).")
    cleared: bool = Field(default=False, description="No stable pod's guard holds a mirror any more (after it ended).")
    guards: str | None = Field(default=None, description="Stable pods whose guard holds the mirror, e.g. 2/2.")
