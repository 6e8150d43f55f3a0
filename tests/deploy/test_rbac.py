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


# --- the rules are exactly the calls the code makes (issue 25, finding 10) -------------------------------------
import ast  # noqa: E402
from pathlib import Path  # noqa: E402

from tuneloop.operator.kube import resources as res  # noqa: E402

OPERATOR = ROOT / "operator" / "tuneloop" / "operator"
KOPF_WATCH = {"event": {"list", "watch"}, "index": {"list", "watch"},
              "daemon": {"list", "watch", "patch"}, "update": {"list", "watch", "patch"}}  # patch: annotations, finalizers


def _resource(node: ast.AST) -> tuple[str, str] | None:
    """`r.JOBS` -> ("batch", "jobs")."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "r":
        found = getattr(res, node.attr, None)
        if isinstance(found, res.Resource):
            return found.group, found.plural
    return None


def _kopf_target(call: ast.Call, module: ast.Module) -> tuple[str, str] | None:
    args = call.args
    if args and isinstance(args[0], ast.Starred) and isinstance(args[0].value, ast.Name):  # @kopf.index(*FTJ)
        name = args[0].value.id
        for stmt in module.body:
            if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in stmt.targets):
                args = list(stmt.value.elts)  # type: ignore[attr-defined]
    if len(args) < 3 or not isinstance(args[2], ast.Constant):
        return None
    group = args[0].value if isinstance(args[0], ast.Constant) else "tuneloop.dev"  # GROUP
    return str(group), str(args[2].value)


def calls_in_code() -> dict[tuple[str, str], set[str]]:
    """(apiGroup, resource[/subresource]) -> verbs, read out of the operator's source: client verbs on `r.X`,
    `ensure()` (get, create, patch), `_ensure()` and a stage's `before` children (create; get on 409), pod logs,
    Events, and the resources Kopf watches (list, watch; patch where it keeps annotations or a finalizer)."""
    used: dict[tuple[str, str], set[str]] = {}

    def add(key: tuple[str, str] | None, *verbs: str) -> None:
        if key is not None:
            used.setdefault(key, set()).update(verbs)

    for path in sorted(Path(OPERATOR).rglob("*.py")):
        module = ast.parse(path.read_text())
        for node in ast.walk(module):
            if not isinstance(node, ast.Call):
                continue
            fn = node.func
            attr = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else ""
            kw = {k.arg: k.value for k in node.keywords}
            if isinstance(fn, ast.Attribute) and isinstance(fn.value, ast.Attribute) and isinstance(fn.value.value, ast.Name) \
                    and fn.value.value.id == "kopf" and fn.value.attr == "on" and attr in KOPF_WATCH:
                add(_kopf_target(node, module), *KOPF_WATCH[attr])
            elif isinstance(fn, ast.Attribute) and isinstance(fn.value, ast.Name) and fn.value.id == "kopf" and attr in KOPF_WATCH:
                add(_kopf_target(node, module), *KOPF_WATCH[attr])
            if "before" in kw:
                for elt in ast.walk(kw["before"]):
                    if isinstance(elt, ast.Tuple) and elt.elts:
                        add(_resource(elt.elts[0]), "create", "get")
            if attr in ("get", "list", "create", "patch", "delete") and node.args:
                key = _resource(node.args[0])
                if key is None:
                    continue
                sub = kw.get("subresource")
                if isinstance(sub, ast.Constant):
                    key = (key[0], f"{key[1]}/{sub.value}")
                add(key, attr)
                read_existing = kw.get("read_existing")
                if attr == "create" and not (isinstance(read_existing, ast.Constant) and read_existing.value is False):
                    add(key, "get")  # 409 -> the existing object
            elif attr == "ensure" and len(node.args) >= 2:
                add(_resource(node.args[1]), "get", "create", "patch")
            elif attr == "_ensure" and node.args:
                add(_resource(node.args[0]), "create", "get")
            elif attr == "pod_log":
                add(("", "pods/log"), "get")
            elif attr == "event" and "type" in kw:
                add(("", "events"), "create")
    add(("", "events"), "create")  # Kopf posts its warnings as core/v1 Events
    return used


def granted() -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in rbac.rules():
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def test_every_granted_verb_is_a_call_the_code_makes_and_every_call_is_granted():
    used, have = calls_in_code(), granted()
    unused = {k: sorted(v - used.get(k, set())) for k, v in have.items() if v - used.get(k, set())}
    missing = {k: sorted(v - have.get(k, set())) for k, v in used.items() if v - have.get(k, set())}
    assert unused == {}, f"granted but never called: {unused}"
    assert missing == {}, f"called but not granted: {missing}"


def test_no_update_and_no_delete_beyond_the_schedules_runs():
    for rule in rbac.rules():
        assert "update" not in rule["verbs"], rule
        if "delete" in rule["verbs"]:
            assert rule["resources"] in (["finetunejobs"], ["jobs"]), rule
    assert "patch" not in granted()[("tuneloop.dev", "modelversions")], "ModelVersion specs are never patched"
