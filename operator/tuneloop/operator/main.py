"""`tuneloop-operator`: run the Kopf operator. The ONE place that imports the handler modules.

    tuneloop-operator --namespace team-a --namespace team-b
    tuneloop-operator --all-namespaces
    TUNELOOP_NAMESPACES=team-a tuneloop-operator

Liveness/readiness: Kopf's health endpoint at :TUNELOOP_HEALTH_PORT/healthz; metrics at
:TUNELOOP_METRICS_PORT/metrics.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from .settings import OperatorSettings, get_settings

SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def import_handlers() -> None:
    """Register every Kopf handler (import order = registration order)."""
    from . import lifecycle  # noqa: F401  startup/login/cleanup
    from .finetunejob import handlers as _ftj  # noqa: F401
    from .rollout import handlers as _rollout  # noqa: F401
    from .schedule import handlers as _schedule  # noqa: F401
    from .sweep import handlers as _sweep  # noqa: F401

    release_daemon_finalizers()


def release_daemon_finalizers(registry: object | None = None) -> int:
    """No tuneloop object waits on the operator to be deleted: drop Kopf's finalizer from our daemons.

    Kopf marks every daemon as needing a finalizer so that it can stop the daemon before the object
    goes. With the operator stopped or uninstalled, that finalizer keeps each Rollout and
    FineTuneSchedule, and so its namespace, Terminating forever (issue 10). Our daemons stop on their
    own instead: a deletion event wakes the loop, which finds its object gone, forgets it and returns.
    Kopf removes the finalizer it put on objects earlier once no handler needs it. Returns how many
    daemons were released.

    Kopf has no public API for this (kopf.daemon hard-codes requires_finalizer=True): this is the operator's one
    use of a private Kopf name (`registry._spawning._handlers`). Kopf is pinned exactly in pyproject.toml, and
    tests/operator/test_daemon_finalizers.py fails when the pin and the installed Kopf differ or the name moves."""
    import dataclasses

    import kopf

    spawning = (registry or kopf.get_default_registry())._spawning  # type: ignore[attr-defined]
    released = [h for h in spawning._handlers if h.requires_finalizer]
    spawning._handlers = [dataclasses.replace(h, requires_finalizer=False) if h.requires_finalizer else h
                          for h in spawning._handlers]
    return len(released)


def resolve_scope(args: argparse.Namespace, settings: OperatorSettings) -> tuple[bool, list[str]]:
    """(clusterwide, namespaces): flags win over env; default is the operator's own namespace."""
    if args.all_namespaces or (not args.namespace and settings.cluster_wide):
        return True, []
    namespaces = args.namespace or settings.namespaces
    if not namespaces:
        own = settings.operator_namespace or (SA_NAMESPACE.read_text().strip() if SA_NAMESPACE.exists() else "")
        if not own:
            raise SystemExit("tuneloop-operator: give --namespace NS (repeatable), --all-namespaces, "
                             "or TUNELOOP_NAMESPACES / TUNELOOP_CLUSTER_WIDE=true")
        namespaces = [own]
    return False, list(namespaces)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tuneloop-operator", description="The tuneloop Kubernetes operator (Kopf).")
    p.add_argument("-n", "--namespace", action="append", default=[], help="watch this namespace (repeatable)")
    p.add_argument("-A", "--all-namespaces", action="store_true", help="watch the whole cluster")
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    return p


async def _run(clusterwide: bool, namespaces: list[str], settings: OperatorSettings) -> None:
    import kopf

    from . import telemetry

    telemetry.serve(settings.metrics_port)
    liveness = f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port else None
    try:
        await kopf.operator(
            clusterwide=clusterwide,
            namespaces=namespaces,
            liveness_endpoint=liveness,
            standalone=True,  # one replica; Deployment strategy Recreate
        )
    finally:  # after every handler, timer and daemon has stopped
        from . import kube

        if kube._client is not None:
            await kube._client.close()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    settings = get_settings()
    clusterwide, namespaces = resolve_scope(args, settings)
    import_handlers()
    try:
        asyncio.run(_run(clusterwide, namespaces, settings))
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
