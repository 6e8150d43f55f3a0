"""Names, labels, owner references, pod security and volumes shared by the builders."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from tuneloop.api import API_VERSION, FineTuneJobSpec

from ..settings import OperatorSettings

LABEL_JOB = "tuneloop.dev/finetunejob"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "tuneloop-operator"
CONTAINER = "trainer"
SPEC_DIR = "/etc/tuneloop"
SPEC_FILE = f"{SPEC_DIR}/spec.yaml"
DEEPSPEED_FILE = f"{SPEC_DIR}/deepspeed.json"
OUTPUT_MOUNT = "/output"
DATA_MOUNT = "/data"
MODEL_MOUNT = "/models"
CACHE_MOUNT = "/cache"
RENDEZVOUS_PORT = 29500
EXIT_CONFIG_ERROR = 42  # tuneloop_trainer.errors.EXIT_CONFIG_ERROR (never retried)


class BuildError(ValueError):
    """The spec cannot run on this cluster as configured; `field` is the offending spec path."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class JobMeta:
    """What the builders need from the FineTuneJob's metadata."""

    name: str
    namespace: str
    uid: str
    generation: int = 1
    creation_timestamp: str | None = None

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> JobMeta:
        m = body.get("metadata") or {}
        return cls(m["name"], m.get("namespace") or "default", m.get("uid") or "", int(m.get("generation") or 1),
                   m.get("creationTimestamp"))


def child_name(base: str, suffix: str, limit: int = 63) -> str:
    """`base-suffix`, shortened with a stable hash when longer than `limit` (DNS label)."""
    name = f"{base}-{suffix}"
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(base.encode()).hexdigest()[:6]
    keep = limit - len(suffix) - len(digest) - 2
    return f"{base[:keep].rstrip('-')}-{digest}-{suffix}"


def dns_label(text: str, limit: int = 63) -> str:
    """Lower-case DNS-1123 label from arbitrary text (model names, versions)."""
    s = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-") or "x"
    if len(s) > limit:
        digest = hashlib.sha256(text.encode()).hexdigest()[:6]
        s = f"{s[: limit - 7].rstrip('-')}-{digest}"
    return s


@dataclass(frozen=True)
class Names:
    config_map: str
    service: str
    data_job: str
    train_job: str
    eval_job: str


def names(job: str) -> Names:
    """Deterministic child names. The training Job stays ≤ 56 chars so pod hostnames `<job>-<index>` fit."""
    return Names(
        config_map=child_name(job, "config"),
        service=child_name(job, "train", 56),
        data_job=child_name(job, "data", 56),
        train_job=child_name(job, "train", 56),
        eval_job=child_name(job, "eval", 56),
    )


def labels(meta: JobMeta, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "tuneloop",
        "app.kubernetes.io/instance": meta.name,
        LABEL_COMPONENT: component,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_JOB: meta.name,
    }


def owner_ref(meta: JobMeta) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "FineTuneJob", "name": meta.name, "uid": meta.uid,
            "controller": True, "blockOwnerDeletion": True}


def metadata(name: str, meta: JobMeta, component: str) -> dict[str, Any]:
    return {"name": name, "namespace": meta.namespace, "labels": labels(meta, component), "ownerReferences": [owner_ref(meta)]}


def pod_security(config: OperatorSettings) -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": config.run_as_user, "runAsGroup": config.run_as_user,
            "fsGroup": config.run_as_user, "seccompProfile": {"type": "RuntimeDefault"}}


CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "privileged": False, "capabilities": {"drop": ["ALL"]},
                      "seccompProfile": {"type": "RuntimeDefault"}}


def workdir(spec: FineTuneJobSpec, meta: JobMeta, config: OperatorSettings) -> tuple[str, str]:
    """(output claim, work directory inside the pods) — every stage shares the same directory."""
    out = spec.output
    if out.pvc:
        sub = out.pvc.path.strip("/") or meta.name
        return out.pvc.claim_name, f"{OUTPUT_MOUNT}/{sub}"
    if out.s3:
        if not config.default_output_pvc:
            raise BuildError("spec.output.s3", "s3 output needs a staging PVC: set the operator's TUNELOOP_DEFAULT_OUTPUT_PVC or use output.pvc")
        return config.default_output_pvc, f"{OUTPUT_MOUNT}/{meta.namespace}/{meta.name}"
    raise BuildError("spec.output.path", "output.path is for local runs; in a cluster use output.pvc (or output.s3)")


