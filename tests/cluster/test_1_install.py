"""Installing tuneloop on a real API server: the three ways the README gives, and what the API server
enforces that emulators do not (CRD default validation, CEL, structural defaulting, RBAC, Pod Security)."""

from __future__ import annotations

import copy
import os
import time
import uuid
from pathlib import Path

import pytest
import yaml

from tests.operator.harness import ROOT

from .conftest import CRD_NAMES, NO_NODE, Env, delete_namespace, tiny_finetunejob
from .kube import ApiError, Kube

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]


def test_crds_apply_server_side_and_are_established(kube: Kube, crds: None):
    """`kubectl apply --server-side -f crds/` (issue 10's blocker: the API server validates every `default`
    against its node's schema and CEL rules without nested defaulting)."""
    for name in CRD_NAMES:
        crd = kube.get("customresourcedefinitions", name)
        conds = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conds.get("Established") == "True" and conds.get("NamesAccepted") == "True", conds
        assert conds.get("NonStructuralSchema", "False") != "True", conds
    out = kube.kubectl("explain", "finetunejob.spec.hyperparameters.maxSteps")
    assert "maxSteps" in out.stdout


def test_chart_copy_and_kustomize_copy_are_the_same_crds():
    for name in sorted(f.name for f in (ROOT / "crds").glob("*.yaml")):
        src = yaml.safe_load((ROOT / "crds" / name).read_text())
        kz = yaml.safe_load((ROOT / "manifests" / "base" / "crds" / name).read_text())
        assert src["spec"] == kz["spec"], f"manifests/base/crds/{name} differs from crds/{name}"


def test_server_applies_nested_defaults_to_a_minimal_finetunejob(kube: Kube, env: Env):
    """What a user gets from the real structural defaulting (dry run: nothing is stored)."""
    body = tiny_finetunejob("defaults", env.ns)
    for key in ("hyperparameters", "evaluation", "method", "backoffLimit", "resources"):
        body["spec"].pop(key)
    body["spec"]["dataset"] = {"train": body["spec"]["dataset"]["train"]}
    out = kube.request("POST", f"/apis/tuneloop.dev/v1alpha1/namespaces/{env.ns}/finetunejobs", body, params={"dryRun": "All"})
    spec = out["spec"]
    assert spec["method"]["type"] == "lora"
    assert spec["hyperparameters"]["batchSize"] % spec["hyperparameters"]["microBatchSize"] == 0
    assert spec["backoffLimit"] == 3
    assert "validation" in spec["dataset"].get("split", {}), spec["dataset"]


@pytest.mark.parametrize("patch, needle", [
    ({"method": {"type": "qlora"}}, "qlora"),
    ({"resources": {"nodes": 0, "gpusPerNode": 0}}, "nodes"),
    ({"hyperparameters": {"batchSize": 3, "microBatchSize": 2}}, "multiple"),
])
def test_cel_and_schema_refusals(kube: Kube, env: Env, patch: dict, needle: str):
    body = tiny_finetunejob(f"bad-{uuid.uuid4().hex[:5]}", env.ns)
    for k, v in patch.items():
        body["spec"][k] = {**body["spec"].get(k, {}), **v} if isinstance(v, dict) else v
    with pytest.raises(ApiError) as info:
        kube.create("finetunejobs", body)
    assert info.value.status == 422 and needle in info.value.message, info.value.message


@pytest.mark.parametrize("zone, ok", [("Europe/Berlin", True), ("Mars/Olympus_Mons", False)])
def test_schedule_time_zone_checked_by_the_server(kube: Kube, env: Env, zone: str, ok: bool):
    """spec.timeZone (as a CronJob's): an IANA zone is accepted, an unknown one refused by the CRD's CEL rule on the
    real API server (the rule relies on CEL's getHours(zone) failing for an unknown zone)."""
    template = tiny_finetunejob("tmpl", env.ns)["spec"]
    del template["registry"]["version"]  # every run registers its own version
    body = {"apiVersion": "tuneloop.dev/v1alpha1", "kind": "FineTuneSchedule",
            "metadata": {"name": f"tz-{uuid.uuid4().hex[:5]}", "namespace": env.ns},
            "spec": {"schedule": "0 3 * * 1", "timeZone": zone, "handOff": {"rollout": {"name": "bot"}},
                     "jobTemplate": {"spec": template}}}
    url = f"/apis/tuneloop.dev/v1alpha1/namespaces/{env.ns}/finetuneschedules"
    if ok:
        created = kube.request("POST", url, body, params={"dryRun": "All"})
        assert created["spec"]["timeZone"] == zone
        return
    with pytest.raises(ApiError) as info:
        kube.request("POST", url, body, params={"dryRun": "All"})
    assert info.value.status == 422 and "timeZone" in info.value.message and "registry" not in info.value.message, info.value.message


