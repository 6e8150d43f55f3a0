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
import functools
import json
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import aiohttp
from pydantic import ValidationError

from tuneloop.api import FineTuneJobPhase, FineTuneJobSpec, FineTuneJobStatus
from tuneloop.api.common import Condition
from tuneloop.api.conditions import FineTuneJobCondition as C
from tuneloop.api.conditions import FineTuneJobReason as R
from tuneloop.api.conditions import ModelVersionCondition, ModelVersionReason, StageFailureReason, find_condition, set_condition
from tuneloop.api.status import ChildRefs, DataReportSummary, Progress
from tuneloop.contract import ownership
from tuneloop.contract.exits import reason_for_exit

from .. import builders, policy, telemetry
from ..builders.common import BuildError, JobMeta, Names, data_claim, names, owner_ref, workdir
from ..builders.config import check_spec_batch
from ..builders.registration import build_export, export_passed, model_version_phase
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
    status: dict[str, Any] = field(default_factory=dict)  # the new status, wire form
    written: dict[str, Any] | None = None  # the FineTuneJob as the status patch returned it (None: nothing written)


REPORT_TAIL_LINES = 20000  # lines of the evaluation pod's log read for report.md (then at most eval_log_max_bytes of them)

Validated = tuple[FineTuneJobSpec | None, str, str]  # what `validate` returns: (spec, where, why)


class ValidatedSpecs:
    """`validate` once per (uid, generation, spec): a pass that finds the same spec does not parse it again.

    Bounded (the oldest entry goes first); owned by whoever outlives a pass — the operator's `Memory` in
    `finetunejob/handlers.py` — and handed to each `Reconciler`; a Reconciler made without one gets its own, so
    nothing is shared between tests. Filled under one process's settings (`validate` reads the policy)."""

    def __init__(self, max_entries: int = 4096) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, int, str], Validated] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, body: dict[str, Any], config: OperatorSettings) -> Validated:
        m = body.get("metadata") or {}
        if not m.get("uid"):
            return validate(body, config)
        key = (m["uid"], int(m.get("generation") or 1), json.dumps(body.get("spec") or {}, sort_keys=True, default=str))
        hit = self._entries.get(key)
        if hit is None:
            hit = self._entries[key] = validate(body, config)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
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
        check_spec_batch(spec)
    except BuildError as exc:
        return None, exc.field, exc.message
    refused = policy.finetunejob_problems(spec, policy.Policy.from_settings(config), config.trainer_image)
    if refused:
        return None, *refused[0]
    return spec, "", ""


@dataclass
class Pass:
    """What one pass knows while it walks the stages: the inputs, the typed status it edits, and what the
    finished stages handed on (the training summary, the evaluation record, the report)."""

    body: dict[str, Any]
    spec: FineTuneJobSpec
    meta: JobMeta
    names: Names
    status: FineTuneJobStatus
    progress: dict[str, Any] | None = None
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage Jobs read this pass, by condition
    train_summary: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)  # the evaluation stage's termination message
    evaluation: dict[str, Any] | None = None
    report_md: str | None = None
    exports: list[dict[str, Any]] = field(default_factory=list)  # the export stage's records (output.exports)

    def condition(self, type_: C) -> Condition | None:
        return find_condition(self.status.conditions, type_)

    def set(self, type_: C, status: bool | str, reason: str | Enum, message: str) -> None:
        set_condition(self.status.conditions, type_, status, reason, message, now=st.utcnow(), generation=self.meta.generation)


Build = Callable[[FineTuneJobSpec, JobMeta, OperatorSettings], dict]
Waiting = tuple[str, "str | Enum", str, str]  # (condition status, reason, condition message, status message)
# A stage's own steps: Reconciler methods, given unbound in the table (`Reconciler._data_done`) and called with the
# reconciler of the pass, the pass and the stage's Job.
Finish = Callable[["Reconciler", "Pass", dict], Awaitable[None]]
Observe = Callable[["Reconciler", "Pass", dict], None]


