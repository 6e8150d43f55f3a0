"""Async Kubernetes access for the operator (and the kubectl plugin).

    from tuneloop.operator.kube import get_client, resources as r
    obj, created = await get_client().create(r.JOBS, ns, manifest)

`get_client()` is the process-wide client: credentials from the in-cluster service account or the
kubeconfig (the same discovery Kopf uses). Tests and tools may `set_client(KubeClient(...))`.
"""

from __future__ import annotations

from .auth import Connection, discover
from .client import ApiError, KubeClient, matches, parse_selector
from .resources import Resource

_client: KubeClient | None = None


def get_client() -> KubeClient:
    global _client
    if _client is None:
        _client = KubeClient(discover())
    return _client


def set_client(client: KubeClient | None) -> None:
    global _client
    _client = client


__all__ = ["ApiError", "Connection", "KubeClient", "Resource", "discover", "get_client", "matches", "parse_selector", "set_client"]
