"""Issue 25, findings 6 and 11: the operator patches or adopts only what it created. A ConfigMap, Job or
ModelVersion someone planted under the name a FineTuneJob needs is refused with a condition naming it (never
read as the training spec, never taken as a finished stage, never adopted as the registration); the objects
the job did create are still found again after a restart (409 → its own object)."""

from __future__ import annotations

import copy

import pytest
from tuneloop.contract import ownership
from tuneloop.operator.builders.common import JobMeta, owner_ref

from .test_reconcile_unit import FakeClient, _complete, _ftj, _pass

pytestmark = pytest.mark.unit


def planted(kind: str, name: str, **extra) -> dict:
    return {"apiVersion": "v1", "kind": kind, "metadata": {"name": name, "namespace": "ns", **extra}}


def _failed_with(out, name: str) -> dict:
    conds = {c["type"]: c for c in out.status["conditions"]}
    assert out.phase == "Failed", out.status.get("message")
    assert conds["Failed"]["reason"] == "ChildNotOwned" and name in conds["Failed"]["message"]
    return conds


async def test_a_planted_config_map_is_not_taken_as_the_training_spec():
    c = FakeClient()
    c.objects[("configmaps", "ns", "x-config")] = {**planted("ConfigMap", "x-config"), "data": {"spec.yaml": "evil: true"}}
    out = await _pass(c, _ftj())
    _failed_with(out, "ConfigMap ns/x-config")
    assert "not controlled by FineTuneJob x" in out.status["message"] and "it has no controller" in out.status["message"]
    assert ("jobs", "ns", "x-data") not in c.objects  # no stage ran on someone else's spec
    assert c.objects[("configmaps", "ns", "x-config")]["data"] == {"spec.yaml": "evil: true"}  # and it was not touched