@dataclass(frozen=True)
class Stage:
    """One row of the pipeline: a stage Job (its builder, the objects created with it), the condition that
    tracks it and the phase while it runs. `run_stage` does what every stage does; the rest is per stage."""

    condition: C
    phase: FineTuneJobPhase
    job: Callable[[Names], str]  # the Job's name
    build: Build  # the Job, built only when it is about to be created
    children: tuple[tuple[str, Callable[[Names], str]], ...]  # status.children fields set when the stage begins
    before: tuple[tuple[r.Resource, Callable[..., dict | None]], ...] = ()  # created (409 = exists) only together with the Job
    failed: str = ""  # "… failed: <message>" in status.message
    done: Callable[[Condition | None], bool] = lambda c: False  # the status already records it as done
    waiting: Callable[[Pass, str], Waiting] | None = None  # the condition and message while it is unfinished
    finish: Finish | None = None  # run once the Job succeeded
    observe: Observe | None = None  # run on the Job whatever its state
    running: Observe | None = None  # run while the Job is unfinished
    enabled: Callable[[FineTuneJobSpec], bool] = lambda spec: True
    skipped: tuple[str, str | Enum, str] | None = None  # the condition when not enabled
    timed: bool = False  # its creation is the create-to-training latency


def _data_waiting(p: Pass, state: str) -> Waiting:
    msg = "preparing and checking the dataset"
    return "Unknown", R.VALIDATING, msg, msg


def _train_waiting(p: Pass, state: str) -> Waiting:
    res = p.spec.resources
    reason = {"Running": R.RUNNING, "Suspended": R.SUSPENDED}.get(state, R.STARTING)
    return ("True" if state == "Running" else "Unknown"), reason, f"{res.nodes} node(s) × {res.gpus_per_node} GPU(s)", \
        f"training on {res.nodes} node(s)"


def _eval_waiting(p: Pass, state: str) -> Waiting:
    return "Unknown", R.EVALUATING, "comparing the tuned model with its base", "evaluating the tuned model against its base"


def _export_waiting(p: Pass, state: str) -> Waiting:
    formats = ", ".join(e.format if isinstance(e.format, str) else e.format.value for e in p.spec.output.exports or [])
    return "Unknown", R.EXPORTING, f"exporting {formats} and checking each against the tuned model", f"exporting {formats}"


def _is_true(c: Condition | None) -> bool:
    return c is not None and c.status == "True"


