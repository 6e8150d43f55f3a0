"""The pod and container security contexts of every pod the operator creates (the stage Jobs, the digest Job,
the vLLM Deployments): one builder, the strictest form every workload runs under (Pod Security `restricted`).

The root filesystem is read-only (issue 25): a workload writes only to its mounts — the stages to the work
directory (/output), the caches (/cache), /tmp (HOME=/tmp for library caches such as Triton's; DeepSpeed's JIT
builds) and /dev/shm; vLLM to /tmp, /cache and /dev/shm; the digest Job only its termination message."""

from __future__ import annotations

from typing import Any

_SECCOMP = {"type": "RuntimeDefault"}


def pod_security(run_as_user: int) -> dict[str, Any]:
    """The pod-level context: a non-root user and group (`TUNELOOP_RUN_AS_USER`) owning the volumes."""
    return {"runAsNonRoot": True, "runAsUser": run_as_user, "runAsGroup": run_as_user, "fsGroup": run_as_user,
            "seccompProfile": dict(_SECCOMP)}


def container_security() -> dict[str, Any]:
    """The container-level context: no privilege, no capability, no escalation, a read-only root filesystem."""
    return {"allowPrivilegeEscalation": False, "privileged": False, "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True, "runAsNonRoot": True, "seccompProfile": dict(_SECCOMP)}
