"""Names, labels, owner references, pod security and volumes shared by the builders."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from tuneloop.api import FineTuneJobSpec
from tuneloop.contract import layout
from tuneloop.contract.exits import EXIT_CONFIG_ERROR
from tuneloop.contract.layout import CACHE_MOUNT, DATA_MOUNT, MODEL_MOUNT, OUTPUT_MOUNT, RENDEZVOUS_PORT, SPEC_DIR, SPEC_FILE
from tuneloop.contract.names import (
    LABEL_COMPONENT,
    LABEL_JOB,
    LABEL_MANAGED_BY,
    MANAGED_BY,
    child_name,
    controller_reference,
    dns_label,
    job_labels,
)

from ..settings import OperatorSettings

__all__ = ["CACHE_MOUNT", "DATA_MOUNT", "EXIT_CONFIG_ERROR", "LABEL_COMPONENT", "LABEL_JOB", "LABEL_MANAGED_BY", "MANAGED_BY",
           "MODEL_MOUNT", "OUTPUT_MOUNT", "RENDEZVOUS_PORT", "SPEC_DIR", "SPEC_FILE", "child_name", "dns_label"]

CONTAINER = "trainer"
METRICS_PORT_NAME = "metrics"  # the training container's port rank 0 serves tuneloop_trainer_* on (progress polls read it)


def port_in_range(namespace: str, name: str, low: int, high: int) -> int:
    """The FineTuneJob namespace/name's port in [low, high]: a hash (sha256 of `namespace/name`), so every pass of
    every operator replica computes the same port with nothing stored; never the rendezvous port (its neighbour in
    the range instead). Two jobs may share a port (about 1 pair in `high - low + 1`): the trainer then logs that it
    could not bind, and the operator refuses metrics that name another job (finetunejob.progress)."""
    size = high - low + 1
    h = int.from_bytes(hashlib.sha256(f"{namespace}/{name}".encode()).digest()[:8], "big")
    port = low + h % size
    if port == RENDEZVOUS_PORT and size > 1:
        port = low + (h + 1) % size
    return port


def trainer_metrics_port(config: OperatorSettings, namespace: str, name: str) -> int:
    """The port rank 0 of this FineTuneJob serves its progress metrics on: the job's own one in
    trainer_metrics_port_range (pods sharing the host's ports), else trainer_metrics_port for every job."""
    if config.trainer_metrics_port_range is None:
        return config.trainer_metrics_port
    return port_in_range(namespace, name, *config.trainer_metrics_port_range)


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
    annotations: tuple[tuple[str, str], ...] = ()  # the user's annotations (tuneloop.dev/purpose, …), sorted

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> JobMeta:
        m = body.get("metadata") or {}
        return cls(m["name"], m.get("namespace") or "default", m.get("uid") or "", int(m.get("generation") or 1),
                   m.get("creationTimestamp"), user_annotations(m.get("annotations")))


def user_annotations(annotations: dict[str, Any] | None) -> tuple[tuple[str, str], ...]:
    """The annotations the stages may read (the report's tuneloop.dev/purpose and objective, …):
    all but kubectl's last-applied copy and Kopf's bookkeeping (tuneloop.dev/last-handled-configuration,
    handler-progress records)."""
    out = []
    for k, v in (annotations or {}).items():
        if not isinstance(v, str) or k.startswith("kubectl.kubernetes.io/") or k == "tuneloop.dev/last-handled-configuration":
            continue
        if k.startswith("tuneloop.dev/") and v.startswith('{"started":'):  # Kopf's handler progress
            continue
        out.append((k, v))
    return tuple(sorted(out))


@dataclass(frozen=True)
class Names:
    config_map: str
    service: str
    data_job: str
    train_job: str
    eval_job: str
    export_job: str


def names(job: str) -> Names:
    """Deterministic child names. The training Job stays ≤ 56 chars so pod hostnames `<job>-<index>` fit."""
    return Names(
        config_map=child_name(job, "config"),
        service=child_name(job, "train", 56),
        data_job=child_name(job, "data", 56),
        train_job=child_name(job, "train", 56),
        eval_job=child_name(job, "eval", 56),
        export_job=child_name(job, "export", 56),
    )


def labels(meta: JobMeta, component: str) -> dict[str, str]:
    return job_labels(meta.name, component)


def owner_ref(meta: JobMeta) -> dict[str, Any]:
    return controller_reference("FineTuneJob", meta.name, meta.uid)


def metadata(name: str, meta: JobMeta, component: str) -> dict[str, Any]:
    return {"name": name, "namespace": meta.namespace, "labels": labels(meta, component), "ownerReferences": [owner_ref(meta)]}


def workdir(spec: FineTuneJobSpec, meta: JobMeta, config: OperatorSettings) -> tuple[str, str]:
    """(output claim, work directory inside the pods) — every stage shares the same directory."""
    try:
        return layout.output_location(spec, meta.name, meta.namespace, config.default_output_pvc)
    except layout.LocationError as exc:
        raise BuildError(exc.field, exc.message) from None


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


def volumes(spec: FineTuneJobSpec, meta: JobMeta, config: OperatorSettings, *, shm: bool, cache: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
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
    """Environment of every stage container (the trainer's mount and metrics contract, tuneloop.contract.layout)."""
    out: list[dict[str, Any]] = [
        {"name": layout.ENV_JOB_NAME, "value": meta.name},
        {"name": layout.ENV_NAMESPACE, "value": meta.namespace},
        {"name": layout.ENV_METRICS_PORT, "value": str(trainer_metrics_port(config, meta.namespace, meta.name))},
        {"name": layout.ENV_DATA_DIR, "value": DATA_MOUNT},
        {"name": layout.ENV_MODEL_DIR, "value": MODEL_MOUNT},
        {"name": layout.ENV_CACHE_DIR, "value": f"{CACHE_MOUNT}/tuneloop"},
        {"name": layout.ENV_IMAGE, "value": image(spec, config)},
        {"name": layout.ENV_WORKDIR_URI, "value": layout.workdir_uri(*workdir(spec, meta, config))},
        {"name": "HF_HOME", "value": f"{CACHE_MOUNT}/huggingface"},
        {"name": "HOME", "value": "/tmp"},  # the image's home is on the read-only root filesystem
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
