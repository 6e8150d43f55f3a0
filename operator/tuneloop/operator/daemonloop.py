"""The loop behind the per-object Kopf daemons (one per Rollout, one per FineTuneSchedule).

Tick, then wait until the delay the tick asked for has passed (counted from the tick's start), the
object is woken (a spec change, an annotation, a related event) or Kopf stops the daemon -- never
sleeping in a handler. A failed tick is logged, counted by `reconcile_timer` and retried after
ERROR_DELAY. When the object is gone the loop calls `on_gone` and returns: no finalizer waits for it
(`main.release_daemon_finalizers`), and a deletion event wakes it at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import kopf

ERROR_DELAY = 5.0


class Wakers:
    """One wake-up event per object of a kind, keyed by (namespace, name)."""

    def __init__(self) -> None:
        self.events: dict[tuple[str, str], asyncio.Event] = {}

    def event(self, namespace: str, name: str) -> asyncio.Event:
        return self.events.setdefault((namespace, name), asyncio.Event())

    def wake(self, namespace: str, name: str) -> None:
        """Wake the object's loop if it runs (a no-op for objects without one)."""
        if (namespace, name) in self.events:
            self.events[(namespace, name)].set()

    def forget(self, namespace: str, name: str) -> None:
        self.events.pop((namespace, name), None)


async def run(
    *,
    kind: str,
    namespace: str,
    name: str,
    get: Callable[[], Awaitable[dict[str, Any] | None]],
    tick: Callable[[dict[str, Any]], Awaitable[float]],
    wakers: Wakers,
    stopped: kopf.DaemonStopped,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    on_gone: Callable[[], None] = lambda: None,
) -> None:
    from tuneloop.operator.telemetry import reconcile_timer

    wake = wakers.event(namespace, name)
    loop = asyncio.get_running_loop()
    while not stopped:
        wake.clear()
        started = loop.time()
        try:
            with reconcile_timer(kind):
                obj = await get()
                if obj is None:
                    wakers.forget(namespace, name)
                    on_gone()
                    return
                delay = await tick(obj)
        except Exception:
            logger.exception("%s tick failed", kind)
            delay = ERROR_DELAY
        await _sleep(stopped, wake, max(0.0, delay - (loop.time() - started)))


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
