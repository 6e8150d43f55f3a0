"""The operator's RBAC rules: the single source of truth for manifests/rbac/ and the Helm chart.

    python -m tuneloop.operator.rbac            # rewrite manifests/rbac/*.yaml
    python -m tuneloop.operator.rbac --check    # exit 1 if they are stale

No access to Secrets: pods get secretKeyRef env (HF token, S3 credentials) resolved by the kubelet.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

NAME = "tuneloop-operator"
WATCH = ["list", "watch"]  # what Kopf's watch streams need (no GET of single objects)

# (apiGroup, resources, verbs, why) — one row per distinct need; exactly the calls the code makes
# (tests/deploy/test_rbac.py reads them out of the source and compares). No `update` (merge patches only), no
# `delete` but for the schedule's runs and check Jobs (the rest goes with its owner), no read of Secrets.
RULES: list[tuple[str, list[str], list[str], str]] = [
    ("tuneloop.dev", ["finetunejobs"], [*WATCH, "create", "patch", "delete"],
     "watch FineTuneJobs; FineTuneSchedules create runs and delete old ones (history limits, Replace); FineTuneSweeps "
     "create trials and suspend pruned ones"),
    ("tuneloop.dev", ["finetunejobs/status"], ["patch"], "FineTuneJob status"),
    ("tuneloop.dev", ["modelversions"], ["get", "create"], "register ModelVersions; Rollouts and schedules read them"),
    ("tuneloop.dev", ["modelversions/status"], ["patch"], "ModelVersion status (registration, Serving/RolledBack, drift)"),
    ("tuneloop.dev", ["rollouts"], ["get", *WATCH, "patch"],
     "watch Rollouts; Kopf annotations and finalizer; clear promote/abort; FineTuneSchedules and FineTuneSweeps set spec.candidate"),
    ("tuneloop.dev", ["rollouts/status"], ["patch"], "Rollout status"),
    ("tuneloop.dev", ["finetuneschedules"], ["get", *WATCH, "patch"], "watch FineTuneSchedules; Kopf annotations and finalizer"),
    ("tuneloop.dev", ["finetuneschedules/status"], ["patch"], "FineTuneSchedule status"),
    ("tuneloop.dev", ["finetunesweeps"], ["get", *WATCH, "patch"], "watch FineTuneSweeps; Kopf annotations and finalizer"),
    ("tuneloop.dev", ["finetunesweeps/status"], ["patch"], "FineTuneSweep status (the study)"),
    ("batch", ["jobs"], ["get", *WATCH, "create", "patch", "delete"],
     "data-prep, training and evaluation Jobs (suspend); the schedule's data-check Jobs (deleted when done)"),
    ("", ["pods"], ["list"], "termination messages, rank-0 pod IP for progress"),
    ("", ["pods/log"], ["get"], "the evaluation pod's log carries report.md"),
    ("", ["configmaps"], ["get", "create"], "spec + DeepSpeed config; report ConfigMaps (an existing one is read to check its owner)"),
    ("", ["services"], ["get", "create", "patch"], "headless rendezvous Services; vLLM Services"),
    ("", ["events"], ["create"], "events on phase changes (the operator's and Kopf's, core/v1)"),
    ("apps", ["deployments"], ["get", "create", "patch"], "vLLM stable/canary Deployments (rollout)"),
    ("gateway.networking.k8s.io", ["httproutes"], ["get", "create", "patch"], "traffic split by HTTPRoute weights (rollout)"),
    ("inference.networking.x-k8s.io", ["inferencemodelrewrites"], ["get", "list", "create", "patch"],
     "traffic split between adapter names of a sharedBase Rollout (list: whether the Inference Extension is installed)"),
    ("networking.k8s.io", ["networkpolicies"], ["get", "create", "patch"],
     "a training Job's pods reachable only from the same job; a Rollout's vLLM pods only from the admin's peers"),
]


def rules() -> list[dict[str, Any]]:
    return [{"apiGroups": [g], "resources": list(res), "verbs": list(verbs)} for g, res, verbs, _ in RULES]


def role(namespace: str = "tuneloop-system", name: str = NAME) -> dict[str, Any]:
    """For an operator watching namespaces: one Role (+ RoleBinding) per watched namespace."""
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": name, "namespace": namespace, "labels": _labels()}, "rules": rules()}


def cluster_role(name: str = NAME) -> dict[str, Any]:
    """For an operator running --all-namespaces."""
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": name, "labels": _labels()}, "rules": rules()}


def role_binding(namespace: str = "tuneloop-system", sa_namespace: str = "tuneloop-system", name: str = NAME) -> dict[str, Any]:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": name, "namespace": namespace, "labels": _labels()},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": sa_namespace}]}


def cluster_role_binding(sa_namespace: str = "tuneloop-system", name: str = NAME) -> dict[str, Any]:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": name, "labels": _labels()},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": sa_namespace}]}


def service_account(namespace: str = "tuneloop-system", name: str = NAME) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": namespace, "labels": _labels()}}


def _labels() -> dict[str, str]:
    return {"app.kubernetes.io/name": "tuneloop", "app.kubernetes.io/component": "operator"}


HEADER = "# Generated by `python -m tuneloop.operator.rbac` from tuneloop/operator/rbac.py; do not edit.\n"


def files() -> dict[str, str]:
    def dump(*docs: dict) -> str:
        return HEADER + "---\n".join(yaml.safe_dump(d, sort_keys=False) for d in docs)

    return {
        "namespaced.yaml": dump(service_account(), role(), role_binding()),
        "cluster.yaml": dump(service_account(), cluster_role(), cluster_role_binding()),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tuneloop.operator.rbac", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[3] / "manifests" / "rbac"))
    ap.add_argument("--check", action="store_true", help="fail if the files differ")
    args = ap.parse_args(argv)
    out = Path(args.out)
    stale = []
    for name, text in files().items():
        path = out / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            out.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print("stale RBAC manifests (run python -m tuneloop.operator.rbac): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
