"""Operator-wide Kopf handlers: settings at startup, login (the shared client is closed by main).

Kopf keeps its bookkeeping (handler progress, last-handled diff base) in annotations with the
``tuneloop.dev`` prefix, never in ``status`` (the CRD status schema is typed and pruned).
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from . import kube
from .kube.auth import from_connection_info
from .settings import get_settings

ANNOTATION_PREFIX = "tuneloop.dev"


def configure(settings: kopf.OperatorSettings) -> None:
    """Kopf settings (pure; unit-tested)."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{ANNOTATION_PREFIX}/finalizer"
    settings.posting.level = logging.WARNING  # events are posted explicitly on phase changes
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.scanning.disabled = True  # namespaces are given explicitly or cluster-wide
    settings.queueing.error_delays = [1, 2, 5, 10, 30, 60]
    settings.execution.max_workers = 8


@kopf.on.startup()
async def _startup(settings: kopf.OperatorSettings, logger: logging.Logger, **_: Any) -> None:
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