class Reconciler:
    """Holds the client and settings; `run(body)` is one pass."""

    def __init__(self, client: KubeClient, config: OperatorSettings, validated: ValidatedSpecs | None = None):
        self.client = client
        self.config = config
        self.validated = validated if validated is not None else ValidatedSpecs()
        self._jobs: Mapping[str, dict[str, Any]] | None = None

    async def run(self, body: dict[str, Any], *, progress: dict[str, Any] | None = None,
                  jobs: Mapping[str, dict[str, Any]] | None = None) -> Outcome:
        """One pass. `jobs`: the FineTuneJob's child Jobs by name as the caller already knows them
        (Kopf's index); None means "unknown": each stage Job is then read with a GET."""
        old = dict(body.get("status") or {})
        meta = JobMeta.from_body(body)
        if old.get("phase") in st.TERMINAL:
            telemetry.set_phase(meta.namespace, meta.name, old["phase"])  # after a restart, too
            return Outcome(old["phase"], status=old)
        status = st.read_status(old)
        status.conditions = status.conditions  # always written, as an empty list at first
        spec, where, why = self.validated.get(body, self.config)
        if spec is None:
            msg = f"{where}: {why}"
            self._fail(status, meta, StageFailureReason.INVALID_SPEC, msg)
            written = await self._write(body, old, status)
            return Outcome(status.phase, invalid=msg, status=st.wire(status), written=written)
        status.base_model = spec.base_model.display_name()
        status.observed_generation = meta.generation
        self._jobs = jobs
        p = Pass(body, spec, meta, names(meta.name), status, progress)
        try:
            if await self.run_stages(p):
                await self._register(p)
        except ownership.NotOwned as exc:  # a child's name is taken by an object someone else made: never adopted
            self._fail(status, meta, R.CHILD_NOT_OWNED, str(exc))
        written = await self._write(body, old, status)
        return Outcome(status.phase, status=st.wire(status), written=written)

    # --- the pipeline -------------------------------------------------------------------------
    async def run_stages(self, p: Pass) -> bool:
        """Every stage of STAGES in order, as far as they are done; True when all are."""
        for stage in STAGES:
            if not stage.enabled(p.spec):
                if stage.skipped is not None:
                    p.set(stage.condition, *stage.skipped)
                continue
            if not await self.run_stage(stage, p):
                return False
        return True

    async def run_stage(self, stage: Stage, p: Pass) -> bool:
        """Create the stage's Job when it is missing; then by its state: Failed → the job fails; unfinished → the
        stage's condition and phase (or Suspended); Succeeded → the stage's `finish`. True when it succeeded."""
        spec, meta, cfg, status = p.spec, p.meta, self.config, p.status
        status.children = status.children or ChildRefs()
        for field_, name in stage.children:
            setattr(status.children, field_, name(p.names))
        job = await self._job(meta, stage.job(p.names), lambda: stage.build(spec, meta, cfg), spec.suspend,
                              timed=p.body if stage.timed else None, done=stage.done(p.condition(stage.condition)),
                              before=[(res, functools.partial(b, spec, meta, cfg)) for res, b in stage.before])
        p.jobs[stage.condition.value] = job
        state = st.job_state(job)
        if stage.observe is not None:
            stage.observe(self, p, job)
        if state == "Failed":
            msg, reason = await self._failure(job)
            p.set(stage.condition, False, reason, msg)
            self._fail(status, meta, reason, f"{stage.failed}: {msg}")
            return False
        if state != "Succeeded":
            assert stage.waiting is not None
            cond_status, why, cond_msg, msg = stage.waiting(p, state)
            p.set(stage.condition, cond_status, why, cond_msg)
            suspended = state == "Suspended"
            status.phase = FineTuneJobPhase.SUSPENDED if suspended else stage.phase
            status.message = "suspended" if suspended else msg
            if stage.running is not None:
                stage.running(self, p, job)
            return False
        if stage.finish is not None:
            await stage.finish(self, p, job)
        return True

    def _train_started(self, p: Pass, job: dict) -> None:
        start = (job.get("status") or {}).get("startTime")
        if start and p.status.start_time is None:
            p.status.start_time = st.parse_time(start)

    def _train_progress(self, p: Pass, job: dict) -> None:
        if p.progress:  # a poll of rank 0's /metrics came with this pass
            self._set_progress(p, st.merge_progress(st.wire_progress(p.status), p.progress))

    def _set_progress(self, p: Pass, progress: dict[str, Any]) -> None:
        p.status.progress = Progress.model_validate(progress)
        telemetry.set_progress(p.meta.namespace, p.meta.name, st.snake_progress(progress))

    async def _data_done(self, p: Pass, job: dict) -> None:
        if not p.status.data_report:  # read once: the pod list is not free
            summary = await self._message(job, success=True)
            if summary:
                p.status.data_report = DataReportSummary.model_validate(st.data_report(summary))
        if not _is_true(p.condition(C.DATA_VALIDATED)):
            rep = p.status.data_report
            accepted = rep.accepted if rep is not None and rep.accepted is not None else "?"
            rejected = rep.rejected if rep is not None and rep.rejected is not None else 0
            p.set(C.DATA_VALIDATED, True, R.VALIDATED, f"{accepted} records accepted, {rejected} rejected")

    async def _train_done(self, p: Pass, job: dict) -> None:
        done = p.condition(C.TRAINING)
        if done is None or done.reason != R.COMPLETED.value:
            p.train_summary = await self._message(job, success=True) or {}
            progress = st.finished_progress(st.wire_progress(p.status), p.train_summary)
            self._set_progress(p, progress)
            loss = progress.get("loss")  # the last logged step's loss, as while training
            p.set(C.TRAINING, False, R.COMPLETED, "training finished" + (f", loss {loss}" if loss is not None else ""))

    async def _eval_done(self, p: Pass, job: dict) -> None:
        p.result = await self._message(job, success=True) or {}
        p.evaluation = p.result.get("evaluation")
        p.report_md = await self._report(job)
        verdict = (p.evaluation or {}).get("verdict", "NotEvaluated")
        p.set(C.EVALUATED, True, verdict, _verdict_message(p.evaluation))

    async def _export_done(self, p: Pass, job: dict) -> None:
        """The exports' records (the export pod's termination message) and the report it rewrote with their table."""
        msg = await self._message(job, success=True) or {}
        p.exports = [e for e in msg.get("exports") or [] if isinstance(e, dict) and e.get("format")]
        report = await self._report(job)
        if report is not None:
            p.report_md = report
        refused = [e for e in p.exports if not export_passed(e)]
        why = "; ".join(f"{e['format']}: {(e.get('equivalence') or {}).get('reason', 'refused')}" for e in refused)
        p.set(C.EXPORTED, True, R.EXPORTS_REFUSED if refused else R.EXPORTED,
              f"{len(p.exports) - len(refused)}/{len(p.exports)} exports held up against the tuned model" + (f"; refused {why}" if why else ""))

    async def _register_exports(self, p: Pass, source: dict[str, Any]) -> list[str]:
        """One ModelVersion per export that held up (the refused ones get none), each created once (409 = this job's)."""
        names_: list[str] = []
        uri = builders.workdir_uri(p.spec, p.meta, self.config)
        for export in p.exports:
            if not export_passed(export):
                continue
            mv = build_export(source, export, workdir_uri=uri)
            obj, created = await self.client.create(r.MODELVERSIONS, p.meta.namespace, mv)
            if not created and not ownership.same_registration(obj, mv):
                raise ownership.NotOwned({"kind": "ModelVersion", **obj}, owner_ref(p.meta))
            if ((obj.get("status") or {}).get("phase") or "Pending") == "Pending":
                await self.client.patch(r.MODELVERSIONS, p.meta.namespace, mv["metadata"]["name"], {"status": model_version_status(
                    p.evaluation, p.meta.name, (obj.get("metadata") or {}).get("generation") or 1,
                    export_of=source["metadata"]["name"])}, subresource="status")
            names_.append(mv["metadata"]["name"])
        return names_

    async def _register(self, p: Pass) -> None:
        spec, meta, status, evaluation, report_md = p.spec, p.meta, p.status, p.evaluation, p.report_md
        train_summary = p.train_summary or await self._message(p.jobs[C.TRAINING.value], success=True) or {}
        if isinstance(p.result.get("lineage"), dict):
            train_summary = {**p.result["lineage"], **train_summary}
        cfg = self.config
        msg = "training finished"
        if spec.registry.create_model_version:
            data_summary = status.data_report.model_dump(by_alias=True, mode="json", exclude_unset=True) if status.data_report else None
            mv = builders.model_version(spec, meta, cfg, evaluation=evaluation, data_summary=data_summary,
                                        train_summary=train_summary, has_report=report_md is not None)
            name = mv["metadata"]["name"]
            obj, created = await self.client.create(r.MODELVERSIONS, meta.namespace, mv)
            other = ((obj.get("spec") or {}).get("lineage") or {}).get("fineTuneJob") or {}
            if not created and other.get("uid") and meta.uid and other["uid"] != meta.uid:  # another job's version (409)
                self._fail(status, meta, StageFailureReason.INVALID_SPEC,
                           f"ModelVersion {name} already exists, registered by FineTuneJob {other.get('name')} (uid {other['uid']}); "
                           "a version is registered once: give this job another registry.version (its artifact is kept)")
                return
            if not created and not ownership.same_registration(obj, mv):  # not this job's registration: never adopted
                raise ownership.NotOwned({"kind": "ModelVersion", **obj}, owner_ref(meta))
            if report_md is not None:
                await self._ensure(r.CONFIGMAPS, builders.report_config_map(obj, report_md))
            phase = model_version_phase(evaluation)
            if ((obj.get("status") or {}).get("phase") or "Pending") == "Pending":
                await self.client.patch(r.MODELVERSIONS, meta.namespace, name, {"status": model_version_status(
                    evaluation, meta.name, (obj.get("metadata") or {}).get("generation") or 1)}, subresource="status")
            status.children = status.children or ChildRefs()
            status.children.model_version = name
            evaluated = "" if (evaluation or {}).get("verdict") in ("Passed", "Failed") else ", not evaluated"
            msg = f"registered ModelVersion {name} ({phase}{evaluated})"
            if p.exports:
                status.children.export_model_versions = await self._register_exports(p, mv)
                refused = [e["format"] for e in p.exports if not export_passed(e)]
                msg += (f"; exports registered: {', '.join(status.children.export_model_versions) or 'none'}"
                        + (f"; refused by the equivalence gate: {', '.join(refused)}" if refused else ""))
        status.metrics = st.headline_metrics(evaluation)
        if evaluation:
            status.verdict = evaluation.get("verdict")
        status.phase = FineTuneJobPhase.SUCCEEDED
        status.completion_time = status.completion_time or st.utcnow()
        status.message = msg
        p.set(C.SUCCEEDED, True, R.COMPLETED, msg)
        p.set(C.READY, True, R.SUCCEEDED, msg)

    # --- helpers ------------------------------------------------------------------------------
    def _fail(self, status: FineTuneJobStatus, meta: JobMeta, reason: str | Enum, message: str) -> None:
        now = st.utcnow()
        status.phase = FineTuneJobPhase.FAILED
        status.message = message
        status.completion_time = status.completion_time or now
        set_condition(status.conditions, C.FAILED, True, reason, message, now=now, generation=meta.generation)
        set_condition(status.conditions, C.READY, False, reason, message, now=now, generation=meta.generation)

    async def _ensure(self, res: r.Resource, manifest: dict) -> None:
        """Create; an existing object (409) counts as done when this job controls it (ownerReference), else NotOwned."""
        existing, created = await self.client.create(res, manifest["metadata"]["namespace"], manifest)
        if not created and existing is not None:
            ownership.check_owned({"kind": res.kind, **existing}, manifest)

    async def _job(self, meta: JobMeta, name: str, build: Callable[[], dict], suspend: bool, timed: dict | None = None,
                   done: bool = False, before: Sequence[tuple[r.Resource, Callable[[], dict | None]]] = ()) -> dict:
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
                child = dep()
                if child is not None:  # e.g. no NetworkPolicy when the admin turned them off
                    await self._ensure(res, child)
            job, created = await self.client.create(r.JOBS, ns, build())
            if created and timed is not None:
                _observe_create_latency(timed)
        if not ownership.controlled_by(job, owner_ref(meta)):  # a Job someone else made under our name
            raise ownership.NotOwned({"kind": "Job", **job}, owner_ref(meta))
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
            # bounded (issue 25): the log is the job's image's output; the report is its last block, so the tail is read
            text = await self.client.pod_log(pod["metadata"]["namespace"], pod["metadata"]["name"], container="trainer",
                                             tail_lines=REPORT_TAIL_LINES, limit_bytes=self.config.eval_log_max_bytes)
        except (ApiError, aiohttp.ClientError) as exc:
            log.warning("cannot read the report from pod %s: %s", pod["metadata"]["name"], exc)
            return None
        return publish.extract_report(text or "")

    async def _write(self, body: dict, old: dict, status: FineTuneJobStatus) -> dict | None:
        """Patch the status when it changed (and post an Event on a phase change); the patched object.

        The first phase of a new job (ValidatingData, Suspended) gets no Event: the status already says it
        (phase, message, `DataValidated=Unknown/Validating` with its time, `children.dataJob`), and an Event
        costs the control plane 3–5 ms of CPU (bench/operator/README.md), which 500 creations at once feel. A job
        that fails at once (InvalidSpec) still gets its Warning; every later phase change gets an Event."""
        m = body["metadata"]
        new = st.wire(status)
        telemetry.set_phase(m.get("namespace") or "default", m["name"], new.get("phase", "Pending"))
        if not st.status_changed(old, new):
            return None
        written = await self.client.patch(r.FINETUNEJOBS, m.get("namespace"), m["name"], {"status": st.status_patch(old, new)},
                                          subresource="status")
        if old.get("phase") != new.get("phase") and (old.get("phase") or _failed(new)):
            failed = _failed(new)
            await self.client.event(body, type="Warning" if failed else "Normal", reason=new.get("phase", "Pending"),
                                    message=new.get("message") or f"phase {old.get('phase', 'Pending')} → {new.get('phase')}")
        return written if isinstance(written, dict) else None


