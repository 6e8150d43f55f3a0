"""Operator-wide Kopf handlers: settings at startup, login (the shared client is closed by main).

Kopf keeps its bookkeeping (handler progress, last-handled diff base) for Rollouts in annotations
with the ``tuneloop.dev`` prefix, never in ``status`` (the CRD status schema is typed and pruned).
FineTuneJobs have none: only raw event handlers and indexes are registered for them.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from . import kube
from .kube.auth import from_connection_info
from .settings import get_settings

ANNOTATION_PREFIX = "tuneloop.dev"


class DiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """Kopf's annotation diff base, not built for kinds that only have raw event handlers.

    Kopf builds an object's diff base (a deep copy of the whole body) on every watch event, even for
    kinds without create/update/resume handlers, where nothing uses it. FineTuneJobs and their Jobs
    have none (finetunejob/handlers.py: event handlers and indexes only), and their events are most
    of the operator's work; Rollouts keep the normal behaviour.
    """

    EVENT_ONLY = frozenset({("tuneloop.dev/v1alpha1", "FineTuneJob"), ("batch/v1", "Job")})

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> Any:
        if (body.get("apiVersion"), body.get("kind")) in self.EVENT_ONLY:
            return None
        return super().build(body=body, extra_fields=extra_fields)


def configure(settings: kopf.OperatorSettings) -> None:
    """Kopf settings (pure; unit-tested)."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = DiffBaseStorage(prefix=ANNOTATION_PREFIX, key="last-handled-configuration")
    settings.persistence.finalizer = f"{ANNOTATION_PREFIX}/finalizer"
    settings.posting.level = logging.WARNING  # events are posted explicitly on phase changes
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.scanning.disabled = True  # namespaces are given explicitly or cluster-wide
    settings.queueing.error_delays = [1, 2, 5, 10, 30, 60]
    settings.execution.max_workers = 8


@kopf.on.startup()
async def _startup(settings: kopf.OperatorSettings, logger: kopf.Logger, **_: Any) -> None:
    configure(settings)
    logger.info("tuneloop operator settings: %s", get_settings().model_dump())


@kopf.on.login()
def _login(settings: kopf.OperatorSettings, **kwargs: Any) -> kopf.ConnectionInfo | None:
    """Service account in a pod, else kubeconfig; the operator's own client shares the credentials."""
    info = kopf.login_with_service_account(settings=settings, **kwargs) or kopf.login_with_kubeconfig(
        settings=settings, **kwargs
    )
    if info is not None:
        kube.set_client(kube.KubeClient(from_connection_info(info)))
    return info
