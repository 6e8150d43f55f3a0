"""Kopf registrations for FineTuneJobs. Thin: every handler runs one Reconciler pass.

- create / resume (operator restart): reconcile; an invalid spec ends in PermanentError (no retries).
- a child Job changed (data-prep, training, evaluation): reconcile its FineTuneJob at once.
- spec.suspend changed: reconcile (suspends/resumes the current stage's Job).
- timer every TUNELOOP_PROGRESS_INTERVAL seconds while not finished: reconcile + progress from rank 0.
- delete: drop the job's metric series (no finalizer: owner references clean the children up).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Any

import kopf

from tuneloop.api import GROUP, VERSION

from .. import kube, metrics
from ..builders.common import LABEL_JOB, LABEL_MANAGED_BY, MANAGED_BY
from ..kube import resources as r
from ..settings import get_settings
from . import progress as prog
from .reconcile import Reconciler
from .state import TERMINAL

FTJ = (GROUP, VERSION, "finetunejobs")
_locks: defaultdict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)
_slots: asyncio.Semaphore | None = None  # bounds concurrent passes (created in the operator's loop)


def _slot() -> asyncio.Semaphore:
    global _slots
    if _slots is None:
        _slots = asyncio.Semaphore(get_settings().max_concurrent_reconciles)
    return _slots


def _reconciler() -> Reconciler:
    return Reconciler(kube.get_client(), get_settings())


async def _reconcile(body: dict[str, Any], *, with_progress: bool = False) -> Any:
    meta = body.get("metadata") or {}
    key = (meta.get("namespace") or "default", meta["name"])
    async with _locks[key], _slot():
        with metrics.reconcile_timer("finetunejob"):
            rec = _reconciler()
            # Always act on the freshest copy: another handler may have just moved the job on.
            fresh = await rec.client.get(r.FINETUNEJOBS, key[0], key[1])
            if fresh is None:
                return None
            progress = None
            if with_progress and (fresh.get("status") or {}).get("phase") == "Training":
                progress = await prog.poll(rec.client, key[0], key[1], rec.config.trainer_metrics_port)
            return await rec.run(fresh, progress=progress)


RETRY_S = 5  # an API error or timeout is retried soon (Kopf's default is 60 s)


@kopf.on.resume(*FTJ, backoff=RETRY_S)
@kopf.on.create(*FTJ, backoff=RETRY_S)
async def finetunejob_created(body: kopf.Body, **_: Any) -> None:
    outcome = await _reconcile(dict(body))
    if outcome is not None and outcome.invalid:
        raise kopf.PermanentError(outcome.invalid)


@kopf.on.field(*FTJ, field="spec.suspend", backoff=RETRY_S)
async def finetunejob_suspend(body: kopf.Body, old: Any, new: Any, **_: Any) -> None:
    if old is not None or new:  # not the initial creation
        await _reconcile(dict(body))


@kopf.timer(*FTJ, interval=get_settings().progress_interval, initial_delay=get_settings().progress_interval, backoff=RETRY_S,
            when=lambda status, **_: status.get("phase") not in TERMINAL)
async def finetunejob_progress(body: kopf.Body, **_: Any) -> None:
    await _reconcile(dict(body), with_progress=True)


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_MANAGED_BY: MANAGED_BY, LABEL_JOB: kopf.PRESENT})
async def child_job_changed(event: dict[str, Any], body: kopf.Body, logger: logging.Logger, **_: Any) -> None:
    if event.get("type") == "DELETED":
        return
    name = body.get("metadata", {}).get("labels", {}).get(LABEL_JOB)
    ns = body.get("metadata", {}).get("namespace")
    try:
        await _reconcile({"metadata": {"name": name, "namespace": ns}})
    except Exception as exc:  # noqa: BLE001 — event handlers are not retried; the timer/resume will pick it up
        metrics.RECONCILE_ERRORS.labels("finetunejob").inc()
        logger.warning("reconcile of FineTuneJob %s/%s after a Job event failed: %s", ns, name, exc)


@kopf.on.delete(*FTJ, optional=True)
async def finetunejob_deleted(body: kopf.Body, **_: Any) -> None:
    meta = body.get("metadata", {})
    metrics.forget(meta.get("namespace") or "default", meta.get("name"))
    _locks.pop((meta.get("namespace") or "default", meta.get("name")), None)
