"""Read training progress from rank 0's metrics endpoint (the pod IP of completion index 0)."""

from __future__ import annotations

import logging
from typing import Any

import aiohttp

from ..builders.common import names
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


MAX_BYTES = 256 << 10  # rank 0 exports a handful of gauges (< 4 KiB); anything much larger is not the trainer's


async def poll(client: KubeClient, namespace: str, name: str, port: int, timeout: float = 3.0,
               max_bytes: int = MAX_BYTES) -> dict[str, Any] | None:
    """status.progress from rank 0, or None when it is not reachable (yet). The pod runs the job's image: no
    redirects are followed and at most `max_bytes` are read (a longer answer is ignored)."""
    job = names(name).train_job
    pods = await client.list(r.PODS, namespace, labels={"batch.kubernetes.io/job-name": job})
    pod = rank0_pod(pods)
    if pod is None:
        return None
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
    return st.parse_progress(body.decode("utf-8", "replace")) or None


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
