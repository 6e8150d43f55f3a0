"""vLLM Deployment and Services of a Rollout (pure builders): one Deployment and one Service per role
(stable/canary). The HTTPRoute and the replica-weighted mode's shared Service are `traffic.py`.

serving.mode sharedBase (`build_shared_deployment`): one Deployment `<rollout>-shared` runs `vllm serve BASE
--served-model-name SERVED-base --enable-lora --max-loras N --max-lora-rank R` with
VLLM_ALLOW_RUNTIME_LORA_UPDATING=True and the adapters' claim mounted whole, read-only, at /models/adapters; no adapter
is named in its arguments (the operator loads each version's adapter into every pod at runtime, under the ModelVersion's
name), so the pod template depends only on the base, the claim and the serving settings: a new candidate, a promotion
or a rollback never changes it, and never restarts a pod.

LoRA artifacts: `vllm serve BASE --enable-lora --lora-modules SERVED=/models/adapter ...` with the
adapter mounted read-only from its PVC; the base model is served under `SERVED-base` so that the
adapter, not the base, answers requests for SERVED whatever vLLM version resolves names.
Merged/full artifacts: `vllm serve /models/artifact --served-model-name SERVED`.
GGUF artifacts (an export, output.exports gguf-*): vLLM has no GGUF loader (vLLM 0.32 dropped it), so the pod runs
llama.cpp's OpenAI-compatible server instead, `llama-server -m /models/artifact/FILE.gguf --alias SERVED --metrics`
(the image: the operator's TUNELOOP_LLAMACPP_IMAGE); `engine()` names the server a ModelVersion gets.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

from tuneloop.api.conditions import RolloutReason
from tuneloop.api.modelversion import ArtifactFormat, ModelVersion
from tuneloop.api.rollout import GuardAction, RolloutSpec, ServingSpec
from tuneloop.contract import names

from ..policy import Policy
from .security import container_security, pod_security

ARTIFACT_MOUNT = "/models/artifact"
BASE_MOUNT = "/models/base"
ADAPTERS_MOUNT = "/models/adapters"  # sharedBase: the adapters' claim, whole (an adapter loaded later is already there)
SHARED_DEFAULT_RANK = 16  # sharedBase --max-lora-rank without serving.maxLoraRank (vLLM's own default)
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

    vllm_image: str = "vllm/vllm-openai:v0.32.0"
    llamacpp_image: str = "ghcr.io/ggml-org/llama.cpp:server"
    guard_image: str = "ghcr.io/tuneloop/guard:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    run_as_user: int = 1000
    policy: Policy = field(default_factory=Policy)  # the admin's admission policy (extraArgs, scheduling)

    @classmethod
    def from_settings(cls, settings: Any) -> ServingConfig:
        return cls(
            vllm_image=settings.vllm_image,
            llamacpp_image=getattr(settings, "llamacpp_image", cls.llamacpp_image),
            guard_image=getattr(settings, "guard_image", cls.guard_image),
            image_pull_policy=getattr(settings, "image_pull_policy", cls.image_pull_policy),
            run_as_user=getattr(settings, "run_as_user", cls.run_as_user),
            policy=Policy.from_settings(settings),
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


def _mount(volume: str, claim: str, path: str, mount_path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    vol = {"name": volume, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
    mount: dict[str, Any] = {"name": volume, "mountPath": mount_path, "readOnly": True}
    if path:
        mount["subPath"] = path
    return vol, mount


@dataclass(frozen=True)
class VllmServe:
    """How `vllm serve` is started for one ModelVersion (`serve_args`)."""

    args: tuple[str, ...]  # after `vllm serve`
    served_names: tuple[str, ...]  # what GET /v1/models lists once it serves them all: the base name, then the adapter's
    lora: bool  # a LoRA adapter on its base (else merged/full weights)


def base_location(mv: ModelVersion) -> str:
    """Where a LoRA artifact's base is recorded (baseModel.servingPath, else its name), refusing a GGUF file."""
    base = mv.spec.base_model.serving_path or mv.spec.base_model.name
    check_base_servable(mv, base)
    return base


