"""kustomize base + overlays build with plain `kubectl kustomize` and agree with the chart."""

from __future__ import annotations

import os
import shutil

import pytest

from ._support import ROOT, all_problems, by_kind, container, env, generate, kustomize, objects, one

pytestmark = [
    pytest.mark.unit,
    pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with kustomize) is not installed"),
]

OVERLAYS = ["manifests/overlays/namespaced", "manifests/overlays/cluster-wide", "manifests/monitoring", "manifests/argocd"]


@pytest.fixture(scope="module")
def built() -> dict[str, list[dict]]:
    return {path: kustomize(path) for path in OVERLAYS}


@pytest.mark.parametrize("path", OVERLAYS)
def test_overlay_builds_and_every_object_is_valid(built, path):
    assert built[path]
    assert all_problems(built[path]) == []


def test_generated_files_are_current():
    """Drift: base CRDs, operator.yaml, overlay RBAC, monitoring, argocd-cm and the chart's generated
    files are exactly what manifests/tools/generate.py makes from their sources."""
    assert generate.stale() == [], "run: python manifests/tools/generate.py"


def test_base_crds_are_the_generated_crds(built):
    import yaml

    crds = {c["metadata"]["name"]: c for c in by_kind(built["manifests/overlays/cluster-wide"])["CustomResourceDefinition"]}
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        expected = yaml.safe_load(path.read_text())
        assert crds.pop(expected["metadata"]["name"]) == expected
    assert crds == {}


def _comparable(deployment: dict) -> dict:
    c = dict(container(deployment))
    c["env"] = env(deployment)
    return c


@pytest.mark.parametrize("overlay,values", [
    ("manifests/overlays/cluster-wide", {"scope": "cluster"}),
    ("manifests/overlays/namespaced", {"scope": "namespaced"}),
])
def test_overlay_operator_matches_the_chart(built, overlay, values):
    """The kustomize install runs the same operator container and RBAC as the chart with that scope."""
    kust, helm_objs = built[overlay], objects(values)
    assert _comparable(one(kust, "Deployment")) == _comparable(one(helm_objs, "Deployment"))
    for kind in ("Role", "ClusterRole"):
        assert [r["rules"] for r in by_kind(kust).get(kind, [])] == [r["rules"] for r in by_kind(helm_objs).get(kind, [])]


def test_namespaced_overlay_follows_its_namespace(tmp_path):
    """Copying the namespaced overlay and changing `namespace:` moves the operator, its Role and binding."""
    overlay = tmp_path / "team"
    overlay.mkdir()
    base = os.path.relpath(ROOT / "manifests" / "overlays" / "namespaced", overlay)
    (overlay / "kustomization.yaml").write_text(f"namespace: ml-team\nresources:\n  - {base}\n")
    objs = kustomize(str(overlay))
    assert {o["metadata"].get("namespace") for o in objs if o["kind"] in ("Deployment", "Role", "RoleBinding", "ServiceAccount", "Service")} == {"ml-team"}
    assert one(objs, "RoleBinding")["subjects"][0]["namespace"] == "ml-team"
    namespace = one(objs, "Namespace")
    assert namespace["metadata"]["name"] == "ml-team"
    assert "pod-security.kubernetes.io/enforce" not in namespace["metadata"]["labels"]  # a shared team namespace: warn only
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/warn"] == "restricted"
    assert "TUNELOOP_NAMESPACES" not in env(one(objs, "Deployment")), "the operator must watch its own namespace"


def test_cluster_wide_overlay_scope(built):
    objs = built["manifests/overlays/cluster-wide"]
    d = one(objs, "Deployment")
    assert container(d)["args"] == ["--all-namespaces"] and env(d)["TUNELOOP_CLUSTER_WIDE"] == "true"
    binding = one(objs, "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "tuneloop", "namespace": "tuneloop-system"}]
    assert "Role" not in by_kind(objs)


def test_argocd_applications_point_at_real_sources(built):
    apps = by_kind(built["manifests/argocd"])["Application"]
    assert len(apps) == 2
    for app in apps:
        source = app["spec"]["source"]
        path = ROOT / source["path"]
        assert path.is_dir(), source["path"]
        if (path / "kustomization.yaml").exists():
            assert kustomize(source["path"])
        else:
            assert (path / "Chart.yaml").exists()
            values = source["helm"]["valuesObject"]
            assert objects(values)  # the values the example passes are accepted by the chart's schema
        assert app["spec"]["destination"]["namespace"] == "tuneloop-system"
        assert "ServerSideApply=true" in app["spec"]["syncPolicy"]["syncOptions"]
