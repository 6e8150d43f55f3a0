"""Kubernetes names and the labels every tuneloop object carries (one managed-by value)."""

from __future__ import annotations

import hashlib
import re

LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "tuneloop-operator"
LABEL_JOB = "tuneloop.dev/finetunejob"
LABEL_MODEL = "tuneloop.dev/model-name"


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