STRUCTURED_OUTPUTS_CONFIG = '{"backend": "xgrammar"}'  # vLLM's --structured-outputs-config for a ModelVersion with an output contract
LLAMACPP = "llama.cpp"
VLLM = "vllm"


def engine(mv: ModelVersion) -> str:
    """The server a ModelVersion's artifact needs: llama.cpp for a GGUF file, vLLM for everything else."""
    return LLAMACPP if mv.spec.artifact.format == ArtifactFormat.GGUF.value else VLLM


def llamacpp_args(serving: ServingSpec, served_model_name: str, *, gguf_file: str, host: str = "0.0.0.0") -> VllmServe:
    """`llama-server` arguments for a GGUF artifact: the file, the served name (`--alias`, what GET /v1/models lists and
    requests name), `--metrics` (Prometheus /metrics, names prefixed `llamacpp:`), `--parallel` slots as vLLM's
    maxNumSeqs would be, then serving.extraArgs last."""
    args = ["-m", gguf_file, "--alias", served_model_name, "--host", host, "--port", str(serving.port), "--metrics"]
    args += list(serving.extra_args)
    return VllmServe(tuple(args), (served_model_name,), False)


def serve_args(mv: ModelVersion, serving: ServingSpec, served_model_name: str, *, artifact: str, base: str | None = None,
               host: str = "0.0.0.0") -> VllmServe:
    """The one decision of `vllm serve`'s arguments for a ModelVersion, for the operator's Deployment (`artifact`,
    `base`: mount paths) and `kubectl tuneloop local serve` (local paths) alike.

    `artifact`: where the artifact directory is; `base`: where a LoRA artifact's base is (a path, or a Hub id),
    default `base_location(mv)`. LoRA: `BASE --served-model-name SERVED-base --enable-lora --lora-modules
    SERVED=ARTIFACT --max-loras N [--max-lora-rank R] [--revision REV]` (the revision only for a Hub id);
    merged/full: `ARTIFACT --served-model-name SERVED`. Then `--host --port`, `--tensor-parallel-size` with
    more than one GPU, and serving.extraArgs last (so they can override).
    """
    art = mv.spec.artifact
    if art.format == ArtifactFormat.GGUF.value:
        return llamacpp_args(serving, served_model_name, gguf_file=artifact, host=host)
    if art.format == ArtifactFormat.LORA_ADAPTER.value:
        base = base_location(mv) if base is None else base
        rank = lora_rank_flag(serving.max_lora_rank, art.lora_rank)
        base_name = f"{served_model_name}-base"
        args = [
            base,
            "--served-model-name", base_name,
            "--enable-lora",
            "--lora-modules", f"{served_model_name}={artifact}",
            "--max-loras", str(serving.max_loras),
        ]  # fmt: skip
        if rank is not None:
            args += ["--max-lora-rank", str(rank)]
        if mv.spec.base_model.revision and not base.startswith("/"):
            args += ["--revision", mv.spec.base_model.revision]
        names: tuple[str, ...] = (base_name, served_model_name)
    else:
        args = [artifact, "--served-model-name", served_model_name]
        names = (served_model_name,)
    if mv.spec.output_contract is not None:  # the contract's grammar engine pinned: the same enforcement on every vLLM release
        args += ["--structured-outputs-config", STRUCTURED_OUTPUTS_CONFIG]
    args += ["--host", host, "--port", str(serving.port)]
    if serving.resources.gpus > 1:
        args += ["--tensor-parallel-size", str(serving.resources.gpus)]
    args += list(serving.extra_args)
    return VllmServe(tuple(args), names, art.format == ArtifactFormat.LORA_ADAPTER.value)