async def test_a_planted_job_is_not_taken_as_a_finished_stage():
    c = FakeClient()
    c.objects[("jobs", "ns", "x-data")] = {**planted("Job", "x-data", labels={"tuneloop.dev/finetunejob": "x"}),
                                           "status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    out = await _pass(c, _ftj())
    _failed_with(out, "Job ns/x-data")


async def test_a_config_map_controlled_by_another_finetunejob_is_refused():
    c = FakeClient()
    other = owner_ref(JobMeta(name="other", namespace="ns", uid="u-2", generation=1))
    c.objects[("configmaps", "ns", "x-config")] = planted("ConfigMap", "x-config", ownerReferences=[other])
    out = await _pass(c, _ftj())
    assert "controlled by FineTuneJob other" in out.status["message"]


async def test_its_own_children_are_found_again_after_a_restart():
    """The operator's own objects (409 on create: a pass that died after creating) are still its own."""
    c = FakeClient()
    await _pass(c, _ftj())
    del c.objects[("jobs", "ns", "x-data")]  # the Job create is retried; its ConfigMap already exists (409)
    out = await _pass(c, _ftj())
    assert out.phase == "ValidatingData" and ("jobs", "ns", "x-data") in c.objects


async def _to_registration(c: FakeClient, body: dict):
    await _pass(c, body)
    _complete(c, "x-data")
    await _pass(c, body)
    _complete(c, "x-train")
    return await _pass(c, body)


def _registering_job() -> dict:
    body = _ftj()
    body["spec"]["evaluation"] = {"enabled": False}
    body["spec"]["registry"] = {"modelName": "Support Bot", "version": "2026.11"}
    return body


async def test_a_planted_model_version_is_not_adopted():
    c = FakeClient()
    fake = {"apiVersion": "tuneloop.dev/v1alpha1", "kind": "ModelVersion",
            "metadata": {"name": "support-bot-2026-11", "namespace": "ns"},
            "spec": {"modelName": "Support Bot", "version": "2026.11", "artifact": {"uri": "s3://attacker/model", "format": "merged"},
                     "lineage": {"fineTuneJob": {"name": "x", "namespace": "ns", "uid": "u-1"}}, "evaluation": {"verdict": "Passed"}},
            "status": {"phase": "Pending"}}
    c.objects[("modelversions", "ns", "support-bot-2026-11")] = copy.deepcopy(fake)
    out = await _to_registration(c, _registering_job())
    _failed_with(out, "ModelVersion ns/support-bot-2026-11")
    assert c.objects[("modelversions", "ns", "support-bot-2026-11")] == fake  # no status written on it
    assert (out.status.get("children") or {}).get("modelVersion") is None


async def test_its_own_model_version_is_found_again_after_a_restart():
    c = FakeClient()
    out = await _to_registration(c, _registering_job())
    assert out.phase == "Succeeded"
    c.objects[("finetunejobs", "ns", "x")]["status"] = {}  # the pass died after creating the ModelVersion: start over
    for key in [k for k in c.objects if k[0] == "jobs"]:
        c.objects[key]["status"] = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
    out = await _pass(c, _registering_job())
    assert out.phase == "Succeeded", out.status.get("message")


@pytest.mark.parametrize("ctrl,owner,ok", [
    ({"apiVersion": "tuneloop.dev/v1alpha1", "kind": "Rollout", "name": "bot", "uid": "1", "controller": True},
     {"apiVersion": "tuneloop.dev/v1alpha1", "kind": "Rollout", "name": "bot", "uid": "1"}, True),
    ({"apiVersion": "tuneloop.dev/v1alpha1", "kind": "Rollout", "name": "bot", "uid": "2", "controller": True},
     {"apiVersion": "tuneloop.dev/v1alpha1", "kind": "Rollout", "name": "bot", "uid": "1"}, False),
    ({"apiVersion": "tuneloop.dev/v1alpha1", "kind": "Rollout", "name": "bot", "uid": "1"},  # an owner, not the controller
     {"apiVersion": "tuneloop.dev/v1alpha1", "kind": "Rollout", "name": "bot", "uid": "1"}, False),
    ({"apiVersion": "evil.dev/v1", "kind": "Rollout", "name": "bot", "uid": "1", "controller": True},
     {"apiVersion": "tuneloop.dev/v1alpha1", "kind": "Rollout", "name": "bot", "uid": "1"}, False),
    ({"apiVersion": "tuneloop.dev/v1alpha1", "kind": "FineTuneJob", "name": "bot", "uid": "1", "controller": True},
     {"apiVersion": "tuneloop.dev/v1alpha1", "kind": "Rollout", "name": "bot", "uid": "1"}, False),
])
def test_controlled_by_needs_the_same_controller(ctrl, owner, ok):
    assert ownership.controlled_by({"metadata": {"ownerReferences": [ctrl]}}, owner) is ok


# --- NetworkPolicies (issue 25, finding 9) -------------------------------------------------------------------------
async def test_the_training_pods_accept_connections_only_from_their_own_job():
    from tuneloop.operator.settings import OperatorSettings

    c = FakeClient()
    await _pass(c, _ftj())
    _complete(c, "x-data")
    await _pass(c, _ftj())
    pol = c.objects[("networkpolicies", "ns", "x-train")]
    own = {"batch.kubernetes.io/job-name": "x-train"}
    assert pol["spec"]["podSelector"] == {"matchLabels": own} and pol["spec"]["policyTypes"] == ["Ingress"]
    everything, metrics = pol["spec"]["ingress"]
    assert everything == {"from": [{"podSelector": {"matchLabels": own}}]}  # rendezvous: the same job's pods only
    assert metrics["ports"] == [{"protocol": "TCP", "port": OperatorSettings().trainer_metrics_port}]
    assert pol["metadata"]["ownerReferences"][0]["name"] == "x"


def test_no_network_policy_when_the_admin_turns_them_off():
    from tuneloop.api import FineTuneJobSpec
    from tuneloop.operator.builders import rendezvous_policy
    from tuneloop.operator.settings import OperatorSettings

    spec = FineTuneJobSpec.model_validate(_ftj()["spec"])
    meta = JobMeta(name="x", namespace="ns", uid="u-1", generation=1)
    assert rendezvous_policy(spec, meta, OperatorSettings(network_policies=False)) is None
    pol = rendezvous_policy(spec, meta, OperatorSettings(operator_namespace="tuneloop-system", trainer_metrics_from=[]))
    assert pol["spec"]["ingress"][1]["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "tuneloop-system"}}}]


def test_stage_pods_mount_no_service_account_token():
    from tuneloop.api import FineTuneJobSpec
    from tuneloop.operator import builders
    from tuneloop.operator.settings import OperatorSettings

    spec = FineTuneJobSpec.model_validate(_ftj()["spec"])
    meta = JobMeta(name="x", namespace="ns", uid="u-1", generation=1)
    cfg = OperatorSettings(service_account="trainer")
    for build in (builders.data_job, builders.train_job, builders.eval_job, builders.export_job):
        pod = build(spec, meta, cfg)["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False and pod["serviceAccountName"] == "trainer"
