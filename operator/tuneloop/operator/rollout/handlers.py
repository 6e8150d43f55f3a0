"""Kopf registrations for Rollouts (thin: the logic lives in `reconcile`, `steps`, `analysis`).

Imported by ``tuneloop.operator.main``; importing this module must always succeed.

One daemon per Rollout runs the reconcile loop: tick, then wait until the next measurement, the end
of a pause, or a poll of canary readiness -- never sleeping in a handler (it waits on Kopf's
`stopped` flag). A spec change (promote/abort, a new candidate) wakes it at once.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from tuneloop.api.common import GROUP, VERSION

WAKE: dict[tuple[str, str], asyncio.Event] = {}
ERROR_DELAY = 5.0


def _wake_event(namespace: str, name: str) -> asyncio.Event:
    return WAKE.setdefault((namespace, name), asyncio.Event())


def _reconciler():
    from tuneloop.operator.kube import get_client
    from tuneloop.operator.settings import get_settings

    from .reconcile import Reconciler
    from .serving import ServingConfig

    settings = get_settings()
    return Reconciler(get_client(), ServingConfig.from_settings(settings), settings.prometheus_url)


@kopf.daemon(GROUP, VERSION, "rollouts", id="rollout-loop", cancellation_timeout=10.0)
async def rollout_loop(name: str, namespace: str, stopped: kopf.DaemonStopped, logger: logging.Logger, **_: Any) -> None:
    from tuneloop.operator.kube import resources as r
    from tuneloop.operator.metrics import reconcile_timer

    wake = _wake_event(namespace, name)
    reconciler = _reconciler()
    loop = asyncio.get_running_loop()
    while not stopped:
        wake.clear()
        started = loop.time()
        try:
            with reconcile_timer("rollout"):
                obj = await reconciler.client.get(r.ROLLOUTS, namespace, name)
                if obj is None:  # deleted: no finalizer waits for us (main.release_daemon_finalizers)
                    _forget(namespace, name)
                    return
                delay = await reconciler.tick(obj)
        except Exception:  # keep the loop alive; counted by reconcile_timer, retried after ERROR_DELAY
            logger.exception("rollout tick failed")
            delay = ERROR_DELAY
        await _sleep(stopped, wake, max(0.0, delay - (loop.time() - started)))  # delay counts from the tick's start


async def _sleep(stopped: kopf.DaemonStopped, wake: asyncio.Event, delay: float) -> None:
    """Wait `delay` seconds, or less when the daemon is stopped or woken."""

    async def until_stopped() -> None:
        await stopped.wait(delay)

    tasks = [asyncio.ensure_future(until_stopped()), asyncio.ensure_future(wake.wait())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()


@kopf.on.update(GROUP, VERSION, "rollouts", field="spec", id="rollout-spec-changed")
async def rollout_spec_changed(name: str, namespace: str, **_: Any) -> None:
    """Wake the loop so promote/abort and new candidates act without waiting for the interval."""
    _wake_event(namespace, name).set()


@kopf.on.event(GROUP, VERSION, "rollouts", id="rollout-gone")
async def rollout_gone(type: str, name: str, namespace: str, **_: Any) -> None:
    """A deleted Rollout wakes its loop at once, which sees it gone, forgets it and exits."""
    if type == "DELETED" and (namespace, name) in WAKE:
        WAKE[(namespace, name)].set()


def _forget(namespace: str, name: str) -> None:
    from . import metrics

    metrics.forget(namespace, name)
    WAKE.pop((namespace, name), None)
