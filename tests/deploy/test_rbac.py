"""The chart's and kustomize's RBAC are exactly the operator's source of truth (tuneloop.operator.rbac)."""

from __future__ import annotations

import pytest
import yaml
from tuneloop.operator import rbac

from ._support import ROOT, by_kind, kustomize, objects

pytestmark = pytest.mark.unit


def _rules(objs: list[dict], kind: str) -> list[list[dict]]:
    return [o["rules"] for o in by_kind(objs).get(kind, [])]


def test_chart_rules_file_is_the_source_of_truth():
    data = yaml.safe_load((ROOT / "charts" / "tuneloop" / "files" / "rbac-rules.yaml").read_text())
    assert data == {"cluster": [], "namespaced": rbac.rules()}


def test_cluster_scope_clusterrole_equals_rbac_py():
    objs = objects(None)
    assert _rules(objs, "ClusterRole") == [rbac.rules()]
    assert "Role" not in by_kind(objs)


def test_namespaced_scope_roles_equal_rbac_py():
    objs = objects({"scope": "namespaced", "watchNamespaces": ["a", "b", "c"]})
    assert _rules(objs, "Role") == [rbac.rules()] * 3
    assert "ClusterRole" not in by_kind(objs)


def test_rbac_off_renders_none():
    objs = objects({"rbac": {"create": False}})
    assert not {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"} & set(by_kind(objs))


@pytest.mark.parametrize("overlay,kind", [("manifests/overlays/namespaced", "Role"), ("manifests/overlays/cluster-wide", "ClusterRole")])
def test_kustomize_rules_equal_rbac_py(overlay, kind):
    assert _rules(kustomize(overlay), kind) == [rbac.rules()]


def test_operator_rbac_manifests_agree():
    """manifests/rbac/ (written by `python -m tuneloop.operator.rbac`) grants the same rules."""
    for name, kind in (("namespaced.yaml", "Role"), ("cluster.yaml", "ClusterRole")):
        docs = [d for d in yaml.safe_load_all((ROOT / "manifests" / "rbac" / name).read_text()) if d]
        assert _rules(docs, kind) == [rbac.rules()]


def test_least_privilege():
    for rule in rbac.rules():
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
        assert "secrets" not in rule["resources"], "the operator never reads Secrets (pods get secretKeyRef env)"
        assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])
