"""Operator configuration from the environment (prefix TUNELOOP_), one typed object.

Every field can be set as an env var, e.g. ``TUNELOOP_TRAINER_IMAGE``, ``TUNELOOP_NAMESPACES=a,b``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class OperatorSettings(BaseSettings):
    """What the operator needs to know about its environment."""

    model_config = SettingsConfigDict(env_prefix="TUNELOOP_", extra="ignore")

    trainer_image: str = Field(
        default="ghcr.io/tuneloop/trainer:0.1.0", description="Image of the data-prep, training and evaluation pods (a FineTuneJob's spec.image wins)."
    )
    image_pull_policy: str = Field(default="IfNotPresent", description="imagePullPolicy of the pods the operator creates.")
    vllm_image: str = Field(default="vllm/vllm-openai:v0.11.0", description="Default vLLM image for Rollouts.")
    default_output_pvc: str | None = Field(
        default=None, description="Staging PVC for FineTuneJobs with output.s3: work directory <claim>/<namespace>/<name>."
    )
    model_cache_pvc: str | None = Field(
        default=None, description="PVC mounted at /cache (HF_HOME=/cache/huggingface) in stage pods; an emptyDir when empty."
    )
    model_cache_size: str = Field(default="50Gi", description="sizeLimit of the model-cache emptyDir when no model-cache PVC is set.")
    prometheus_url: str = Field(default="http://prometheus-operated.monitoring.svc:9090", description="Prometheus the Rollout analysis queries.")
    metrics_port: int = Field(default=8080, ge=0, le=65535, description="Port of the operator's /metrics endpoint (0 disables it).")
    health_port: int = Field(default=8081, ge=0, le=65535, description="Port of Kopf's liveness endpoint /healthz (0 disables it).")
    trainer_metrics_port: int = Field(default=9400, ge=1, le=65535, description="Port of rank 0's progress metrics in training pods.")
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

    @field_validator("namespaces", mode="before")
    @classmethod
    def _split(cls, v: object) -> object:
        if isinstance(v, str):
            return [n.strip() for n in v.split(",") if n.strip()]
        return v


@lru_cache(maxsize=1)
def get_settings() -> OperatorSettings:
    """The process-wide settings (read once from the environment)."""
    return OperatorSettings()
