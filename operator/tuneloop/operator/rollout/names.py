"""Deterministic names and labels of everything a Rollout creates (pure)."""

from __future__ import annotations

from typing import Any

from ..builders.common import child_name  # one naming rule for every child the operator creates

GROUP = "tuneloop.dev"
LABEL_ROLLOUT = f"{GROUP}/rollout"
LABEL_ROLE = f"{GROUP}/role"
LABEL_MODEL_VERSION = f"{GROUP}/model-version"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"

STABLE = "stable"
CANARY = "canary"
ROLES = (STABLE, CANARY)

# How the pod labels appear on scraped series when Prometheus maps pod labels with
# `labelmap: __meta_kubernetes_pod_label_(.+)` (or a PodMonitor's podTargetLabels):
# every character outside [a-zA-Z0-9_] becomes "_".
PROM_LABEL_ROLLOUT = "tuneloop_dev_rollout"
PROM_LABEL_ROLE = "tuneloop_dev_role"
PROM_LABEL_MODEL_VERSION = "tuneloop_dev_model_version"


def deployment_name(rollout: str, role: str) -> str:
    return child_name(rollout, role)


def service_name(rollout: str, role: str) -> str:
    return child_name(rollout, role)


def common_labels(rollout: str) -> dict[str, str]:
    return {
        LABEL_NAME: "vllm",
        LABEL_INSTANCE: rollout,
        LABEL_COMPONENT: "serving",
        LABEL_MANAGED_BY: "tuneloop",
        LABEL_ROLLOUT: rollout,
    }


def role_selector(rollout: str, role: str) -> dict[str, str]:
    """Pod selector of one role's Deployment and Service (labels that never change on a pod)."""
    return {LABEL_ROLLOUT: rollout, LABEL_ROLE: role}


def rollout_selector(rollout: str) -> dict[str, str]:
    """Pods of both roles (the replica-weighted Service)."""
    return {LABEL_ROLLOUT: rollout, LABEL_COMPONENT: "serving"}


def owner_reference(rollout_obj: dict[str, Any]) -> dict[str, Any]:
    meta = rollout_obj.get("metadata") or {}
    return {
        "apiVersion": rollout_obj.get("apiVersion", f"{GROUP}/v1alpha1"),
        "kind": rollout_obj.get("kind", "Rollout"),
        "name": meta["name"],
        "uid": meta.get("uid", ""),
        "controller": True,
        "blockOwnerDeletion": True,
    }


def prom_version_selector(namespace: str, rollout: str, model_version: str) -> str:
    """PromQL label matchers of one ModelVersion's pods of a Rollout (any role), for the drift watch."""
    return f'namespace="{namespace}", {PROM_LABEL_ROLLOUT}="{rollout}", {PROM_LABEL_MODEL_VERSION}="{model_version}"'


def prom_selector(namespace: str, rollout: str, role: str) -> str:
    """PromQL label matchers of one role's pods, for `{{selector}}` in analysis queries."""
    return f'namespace="{namespace}", {PROM_LABEL_ROLLOUT}="{rollout}", {PROM_LABEL_ROLE}="{role}"'
