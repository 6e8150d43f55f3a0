"""Kopf registrations for Rollouts (thin: the logic lives in `reconcile`, `steps`, `analysis`).

Imported by ``tuneloop.operator.main``; importing this module must always succeed.

One daemon per Rollout runs the reconcile loop: tick, then wait until the next measurement, the end
of a pause, or a poll of canary readiness -- never sleeping in a handler (it waits on Kopf's
`stopped` flag). A spec change (promote/abort, a new candidate) wakes it at once.
"""

from __future__ import annotations

from typing import Any

import kopf

from tuneloop.api.common import GROUP, VERSION

from .. import daemonloop
from ..daemonloop import Wakers

WAKERS = Wakers()


def _reconciler():
    from tuneloop.operator.kube import get_client
    from tuneloop.operator.settings import get_settings

    from ..analysis import prometheus  # the metrics provider: the one place the Rollout names it
    from ..builders.serving import ServingConfig
    from .reconcile import Reconciler

    settings = get_settings()
    # providers are the admin's (a named allowlist); tenants' custom PromQL is confined to their namespace
    return Reconciler(get_client(), ServingConfig.from_settings(settings), "default",
                      provider_factory=prometheus.Endpoints.from_settings(settings).provider,
                      serving_from=settings.serving_from if settings.network_policies else None,
                      operator_namespace=settings.operator_namespace)


@kopf.daemon(GROUP, VERSION, "rollouts", id="rollout-loop", cancellation_timeout=10.0)  # type: ignore[arg-type]  # Kopf types namespace str | None; these kinds are namespaced
async def rollout_loop(name: str, namespace: str, stopped: kopf.DaemonStopped, logger: kopf.Logger, **_: Any) -> None:
    from tuneloop.operator.kube import resources as r

    from . import telemetry

    reconciler = _reconciler()
    await daemonloop.run(
        kind="rollout", namespace=namespace, name=name,
        get=lambda: reconciler.client.get(r.ROLLOUTS, namespace, name), tick=reconciler.tick,
        wakers=WAKERS, stopped=stopped, logger=logger, on_gone=lambda: telemetry.forget(namespace, name),
    )


@kopf.on.update(GROUP, VERSION, "rollouts", field="spec", id="rollout-spec-changed")  # type: ignore[arg-type]  # Kopf types namespace str | None; these kinds are namespaced
async def rollout_spec_changed(name: str, namespace: str, **_: Any) -> None:
    """Wake the loop so promote/abort and new candidates act without waiting for the interval."""
    WAKERS.event(namespace, name).set()


@kopf.on.event(GROUP, VERSION, "rollouts", id="rollout-gone")  # type: ignore[arg-type]  # Kopf types namespace str | None; these kinds are namespaced
async def rollout_gone(type: str, name: str, namespace: str, **_: Any) -> None:
    """A deleted Rollout wakes its loop at once, which sees it gone, forgets it and exits."""
    if type == "DELETED":
        WAKERS.wake(namespace, name)
