"""Pure helpers: child Job states, termination messages, the typed status and its wire form, progress parsing,
status diffs. Conditions are set with `tuneloop.api.conditions.set_condition`."""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from tuneloop.api import FineTuneJobStatus
from tuneloop.contract import lineage
from tuneloop.contract import progress as progress_contract

from ..builders.common import CONTAINER

TERMINAL = ("Succeeded", "Failed")
INDEX_LABEL = "batch.kubernetes.io/job-completion-index"


def utcnow() -> dt.datetime:
    """Now, to the second (how status times are written)."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def now() -> str:
    return utcnow().strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def read_status(raw: dict[str, Any]) -> FineTuneJobStatus:
    """The status as the API server holds it, typed. The CRD's schema is the model's, so it validates; a status
    that does not (written by hand) is rebuilt from nothing."""
    try:
        return FineTuneJobStatus.model_validate(raw)
    except ValidationError:
        return FineTuneJobStatus()


def wire(status: FineTuneJobStatus) -> dict[str, Any]:
    """The status as it is written: the fields the server had plus those this pass set (nothing else)."""
    return status.model_dump(by_alias=True, mode="json", exclude_unset=True)


def wire_progress(status: FineTuneJobStatus) -> dict[str, Any]:
    """status.progress in wire form ({} when there is none), for the progress helpers below."""
    return status.progress.model_dump(by_alias=True, mode="json", exclude_unset=True) if status.progress else {}


def job_state(job: dict[str, Any] | None) -> str:
    """Missing | Suspended | Pending | Running | Succeeded | Failed, from a batch/v1 Job."""
    if job is None:
        return "Missing"
    status = job.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("status") == "True" and cond.get("type") in ("Complete", "SuccessCriteriaMet"):
            return "Succeeded"
        if cond.get("status") == "True" and cond.get("type") in ("Failed", "FailureTarget"):
            return "Failed"
    if (job.get("spec") or {}).get("suspend"):
        return "Suspended"
    if status.get("active") or status.get("ready"):
        return "Running"
    return "Pending"


def job_failure(job: dict[str, Any] | None) -> tuple[str, str]:
    """(reason, message) of a failed Job's Failed condition."""
    for cond in ((job or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") in ("Failed", "FailureTarget") and cond.get("status") == "True":
            return cond.get("reason") or "JobFailed", cond.get("message") or ""
    return "JobFailed", ""


def _terminated(pod: dict[str, Any]) -> dict[str, Any] | None:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == CONTAINER:
            return (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated")
    return None


def termination(pods: list[dict[str, Any]], *, want_success: bool) -> tuple[dict[str, Any] | None, dict | None]:
    """(parsed termination message, pod) of the most relevant finished pod: rank 0 on success, the latest failure otherwise."""
    finished = [(p, t) for p in pods if (t := _terminated(p)) is not None]
    if want_success:
        finished = [(p, t) for p, t in finished if t.get("exitCode") == 0]
        finished.sort(key=lambda pt: (_index(pt[0]), pt[1].get("finishedAt") or ""))
    else:
        finished = [(p, t) for p, t in finished if t.get("exitCode") != 0]
        finished.sort(key=lambda pt: pt[1].get("finishedAt") or "", reverse=True)
    if not finished:
        return None, None
    pod, term = finished[0]
    return parse_message(term.get("message") or "", term.get("exitCode")), pod


def _index(pod: dict[str, Any]) -> int:
    meta = pod.get("metadata") or {}
    raw = (meta.get("labels") or {}).get(INDEX_LABEL) or (meta.get("annotations") or {}).get(INDEX_LABEL) or "0"
    try:
        return int(raw)
    except ValueError:
        return 0


def parse_message(text: str, exit_code: int | None = None) -> dict[str, Any]:
    """A stage's termination message (JSON from the stage runner) or plain text from elsewhere."""
    try:
        doc = json.loads(text)
        if isinstance(doc, dict):
            return doc
    except ValueError:
        pass
    out: dict[str, Any] = {"error": text.strip()[:1000]} if text.strip() else {}
    if exit_code is not None:
        out["exitCode"] = exit_code
    return out


def status_changed(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether a patch is needed (progress.updatedAt alone is not a change; numbers compare by value, so a
    float field the server hands back as `0` equals the typed status' `0.0`)."""
    def norm(s: dict[str, Any]) -> dict[str, Any]:
        s = json.loads(json.dumps(s, default=str))
        (s.get("progress") or {}).pop("updatedAt", None)
        return s

    return norm(old) != norm(new)


def status_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """A merge patch turning `old` into `new` at the top level (removed keys → None)."""
    patch = {k: v for k, v in new.items() if old.get(k) != v}
    patch.update({k: None for k in old if k not in new})
    return patch


_TRAINER_METRICS = progress_contract.STATUS_KEYS  # trainer gauge -> status.progress key (tuneloop.contract.progress)


def trainer_identities(text: str) -> set[tuple[str, str]]:
    """The (namespace, job) every trainer gauge in a /metrics answer names (tuneloop.contract.progress.LABELS)."""
    return {progress_contract.identity_of(sample.labels)
            for family in text_string_to_metric_families(text) if family.name in _TRAINER_METRICS for sample in family.samples}


def parse_progress(text: str, job: tuple[str, str] | None = None) -> dict[str, Any]:
    """Rank 0's /metrics (Prometheus text) → status.progress (wire form, with percent); with `job` = (namespace,
    name), only the samples labelled with that FineTuneJob count."""
    out: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        key = _TRAINER_METRICS.get(family.name)
        samples = [s for s in family.samples if job is None or progress_contract.identity_of(s.labels) == job]
        if key and samples:
            value = samples[0].value
            if math.isnan(value):  # not reported yet
                continue
            if key == "evalLoss" and value == 0.0:  # trainer images before 0.1.1 start this gauge at 0, not NaN
                continue
            out[key] = int(value) if key in progress_contract.INTEGER_STATUS_KEYS else round(float(value), 6)
    if out.get("totalSteps"):
        out["percent"] = f"{100.0 * out.get('step', 0) / out['totalSteps']:.0f}%"
    if out:
        out["updatedAt"] = now()
    return out


def merge_progress(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """A fresh poll over the last status.progress: a value rank 0 has not reported yet in this
    run (after a resume: evalLoss until the next evaluation) keeps its last known value."""
    return {**old, **new} if new else dict(old)


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and not math.isnan(float(v)) else None


def finished_progress(old: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    """status.progress once training succeeded: 100 %, with the run's final numbers from the train
    stage's summary (a job can end between two polls). `loss` is the last logged step's loss
    (as while training), never the run's mean."""
    out = dict(old)
    total, steps = _num(summary.get("total_steps")), _num(summary.get("steps"))
    if total:
        out["totalSteps"] = int(total)
    if steps is not None:
        out["step"] = int(steps)
    elif out.get("totalSteps"):
        out["step"] = out["totalSteps"]
    for src, dst in (("final_loss", "loss"), ("eval_loss", "evalLoss")):
        if (v := _num(summary.get(src))) is not None:
            out[dst] = round(v, 6)
    out["percent"] = "100%"
    out["etaSeconds"] = 0
    out["updatedAt"] = now()
    return out


def snake_progress(progress: dict[str, Any]) -> dict[str, Any]:
    keys = {"step": "step", "totalSteps": "total_steps", "loss": "loss", "tokensPerSecond": "tokens_per_second", "etaSeconds": "eta_seconds"}
    return {snake: progress[camel] for camel, snake in keys.items() if camel in progress}


def data_report(message: dict[str, Any]) -> dict[str, Any]:
    """status.dataReport from prepare's summary (counts, dataset_sha256, rejected_by_rule)."""
    raw = message.get("counts")
    counts: dict[str, Any] = raw if isinstance(raw, dict) else {}
    out: dict[str, Any] = {}
    for src, dst in (("read", "total"), ("accepted", "accepted"), ("rejected", "rejected"),
                     ("train", "train"), ("validation", "validation"), ("test", "test")):
        if isinstance(counts.get(src), int):
            out[dst] = counts[src]
    sha = message.get("dataset_sha256") or message.get("datasetSha256")
    if isinstance(sha, str):
        out["datasetSha256"] = sha
    by_rule = message.get("rejected_by_rule") or message.get("rejectedByReason")
    if isinstance(by_rule, dict):
        out["rejectedByReason"] = {str(k): int(v) for k, v in by_rule.items() if isinstance(v, int)}
    lengths = lineage.facts(message).token_lengths  # the train split's histograms, for the ModelVersion
    if lengths:
        out["tokenLengths"] = lengths
    return out


def headline_metrics(evaluation: dict[str, Any] | None) -> dict[str, float]:
    """status.metrics: the tuned model's score per metric."""
    out: dict[str, float] = {}
    for m in (evaluation or {}).get("metrics") or []:
        if isinstance(m, dict) and isinstance(m.get("tuned"), int | float):
            out[str(m.get("name"))] = float(m["tuned"])
    return out