def vllm_args(spec: RolloutSpec, mv: ModelVersion) -> tuple[list[str], list[dict[str, Any]], list[dict[str, Any]]]:
    """(args after `vllm serve`, volumes, volumeMounts) for the ModelVersion: its artifact (and a pvc:// base)
    mounted read-only, `serve_args` with the mount paths."""
    art = mv.spec.artifact
    claim, path = parse_pvc_uri(art.uri, f"ModelVersion {mv.metadata.name} artifact")
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    if art.format == ArtifactFormat.GGUF.value:  # the file's directory is mounted; llama-server opens the file
        directory, _, file = path.rpartition("/")
        vol, mount = _mount("artifact", claim, directory, ARTIFACT_MOUNT)
        plan = serve_args(mv, spec.serving, spec.served_model_name, artifact=f"{ARTIFACT_MOUNT}/{file}")
        return list(plan.args), [vol], [mount]
    vol, mount = _mount("artifact", claim, path, ARTIFACT_MOUNT)
    volumes.append(vol)
    mounts.append(mount)
    base: str | None = None
    if art.format == ArtifactFormat.LORA_ADAPTER.value:
        base = base_location(mv)
        if base.startswith("pvc://"):
            bclaim, bpath = parse_pvc_uri(base, f"ModelVersion {mv.metadata.name} baseModel.servingPath",
                                         RolloutReason.BASE_MODEL_NOT_SERVABLE.value)
            vol, mount = _mount("base-model", bclaim, bpath, BASE_MOUNT)
            volumes.append(vol)
            mounts.append(mount)
            base = BASE_MOUNT
    plan = serve_args(mv, spec.serving, spec.served_model_name, artifact=ARTIFACT_MOUNT, base=base)
    return list(plan.args), volumes, mounts


# --- serving.mode sharedBase -------------------------------------------------------------------------------------------
def shared_rank(serving: ServingSpec) -> int:
    """--max-lora-rank of a shared Deployment: serving.maxLoraRank (rounded up to a value vLLM accepts), else 16. It
    does not follow an artifact's rank: every adapter the Deployment will ever load must fit, and changing it restarts."""
    rank = lora_rank_flag(serving.max_lora_rank, None)
    return rank if rank is not None else SHARED_DEFAULT_RANK


def _base_identity(mv: ModelVersion) -> tuple[str, str | None]:
    return base_location(mv), mv.spec.base_model.revision


def check_shareable(spec: RolloutSpec, mv: ModelVersion, base: ModelVersion | None = None) -> None:
    """A ModelVersion a shared Deployment can serve: a LoRA adapter on a pvc:// path whose rank fits the Deployment's
    --max-lora-rank, and — given `base`, the version whose base the Deployment runs — of that same base (name or
    serving path, revision) with its artifact on the same claim. ServingError with the reason otherwise."""
    name = mv.metadata.name
    art = mv.spec.artifact
    if art.format != ArtifactFormat.LORA_ADAPTER.value:
        raise ServingError(
            f"ModelVersion {name} is a {art.format} artifact, not a LoRA adapter: serving.mode sharedBase serves LoRA adapters of "
            "one base; serve it with serving.mode perVersion (a Rollout of its own)", RolloutReason.NOT_AN_ADAPTER.value)
    claim, _ = parse_pvc_uri(art.uri, f"ModelVersion {name} artifact")
    base_location(mv)  # a GGUF base cannot be served at all
    rank = shared_rank(spec.serving)
    if art.lora_rank is not None and art.lora_rank > rank:
        raise ServingError(f"ModelVersion {name} has LoRA rank {art.lora_rank}, above the shared Deployment's --max-lora-rank {rank}; "
                           "set serving.maxLoraRank (changing it restarts the pods)", RolloutReason.LORA_RANK_TOO_LARGE.value)
    if base is None or base.metadata.name == name:
        return
    if _base_identity(mv) != _base_identity(base):
        (b, rev), (mine, mine_rev) = _base_identity(base), _base_identity(mv)
        raise ServingError(
            f"ModelVersion {name} is an adapter of {mine}" + (f"@{mine_rev}" if mine_rev else "") + f", but the shared Deployment "
            f"serves {b}" + (f"@{rev}" if rev else "") + f" (the base of {base.metadata.name}): two ModelVersions of different "
            "bases cannot share one; roll it out with serving.mode perVersion or a Rollout of its own", RolloutReason.BASE_MISMATCH.value)
    base_claim, _ = parse_pvc_uri(base.spec.artifact.uri, f"ModelVersion {base.metadata.name} artifact")
    if claim != base_claim:
        raise ServingError(
            f"ModelVersion {name}'s adapter is on claim {claim}, but the shared Deployment mounts claim {base_claim} (that of "
            f"{base.metadata.name}) for every adapter: register the adapter on {base_claim}", RolloutReason.ADAPTER_CLAIM_MISMATCH.value)


