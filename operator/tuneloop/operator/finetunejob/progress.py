"""Read training progress from rank 0's metrics endpoint (the pod IP of completion index 0, the port its pod spec
names `metrics`). Only an answer labelled with this FineTuneJob counts: where pods share the host's ports
(hostNetwork; the loopback test cluster) another job's trainer may hold the port, and its losses must never become
this job's progress (a sweep would prune or keep the wrong trial)."""

from __future__ import annotations

import logging
from typing import Any

import aiohttp

from ..builders.common import METRICS_PORT_NAME, names
from ..kube import KubeClient
from ..kube import resources as r
from . import state as st

log = logging.getLogger("tuneloop.finetunejob.progress")


def rank0_pod(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The running pod with completion index 0 that has an IP."""
    for pod in pods:
        meta = pod.get("metadata") or {}
        idx = (meta.get("labels") or {}).get(st.INDEX_LABEL) or (meta.get("annotations") or {}).get(st.INDEX_LABEL)
        status = pod.get("status") or {}
        if idx == "0" and status.get("phase") == "Running" and status.get("podIP"):
            return pod
    return None


def metrics_port(pod: dict[str, Any], default: int) -> int:
    """The container port named `metrics` in the pod's spec (the builder puts the job's port there), else `default`
    (a pod without one: the operator's setting)."""
    for c in (pod.get("spec") or {}).get("containers") or []:
        for p in c.get("ports") or []:
            port = p.get("containerPort")
            if p.get("name") == METRICS_PORT_NAME and isinstance(port, int) and not isinstance(port, bool) and 1 <= port <= 65535:
                return port
    return default


MAX_BYTES = 256 << 10  # rank 0 exports a handful of gauges (< 4 KiB); anything much larger is not the trainer's

# (namespace, name) -> why its last answer was refused: warned once, again only when the reason changes
REFUSED: dict[tuple[str, str], str] = {}


def forget(namespace: str, name: str) -> None:
    """The FineTuneJob is gone: a later one of the same name warns afresh."""
    REFUSED.pop((namespace, name), None)


def _refuse(key: tuple[str, str], why: str) -> None:
    if REFUSED.get(key) != why:
        REFUSED[key] = why
        log.warning("progress of %s/%s ignored: %s", key[0], key[1], why)


def _accept(key: tuple[str, str]) -> None:
    if REFUSED.pop(key, None) is not None:
        log.info("progress of %s/%s: rank 0 answers with its own metrics again", *key)


async def poll(client: KubeClient, namespace: str, name: str, port: int, timeout: float = 3.0,
               max_bytes: int = MAX_BYTES) -> dict[str, Any] | None:
    """status.progress from rank 0, or None when it is not reachable (yet) or answers with another job's metrics.
    `port` is the fallback for a pod spec without a `metrics` port. The pod runs the job's image: no redirects are
    followed and at most `max_bytes` are read (a longer answer is ignored)."""
    job = names(name).train_job
    pods = await client.list(r.PODS, namespace, labels={"batch.kubernetes.io/job-name": job})
    pod = rank0_pod(pods)
    if pod is None:
        return None
    port = metrics_port(pod, port)
    url = f"http://{pod['status']['podIP']}:{port}/metrics"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as sess,
            sess.get(url, allow_redirects=False) as resp,
        ):
            if resp.status != 200:
                return None
            body = await read_capped(resp, max_bytes)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        log.debug("progress of %s/%s unavailable at %s: %s", namespace, name, url, exc)
        return None
    if body is None:
        log.warning("progress of %s/%s: rank 0's /metrics answer is over %d bytes; ignored", namespace, name, max_bytes)
        return None
    return _own_progress(body.decode("utf-8", "replace"), (namespace, name), url)


def _own_progress(text: str, key: tuple[str, str], url: str) -> dict[str, Any] | None:
    """This job's status.progress from rank 0's answer; None (warned once) when the answer is another job's."""
    try:
        seen = st.trainer_identities(text)
    except ValueError as exc:  # not Prometheus text
        _refuse(key, f"{url} does not answer Prometheus text ({exc}); is another program on that port?")
        return None
    if not seen:
        _refuse(key, f"{url} answers without any tuneloop_trainer_* metric: another program holds the port")
        return None
    if key not in seen:
        others = ", ".join(sorted(f"{ns}/{job}" if ns or job else "(unlabelled)" for ns, job in seen))
        _refuse(key, f"{url} serves the metrics of {others}, not of this FineTuneJob: another trainer holds the port "
                     "(pods sharing the host's ports need trainer_metrics_port_range, docs/operator.md)")
        return None
    _accept(key)
    return st.parse_progress(text, key) or None


async def read_capped(resp: aiohttp.ClientResponse, max_bytes: int) -> bytes | None:
    """The body, or None when it is longer than `max_bytes` (not read further)."""
    if resp.content_length is not None and resp.content_length > max_bytes:
        return None
    out = bytearray()
    async for chunk in resp.content.iter_chunked(64 << 10):
        out += chunk
        if len(out) > max_bytes:
            return None
    return bytes(out)
