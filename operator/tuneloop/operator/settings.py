"""Operator configuration from the environment (prefix TUNELOOP_), one typed object.

Every field can be set as an env var, e.g. ``TUNELOOP_TRAINER_IMAGE``, ``TUNELOOP_NAMESPACES=a,b``.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Annotated, Any

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from tuneloop.contract.layout import RENDEZVOUS_PORT

_PROVIDER_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class OperatorSettings(BaseSettings):
    """What the operator needs to know about its environment."""

    model_config = SettingsConfigDict(env_prefix="TUNELOOP_", extra="ignore", populate_by_name=True)

    trainer_image: str = Field(
        default="ghcr.io/tuneloop/trainer:0.1.0", description="Image of the data-prep, training and evaluation pods (a FineTuneJob's spec.image wins)."
    )
    image_pull_policy: str = Field(default="IfNotPresent", description="imagePullPolicy of the pods the operator creates.")
    vllm_image: str = Field(default="vllm/vllm-openai:v0.32.0", description="Default vLLM image for Rollouts.")
    guard_image: str = Field(
        default="ghcr.io/tuneloop/guard:0.1.0",
        description="Image of the output guard sidecar (a Rollout's serving.guard): tuneloop's own, which runs `python -m tuneloop.guard` "
                    "(operator/Dockerfile --target guard: the package with the guard's content checks).",
    )
    llamacpp_image: str = Field(
        default="ghcr.io/ggml-org/llama.cpp:server",
        description="Image of llama.cpp's OpenAI-compatible server (llama-server), which serves gguf ModelVersions (vLLM has no GGUF loader).",
    )
    default_output_pvc: str | None = Field(
        default=None, description="Staging PVC for FineTuneJobs with output.s3: work directory <claim>/<namespace>/<name>."
    )
    model_cache_pvc: str | None = Field(
        default=None, description="PVC mounted at /cache (HF_HOME=/cache/huggingface) in stage pods; an emptyDir when empty."
    )
    model_cache_size: str = Field(default="50Gi", description="sizeLimit of the model-cache emptyDir when no model-cache PVC is set.")
    prometheus_url: str = Field(
        default="http://prometheus-operated.monitoring.svc:9090",
        description="The default metrics provider (named `default`): the Prometheus a Rollout or schedule without `provider` queries.",
    )
    metrics_providers: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description=(
            "Further metrics providers a Rollout (`analysis.provider`) or schedule trigger may name: `name=url,name=url`. "
            "Only these addresses and prometheus_url are ever queried (a `prometheusAddress` must equal one of them)."
        ),
    )
    allow_any_metrics_address: bool = Field(
        default=False,
        description=(
            "Single-tenant installs only: query any http(s) `prometheusAddress` a Rollout or schedule names. Off: only "
            "the configured providers (the operator never requests a URL of a tenant's choosing)."
        ),
    )
    allow_unconfined_queries: bool = Field(
        default=False,
        description=(
            "Send custom PromQL (`metrics[].query`, trigger queries) as written. Off: every vector selector gets "
            "namespace=\"<the object's namespace>\" and a query naming another namespace is refused (docs/security.md)."
        ),
    )
    metrics_timeout: float = Field(default=5.0, gt=0, le=60, description="Seconds one metrics query may take (connect and read).")
    metrics_max_bytes: int = Field(
        default=1 << 20, ge=1024, le=64 << 20, description="Largest metrics-provider answer read (bytes); a longer one is an error."
    )
    trainer_metrics_max_bytes: int = Field(
        default=256 << 10, ge=1024, le=16 << 20, description="Largest answer read from a training pod's rank-0 /metrics (bytes)."
    )
    eval_log_max_bytes: int = Field(
        default=4 << 20, ge=1024, le=64 << 20, description="Most bytes of the evaluation pod's log read for report.md (limitBytes)."
    )
    metrics_port: int = Field(default=8080, ge=0, le=65535, description="Port of the operator's /metrics endpoint (0 disables it).")
    health_port: int = Field(default=8081, ge=0, le=65535, description="Port of Kopf's liveness endpoint /healthz (0 disables it).")
    trainer_metrics_port: int = Field(default=9400, ge=1, le=65535, description="Port of rank 0's progress metrics in training pods.")
    trainer_metrics_port_range: Annotated[tuple[int, int] | None, NoDecode] = Field(
        default=None,
        description=(
            "`LOW-HIGH` (e.g. `20000-29999`): each FineTuneJob's trainer serves its progress metrics on its own port in this "
            "range, a hash of namespace/name, for pods that share the host's ports (hostNetwork, e.g. multi-node "
            "DeepSpeed over RDMA). Empty: every trainer uses trainer_metrics_port."
        ),
    )
    progress_interval: float = Field(default=15.0, gt=0, description="Seconds between progress polls of a running training Job.")
    max_concurrent_reconciles: int = Field(
        default=32, ge=1, le=1024, description="FineTuneJob reconcile passes running at once (the rest queue, oldest first)."
    )
    namespaces: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated namespaces to watch (empty: the operator's own namespace)."
    )
    cluster_wide: bool = Field(default=False, description="Watch all namespaces (overrides namespaces).")
    service_account: str | None = Field(default=None, description="serviceAccountName of training/eval pods (namespace default when empty).")
    run_as_user: int = Field(default=1000, ge=1, description="Non-root UID of the pods.")

    network_policies: bool = Field(
        default=True,
        description=(
            "Create a NetworkPolicy with every training Job (its pods accept connections only from the same job's pods; the "
            "metrics port also from trainer_metrics_from and the operator's namespace) and with every Rollout (its vLLM "
            "pods accept connections only from serving_from)."
        ),
    )
    trainer_metrics_from: Annotated[list[dict[str, Any]], NoDecode] = Field(
        default_factory=lambda: [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
        description="NetworkPolicyPeers (JSON list) that may scrape a training pod's metrics port besides the operator: Prometheus.",
    )
    serving_from: Annotated[list[dict[str, Any]], NoDecode] = Field(
        default_factory=lambda: [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},
                                 {"namespaceSelector": {"matchLabels": {"tuneloop.dev/gateway": "true"}}}],
        description=(
            "NetworkPolicyPeers (JSON list) that may connect to a Rollout's vLLM pods: Prometheus and the Gateway's data "
            "plane (namespaces labelled tuneloop.dev/gateway=true by default)."
        ),
    )
    allowed_images: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "Images a FineTuneJob's spec.image may name (comma-separated): exact references, repositories (any tag or digest "
            "of it), prefixes ending in `*`, or `*` for any image (single-tenant installs only). Empty: the operator's own "
            "trainer_image only. The evaluation pod writes the gate verdict, so its code must be the admin's."
        ),
    )
    token_secret_prefix: str = Field(
        default="tuneloop-",
        description=(
            "A FineTuneJob's baseModel.tokenSecretRef may name only Secrets whose name starts with this prefix (the "
            "namespace marks a Secret for tuneloop by naming it so; the operator reads no Secret). Empty: any Secret."
        ),
    )
    allowed_extra_args: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "`vllm serve` flags of the denylist (tuneloop.operator.policy.DENIED_SERVING_ARGS) a Rollout's "
            "serving.extraArgs may use anyway (comma-separated), or `*` for all; `--trust-remote-code` here also allows "
            "a FineTuneJob's baseModel.trustRemoteCode."
        ),
    )
    reserved_node_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["node-role.kubernetes.io/control-plane", "node-role.kubernetes.io/master"],
        description=(
            "Node label and taint keys tenants may not use in nodeSelector or tolerations (comma-separated; an entry ending "
            "in `*` is a prefix). Default: the control-plane role keys."
        ),
    )
    allow_any_toleration: bool = Field(
        default=False, description="Allow a toleration with operator Exists and no key (it tolerates every taint)."
    )
    operator_namespace: str | None = Field(
        default=None, validation_alias=AliasChoices("TUNELOOP_OPERATOR_NAMESPACE", "POD_NAMESPACE"),
        description="The operator's namespace (POD_NAMESPACE): allowed to poll training pods' metrics port.",
    )

    @field_validator("trainer_metrics_from", "serving_from", mode="before")
    @classmethod
    def _peers(cls, v: object) -> object:
        """A JSON list of NetworkPolicyPeer objects."""
        if isinstance(v, str):
            v = json.loads(v) if v.strip() else []
        if not isinstance(v, list) or not all(isinstance(p, dict) for p in v):
            raise ValueError("a JSON list of NetworkPolicyPeer objects, e.g. [{\"namespaceSelector\": {\"matchLabels\": {...}}}]")
        return v

    @field_validator("trainer_metrics_port_range", mode="before")
    @classmethod
    def _port_range(cls, v: object) -> object:
        """`LOW-HIGH` (inclusive) -> (low, high); empty -> None."""
        if isinstance(v, str):
            text = v.strip()
            if not text:
                return None
            first, sep, last = text.partition("-")
            if not sep or not first.strip().isdigit() or not last.strip().isdigit():
                raise ValueError(f"trainer_metrics_port_range: {v!r} is not LOW-HIGH, e.g. 20000-29999")
            v = (int(first), int(last))
        if isinstance(v, list | tuple) and len(v) == 2:
            low, high = int(v[0]), int(v[1])
            if not 1 <= low <= high <= 65535:
                raise ValueError(f"trainer_metrics_port_range: {low}-{high} is not a port range (1 <= LOW <= HIGH <= 65535)")
            if low == high == RENDEZVOUS_PORT:
                raise ValueError(f"trainer_metrics_port_range: {low} is the training pods' rendezvous port")
            return (low, high)
        return v

    @field_validator("namespaces", "allowed_images", "allowed_extra_args", "reserved_node_keys", mode="before")
    @classmethod
    def _split(cls, v: object) -> object:
        if isinstance(v, str):
            return [n.strip() for n in v.split(",") if n.strip()]
        return v

    @field_validator("metrics_providers", mode="before")
    @classmethod
    def _providers(cls, v: object) -> object:
        """`name=url,name=url` (or a JSON object) -> {name: url}; names are DNS labels, URLs http(s)."""
        if isinstance(v, str):
            v = v.strip()
            if v.startswith("{"):
                v = json.loads(v)
            else:
                pairs = [p.strip() for p in v.split(",") if p.strip()]
                if any("=" not in p for p in pairs):
                    raise ValueError("metrics_providers: use name=url,name=url")
                v = {p.split("=", 1)[0].strip(): p.split("=", 1)[1].strip() for p in pairs}
        if isinstance(v, dict):
            for name, url in v.items():
                if not _PROVIDER_NAME.match(str(name)) or name == "default":
                    raise ValueError(f"metrics provider name {name!r}: a DNS label other than 'default'")
                if not str(url).startswith(("http://", "https://")):
                    raise ValueError(f"metrics provider {name}: {url!r} is not an http(s) URL")
        return v

    def allowed_images_or_default(self) -> list[str]:
        """The admin's image list; the operator's own trainer image when none is configured."""
        return list(self.allowed_images) or [self.trainer_image]

    def metrics_endpoints(self) -> dict[str, str]:
        """Every metrics provider the admin configured, by name (`default` is prometheus_url)."""
        return {"default": self.prometheus_url, **self.metrics_providers}


@lru_cache(maxsize=1)
def get_settings() -> OperatorSettings:
    """The process-wide settings (read once from the environment)."""
    return OperatorSettings()
