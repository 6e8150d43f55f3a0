"""Kopf registrations for FineTuneSweeps (thin: the logic lives in `reconcile`, `decide`, `study`, the builders).

One daemon per sweep ticks, then waits (a short poll while trials run); a spec change and every event of one of its
FineTuneJobs wake it at once.
"""

from __future__ import annotations

from typing import Any

import kopf

from tuneloop.api.common import GROUP, VERSION
from tuneloop.contract.names import LABEL_SWEEP

from .. import daemonloop
from ..daemonloop import Wakers

WAKERS = Wakers()


@kopf.daemon(GROUP, VERSION, "finetunesweeps", id="sweep-loop", cancellation_timeout=10.0)  # type: ignore[arg-type]  # Kopf types namespace str | None; these kinds are namespaced
async def sweep_loop(name: str, namespace: str, stopped: kopf.DaemonStopped, logger: kopf.Logger, **_: Any) -> None:
    from tuneloop.operator.kube import get_client
    from tuneloop.operator.kube import resources as r
    from tuneloop.operator.settings import get_settings

    from .reconcile import Reconciler

    reconciler = Reconciler(get_client(), get_settings())
    await daemonloop.run(
        kind="finetunesweep", namespace=namespace, name=name,
        get=lambda: reconciler.client.get(r.FINETUNESWEEPS, namespace, name), tick=reconciler.tick,
        wakers=WAKERS, stopped=stopped, logger=logger,
    )


@kopf.on.update(GROUP, VERSION, "finetunesweeps", field="spec", id="sweep-spec-changed")  # type: ignore[arg-type]  # Kopf types namespace str | None; these kinds are namespaced
async def sweep_spec_changed(name: str, namespace: str, **_: Any) -> None:
    WAKERS.event(namespace, name).set()


@kopf.on.event(GROUP, VERSION, "finetunejobs", labels={LABEL_SWEEP: kopf.PRESENT})  # type: ignore[arg-type]  # Kopf types namespace str | None; these kinds are namespaced
async def sweep_trial_event(body: Any, namespace: str, **_: Any) -> None:
    """A trial's FineTuneJob changed (progress, phase): wake its sweep. Raw events patch nothing."""
    owner = (body.get("metadata", {}).get("labels") or {}).get(LABEL_SWEEP)
    if owner:
        WAKERS.wake(namespace, owner)


@kopf.on.event(GROUP, VERSION, "finetunesweeps", id="sweep-gone")  # type: ignore[arg-type]  # Kopf types namespace str | None; these kinds are namespaced
async def sweep_gone(type: str, name: str, namespace: str, **_: Any) -> None:
    if type == "DELETED":
        WAKERS.wake(namespace, name)
