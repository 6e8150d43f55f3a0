"""What should run for a Rollout status: which ModelVersion each role serves, replicas, weight (pure).

A Rollout with no version to serve (no stable yet, no canary: it waits for its first candidate, or its first
candidate cannot be served) desires nothing at all: no Deployment, no Service, no HTTPRoute (`serves_nothing`).
They are created with the first version's promotion, so a gateway never routes to Services without pods.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from tuneloop.api.rollout import RolloutPhase, RolloutSpec, RolloutStatus

from . import traffic
from .steps import canary_share, gateway_mode

ACTIVE = {RolloutPhase.PROGRESSING.value, RolloutPhase.PAUSED.value, RolloutPhase.DEGRADED.value}


@dataclass(frozen=True)
class Desired:
    stable_mv: str | None
    canary_mv: str | None
    stable_replicas: int
    canary_replicas: int
    canary_weight: int
    canary_hold: bool = False  # keep the canary Deployment as it is (scaleDownDelaySeconds after its traffic left)

    @property
    def serves_nothing(self) -> bool:
        """No version in either role: create nothing (a Rollout waiting for its first version)."""
        return self.stable_mv is None and self.canary_mv is None and not self.canary_hold


def canary_active(status: RolloutStatus) -> bool:
    return (
        status.phase in ACTIVE
        and status.candidate_model_version is not None
        and status.candidate_model_version != status.stable_model_version
    )


def desired(spec: RolloutSpec, status: RolloutStatus, canary_available: int = 0, now: dt.datetime | None = None) -> Desired:
    total = spec.serving.replicas
    active = canary_active(status)
    canary_mv = status.candidate_model_version if active else None
    weight = status.canary_weight if active else 0
    if gateway_mode(spec):
        if not active:
            hold = now is not None and status.canary_scale_down_at is not None and now < status.canary_scale_down_at
            return Desired(status.stable_model_version, None, total, 0, 0, canary_hold=hold)
        pending = weight
        i = status.current_step_index
        if i is not None and i < len(spec.steps) and canary_share(spec.steps[i]) is not None:
            pending = max(pending, canary_share(spec.steps[i]) or 0)  # pods first: a mirror step's copies need them too
        return Desired(status.stable_model_version, canary_mv, total, traffic.gateway_canary_replicas(total, pending), weight)
    # replica-weighted: the split is the weight; stable shrinks only as canary pods become available
    stable_t, canary_t = traffic.replica_split(total, weight)
    stable = min(total, max(stable_t, total - canary_available))
    return Desired(status.stable_model_version, canary_mv, stable, canary_t, weight)
