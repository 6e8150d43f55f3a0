"""What the stable pods' output guards must hold during a Rollout's mirror step, and what to set or clear where (pure).

A mirror step (api.mirror) asks the guard of every stable pod to copy a share of the requests it answers to the
candidate's role Service and to compare the answers (tuneloop.guard.mirror). The reconciler observes each live stable
pod's guard (GET /tuneloop/mirror), asks this module what to do, does it (PUT or DELETE) and observes again; the step
machine reads the result (`World.mirror_guards`): the step starts measuring only once every stable guard holds the mirror.

- wanted: `status.mirror` while its step runs (not ended): target, percent, until and the candidate's name, exactly as
  the guard answers them back (`config`), so that an unchanged mirror is never written again;
- after it ended (the step passed, a rollback, an abort, a pause): nothing, so a guard holding any mirror is cleared;
- a pod whose guard does not answer is left alone and asked again next tick (its mirror ends at `until` anyway).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from tuneloop.api.rollout import RolloutPhase, RolloutStatus

GRACE = 300.0  # seconds a mirror may wait for every stable guard before its `until` is moved on (then it is re-sent)
POLL = 2.0  # seconds between looks while a guard lacks the mirror it must hold, or holds one it must not


def format_time(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def config(status: RolloutStatus | None, target: str) -> dict[str, Any] | None:
    """The mirror every stable guard must hold now, in the guard's canonical form (None: none)."""
    m = status.mirror if status is not None else None
    if m is None or m.ended_at is not None or status is None:
        return None
    if status.phase not in (RolloutPhase.PROGRESSING.value, RolloutPhase.PAUSED.value):
        return None
    return {"target": target, "percent": m.percent, "until": format_time(m.until), "candidate": m.candidate_model_version}


def watching(status: RolloutStatus | None) -> bool:
    """Whether this tick must look at the stable guards: a mirror that runs, or one that ended and may still be held."""
    return status is not None and status.mirror is not None and not status.mirror.cleared


@dataclass(frozen=True)
class GuardMirror:
    """One live stable pod's guard as observed: the mirror it holds ({} none; None: no answer)."""

    pod: str
    holds: dict[str, Any] | None


@dataclass(frozen=True)
class Plan:
    """What to do this tick: pods to set the wanted mirror on, pods to clear."""

    set: tuple[str, ...] = ()
    clear: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.set and not self.clear


def plan(guards: list[GuardMirror], want: dict[str, Any] | None) -> Plan:
    """Set `want` where a guard holds something else; clear where a guard holds a mirror and none is wanted. Guards
    that did not answer are left alone. Deterministic: pods in the order given."""
    answered = [g for g in guards if g.holds is not None]
    if want is None:
        return Plan(clear=tuple(g.pod for g in answered if g.holds))
    return Plan(set=tuple(g.pod for g in answered if g.holds != want))


def coverage(guards: list[GuardMirror], want: dict[str, Any] | None) -> tuple[int, int, int]:
    """(guards holding exactly `want`, live stable pods, guards that may hold a mirror not wanted: stale — one that
    holds another, or one that did not answer). Without a wanted mirror the first is 0."""
    held = sum(1 for g in guards if want is not None and g.holds == want)
    stale = sum(1 for g in guards if g.holds is None or (g.holds and g.holds != want))
    return held, len(guards), stale
