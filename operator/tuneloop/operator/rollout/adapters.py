"""Which LoRA adapters the pods of a sharedBase Rollout must serve, and what to load or unload where (pure).

In serving.mode sharedBase one Deployment of the base serves every version of the Rollout as a LoRA adapter named
after its ModelVersion. The reconciler observes each live pod (GET /v1/models: which adapters it lists, or no answer),
asks this module what to do, does it (POST /v1/load_lora_adapter, /v1/unload_lora_adapter on that pod) and observes
again; the step machine then reads `coverage`: the candidate's weight moves only once every live pod lists it.

- wanted: the serving (stable) version's adapter, and the candidate's while it is being rolled out (not once it was
  rolled back or aborted, nor when it cannot be served).
- hold: until `status.canaryScaleDownAt` (scaleDownDelaySeconds after traffic left an adapter: a rollback, or the old
  stable after a promotion) nothing is unloaded, so that gateways applying the new weights late, and requests in
  flight, still find it; then every adapter that is not wanted is unloaded.
- a pod that does not answer is neither loaded nor unloaded (it is asked again next tick), and counts as not serving
  the candidate.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from tuneloop.api.rollout import RolloutPhase, RolloutSpec, RolloutStatus

_ENDED = {RolloutPhase.ROLLED_BACK.value, RolloutPhase.ABORTED.value}


@dataclass(frozen=True)
class PodAdapters:
    """One live pod of the shared Deployment as observed: the adapters its /v1/models lists (None: no answer)."""

    pod: str
    served: frozenset[str] | None


@dataclass(frozen=True)
class Plan:
    """What to do this tick: (pod, adapter) pairs to load and to unload."""

    load: tuple[tuple[str, str], ...] = ()
    unload: tuple[tuple[str, str], ...] = ()

    @property
    def empty(self) -> bool:
        return not self.load and not self.unload


def wanted(spec: RolloutSpec, status: RolloutStatus | None, *, stable: str | None, candidate_servable: bool) -> frozenset[str]:
    """The adapters every pod must serve: the serving version's (`stable`: status.stableModelVersion, else spec.stable, else
    the first candidate) and spec.candidate's while its rollout runs (servable, and not rolled back or aborted)."""
    out = set()
    cand = spec.candidate.name if spec.candidate is not None else None
    if stable is not None:
        out.add(stable)
    if cand is not None and candidate_servable:
        ended = status is not None and status.candidate_model_version == cand and status.phase in _ENDED
        if not ended:
            out.add(cand)
    return frozenset(out)


def holding(status: RolloutStatus | None, now: dt.datetime) -> bool:
    """True while traffic that just left an adapter may still reach it (scaleDownDelaySeconds): unload nothing."""
    return status is not None and status.canary_scale_down_at is not None and now < status.canary_scale_down_at


def plan(pods: list[PodAdapters], want: frozenset[str], *, hold: bool) -> Plan:
    """Load what a pod lacks of `want`; unload what it serves beyond `want` (not while `hold`). Pods that did not
    answer are left alone. Deterministic order (pods as given, adapters sorted)."""
    load: list[tuple[str, str]] = []
    unload: list[tuple[str, str]] = []
    for p in pods:
        if p.served is None:
            continue
        load += [(p.pod, a) for a in sorted(want - p.served)]
        if not hold:
            unload += [(p.pod, a) for a in sorted(p.served - want)]
    return Plan(tuple(load), tuple(unload))


def coverage(pods: list[PodAdapters], adapter: str | None) -> tuple[int, int]:
    """(live pods whose /v1/models lists `adapter`, live pods): the candidate's weight needs the two equal (and > 0)."""
    if adapter is None:
        return 0, len(pods)
    return sum(1 for p in pods if p.served is not None and adapter in p.served), len(pods)


def settled(pods: list[PodAdapters], want: frozenset[str], *, hold: bool) -> bool:
    """Every live pod answered and serves exactly what is wanted (beyond it only while holding): nothing left to do."""
    return all(p.served is not None for p in pods) and plan(pods, want, hold=hold).empty