# The pipeline, in order (after the class: its rows name the Reconciler's per-stage steps).
STAGES: tuple[Stage, ...] = (
    Stage(C.DATA_VALIDATED, FineTuneJobPhase.VALIDATING_DATA, lambda n: n.data_job,
          lambda spec, meta, cfg: builders.data_job(spec, meta, cfg),
          children=(("config_map", lambda n: n.config_map), ("data_job", lambda n: n.data_job)),
          before=((r.CONFIGMAPS, lambda spec, meta, cfg: builders.config_map(spec, meta, cfg)),),
          failed="data preparation failed", done=_is_true, waiting=_data_waiting, finish=Reconciler._data_done),
    Stage(C.TRAINING, FineTuneJobPhase.TRAINING, lambda n: n.train_job,
          lambda spec, meta, cfg: builders.train_job(spec, meta, cfg),
          children=(("service", lambda n: n.service), ("train_job", lambda n: n.train_job)),
          before=((r.SERVICES, lambda spec, meta, cfg: builders.headless_service(spec, meta, cfg)),
                  (r.NETWORKPOLICIES, lambda spec, meta, cfg: builders.rendezvous_policy(spec, meta, cfg))),
          failed="training failed", done=lambda c: c is not None and c.reason == R.COMPLETED.value, waiting=_train_waiting,
          finish=Reconciler._train_done, observe=Reconciler._train_started, running=Reconciler._train_progress, timed=True),
    Stage(C.EVALUATED, FineTuneJobPhase.EVALUATING, lambda n: n.eval_job,
          lambda spec, meta, cfg: builders.eval_job(spec, meta, cfg),
          children=(("eval_job", lambda n: n.eval_job),),
          failed="evaluation failed", done=_is_true, waiting=_eval_waiting, finish=Reconciler._eval_done,
          enabled=lambda spec: spec.evaluation.enabled, skipped=("False", R.DISABLED, "evaluation.enabled is false")),
    Stage(C.EXPORTED, FineTuneJobPhase.EXPORTING, lambda n: n.export_job,
          lambda spec, meta, cfg: builders.export_job(spec, meta, cfg),
          children=(("export_job", lambda n: n.export_job),),
          failed="export failed", done=_is_true, waiting=_export_waiting, finish=Reconciler._export_done,
          enabled=lambda spec: bool(spec.output.exports)),
)


