"""vLLM Deployment and Services of a Rollout (pure builders): one Deployment and one Service per role
(stable/canary). The HTTPRoute and the replica-weighted mode's shared Service are `traffic.py`.

LoRA artifacts: `vllm serve BASE --enable-lora --lora-modules SERVED=/models/adapter ...` with the
adapter mounted read-only from its PVC; the base model is served under `SERVED-base` so that the
adapter, not the base, answers requests for SERVED whatever vLLM version resolves names.
Merged/full artifacts: `vllm serve /models/artifact --served-model-name SERVED`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tuneloop.api.conditions import RolloutReason
from tuneloop.api.modelversion import ArtifactFormat, ModelVersion
from tuneloop.api.rollout import RolloutSpec
from tuneloop.contract import names

ARTIFACT_MOUNT = "/models/artifact"
BASE_MOUNT = "/models/base"
# vLLM accepts only these --max-lora-rank values; an adapter's rank is rounded up to the next one.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class ServingError(ValueError):
    """The ModelVersion cannot be served as specified (bad artifact URI, rank too large, ...).

    `reason` is the CamelCase condition reason the Rollout shows.
    """

    def __init__(self, message: str, reason: str = RolloutReason.NOT_SERVABLE.value):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ServingConfig:
    """Operator-level defaults the builders need (from OperatorSettings)."""

    vllm_image: str = "vllm/vllm-openai:v0.11.0"
    image_pull_policy: str = "IfNotPresent"
    run_as_user: int = 1000

    @classmethod
    def from_settings(cls, settings: Any) -> ServingConfig:
        return cls(
            vllm_image=settings.vllm_image,
            image_pull_policy=getattr(settings, "image_pull_policy", cls.image_pull_policy),
            run_as_user=getattr(settings, "run_as_user", cls.run_as_user),
        )


def parse_pvc_uri(uri: str, what: str, reason: str = RolloutReason.ARTIFACT_NOT_SERVABLE.value) -> tuple[str, str]:
    """pvc://CLAIM/PATH -> (CLAIM, PATH). Anything else cannot be mounted by a serving pod."""
    if not uri.startswith("pvc://"):
        scheme = uri.split("://", 1)[0] if "://" in uri else "a plain path"
        raise ServingError(f"{what} {uri!r}: serving needs a pvc://CLAIM/PATH location, got {scheme}", reason)
    claim, _, path = uri[len("pvc://") :].partition("/")
    if not claim:
        raise ServingError(f"{what} {uri!r}: missing claim name in pvc://CLAIM/PATH", reason)
    return claim, path.strip("/")


def check_base_servable(mv: ModelVersion, base: str) -> None:
    """A LoRA adapter's base must be something a vLLM pod can load: a Hub id or a pvc:// path.

    A GGUF file (a FineTuneJob's `baseModel.gguf`, recorded as PACKAGE/FILE.gguf or a local path) exists
    only where the trainer ran; `vllm serve PACKAGE/FILE.gguf` would fail in every pod.
    """
    if base.startswith("pvc://"):
        return
    if base.lower().endswith(".gguf"):
        raise ServingError(
            f"ModelVersion {mv.metadata.name} base model {base!r} is a GGUF file (from a Python package or a local path) that "
            "vLLM pods cannot load; register the ModelVersion with baseModel.servingPath (pvc://CLAIM/PATH or a Hugging Face id "
            "of the unquantized base) or with a merged artifact",
            RolloutReason.BASE_MODEL_NOT_SERVABLE.value,
        )


def lora_rank_flag(spec_rank: int | None, artifact_rank: int | None) -> int | None:
    rank = spec_rank or artifact_rank
    if rank is None:
        return None
    for allowed in VLLM_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ServingError(f"LoRA rank {rank} exceeds vLLM's largest --max-lora-rank {VLLM_LORA_RANKS[-1]}",
                       RolloutReason.LORA_RANK_TOO_LARGE.value)


