"""Pure builders of a FineTuneSchedule (`tuneloop.operator.schedule` decides, these build): each run's FineTuneJob, the digest Job of the new-data trigger."""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

from pydantic import ValidationError

from tuneloop.api.common import API_VERSION
from tuneloop.api.finetunejob import FineTuneJobSpec
from tuneloop.api.schedule import FineTuneScheduleSpec, TriggerKind
from tuneloop.contract import layout
from tuneloop.contract.names import (
    LABEL_COMPONENT,
    LABEL_MANAGED_BY,
    LABEL_SCHEDULE,
    MANAGED_BY,
    child_name,
    controller_reference,
    dns_label,
)

from ..schedule.decide import Fire
from .security import container_security, pod_security

__all__ = ["LABEL_SCHEDULE"]
LABEL_TRIGGER = "tuneloop.dev/trigger"
ANNOTATION_REASON = "tuneloop.dev/trigger-reason"
ANNOTATION_CHAMPION = "tuneloop.dev/champion"
ANNOTATION_TRIGGER_KEY = "tuneloop.dev/trigger-key"  # the fire's key before a suffix made its name fresh
ANNOTATION_DATA_DIGEST = "tuneloop.dev/data-digest"  # the digest a new-data run started for
DIGEST_COMPONENT = "data-digest"


def owner_ref(schedule: dict[str, Any]) -> dict[str, Any]:
    meta = schedule["metadata"]
    return controller_reference("FineTuneSchedule", meta["name"], meta.get("uid", ""))


def model_name(spec: FineTuneScheduleSpec, schedule_name: str) -> str:
    """The registered model name every run shares (the template's registry.modelName, else the schedule's name)."""
    return spec.job_template.spec.registry.model_name or schedule_name


def run_version(run_key: str, schedule_name: str | None = None, model: str | None = None) -> str:
    """Each run's registry.version (a template may not set one): the run's key — the cron minute, `d<digest>`,
    `p<hash>`, `m<hash>`, or a local iteration — so that the ModelVersion `<model>-<key>` is named like its run
    `<schedule>-<key>` (instead of `v1-<uid>` for every run). When the model name is not the schedule's own (the
    template's registry.modelName), other schedules may register versions of it too: the version then carries the
    schedule's name (`<schedule>-<key>`), so two schedules firing in the same minute never name the same ModelVersion."""
    if schedule_name is None or model is None or model == schedule_name:
        return run_key
    return f"{schedule_name}-{run_key}"


def model_version_name(spec: FineTuneScheduleSpec, schedule_name: str, run_key: str) -> str:
    """The ModelVersion a run with this key registers (the contract's naming: `<modelName>-<version>`)."""
    model = model_name(spec, schedule_name)
    return dns_label(f"{model}-{run_version(run_key, schedule_name, model)}")


def champion_eval_json(champion: dict[str, Any] | None, output_claim: str | None) -> tuple[str | None, str | None]:
    """(evalJson path inside the run's pods, why not): the serving ModelVersion's eval.json sits next to its artifact
    (DIR/eval.json for DIR/artifact); the run's pods see it when it is on the run's output claim (mounted at /output)."""
    if champion is None:
        return None, None
    name = champion["metadata"]["name"]
    uri = ((champion.get("spec") or {}).get("artifact") or {}).get("uri", "")
    if not uri.startswith("pvc://"):
        return None, f"the serving version {name}'s artifact {uri or '(none)'} is not on a PVC"
    claim, _, path = uri.removeprefix("pvc://").partition("/")
    for suffix in (f"/{layout.MERGED_DIR}", f"/{layout.ARTIFACT_DIR}"):
        if path.endswith(suffix):
            path = path[: -len(suffix)]
            break
    if claim != output_claim:
        return None, f"the serving version {name} is on claim {claim}, not on the runs' output claim {output_claim}"
    return f"{layout.OUTPUT_MOUNT}/{path.strip('/')}/{layout.EVAL_FILE}", None