def test_spec_is_immutable_except_suspend_on_the_server(kube: Kube, env: Env):
    body = tiny_finetunejob(f"immutable-{uuid.uuid4().hex[:5]}", env.ns, suspend=True)
    kube.request("POST", f"/apis/tuneloop.dev/v1alpha1/namespaces/{env.ns}/finetunejobs", body, params={"dryRun": "All"})
    name = body["metadata"]["name"]
    kube.create("finetunejobs", body)
    try:
        with pytest.raises(ApiError) as info:
            kube.patch("finetunejobs", name, env.ns, {"spec": {"hyperparameters": {"maxSteps": 5}}})
        assert info.value.status == 422 and "immutable" in info.value.message
        kube.patch("finetunejobs", name, env.ns, {"spec": {"suspend": False}})  # the one mutable field
    finally:
        kube.delete("finetunejobs", name, env.ns)


def test_helm_install_with_crds_and_namespaced_rbac(kube: Kube, env: Env):
    """`helm install` (helm-python-sdk, CRDs on, scope=namespaced) succeeded in the `env` fixture; check what it made."""
    assert env.release, "helm install returned nothing"
    assert env.release.get("status") == "deployed", {k: v for k, v in env.release.items() if k != "manifest"}
    for name in CRD_NAMES:
        crd = kube.get("customresourcedefinitions", name)
        assert crd["metadata"]["annotations"].get("meta.helm.sh/release-name") == "tuneloop"
        assert crd["metadata"]["annotations"].get("helm.sh/resource-policy") == "keep"
    roles = kube.list("roles", env.ns)
    bindings = kube.list("rolebindings", env.ns)
    assert roles and bindings, "the chart's namespaced Role/RoleBinding are missing"
    subjects = [s for b in bindings for s in b.get("subjects") or []]
    assert {"kind": "ServiceAccount", "name": env.sa, "namespace": env.ns} in [
        {k: s.get(k) for k in ("kind", "name", "namespace")} for s in subjects]
    # the operator Deployment's pod template passes restricted Pod Security admission (its pod exists;
    # it stays Pending on purpose: the operator under test runs on this machine as the same ServiceAccount)
    dep = kube.wait("deployments", "tuneloop", env.ns, lambda d: True, timeout=30)
    assert dep["spec"]["template"]["spec"]["nodeSelector"] == NO_NODE
    pods = []
    for _ in range(30):
        pods = kube.list("pods", env.ns, "app.kubernetes.io/name=tuneloop")
        if pods:
            break
        time.sleep(1)
    rs_msgs = [c.get("message", "") for rs in kube.list("replicasets", env.ns) for c in (rs.get("status") or {}).get("conditions") or []]
    assert pods, f"no operator pod admitted in the restricted namespace: {rs_msgs}"