def _mount(volume: str, claim: str, path: str, mount_path: str) -> tuple[dict, dict]:
    vol = {"name": volume, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
    mount: dict[str, Any] = {"name": volume, "mountPath": mount_path, "readOnly": True}
    if path:
        mount["subPath"] = path
    return vol, mount


def vllm_args(spec: RolloutSpec, mv: ModelVersion) -> tuple[list[str], list[dict], list[dict]]:
    """(args after `vllm serve`, volumes, volumeMounts) for the ModelVersion."""
    serving = spec.serving
    art = mv.spec.artifact
    claim, path = parse_pvc_uri(art.uri, f"ModelVersion {mv.metadata.name} artifact")
    volumes: list[dict] = []
    mounts: list[dict] = []
    vol, mount = _mount("artifact", claim, path, ARTIFACT_MOUNT)
    volumes.append(vol)
    mounts.append(mount)
    if art.format == ArtifactFormat.LORA_ADAPTER.value:
        base = mv.spec.base_model.serving_path or mv.spec.base_model.name
        check_base_servable(mv, base)
        if base.startswith("pvc://"):
            bclaim, bpath = parse_pvc_uri(base, f"ModelVersion {mv.metadata.name} baseModel.servingPath",
                                         RolloutReason.BASE_MODEL_NOT_SERVABLE.value)
            vol, mount = _mount("base-model", bclaim, bpath, BASE_MOUNT)
            volumes.append(vol)
            mounts.append(mount)
            base = BASE_MOUNT
        args = [
            base,
            "--served-model-name", f"{spec.served_model_name}-base",
            "--enable-lora",
            "--lora-modules", f"{spec.served_model_name}={ARTIFACT_MOUNT}",
            "--max-loras", str(serving.max_loras),
        ]  # fmt: skip
        rank = lora_rank_flag(serving.max_lora_rank, art.lora_rank)
        if rank is not None:
            args += ["--max-lora-rank", str(rank)]
        if mv.spec.base_model.revision and not base.startswith("/"):
            args += ["--revision", mv.spec.base_model.revision]
    else:
        args = [ARTIFACT_MOUNT, "--served-model-name", spec.served_model_name]
    args += ["--host", "0.0.0.0", "--port", str(serving.port)]
    if serving.resources.gpus > 1:
        args += ["--tensor-parallel-size", str(serving.resources.gpus)]
    args += list(serving.extra_args)
    return args, volumes, mounts


def _security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def build_deployment(
    rollout: dict[str, Any], spec: RolloutSpec, role: str, mv: ModelVersion, replicas: int, config: ServingConfig
) -> dict[str, Any]:
    """The vLLM Deployment serving `mv` in `role` (stable or canary) with `replicas` pods."""
    meta = rollout["metadata"]
    name, ns = meta["name"], meta.get("namespace")
    serving = spec.serving
    args, volumes, mounts = vllm_args(spec, mv)
    labels = names.serving_labels(name) | {names.LABEL_ROLE: role, names.LABEL_MODEL_VERSION: mv.metadata.name}
    res = serving.resources
    requests: dict[str, Any] = {"cpu": res.cpu, "memory": res.memory}
    limits: dict[str, Any] = {"memory": res.memory}
    if res.gpus:
        requests[res.gpu_resource_name] = res.gpus
        limits[res.gpu_resource_name] = res.gpus
    volumes += [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}},
        {"name": "cache", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
    ]
    mounts += [
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "cache", "mountPath": "/cache"},
        {"name": "tmp", "mountPath": "/tmp"},
    ]

    def probe(period: int, failures: int) -> dict[str, Any]:
        return {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": period, "failureThreshold": failures}

    container = {
        "name": "vllm",
        "image": serving.image or config.vllm_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": ["vllm", "serve"],
        "args": args,
        "env": [
            {"name": "HOME", "value": "/tmp"},
            {"name": "HF_HOME", "value": "/cache/huggingface"},
            {"name": "VLLM_CACHE_ROOT", "value": "/cache/vllm"},
            {"name": "XDG_CACHE_HOME", "value": "/cache"},
        ],
        "ports": [{"name": "http", "containerPort": serving.port, "protocol": "TCP"}],
        "resources": {"requests": requests, "limits": limits},
        # startup allows 30 min for downloading and loading the model before liveness applies
        "startupProbe": probe(10, 180),
        "readinessProbe": probe(5, 3),
        "livenessProbe": probe(15, 4),
        "securityContext": _security_context(),
        "volumeMounts": mounts,
    }
    pod_spec: dict[str, Any] = {
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": config.run_as_user,
            "runAsGroup": config.run_as_user,
            "fsGroup": config.run_as_user,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationGracePeriodSeconds": 60,
        "automountServiceAccountToken": False,  # vLLM never calls the API server (issue 25)
        "containers": [container],
        "volumes": volumes,
    }
    if serving.node_selector:
        pod_spec["nodeSelector"] = dict(serving.node_selector)
    if serving.tolerations:
        pod_spec["tolerations"] = [t.wire() for t in serving.tolerations]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": names.deployment_name(name, role),
            "namespace": ns,
            "labels": dict(labels),
            "ownerReferences": [names.owner_reference(rollout)],
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": names.role_selector(name, role)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {
                    "labels": dict(labels),
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(serving.port),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": pod_spec,
            },
        },
    }


def service_manifest(rollout: dict[str, Any], spec: RolloutSpec, service: str, labels: dict[str, str],
                     selector: dict[str, str]) -> dict[str, Any]:
    """A ClusterIP Service owned by the Rollout, in front of the vLLM pods `selector` picks."""
    meta = rollout["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": service,
            "namespace": meta.get("namespace"),
            "labels": labels,
            "ownerReferences": [names.owner_reference(rollout)],
        },
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [{"name": "http", "port": spec.serving.port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def build_service(rollout: dict[str, Any], spec: RolloutSpec, role: str) -> dict[str, Any]:
    """ClusterIP Service of one role's pods (a backendRef of the HTTPRoute)."""
    name = rollout["metadata"]["name"]
    return service_manifest(rollout, spec, names.service_name(name, role),
                            names.serving_labels(name) | {names.LABEL_ROLE: role}, names.role_selector(name, role))