def adapter_path(mv: ModelVersion) -> str:
    """Where a shared pod reads a ModelVersion's adapter: its path inside the mounted claim."""
    _, path = parse_pvc_uri(mv.spec.artifact.uri, f"ModelVersion {mv.metadata.name} artifact")
    return f"{ADAPTERS_MOUNT}/{path}".rstrip("/")


def shared_serve_args(mv: ModelVersion, serving: ServingSpec, served_model_name: str, *, base: str | None = None,
                      host: str = "0.0.0.0") -> VllmServe:
    """`vllm serve` of a shared Deployment: the base of `mv` under SERVED-base, LoRA enabled, no adapter named (each is
    loaded at runtime), structured outputs pinned (any adapter may have an output contract), then --host --port,
    --tensor-parallel-size, serving.extraArgs. Nothing here depends on which adapter serves."""
    base = base_location(mv) if base is None else base
    base_name = f"{served_model_name}-base"
    args = [base, "--served-model-name", base_name, "--enable-lora", "--max-loras", str(serving.max_loras),
            "--max-lora-rank", str(shared_rank(serving))]
    if mv.spec.base_model.revision and not base.startswith("/"):
        args += ["--revision", mv.spec.base_model.revision]
    args += ["--structured-outputs-config", STRUCTURED_OUTPUTS_CONFIG, "--host", host, "--port", str(serving.port)]
    if serving.resources.gpus > 1:
        args += ["--tensor-parallel-size", str(serving.resources.gpus)]
    args += list(serving.extra_args)
    return VllmServe(tuple(args), (base_name,), True)


_QUANTITY = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
CPU_KVCACHE_FRACTION = 4  # a quarter of the pod's memory for the KV cache; the rest holds the weights and the server
CPU_KVCACHE_DEFAULT_GIB = 1


def memory_bytes(quantity: str) -> int | None:
    """A Kubernetes memory quantity ("32Gi", "512Mi", "8G", "1e9") in bytes; None when it is not one."""
    import re

    m = re.fullmatch(r"\s*([0-9.]+(?:[eE][0-9]+)?)\s*([kMGT]i?|)\s*", str(quantity))
    if not m or m.group(2) not in _QUANTITY:
        return None
    try:
        return int(float(m.group(1)) * _QUANTITY[m.group(2)])
    except ValueError:
        return None