def data_claim(spec: FineTuneJobSpec) -> str | None:
    """The one claim the dataset sources live on (mounted at /data), or None."""
    claims = {}
    for field in ("train", "validation", "test"):
        src = getattr(spec.dataset, field)
        if src is None:
            continue
        if src.path:
            raise BuildError(f"spec.dataset.{field}.path", "a local path is for local runs; in a cluster use pvc")
        if src.pvc:
            claims[field] = src.pvc.claim_name
    if len(set(claims.values())) > 1:
        field = next(f for f in claims if claims[f] != claims["train" if "train" in claims else next(iter(claims))])
        raise BuildError(f"spec.dataset.{field}.pvc.claimName", "all dataset files must be on the same PVC (it is mounted at /data)")
    return next(iter(claims.values()), None)


def volumes(spec: FineTuneJobSpec, meta: JobMeta, config: OperatorSettings, *, shm: bool, cache: bool) -> tuple[list, list]:
    """(volumes, volumeMounts) for a stage pod."""
    n = names(meta.name)
    claim, _ = workdir(spec, meta, config)
    vols: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": n.config_map}},
        {"name": "output", "persistentVolumeClaim": {"claimName": claim}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": SPEC_DIR, "readOnly": True},
        {"name": "output", "mountPath": OUTPUT_MOUNT},
    ]
    dclaim = data_claim(spec)
    if dclaim:
        if dclaim == claim:
            mounts.append({"name": "output", "mountPath": DATA_MOUNT, "readOnly": True})
        else:
            vols.append({"name": "data", "persistentVolumeClaim": {"claimName": dclaim, "readOnly": True}})
            mounts.append({"name": "data", "mountPath": DATA_MOUNT, "readOnly": True})
    if spec.base_model.pvc:
        mclaim = spec.base_model.pvc.claim_name
        vol = "output" if mclaim == claim else ("data" if mclaim == dclaim else "model")
        if vol == "model":
            vols.append({"name": "model", "persistentVolumeClaim": {"claimName": mclaim, "readOnly": True}})
        mounts.append({"name": vol, "mountPath": MODEL_MOUNT, "readOnly": True})
    if cache:
        if config.model_cache_pvc:
            vols.append({"name": "cache", "persistentVolumeClaim": {"claimName": config.model_cache_pvc}})
        else:
            vols.append({"name": "cache", "emptyDir": {"sizeLimit": config.model_cache_size}})
        mounts.append({"name": "cache", "mountPath": CACHE_MOUNT})
    if shm:
        vols.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.resources.shm_size}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    vols.append({"name": "tmp", "emptyDir": {}})
    mounts.append({"name": "tmp", "mountPath": "/tmp"})
    return vols, mounts


def env(spec: FineTuneJobSpec, meta: JobMeta, config: OperatorSettings) -> list[dict[str, Any]]:
    """Environment of every stage container (the trainer's mount and metrics contract)."""
    out: list[dict[str, Any]] = [
        {"name": "TUNELOOP_JOB_NAME", "value": meta.name},
        {"name": "TUNELOOP_NAMESPACE", "value": meta.namespace},
        {"name": "TUNELOOP_METRICS_PORT", "value": str(config.trainer_metrics_port)},
        {"name": "TUNELOOP_DATA_DIR", "value": DATA_MOUNT},
        {"name": "TUNELOOP_MODEL_DIR", "value": MODEL_MOUNT},
        {"name": "TUNELOOP_CACHE_DIR", "value": f"{CACHE_MOUNT}/tuneloop"},
        {"name": "HF_HOME", "value": f"{CACHE_MOUNT}/huggingface"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    ref = spec.base_model.token_secret_ref
    if ref:
        out.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    return out


def scheduling(spec: FineTuneJobSpec) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if spec.resources.node_selector:
        out["nodeSelector"] = dict(spec.resources.node_selector)
    if spec.resources.tolerations:
        out["tolerations"] = [t.wire() for t in spec.resources.tolerations]
    return out


def failure_policy() -> dict[str, Any]:
    """Exit 42 (configuration/data error) fails the Job at once; evictions don't count as failures."""
    return {"rules": [
        {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [EXIT_CONFIG_ERROR]}},
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
    ]}


def image(spec: FineTuneJobSpec, config: OperatorSettings) -> str:
    return spec.image or config.trainer_image
