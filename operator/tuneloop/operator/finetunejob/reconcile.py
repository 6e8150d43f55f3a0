"""One level-triggered pass over a FineTuneJob: read children, create what is next, write status.

Safe to run any number of times, from any handler, after any restart: children have
deterministic names (create first; HTTP 409 means it exists) and the phase is derived from what
exists in the cluster, never from memory.

Cheap when nothing moved: the handlers pass the child Jobs from Kopf's in-memory index (no GET),
the spec is validated once per generation, and a child's manifest (the ConfigMap's YAML, the Job)
is built only when that child is about to be created.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from pydantic import ValidationError

from tuneloop.api import FineTuneJobSpec
from tuneloop.contract.exits import reason_for_exit

from .. import builders, metrics
from ..builders.common import BuildError, JobMeta, data_claim, names, workdir
from ..builders.config import check_batch, deepspeed_json
from ..builders.modelversion import model_version_phase
from ..kube import ApiError, KubeClient
from ..kube import resources as r
from ..settings import OperatorSettings
from . import publish
from . import state as st

log = logging.getLogger("tuneloop.finetunejob")


@dataclass
class Outcome:
    phase: str
    invalid: str | None = None  # set when the spec can never run (the status says Failed/InvalidSpec)
    status: dict[str, Any] = field(default_factory=dict)
    written: dict[str, Any] | None = None  # the FineTuneJob as the status patch returned it (None: nothing written)


_VALIDATED: OrderedDict[tuple[str, int, str], tuple[FineTuneJobSpec | None, str, str]] = OrderedDict()
_VALIDATED_MAX = 4096


def validate_cached(body: dict[str, Any], config: OperatorSettings) -> tuple[FineTuneJobSpec | None, str, str]:
    """`validate` once per (uid, generation, spec): a pass that finds the same spec does not parse it again."""
    m = body.get("metadata") or {}
    if not m.get("uid"):
        return validate(body, config)
    key = (m["uid"], int(m.get("generation") or 1), json.dumps(body.get("spec") or {}, sort_keys=True, default=str))
    hit = _VALIDATED.get(key)
    if hit is None:
        hit = _VALIDATED[key] = validate(body, config)
        while len(_VALIDATED) > _VALIDATED_MAX:
            _VALIDATED.popitem(last=False)
    return hit


def validate(body: dict[str, Any], config: OperatorSettings) -> tuple[FineTuneJobSpec | None, str, str]:
    """(spec, field path, message); spec is None when invalid."""
    try:
        spec = FineTuneJobSpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        err = exc.errors()[0]
        path = ".".join(["spec", *(str(p) for p in err["loc"])])
        extra = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        return None, path, f"{err['msg']}{extra}"
    try:
        workdir(spec, JobMeta.from_body(body), config)
        data_claim(spec)
        check_batch(spec)
        deepspeed_json(spec)
    except BuildError as exc:
        return None, exc.field, exc.message
    return spec, "", ""


class Reconciler:
    """Holds the client and settings; `run(body)` is one pass."""

    def __init__(self, client: KubeClient, config: OperatorSettings):
        self.client = client
        self.config = config
        self._jobs: Mapping[str, dict[str, Any]] | None = None

    async def run(self, body: dict[str, Any], *, progress: dict[str, Any] | None = None,
                  jobs: Mapping[str, dict[str, Any]] | None = None) -> Outcome:
        """One pass. `jobs`: the FineTuneJob's child Jobs by name as the caller already knows them
        (Kopf's index); None means "unknown": each stage Job is then read with a GET."""
        old = dict(body.get("status") or {})
        status = {k: v for k, v in old.items()}
        status.setdefault("conditions", [])
        meta = JobMeta.from_body(body)
        if old.get("phase") in st.TERMINAL:
            metrics.set_phase(meta.namespace, meta.name, old["phase"])  # after a restart, too
            return Outcome(old["phase"], status=old)
        spec, where, why = validate_cached(body, self.config)
        if spec is None:
            msg = f"{where}: {why}"
            self._fail(status, meta, "InvalidSpec", msg, ready_reason="InvalidSpec")
            written = await self._write(body, old, status)
            return Outcome("Failed", invalid=msg, status=status, written=written)
        status["baseModel"] = spec.base_model.display_name()
        status["observedGeneration"] = meta.generation
        self._jobs = jobs
        await self._advance(body, spec, meta, status, progress)
        written = await self._write(body, old, status)
        return Outcome(status["phase"], status=status, written=written)

    # --- the pipeline -------------------------------------------------------------------------
    async def _advance(self, body: dict, spec: FineTuneJobSpec, meta: JobMeta, status: dict, progress: dict | None) -> None:
        n = names(meta.name)
        cfg = self.config
        status["children"] = {**(status.get("children") or {}), "configMap": n.config_map, "dataJob": n.data_job}
        # The ConfigMap comes before the data-prep Job (once that exists, so does the ConfigMap);
        # the headless Service only with the training Job.
        conds = status["conditions"]
        data = await self._job(meta, n.data_job, lambda: builders.data_job(spec, meta, cfg), spec.suspend,
                               done=(st.condition(conds, "DataValidated") or {}).get("status") == "True",
                               before=[(r.CONFIGMAPS, lambda: builders.config_map(spec, meta, cfg))])
        ds = st.job_state(data)
        if ds == "Failed":
            msg, reason = await self._failure(data)
            status["conditions"] = st.set_condition(conds, "DataValidated", "False", reason, msg, meta.generation)
            self._fail(status, meta, reason, f"data preparation failed: {msg}")
            return
        if ds != "Succeeded":
            status["conditions"] = st.set_condition(conds, "DataValidated", "Unknown", "Validating", "preparing and checking the dataset", meta.generation)
            status["phase"] = "Suspended" if ds == "Suspended" else "ValidatingData"
            status["message"] = "suspended" if ds == "Suspended" else "preparing and checking the dataset"
            return
        if not status.get("dataReport"):  # read once: the pod list is not free
            summary = await self._message(data, success=True)
            if summary:
                status["dataReport"] = st.data_report(summary)
        if st.condition(conds, "DataValidated") is None or st.condition(conds, "DataValidated")["status"] != "True":
            rep = status.get("dataReport") or {}
            conds = st.set_condition(conds, "DataValidated", "True", "Validated",
                                     f"{rep.get('accepted', '?')} records accepted, {rep.get('rejected', 0)} rejected", meta.generation)
        status["conditions"] = conds
        status["children"]["service"] = n.service
        status["children"]["trainJob"] = n.train_job
        train = await self._job(meta, n.train_job, lambda: builders.train_job(spec, meta, cfg), spec.suspend, timed=body,
                                done=(st.condition(status["conditions"], "Training") or {}).get("reason") == "Completed",
                                before=[(r.SERVICES, lambda: builders.headless_service(spec, meta, cfg))])
        ts = st.job_state(train)
        old_progress = dict(status.get("progress") or {})
        start = (train.get("status") or {}).get("startTime")
        if start and not status.get("startTime"):
            status["startTime"] = start
        if ts == "Failed":
            msg, reason = await self._failure(train)
            status["conditions"] = st.set_condition(status["conditions"], "Training", "False", reason, msg, meta.generation)
            self._fail(status, meta, reason, f"training failed: {msg}")
            return
        if ts != "Succeeded":
            running = ts == "Running"
            status["conditions"] = st.set_condition(
                status["conditions"], "Training", "True" if running else "Unknown",
                {"Running": "Running", "Suspended": "Suspended"}.get(ts, "Starting"),
                f"{spec.resources.nodes} node(s) × {spec.resources.gpus_per_node} GPU(s)", meta.generation)
            status["phase"] = "Suspended" if ts == "Suspended" else "Training"
            status["message"] = "suspended" if ts == "Suspended" else f"training on {spec.resources.nodes} node(s)"
            if progress:
                status["progress"] = st.merge_progress(old_progress, progress)
                metrics.set_progress(meta.namespace, meta.name, st.snake_progress(status["progress"]))
            return
        train_summary: dict = {}
        if (st.condition(status["conditions"], "Training") or {}).get("reason") != "Completed":
            train_summary = await self._message(train, success=True) or {}
            status["progress"] = st.finished_progress(old_progress, train_summary)
            metrics.set_progress(meta.namespace, meta.name, st.snake_progress(status["progress"]))
            loss = status["progress"].get("loss")  # the last logged step's loss, as while training
            status["conditions"] = st.set_condition(status["conditions"], "Training", "False", "Completed",
                                                    "training finished" + (f", loss {loss}" if loss is not None else ""), meta.generation)
        evaluation, report_md, result = None, None, {}
        if spec.evaluation.enabled:
            status["children"]["evalJob"] = n.eval_job
            ev = await self._job(meta, n.eval_job, lambda: builders.eval_job(spec, meta, cfg), spec.suspend,
                                 done=(st.condition(status["conditions"], "Evaluated") or {}).get("status") == "True")
            es = st.job_state(ev)
            if es == "Failed":
                msg, reason = await self._failure(ev)
                status["conditions"] = st.set_condition(status["conditions"], "Evaluated", "False", reason, msg, meta.generation)
                self._fail(status, meta, reason, f"evaluation failed: {msg}")
                return
            if es != "Succeeded":
                status["conditions"] = st.set_condition(status["conditions"], "Evaluated", "Unknown", "Evaluating",
                                                        "comparing the tuned model with its base", meta.generation)
                status["phase"] = "Suspended" if es == "Suspended" else "Evaluating"
                status["message"] = "suspended" if es == "Suspended" else "evaluating the tuned model against its base"
                return
            result = await self._message(ev, success=True) or {}
            evaluation = result.get("evaluation")
            report_md = await self._report(ev)
            verdict = (evaluation or {}).get("verdict", "NotEvaluated")
            status["conditions"] = st.set_condition(status["conditions"], "Evaluated", "True", verdict,
                                                    _verdict_message(evaluation), meta.generation)
        else:
            status["conditions"] = st.set_condition(status["conditions"], "Evaluated", "False", "Disabled",
                                                    "evaluation.enabled is false", meta.generation)
        train_summary = train_summary or await self._message(train, success=True) or {}
        if isinstance(result.get("lineage"), dict):
            train_summary = {**result["lineage"], **train_summary}
        await self._register(spec, meta, status, evaluation, train_summary, report_md)

    async def _register(self, spec, meta, status, evaluation, train_summary, report_md) -> None:
        cfg = self.config
        msg = "training finished"
        if spec.registry.create_model_version:
            mv = builders.model_version(spec, meta, cfg, evaluation=evaluation, data_summary=status.get("dataReport"),
                                        train_summary=train_summary, has_report=report_md is not None)
            name = mv["metadata"]["name"]
            obj, _ = await self.client.create(r.MODELVERSIONS, meta.namespace, mv)
            if report_md is not None:
                await self._ensure(r.CONFIGMAPS, builders.report_config_map(obj, report_md))
            phase = model_version_phase(evaluation)
            if ((obj.get("status") or {}).get("phase") or "Pending") == "Pending":
                await self.client.patch(r.MODELVERSIONS, meta.namespace, name, {"status": model_version_status(
                    evaluation, meta.name, (obj.get("metadata") or {}).get("generation") or 1)}, subresource="status")
            status["children"]["modelVersion"] = name
            evaluated = "" if (evaluation or {}).get("verdict") in ("Passed", "Failed") else ", not evaluated"
            msg = f"registered ModelVersion {name} ({phase}{evaluated})"
        status["metrics"] = st.headline_metrics(evaluation)
        if evaluation:
            status["verdict"] = evaluation.get("verdict")
        status["phase"] = "Succeeded"
        status["completionTime"] = status.get("completionTime") or st.now()
        status["message"] = msg
        status["conditions"] = st.set_condition(status["conditions"], "Succeeded", "True", "Completed", msg, meta.generation)
        status["conditions"] = st.set_condition(status["conditions"], "Ready", "True", "Succeeded", msg, meta.generation)

    # --- helpers ------------------------------------------------------------------------------
    def _fail(self, status: dict, meta: JobMeta, reason: str, message: str, ready_reason: str | None = None) -> None:
        status["phase"] = "Failed"
        status["message"] = message
        status["completionTime"] = status.get("completionTime") or st.now()
        status["conditions"] = st.set_condition(status.get("conditions") or [], "Failed", "True", reason, message, meta.generation)
        status["conditions"] = st.set_condition(status["conditions"], "Ready", "False", ready_reason or reason, message, meta.generation)

    async def _ensure(self, res: r.Resource, manifest: dict) -> None:
        """Create; an existing object (409) counts as done and is not read."""
        await self.client.create(res, manifest["metadata"]["namespace"], manifest, read_existing=False)

    async def _job(self, meta: JobMeta, name: str, build: Callable[[], dict], suspend: bool, timed: dict | None = None,
                   done: bool = False, before: list[tuple[r.Resource, Callable[[], dict]]] = ()) -> dict:
        """Create a stage Job when it is missing (and, only then, what it needs first: built and
        created, 409 = exists); keep its `suspend` in line with the spec while it is unfinished. A
        stage the status records as done whose Job is gone (ttlSecondsAfterFinished, manual
        cleanup) is not run again. A Job the index does not show yet is POSTed: 409 → one GET."""
        ns = meta.namespace
        job = self._jobs.get(name) if self._jobs is not None else await self.client.get(r.JOBS, ns, name)
        if job is None and done:
            return {"metadata": {"name": name, "namespace": ns}, "spec": {},
                    "status": {"conditions": [{"type": "Complete", "status": "True"}]}}
        if job is None:
            for res, dep in before:
                await self._ensure(res, dep())
            job, created = await self.client.create(r.JOBS, ns, build())
            if created and timed is not None:
                _observe_create_latency(timed)
        if st.job_state(job) not in ("Succeeded", "Failed") and bool((job.get("spec") or {}).get("suspend")) != suspend:
            job = await self.client.patch(r.JOBS, ns, name, {"spec": {"suspend": suspend}})
        return job

    async def _pods(self, job: dict) -> list[dict]:
        m = job["metadata"]
        return await self.client.list(r.PODS, m["namespace"], labels={"batch.kubernetes.io/job-name": m["name"]})

    async def _message(self, job: dict, *, success: bool) -> dict | None:
        msg, _ = st.termination(await self._pods(job), want_success=success)
        return msg

    async def _failure(self, job: dict) -> tuple[str, str]:
        """(message, reason) from the failed pod's termination message, else the Job's condition."""
        msg, _ = st.termination(await self._pods(job), want_success=False)
        jreason, jmsg = st.job_failure(job)
        if msg:
            reason = msg.get("reason") or reason_for_exit(msg.get("exitCode"), jreason)
            text = msg.get("error") or msg.get("message") or jmsg or "failed"
            return str(text), str(reason)
        return jmsg or "the Job failed", jreason

    async def _report(self, ev: dict) -> str | None:
        """report.md from the evaluation pod's log (see finetunejob.publish)."""
        _, pod = st.termination(await self._pods(ev), want_success=True)
        if pod is None:
            return None
        try:
            text = await self.client.pod_log(pod["metadata"]["namespace"], pod["metadata"]["name"], container="trainer")
        except (ApiError, aiohttp.ClientError) as exc:
            log.warning("cannot read the report from pod %s: %s", pod["metadata"]["name"], exc)
            return None
        return publish.extract_report(text or "")

    async def _write(self, body: dict, old: dict, status: dict) -> dict | None:
        """Patch the status when it changed (and post an Event on a phase change); the patched object."""
        m = body["metadata"]
        metrics.set_phase(m.get("namespace") or "default", m["name"], status.get("phase", "Pending"))
        if not st.status_changed(old, status):
            return None
        written = await self.client.patch(r.FINETUNEJOBS, m.get("namespace"), m["name"], {"status": st.status_patch(old, status)},
                                          subresource="status")
        if old.get("phase") != status.get("phase"):
            failed = status.get("phase") == "Failed"
            await self.client.event(body, type="Warning" if failed else "Normal", reason=status.get("phase", "Pending"),
                                    message=status.get("message") or f"phase {old.get('phase', 'Pending')} → {status.get('phase')}")
        return written if isinstance(written, dict) else None


def model_version_status(evaluation: dict | None, job: str, generation: int) -> dict[str, Any]:
    """The registered ModelVersion's status. A version that was never evaluated (evaluation
    disabled, or no record came back) says so: condition `Evaluated=False/NotEvaluated`, and its
    `spec.evaluation.verdict` is `NotEvaluated` — a Rollout refuses it unless told otherwise."""
    phase = model_version_phase(evaluation)
    verdict = (evaluation or {}).get("verdict") or "NotEvaluated"
    evaluated = verdict in ("Passed", "Failed")
    conds = st.set_condition([], "Evaluated", "True" if evaluated else "False", verdict,
                             _verdict_message(evaluation) if evaluated else "never evaluated against its base: no gates were applied")
    conds = st.set_condition(conds, "Ready", "True" if phase == "Ready" else "False",
                             ("Registered" if evaluated else "RegisteredNotEvaluated") if phase == "Ready" else "GatesFailed",
                             _verdict_message(evaluation))
    msg = f"registered from FineTuneJob {job}" + ("" if evaluated else " without evaluation (verdict NotEvaluated)")
    return {"phase": phase, "observedGeneration": generation, "message": msg, "conditions": conds}


def _verdict_message(evaluation: dict | None) -> str:
    if not evaluation or evaluation.get("verdict", "NotEvaluated") == "NotEvaluated":
        return "not evaluated"
    gates = evaluation.get("gates") or []
    failed = [g.get("reason", g.get("metric", "")) for g in gates if not g.get("passed")]
    head = f"verdict {evaluation.get('verdict', 'NotEvaluated')}: {len(gates) - len(failed)}/{len(gates)} gates passed"
    return head + (f"; failed: {'; '.join(failed)}" if failed else "")


def _observe_create_latency(body: dict) -> None:
    created = (body.get("metadata") or {}).get("creationTimestamp")
    if not created:
        return
    try:
        t0 = dt.datetime.fromisoformat(created)
    except ValueError:
        return
    metrics.CREATE_TO_TRAINING_JOB.observe(max(0.0, (dt.datetime.now(dt.UTC) - t0).total_seconds()))