def test_operator_serviceaccount_rbac(kube: Kube, env: Env):
    """The chart's Role gives the ServiceAccount what the operator does, and nothing like Secrets."""
    assert env.sa_kubeconfig is not None

    def can(verb: str, resource: str) -> bool:
        # `kubectl auth can-i VERB pods/log` would ask about the pod named "log": a subresource goes in --subresource
        kind, _, sub = resource.partition("/")
        out = kube.kubectl("--kubeconfig", str(env.sa_kubeconfig), "auth", "can-i", verb, kind, *([f"--subresource={sub}"] if sub else []),
                           "-n", env.ns, check=False)
        return out.stdout.strip() == "yes"

    allowed = [("create", "jobs.batch"), ("patch", "finetunejobs.tuneloop.dev/status"), ("create", "modelversions.tuneloop.dev"),
               ("watch", "rollouts.tuneloop.dev"), ("get", "pods/log"), ("create", "events"), ("create", "deployments.apps"),
               ("patch", "httproutes.gateway.networking.k8s.io"), ("create", "configmaps"), ("create", "services")]
    denied = [("get", "secrets"), ("list", "secrets"), ("create", "pods"), ("delete", "namespaces"), ("create", "roles.rbac.authorization.k8s.io")]
    missing = [a for a in allowed if not can(*a)]
    extra = [d for d in denied if can(*d)]
    assert not missing and not extra, f"ServiceAccount {env.sa}: missing {missing}, unexpectedly allowed {extra}"


def test_restricted_pod_security_is_enforced(kube: Kube, env: Env):
    """The namespace the chain runs in really enforces `restricted` (so the stage and vLLM pods that run there passed it)."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "privileged", "namespace": env.ns},
           "spec": {"nodeSelector": NO_NODE, "containers": [{"name": "c", "image": "busybox", "securityContext": {"privileged": True}}]}}
    with pytest.raises(ApiError) as info:
        kube.request("POST", f"/api/v1/namespaces/{env.ns}/pods", pod, params={"dryRun": "All"})
    assert info.value.status == 403 and "PodSecurity" in info.value.message


def _overlay(tmp_path: Path, overlay: str, namespace: str) -> Path:
    """A kustomization over manifests/overlays/OVERLAY in another namespace, the operator pinned to no node
    (the operator under test runs elsewhere; a process-kubelet would otherwise start the image-less pod)."""
    d = tmp_path / f"kz-{overlay}"
    d.mkdir()
    (d / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "namespace": namespace,
        "resources": [os.path.relpath(ROOT / "manifests" / "overlays" / overlay, d)],  # kustomize wants relative paths
        "patches": [{"target": {"kind": "Deployment", "name": "tuneloop"},
                     "patch": yaml.safe_dump([{"op": "add", "path": "/spec/template/spec/nodeSelector", "value": NO_NODE}])}],
    }))
    return d


def test_kustomize_namespaced_overlay_applies(kube: Kube, crds: None, tmp_path: Path):
    """`kubectl apply --server-side -k manifests/overlays/namespaced`, as docs/install.md says for a team's own namespace."""
    ns = f"tl-e2e-kz-{uuid.uuid4().hex[:6]}"
    d = _overlay(tmp_path, "namespaced", ns)
    try:
        out = kube.kubectl("apply", "--server-side", "-k", str(d), check=False)
        assert out.returncode == 0, out.stderr
        assert kube.get("deployments", "tuneloop", ns) is not None
        assert kube.list("roles", ns) and kube.list("rolebindings", ns)
    finally:
        delete_namespace(kube, ns)


def test_kustomize_cluster_wide_overlay_server_dry_run(kube: Kube, crds: None, tmp_path: Path):
    """The cluster-wide overlay through the API server's full admission (server-side dry run: its ClusterRole and
    ClusterRoleBinding are cluster-scoped and would clash with other installs of a shared cluster)."""
    ns = f"tl-e2e-kzc-{uuid.uuid4().hex[:6]}"
    kube.create("namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    d = _overlay(tmp_path, "cluster-wide", ns)
    try:
        rendered = kube.kubectl("kustomize", str(d)).stdout
        docs = [x for x in yaml.safe_load_all(rendered) if x]
        kinds = sorted({x["kind"] for x in docs})
        assert {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "Deployment"} <= set(kinds), kinds
        nonamespace = [copy.deepcopy(x) for x in docs if x["kind"] != "Namespace"]  # the Namespace exists already
        out = kube.kubectl("apply", "--server-side", "--dry-run=server", "-f", "-", input=yaml.safe_dump_all(nonamespace), check=False)
        assert out.returncode == 0, out.stderr
    finally:
        delete_namespace(kube, ns)