def _failed(status: dict[str, Any]) -> bool:
    return status.get("phase") == FineTuneJobPhase.FAILED.value


def model_version_status(evaluation: dict | None, job: str, generation: int, export_of: str | None = None) -> dict[str, Any]:
    """The registered ModelVersion's status. A version that was never evaluated (evaluation
    disabled, or no record came back) says so: condition `Evaluated=False/NotEvaluated`, and its
    `spec.evaluation.verdict` is `NotEvaluated` — a Rollout refuses it unless told otherwise."""
    phase = model_version_phase(evaluation)
    verdict = (evaluation or {}).get("verdict") or "NotEvaluated"
    evaluated = verdict in ("Passed", "Failed")
    now = st.utcnow()
    conds: list[Condition] = []
    set_condition(conds, ModelVersionCondition.EVALUATED, evaluated, verdict,
                  _verdict_message(evaluation) if evaluated else "never evaluated against its base: no gates were applied", now=now)
    ready = (ModelVersionReason.REGISTERED if evaluated else ModelVersionReason.REGISTERED_NOT_EVALUATED) if phase == "Ready" \
        else ModelVersionReason.GATES_FAILED
    set_condition(conds, ModelVersionCondition.READY, phase == "Ready", ready, _verdict_message(evaluation), now=now)
    msg = f"registered from FineTuneJob {job}" + ("" if evaluated else " without evaluation (verdict NotEvaluated)")
    if export_of:
        msg += f"; an export of {export_of} that answers like it (spec.equivalence)"
    return {"phase": phase, "observedGeneration": generation, "message": msg, "conditions": [c.wire() for c in conds]}


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
    telemetry.CREATE_TO_TRAINING_JOB.observe(max(0.0, (dt.datetime.now(dt.UTC) - t0).total_seconds()))
