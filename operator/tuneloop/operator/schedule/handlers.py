"""Kopf registrations for FineTuneSchedules (thin: the logic lives in `reconcile`, `decide`, `build`).

One daemon per schedule ticks, then waits until the next thing is due (a cron time, a data or Prometheus check,
a short poll while a digest Job runs) on Kopf's `stopped` flag -- never sleeping in a handler, and never polling an
idle schedule. A spec or annotation change (`kubectl tuneloop retrain`) and every event of one of its FineTuneJobs
wake it at once.
"""

from __future__ import annotations

from typing import Any

import kopf

from tuneloop.api.common import GROUP, VERSION
from tuneloop.contract.names import LABEL_SCHEDULE

from .. import daemonloop
from ..daemonloop import Wakers

WAKERS = Wakers()


def _reconciler():
    from tuneloop.operator.analysis import prometheus
    from tuneloop.operator.kube import get_client
    from tuneloop.operator.settings import get_settings

    from .reconcile import Reconciler

    s = get_settings()
    return Reconciler(get_client(), prometheus_url=s.prometheus_url, trainer_image=s.trainer_image,
                      run_as_user=s.run_as_user, pull_policy=s.image_pull_policy, settings=s,
                      provider_factory=prometheus.Endpoints.from_settings(s).client)


@kopf.daemon(GROUP, VERSION, "finetuneschedules", id="schedule-loop", cancellation_timeout=10.0)  # type: ignore[arg-type]  # Kopf types namespace str | None; these kinds are namespaced
async def schedule_loop(name: str, namespace: str, stopped: kopf.DaemonStopped, logger: kopf.Logger, **_: Any) -> None:
    from tuneloop.operator.kube import resources as r

    reconciler = _reconciler()
    await daemonloop.run(
        kind="finetuneschedule", namespace=namespace, name=name,
        get=lambda: reconciler.client.get(r.FINETUNESCHEDULES, namespace, name), tick=reconciler.tick,
        wakers=WAKERS, stopped=stopped, logger=logger,
    )


@kopf.on.update(GROUP, VERSION, "finetuneschedules", field="spec", id="schedule-spec-changed")  # type: ignore[arg-type]  # Kopf types namespace str | None; these kinds are namespaced
async def schedule_spec_changed(name: str, namespace: str, **_: Any) -> None:
    WAKERS.event(namespace, name).set()


@kopf.on.update(GROUP, VERSION, "finetuneschedules", field="metadata.annotations", id="schedule-retrain")  # type: ignore[arg-type]  # Kopf types namespace str | None; these kinds are namespaced
async def schedule_retrain(name: str, namespace: str, **_: Any) -> None:
    """`kubectl tuneloop retrain` sets an annotation: act on it now."""
    WAKERS.event(namespace, name).set()


@kopf.on.event(GROUP, VERSION, "finetunejobs", labels={LABEL_SCHEDULE: kopf.PRESENT})  # type: ignore[arg-type]  # Kopf types namespace str | None; these kinds are namespaced
async def schedule_run_event(body: Any, namespace: str, **_: Any) -> None:
    """A run's FineTuneJob changed (phase, ModelVersion): wake its schedule. Raw events patch nothing."""
    owner = (body.get("metadata", {}).get("labels") or {}).get(LABEL_SCHEDULE)
    if owner:
        WAKERS.wake(namespace, owner)


@kopf.on.event(GROUP, VERSION, "finetuneschedules", id="schedule-gone")  # type: ignore[arg-type]  # Kopf types namespace str | None; these kinds are namespaced
async def schedule_gone(type: str, name: str, namespace: str, **_: Any) -> None:
    """A deleted schedule wakes its loop at once, which sees it gone, forgets it and exits."""
    if type == "DELETED":
        WAKERS.wake(namespace, name)
