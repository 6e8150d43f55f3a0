"""Kopf registrations for FineTuneSchedules (thin: the logic lives in `reconcile`, `decide`, `build`).

One daemon per schedule ticks, then waits until the next thing is due (a cron time, a data or Prometheus check,
a short poll while a digest Job runs) on Kopf's `stopped` flag -- never sleeping in a handler, and never polling an
idle schedule. A spec or annotation change (`kubectl tuneloop retrain`) and every event of one of its FineTuneJobs
wake it at once.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from tuneloop.api.common import GROUP, VERSION

WAKE: dict[tuple[str, str], asyncio.Event] = {}
ERROR_DELAY = 5.0
LABEL_SCHEDULE = "tuneloop.dev/schedule"


def _wake_event(namespace: str, name: str) -> asyncio.Event:
    return WAKE.setdefault((namespace, name), asyncio.Event())


def _reconciler():
    from tuneloop.operator.kube import get_client
    from tuneloop.operator.settings import get_settings

    from .reconcile import Reconciler

    s = get_settings()
    return Reconciler(get_client(), prometheus_url=s.prometheus_url, trainer_image=s.trainer_image,
                      run_as_user=s.run_as_user, pull_policy=s.image_pull_policy)


@kopf.daemon(GROUP, VERSION, "finetuneschedules", id="schedule-loop", cancellation_timeout=10.0)
async def schedule_loop(name: str, namespace: str, stopped: kopf.DaemonStopped, logger: logging.Logger, **_: Any) -> None:
    from tuneloop.operator.kube import resources as r
    from tuneloop.operator.metrics import reconcile_timer

    from ..rollout.handlers import _sleep

    wake = _wake_event(namespace, name)
    reconciler = _reconciler()
    loop = asyncio.get_running_loop()
    while not stopped:
        wake.clear()
        started = loop.time()
        try:
            with reconcile_timer("finetuneschedule"):
                obj = await reconciler.client.get(r.FINETUNESCHEDULES, namespace, name)
                if obj is None:  # deleted: no finalizer waits for us (main.release_daemon_finalizers)
                    WAKE.pop((namespace, name), None)
                    return
                delay = await reconciler.tick(obj)
        except Exception:  # keep the loop alive; counted by reconcile_timer, retried after ERROR_DELAY
            logger.exception("schedule tick failed")
            delay = ERROR_DELAY
        await _sleep(stopped, wake, max(0.0, delay - (loop.time() - started)))


@kopf.on.update(GROUP, VERSION, "finetuneschedules", field="spec", id="schedule-spec-changed")
async def schedule_spec_changed(name: str, namespace: str, **_: Any) -> None:
    _wake_event(namespace, name).set()


@kopf.on.update(GROUP, VERSION, "finetuneschedules", field="metadata.annotations", id="schedule-retrain")
async def schedule_retrain(name: str, namespace: str, **_: Any) -> None:
    """`kubectl tuneloop retrain` sets an annotation: act on it now."""
    _wake_event(namespace, name).set()


@kopf.on.event(GROUP, VERSION, "finetunejobs", labels={LABEL_SCHEDULE: kopf.PRESENT})
async def schedule_run_event(body: Any, namespace: str, **_: Any) -> None:
    """A run's FineTuneJob changed (phase, ModelVersion): wake its schedule. Raw events patch nothing."""
    owner = (body.get("metadata", {}).get("labels") or {}).get(LABEL_SCHEDULE)
    if owner and (namespace, owner) in WAKE:
        WAKE[(namespace, owner)].set()


@kopf.on.event(GROUP, VERSION, "finetuneschedules", id="schedule-gone")
async def schedule_gone(type: str, name: str, namespace: str, **_: Any) -> None:
    """A deleted schedule wakes its loop at once, which sees it gone, forgets it and exits."""
    if type == "DELETED" and (namespace, name) in WAKE:
        WAKE[(namespace, name)].set()