def finetunejob(schedule: dict[str, Any], spec: FineTuneScheduleSpec, fire: Fire, name: str,
                champion: dict[str, Any] | None, now: dt.datetime) -> tuple[dict[str, Any], str | None]:
    """The run's FineTuneJob (and why it has no serving reference, when a champion exists but cannot be read).

    From the template: its own output directory (`<template path or schedule>/<run>`), the schedule's model name, its own
    version (`run_version`), and
    `evaluation.serving` set to the champion's eval.json, so gates with `reference: serving` compare with it. Without a
    readable champion the serving gates are dropped (they could only fail); `decide.judge` then refuses to hand off a run
    that had a champion it was not compared with."""
    meta = schedule["metadata"]
    tmpl = spec.job_template
    body = tmpl.spec.model_dump(by_alias=True, exclude_none=True, mode="json", exclude_unset=False)
    body = copy.deepcopy(body)
    out = body["output"]
    claim = None
    if "pvc" in out:
        claim = out["pvc"]["claimName"]
        out["pvc"]["path"] = f"{(out['pvc'].get('path') or meta['name']).strip('/')}/{name}"
    elif "s3" in out:
        out["s3"]["uri"] = f"{out['s3']['uri'].rstrip('/')}/{name}"
    registry = body.setdefault("registry", {})
    registry["modelName"] = model_name(spec, meta["name"])
    registry["version"] = run_version(fire.key, meta["name"], registry["modelName"])
    eval_json, why_not = champion_eval_json(champion, claim)
    if eval_json and champion is not None:
        body["evaluation"]["serving"] = {"modelVersion": champion["metadata"]["name"], "evalJson": eval_json}
    else:  # nothing to compare with (the first version), or unreadable (the run is then never handed off)
        body["evaluation"].pop("serving", None)
        body["evaluation"]["gates"] = [g for g in body["evaluation"].get("gates", []) if g.get("reference") != "serving"]
    labels = {**tmpl.metadata.labels, LABEL_SCHEDULE: meta["name"], LABEL_TRIGGER: fire.trigger.value, LABEL_MANAGED_BY: MANAGED_BY}
    annotations = {**tmpl.metadata.annotations, ANNOTATION_REASON: fire.reason[:1000], ANNOTATION_TRIGGER_KEY: fire.base_key or fire.key}
    if fire.digest:
        annotations[ANNOTATION_DATA_DIGEST] = fire.digest
    if champion is not None:
        annotations[ANNOTATION_CHAMPION] = champion["metadata"]["name"]
    job = {
        "apiVersion": API_VERSION,
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": meta["namespace"], "labels": labels, "annotations": annotations,
                     "ownerReferences": [owner_ref(schedule)]},
        "spec": body,
    }
    return job, why_not


def template_mismatch(schedule: dict[str, Any], spec: FineTuneScheduleSpec, job: dict[str, Any], champion: dict[str, Any] | None,
                      now: dt.datetime) -> str | None:
    """Why a FineTuneJob is not a run this schedule would have created under its name (None: it is one): its spec,
    normalised by the model (the API server's defaults), must equal what `finetunejob` builds from the template with
    `champion` (the ModelVersion its champion annotation names), except `registry.version`, which only names the
    run's key. A FineTuneJob's spec is immutable, so this is what it runs — its gates and serving reference included."""
    ann = (job.get("metadata") or {}).get("annotations") or {}
    fire = Fire(TriggerKind.MANUAL, "", ann.get(ANNOTATION_TRIGGER_KEY) or "adopt")
    want, _ = finetunejob(schedule, spec, fire, job["metadata"]["name"], champion, now)
    try:
        have = FineTuneJobSpec.model_validate(job.get("spec") or {}).wire()
    except ValidationError:
        return "its spec is not a valid FineTuneJob spec"
    want_spec = FineTuneJobSpec.model_validate(want["spec"]).wire()
    for s in (have, want_spec):
        s.get("registry", {}).pop("version", None)
    if have != want_spec:
        return "its spec is not what the schedule's template builds for it"
    return None


def digest_job(schedule: dict[str, Any], spec: FineTuneScheduleSpec, image: str, now: dt.datetime,
               run_as_user: int = 1000, pull_policy: str = "IfNotPresent") -> dict[str, Any]:
    """A short Job computing the new-data trigger's content digest (tuneloop.contract.datadigest) on a read-only mount."""
    meta = schedule["metadata"]
    trig = spec.triggers.new_data
    assert trig is not None
    name = child_name(meta["name"], f"digest-{int(now.timestamp())}")
    labels = {LABEL_SCHEDULE: meta["name"], LABEL_MANAGED_BY: MANAGED_BY, LABEL_COMPONENT: DIGEST_COMPONENT}
    container = {
        "name": "trainer",  # the trainer image; the operator reads termination messages of containers by this name
        "image": image,
        "imagePullPolicy": pull_policy,
        "command": ["python", "-m", "tuneloop.contract.datadigest", "--root", layout.DATA_MOUNT, "--glob", trig.glob,
                    "--termination-log", layout.TERMINATION_LOG],
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        "volumeMounts": [{"name": "data", "mountPath": layout.DATA_MOUNT, "readOnly": True}],
        "securityContext": container_security(),  # it writes only its termination message
        "terminationMessagePolicy": "File",
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": meta["namespace"], "labels": labels, "ownerReferences": [owner_ref(schedule)]},
        "spec": {
            "backoffLimit": 0,
            "ttlSecondsAfterFinished": 600,
            "activeDeadlineSeconds": 1800,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,  # it never calls the API server (issue 25)
                    "enableServiceLinks": False,
                    "securityContext": pod_security(run_as_user),
                    "containers": [container],
                    "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": trig.claim_name, "readOnly": True}}],
                },
            },
        },
    }