def cpu_env(serving: ServingSpec) -> list[dict[str, str]]:
    """What vLLM's CPU engine needs in a pod without GPUs (serving.resources.gpus == 0).

    VLLM_CPU_KVCACHE_SPACE: GiB of KV cache — vLLM's default sizes it from the node's total memory, not the pod's
    limit, so a pod is OOM-killed; here a quarter of the memory limit (whole GiB, at least 1), 1 when the memory
    is not a quantity. VLLM_CPU_OMP_THREADS_BIND=auto: vLLM binds one OpenMP thread per physical core of the CPUs
    the pod may run on (its affinity: the exclusive cores the kubelet's static CPU manager gives an integer CPU
    request), instead of every engine on a node binding the same cores.
    """
    if serving.resources.gpus:
        return []
    mem = memory_bytes(serving.resources.memory)
    gib = max(CPU_KVCACHE_DEFAULT_GIB, mem // CPU_KVCACHE_FRACTION // 2**30) if mem else CPU_KVCACHE_DEFAULT_GIB
    return [{"name": "VLLM_CPU_KVCACHE_SPACE", "value": str(gib)}, {"name": "VLLM_CPU_OMP_THREADS_BIND", "value": "auto"}]


# Ready means "serves every name", not "the process answers /health": vLLM answers /health while it still loads a
# LoRA adapter, and a runtime-loaded adapter is listed by /v1/models only once it can answer. The vLLM images carry
# python3; the names are arguments (no shell).
_READY_CHECK = ("import json,sys,urllib.request as u; "
                "d=json.load(u.urlopen('http://127.0.0.1:%d/v1/models',timeout=4)); "
                "sys.exit(0 if set(sys.argv[1:]) <= {m['id'] for m in d['data']} else 1)")


def readiness_probe(port: int, served_names: tuple[str, ...]) -> dict[str, Any]:
    """A pod is ready once GET /v1/models lists every served name (the base's and the adapter's)."""
    return {"exec": {"command": ["python3", "-c", _READY_CHECK % port, *served_names]},
            "periodSeconds": 5, "timeoutSeconds": 5, "failureThreshold": 3}


# sharedBase: the adapters are loaded at runtime by the operator, so the probe cannot name them; a pod is ready once it
# serves its base and an adapter (a pod that just started, or whose engine restarted, has none until the operator loaded
# the stable's, so the gateway never sends it a request for an adapter it lacks).
_SHARED_READY_CHECK = ("import json,sys,urllib.request as u; "
                       "d=json.load(u.urlopen('http://127.0.0.1:%d/v1/models',timeout=4))['data']; "
                       "sys.exit(0 if sys.argv[1] in {m['id'] for m in d} and any(m.get('parent') for m in d) else 1)")


def shared_readiness_probe(port: int, base_name: str) -> dict[str, Any]:
    """A shared pod is ready once GET /v1/models lists its base and at least one adapter."""
    return {"exec": {"command": ["python3", "-c", _SHARED_READY_CHECK % port, base_name]},
            "periodSeconds": 5, "timeoutSeconds": 5, "failureThreshold": 3}


def _vllm_container(spec: RolloutSpec, mv: ModelVersion, config: ServingConfig, args: list[str],
                    mounts: list[dict[str, Any]], *, readiness: dict[str, Any] | None = None,
                    extra_env: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """The vLLM container: `vllm serve` with the role's arguments, caches on writable mounts, the probes."""
    serving = spec.serving
    res = serving.resources
    requests: dict[str, Any] = {"cpu": res.cpu, "memory": res.memory}
    limits: dict[str, Any] = {"memory": res.memory}
    if res.gpus:
        requests[res.gpu_resource_name] = res.gpus
        limits[res.gpu_resource_name] = res.gpus

    def probe(period: int, failures: int) -> dict[str, Any]:
        return {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": period, "failureThreshold": failures}

    served = serve_args(mv, serving, spec.served_model_name, artifact=ARTIFACT_MOUNT, base=BASE_MOUNT).served_names
    llamacpp = engine(mv) == LLAMACPP
    # serving.image names a vLLM image: a GGUF version runs the operator's llama.cpp server image whatever it says
    image = config.llamacpp_image if llamacpp else serving.image or config.vllm_image

    return {
        "name": "vllm",
        "image": image,
        "imagePullPolicy": config.image_pull_policy,
        "command": ["llama-server"] if llamacpp else ["vllm", "serve"],
        "args": args,
        "env": [
            {"name": "HOME", "value": "/tmp"},
            {"name": "HF_HOME", "value": "/cache/huggingface"},
            {"name": "VLLM_CACHE_ROOT", "value": "/cache/vllm"},
            {"name": "XDG_CACHE_HOME", "value": "/cache"},
            *cpu_env(serving),
            *(extra_env or []),
        ],
        "ports": [{"name": "http", "containerPort": serving.port, "protocol": "TCP"}],
        "resources": {"requests": requests, "limits": limits},
        # startup allows 30 min for downloading and loading the model before liveness applies
        "startupProbe": probe(10, 180),
        # llama-server's /health answers 200 only once the model is loaded (and its image has no python3 for the exec probe)
        "readinessProbe": readiness or ({**probe(5, 3), "timeoutSeconds": 5} if llamacpp else readiness_probe(serving.port, served)),
        "livenessProbe": probe(15, 4),
        "securityContext": container_security(),  # vLLM writes only to /tmp (HOME), /cache, /dev/shm
        "volumeMounts": mounts,
    }


TOPIC_MOUNT = "/models/topic"  # the guard's read-only mount of the directory holding the ModelVersion's topic profile
GUARD_RESOURCES = {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}}
# with the classifier or a topic profile loaded (scikit-learn, scipy, the model): ~215 MiB resident measured with both checks and
# the quickstart's profile (1 MB), so the limit leaves room for request bursts and a larger profile
GUARD_CHECKS_RESOURCES = {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}}


def topic_profile_mount(mv: ModelVersion) -> tuple[dict[str, Any], dict[str, Any], str]:
    """(volume, volumeMount, the file's path in the guard) of the ModelVersion's topic profile: the directory that holds
    it (the FineTuneJob's DIR) mounted read-only. No profile: the guard cannot run the topic rule (NotServable)."""
    if mv.spec.topic_profile is None:
        raise ServingError(
            f"serving.guard.topic needs the topic profile of ModelVersion {mv.metadata.name}, which has none (spec.topicProfile): "
            "its evaluation built none (evaluation disabled, too few chat training prompts, or registered before profiles existed); "
            "remove serving.guard.topic or serve a version whose evaluation wrote DIR/topic-profile.json")
    claim, path = parse_pvc_uri(mv.spec.topic_profile.uri, f"ModelVersion {mv.metadata.name} topicProfile")
    directory, _, file = path.rpartition("/")
    vol, mount = _mount("topic-profile", claim, directory, TOPIC_MOUNT)
    return vol, mount, f"{TOPIC_MOUNT}/{file}"


def mirror_target(rollout: dict[str, Any], spec: RolloutSpec) -> str:
    """Where a stable guard sends mirrored requests (a mirror step): the candidate's role Service, in the Rollout's namespace."""
    meta = rollout["metadata"]
    return f"http://{names.service_name(meta['name'], names.CANARY)}.{meta.get('namespace') or 'default'}.svc:{spec.serving.port}"


def guard_container(spec: RolloutSpec, mv: ModelVersion, config: ServingConfig, mirror_to: str | None = None) -> dict[str, Any] | None:
    """The output guard sidecar (serving.guard): a pass-through on its own port in front of the engine on localhost,
    checking answers against the ModelVersion's outputContract (passed inline; none: every answer passes unchecked), and,
    when asked, requests and answers for harmful content (the classifier is in the guard's image) and requests for the
    topic (the ModelVersion's topic profile, mounted read-only: `guard_volumes`). `mirror_to`: the one target the
    operator may set a mirror to (the stable role's guards, for mirror steps: `mirror_target`)."""
    guard = spec.serving.guard
    if guard is None:
        return None
    args = ["--upstream", f"http://127.0.0.1:{spec.serving.port}", "--port", str(guard.port)]
    if mirror_to is not None:
        args += ["--mirror-target", mirror_to]
    if mv.spec.output_contract is not None:
        args += ["--contract-json", json.dumps(mv.spec.output_contract.json_schema, sort_keys=True, separators=(",", ":"))]
        if guard.enforce:
            args.append("--enforce")
    mounts: list[dict[str, Any]] = []
    if guard.harmful is not None:
        h = guard.harmful
        args += ["--harmful-input", GuardAction(h.input).value, "--harmful-output", GuardAction(h.output).value,
                 "--harmful-threshold", f"{h.threshold:g}"]
    if guard.topic is not None:
        _, mount, file = topic_profile_mount(mv)
        mounts.append(mount)
        args += ["--topic-profile", file, "--topic-action", guard.topic.action, "--topic-pass-rate", f"{guard.topic.pass_rate:g}"]
    checks = guard.harmful is not None or guard.topic is not None
    container: dict[str, Any] = {
        "name": "guard",
        "image": config.guard_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": ["python", "-m", "tuneloop.guard"],
        "args": args,
        "ports": [{"name": "guard", "containerPort": guard.port, "protocol": "TCP"}],
        "resources": copy.deepcopy(GUARD_CHECKS_RESOURCES if checks else GUARD_RESOURCES),
        "readinessProbe": {"tcpSocket": {"port": "guard"}, "periodSeconds": 5},
        "securityContext": container_security(),
    }
    if mounts:
        container["volumeMounts"] = mounts
    return container


def guard_volumes(spec: RolloutSpec, mv: ModelVersion) -> list[dict[str, Any]]:
    """The guard's volumes: the topic profile's directory when serving.guard.topic is set."""
    guard = spec.serving.guard
    if guard is None or guard.topic is None:
        return []
    return [topic_profile_mount(mv)[0]]


def build_deployment(
    rollout: dict[str, Any], spec: RolloutSpec, role: str, mv: ModelVersion, replicas: int, config: ServingConfig
) -> dict[str, Any]:
    """The vLLM Deployment serving `mv` in `role` (stable or canary) with `replicas` pods."""
    name = rollout["metadata"]["name"]
    args, volumes, mounts = vllm_args(spec, mv)
    labels = names.serving_labels(name) | {names.LABEL_ROLE: role, names.LABEL_MODEL_VERSION: mv.metadata.name}
    volumes, mounts = _with_scratch(volumes, mounts)
    container = _vllm_container(spec, mv, config, args, mounts)
    guard = guard_container(spec, mv, config, mirror_target(rollout, spec) if role == names.STABLE else None)
    volumes += guard_volumes(spec, mv)
    return _deployment(rollout, spec, role, labels, [container, *([guard] if guard else [])], volumes, replicas, config)


def build_shared_deployment(rollout: dict[str, Any], spec: RolloutSpec, mv: ModelVersion, replicas: int,
                            config: ServingConfig) -> dict[str, Any]:
    """serving.mode sharedBase: the one Deployment `<rollout>-shared` serving the base of `mv` (any version of the
    Rollout: they share base and claim, `check_shareable`) with runtime LoRA loading on, the adapters' claim mounted
    whole at /models/adapters, and no adapter or version in its template (labels included)."""
    name = rollout["metadata"]["name"]
    claim, _ = parse_pvc_uri(mv.spec.artifact.uri, f"ModelVersion {mv.metadata.name} artifact")
    volumes = [{"name": "adapters", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}]
    mounts = [{"name": "adapters", "mountPath": ADAPTERS_MOUNT, "readOnly": True}]
    base = base_location(mv)
    if base.startswith("pvc://"):
        bclaim, bpath = parse_pvc_uri(base, f"ModelVersion {mv.metadata.name} baseModel.servingPath", RolloutReason.BASE_MODEL_NOT_SERVABLE.value)
        vol, mount = _mount("base-model", bclaim, bpath, BASE_MOUNT)
        volumes.append(vol)
        mounts.append(mount)
        base = BASE_MOUNT
    plan = shared_serve_args(mv, spec.serving, spec.served_model_name, base=base)
    volumes, mounts = _with_scratch(volumes, mounts)
    container = _vllm_container(spec, mv, config, list(plan.args), mounts,
                                readiness=shared_readiness_probe(spec.serving.port, plan.served_names[0]),
                                extra_env=[{"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"}])
    labels = names.serving_labels(name) | {names.LABEL_ROLE: names.SHARED}
    return _deployment(rollout, spec, names.SHARED, labels, [container], volumes, replicas, config)


def _with_scratch(volumes: list[dict[str, Any]], mounts: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The writable emptyDirs every vLLM pod needs (shared memory, caches, /tmp) added to its volumes and mounts."""
    volumes = volumes + [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}},
        {"name": "cache", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
    ]
    mounts = mounts + [
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "cache", "mountPath": "/cache"},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    return volumes, mounts


def _deployment(rollout: dict[str, Any], spec: RolloutSpec, role: str, labels: dict[str, str], containers: list[dict[str, Any]],
                volumes: list[dict[str, Any]], replicas: int, config: ServingConfig) -> dict[str, Any]:
    meta = rollout["metadata"]
    name, ns = meta["name"], meta.get("namespace")
    serving = spec.serving
    pod_spec: dict[str, Any] = {
        "securityContext": pod_security(config.run_as_user),
        "terminationGracePeriodSeconds": 60,
        "automountServiceAccountToken": False,  # vLLM never calls the API server (issue 25)
        "containers": containers,
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
            # through the output guard when there is one (serving.guard), else straight to the engine
            "ports": [{"name": "http", "port": spec.serving.port, "targetPort": "guard" if spec.serving.guard else "http", "protocol": "TCP"}],
        },
    }


def build_service(rollout: dict[str, Any], spec: RolloutSpec, role: str) -> dict[str, Any]:
    """ClusterIP Service of one role's pods (a backendRef of the HTTPRoute)."""
    name = rollout["metadata"]["name"]
    return service_manifest(rollout, spec, names.service_name(name, role),
                            names.serving_labels(name) | {names.LABEL_ROLE: role}, names.role_selector(name, role))
