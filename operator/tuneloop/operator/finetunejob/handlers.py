"""Kopf registrations for FineTuneJobs. Thin: every trigger runs one Reconciler pass.

Only raw event handlers and indexes — no `@kopf.on.create/update/resume`, no timers, no daemons —
so Kopf writes nothing to a FineTuneJob (no finalizer, no handler-progress or last-handled
annotations; a finalizer left by an older version is removed): deleting a FineTuneJob or its
namespace never waits for the operator.

- `tuneloop_finetunejobs` / `tuneloop_stage_jobs`: in-memory indexes of the FineTuneJobs and of
  their child Jobs, fed by the watch streams Kopf runs anyway (complete before any handler runs,
  also after a restart), so a pass reads nothing it already knows.
- a FineTuneJob event (listed at startup, created, spec changed): a pass — unless it only echoes
  the status this operator just wrote, or the job is finished.
- a child Job event (data-prep, training, evaluation): a pass of its FineTuneJob.
- one operator-wide task (started at startup): every TUNELOOP_PROGRESS_INTERVAL seconds, a pass
  with progress for the jobs that are `Training` (nothing for the others), and retries of passes
  that failed (API errors), 5 s later.
- DELETED: drop the job's metric series and in-memory state (owner references clean the children up).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from tuneloop.api import GROUP, VERSION

from .. import kube, telemetry
from ..builders.common import LABEL_JOB, LABEL_MANAGED_BY, MANAGED_BY, trainer_metrics_port
from ..settings import get_settings
from . import progress as prog
from .reconcile import Reconciler, ValidatedSpecs
from .state import TERMINAL

log = logging.getLogger("tuneloop.finetunejob")

FTJ = (GROUP, VERSION, "finetunejobs")
CHILD_JOB_LABELS: dict[str, Any] = {LABEL_MANAGED_BY: MANAGED_BY, LABEL_JOB: kopf.PRESENT}
RETRY_S = 5.0  # a pass that failed (API error, timeout) is retried this much later

Key = tuple[str, str]


@dataclass
class Memory:
    """What this process keeps between passes over FineTuneJobs — one object, as the Rollout's and the schedule's
    handlers keep their `WAKERS` (nothing here is the truth: a restart rebuilds it from the cluster)."""

    locks: defaultdict[Key, asyncio.Lock] = field(default_factory=lambda: defaultdict(asyncio.Lock))
    slots: asyncio.Semaphore | None = None  # bounds concurrent passes (created in the operator's loop)
    written: dict[Key, dict[str, Any]] = field(default_factory=dict)  # the FineTuneJob as our last status patch returned it
    retry: dict[Key, float] = field(default_factory=dict)  # key -> monotonic time of the next attempt
    loop_task: asyncio.Task | None = None
    seen: set[Key] = field(default_factory=set)  # FineTuneJobs this process has logged as watched
    validated: ValidatedSpecs = field(default_factory=ValidatedSpecs)  # specs parsed once per (uid, generation, spec)

    def slot(self) -> asyncio.Semaphore:
        if self.slots is None:
            self.slots = asyncio.Semaphore(get_settings().max_concurrent_reconciles)
        return self.slots

    def forget(self, key: Key) -> None:
        for d in (self.locks, self.written, self.retry):
            d.pop(key, None)
        self.seen.discard(key)


MEMORY = Memory()


class _QuietEventHandlers(logging.Filter):
    """Kopf logs every successful raw-event handler call at INFO: one line per watch event."""

    NOISE = ("Handler 'finetunejob_event' succeeded.", "Handler 'child_job_changed' succeeded.")

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO or record.getMessage() not in self.NOISE


logging.getLogger("kopf.objects").addFilter(_QuietEventHandlers())


def _key(meta: Any) -> Key:
    return (meta.get("namespace") or "default", meta.get("name"))


def _rv(obj: Mapping[str, Any] | None) -> int:
    try:
        return int(((obj or {}).get("metadata") or {}).get("resourceVersion") or -1)
    except (TypeError, ValueError):  # opaque: treat as unknown
        return -1


def _slim(body: Any) -> dict[str, Any]:
    """What a pass needs of an object, as plain dicts (no managedFields)."""
    meta = {k: v for k, v in dict(body.get("metadata") or {}).items() if k != "managedFields"}
    return {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"), "metadata": meta,
            "spec": dict(body.get("spec") or {}), "status": dict(body.get("status") or {})}


# --- indexes (no API requests: fed by the watch streams) ---------------------------------------
# async: Kopf runs a sync handler in its thread pool (a task, a thread hand-off and a context copy per
# watch event: ~10 % of the operator's CPU samples at 500 creations); these only copy dicts.
@kopf.index(*FTJ)
async def tuneloop_finetunejobs(body: kopf.Body, namespace: str | None, name: str, **_: Any) -> dict[Key, dict[str, Any]]:
    return {(namespace or "default", name): _slim(body)}


@kopf.index("batch", "v1", "jobs", labels=CHILD_JOB_LABELS)
async def tuneloop_stage_jobs(body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any) -> dict[Key, dict[str, Any]]:
    """A stage Job as a pass reads it: its name, whether it is suspended, its status (not the pod template)."""
    job = _slim(body)
    job["spec"] = {"suspend": job["spec"].get("suspend")}
    return {(namespace or "default", labels[LABEL_JOB]): job}


def _one(index: kopf.Index, key: Key) -> dict[str, Any] | None:
    store = index.get(key)
    return next(iter(store), None) if store else None


def current(ftjs: kopf.Index, key: Key) -> dict[str, Any] | None:
    """The freshest FineTuneJob we know: the index, or our own status write if the watch has not
    delivered it yet (resourceVersions compared as numbers; unknown ones prefer the index)."""
    indexed = _one(ftjs, key)
    if indexed is None:
        return None
    mine = MEMORY.written.get(key)
    if mine is not None and _rv(mine) > _rv(indexed) >= 0:
        return mine
    return indexed


# --- one pass ----------------------------------------------------------------------------------
async def reconcile(key: Key, ftjs: kopf.Index, stage_jobs: kopf.Index, *, with_progress: bool = False) -> Any:
    """A pass over one FineTuneJob; a failure is logged and retried RETRY_S later."""
    if _one(ftjs, key) is None:  # deleted (a child's late event): nothing to do, nothing to remember
        MEMORY.retry.pop(key, None)
        return None
    try:
        async with MEMORY.locks[key], MEMORY.slot():
            with telemetry.reconcile_timer("finetunejob"):
                body = current(ftjs, key)
                if body is None or (body.get("status") or {}).get("phase") in TERMINAL:
                    if body is not None:
                        telemetry.set_phase(key[0], key[1], body["status"]["phase"])
                    MEMORY.retry.pop(key, None)
                    return None
                rec = Reconciler(kube.get_client(), get_settings(), MEMORY.validated)
                progress = None
                if with_progress and (body.get("status") or {}).get("phase") == "Training":
                    progress = await prog.poll(rec.client, key[0], key[1], trainer_metrics_port(rec.config, *key),
                                               max_bytes=rec.config.trainer_metrics_max_bytes)
                jobs = {j["metadata"]["name"]: j for j in stage_jobs.get(key, [])}  # _slim: every Job has metadata.name
                outcome = await rec.run(body, progress=progress, jobs=jobs)
                if outcome.written is not None:
                    MEMORY.written[key] = _slim(outcome.written)
                if outcome.invalid:
                    log.warning("FineTuneJob %s/%s cannot run: %s", key[0], key[1], outcome.invalid)
                MEMORY.retry.pop(key, None)
                return outcome
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 — retried by the operator-wide loop
        telemetry.RECONCILE_ERRORS.labels("finetunejob").inc()
        log.warning("reconcile of FineTuneJob %s/%s failed (retry in %.0f s): %s", key[0], key[1], RETRY_S, exc)
        if key in MEMORY.locks:  # not deleted meanwhile
            MEMORY.retry[key] = time.monotonic() + RETRY_S
        return None


# --- triggers ----------------------------------------------------------------------------------
@kopf.on.event(*FTJ)  # type: ignore[arg-type]  # Kopf's handler protocols do not list index kwargs
async def finetunejob_event(event: dict[str, Any], body: kopf.Body, tuneloop_finetunejobs: kopf.Index,
                            tuneloop_stage_jobs: kopf.Index, **_: Any) -> None:
    key = _key(body.get("metadata") or {})
    if event.get("type") == "DELETED":
        telemetry.forget(*key)
        MEMORY.forget(key)
        prog.forget(*key)
        return
    if key not in MEMORY.seen:
        MEMORY.seen.add(key)
        if event.get("type") is None:  # listed at startup (a new job is announced by its first Event instead)
            log.info("watching FineTuneJob %s/%s (phase %s)", key[0], key[1], (body.get("status") or {}).get("phase") or "new")
    mine = MEMORY.written.get(key)
    if mine is not None and _rv(mine) == _rv(body) >= 0:
        return  # the echo of our own status patch
    if (body.get("status") or {}).get("phase") in TERMINAL:
        telemetry.set_phase(key[0], key[1], body["status"]["phase"])
        return
    await reconcile(key, tuneloop_finetunejobs, tuneloop_stage_jobs)


@kopf.on.event("batch", "v1", "jobs", labels=CHILD_JOB_LABELS)  # type: ignore[arg-type]  # Kopf's handler protocols do not list index kwargs
async def child_job_changed(event: dict[str, Any], body: kopf.Body, tuneloop_finetunejobs: kopf.Index,
                            tuneloop_stage_jobs: kopf.Index, **_: Any) -> None:
    if event.get("type") == "DELETED":
        return
    meta = body.get("metadata") or {}
    owner = (meta.get("labels") or {}).get(LABEL_JOB)
    if not owner:  # the label filter lets only labelled Jobs through
        return
    await reconcile((meta.get("namespace") or "default", owner), tuneloop_finetunejobs, tuneloop_stage_jobs)


# --- the operator-wide loop: progress while Training, retries ---------------------------------
async def _periodic(ftjs: kopf.Index, stage_jobs: kopf.Index, interval: float) -> None:
    tick = min(1.0, interval)
    next_progress = time.monotonic() + interval
    while True:
        await asyncio.sleep(tick)
        now = time.monotonic()
        due = {k for k, t in MEMORY.retry.items() if t <= now}
        polls: set[Key] = set()
        if now >= next_progress:
            next_progress = now + interval
            for key in list(ftjs):
                body = current(ftjs, key)
                if body is not None and (body.get("status") or {}).get("phase") == "Training":
                    polls.add(key)
        if not due and not polls:
            continue
        for key in due:
            MEMORY.retry.pop(key, None)
        await asyncio.gather(*(reconcile(k, ftjs, stage_jobs, with_progress=k in polls) for k in due | polls),
                             return_exceptions=True)


@kopf.on.startup()  # type: ignore[arg-type]  # Kopf's handler protocols do not list index kwargs
async def _start_loop(tuneloop_finetunejobs: kopf.Index, tuneloop_stage_jobs: kopf.Index, **_: Any) -> None:
    """The indexes are filled later (before any resource handler runs); the task only reads them."""
    MEMORY.loop_task = asyncio.create_task(
        _periodic(tuneloop_finetunejobs, tuneloop_stage_jobs, get_settings().progress_interval), name="tuneloop-finetunejobs")


@kopf.on.cleanup()
async def _stop_loop(**_: Any) -> None:
    task, MEMORY.loop_task = MEMORY.loop_task, None
    if task is not None:
        task.cancel()
        try:
            await task
        except (asyncio.CancelledError, Exception):  # noqa: BLE001 — shutting down
            pass
