"""Kubernetes names, the labels every tuneloop object carries (one managed-by value) and the selectors
built from them: a FineTuneJob's children, a Rollout's vLLM Deployments, Services and HTTPRoute."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from tuneloop.api.common import API_VERSION

LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "tuneloop-operator"
LABEL_JOB = "tuneloop.dev/finetunejob"
LABEL_MODEL = "tuneloop.dev/model-name"
LABEL_ROLLOUT = "tuneloop.dev/rollout"
LABEL_ROLE = "tuneloop.dev/role"
LABEL_MODEL_VERSION = "tuneloop.dev/model-version"
LABEL_SCHEDULE = "tuneloop.dev/schedule"  # a FineTuneSchedule's runs and digest Jobs
LABEL_SWEEP = "tuneloop.dev/sweep"  # a FineTuneSweep's trials and its final run
ANNOTATION_SWEEP_LINEAGE = "tuneloop.dev/sweep-lineage"  # the final run's sweep and trial (JSON), recorded on its ModelVersion

# The two roles of a Rollout's serving pods.
STABLE = "stable"
CANARY = "canary"
ROLES = (STABLE, CANARY)
# serving.mode sharedBase: one Deployment of the base serves every version (adapter) of the Rollout; its pods carry this
# role and no model-version label (they serve several, and a label that changed on promotion would restart them).
SHARED = "shared"


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


def job_labels(job_name: str, component: str) -> dict[str, str]:
    """Labels of everything made for one FineTuneJob."""
    return {
        LABEL_NAME: "tuneloop",
        LABEL_INSTANCE: job_name,
        LABEL_COMPONENT: component,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_JOB: job_name,
    }


# --- a Rollout's serving objects ------------------------------------------------------------------
def deployment_name(rollout: str, role: str) -> str:
    return child_name(rollout, role)


def service_name(rollout: str, role: str) -> str:
    return child_name(rollout, role)


def serving_labels(rollout: str) -> dict[str, str]:
    """Labels of everything made for one Rollout (Deployments, pods, Services, the HTTPRoute)."""
    return {
        LABEL_NAME: "vllm",
        LABEL_INSTANCE: rollout,
        LABEL_COMPONENT: "serving",
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_ROLLOUT: rollout,
    }


def role_selector(rollout: str, role: str) -> dict[str, str]:
    """Pod selector of one role's Deployment and Service (labels that never change on a pod)."""
    return {LABEL_ROLLOUT: rollout, LABEL_ROLE: role}


def rollout_selector(rollout: str) -> dict[str, str]:
    """Pods of both roles (the replica-weighted Service)."""
    return {LABEL_ROLLOUT: rollout, LABEL_COMPONENT: "serving"}


def controller_reference(kind: str, name: str, uid: str, api_version: str = API_VERSION) -> dict[str, Any]:
    """The controller owner reference every tuneloop child carries (the one builder of ownerReferences)."""
    return {"apiVersion": api_version, "kind": kind, "name": name, "uid": uid, "controller": True, "blockOwnerDeletion": True}


def owner_reference(obj: dict[str, Any]) -> dict[str, Any]:
    """The controller owner reference to a tuneloop object (a Rollout) given as its manifest."""
    meta = obj.get("metadata") or {}
    return controller_reference(obj.get("kind", "Rollout"), meta["name"], meta.get("uid", ""), obj.get("apiVersion", API_VERSION))
