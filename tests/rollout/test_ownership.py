"""Issue 25, finding 6: a Rollout does not take over Services or HTTPRoutes it did not create. A Service
`payments` that `replicaWeighted.service` names, or an HTTPRoute of the name `gatewayAPI.httpRoute` names, is left
as it is, and the Rollout says so (condition ObjectsOwned False, reason ObjectNotOwned, naming the object); once
the object is gone the Rollout creates its own and the condition turns True."""

from __future__ import annotations

from pathlib import Path

import pytest
from tuneloop.operator.analysis.prometheus import PrometheusProvider
from tuneloop.operator.builders.serving import ServingConfig
from tuneloop.operator.kube import resources as r
from tuneloop.operator.rollout.reconcile import Reconciler

from ..operator.harness import cluster
from .test_reconcile import NS, Scripted, objs, setup, tick

pytestmark = pytest.mark.operator

PAYMENTS = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "payments", "namespace": NS, "labels": {"app": "payments"}},
            "spec": {"selector": {"app": "payments"}, "ports": [{"name": "http", "port": 443, "targetPort": 8443}]}}


def _owned(st: dict) -> dict | None:
    return next((c for c in st.get("conditions") or [] if c["type"] == "ObjectsOwned"), None)


async def test_a_service_the_rollout_did_not_create_is_not_patched(tmp_path: Path):
    ro, mvs = objs()
    ro["spec"]["trafficRouting"] = {"replicaWeighted": {"service": "payments"}}
    async with cluster(tmp_path) as kc:
        await kc.apply(PAYMENTS)
        before = await kc.get(r.SERVICES, NS, "payments")
        await setup(kc, ro, mvs)
        rec = Reconciler(kc.client, ServingConfig(), "http://prom", provider_factory=lambda url: PrometheusProvider(Scripted()))
        await tick(kc, rec, 0)
        after = await kc.get(r.SERVICES, NS, "payments")
        assert after["spec"] == before["spec"] and after["metadata"].get("labels") == before["metadata"].get("labels")
        st = (await kc.get(r.ROLLOUTS, NS, "bot"))["status"]
        cond = _owned(st)
        assert cond is not None and (cond["status"], cond["reason"]) == ("False", "ObjectNotOwned")
        assert "Service default/payments" in cond["message"] and "not controlled by Rollout bot" in cond["message"]
        assert st["phase"] == "Degraded"
        await tick(kc, rec, 1)  # a second tick changes nothing
        assert (await kc.get(r.SERVICES, NS, "payments"))["spec"] == before["spec"]
        # the conflict goes away: the Rollout creates its own Service, and says so
        await kc.client.delete(r.SERVICES, NS, "payments")
        await tick(kc, rec, 2)
        mine = await kc.get(r.SERVICES, NS, "payments")
        assert mine["metadata"]["ownerReferences"][0]["name"] == "bot"
        st = (await kc.get(r.ROLLOUTS, NS, "bot"))["status"]
        cond = _owned(st)
        assert (cond["status"], cond["reason"]) == ("True", "Owned")
        assert st["phase"] != "Degraded" and "payments" not in (st.get("message") or "")


async def test_an_http_route_the_rollout_did_not_create_keeps_its_backends(tmp_path: Path):
    ro, mvs = objs()
    theirs = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "bot", "namespace": NS},
              "spec": {"hostnames": ["pay.example.com"], "rules": [{"backendRefs": [{"name": "payments", "port": 443}]}]}}
    async with cluster(tmp_path) as kc:
        await kc.apply(theirs)
        await setup(kc, ro, mvs)
        rec = Reconciler(kc.client, ServingConfig(), "http://prom", provider_factory=lambda url: PrometheusProvider(Scripted()))
        await tick(kc, rec, 0)
        route = await kc.get(r.HTTPROUTES, NS, "bot")
        assert route["spec"]["rules"] == theirs["spec"]["rules"] and not route["metadata"].get("ownerReferences")
        cond = _owned((await kc.get(r.ROLLOUTS, NS, "bot"))["status"])
        assert cond["status"] == "False" and "HTTPRoute default/bot" in cond["message"]


async def test_its_own_objects_are_patched_as_before(tmp_path: Path):
    """No conflict, no condition: the ObjectsOwned condition appears only once a conflict happened."""
    ro, mvs = objs()
    async with cluster(tmp_path) as kc:
        await setup(kc, ro, mvs)
        rec = Reconciler(kc.client, ServingConfig(), "http://prom", provider_factory=lambda url: PrometheusProvider(Scripted()))
        await tick(kc, rec, 0)
        await tick(kc, rec, 1)
        st = (await kc.get(r.ROLLOUTS, NS, "bot"))["status"]
        assert _owned(st) is None and st["phase"] != "Degraded"


async def test_vllm_pods_accept_connections_only_from_the_admins_peers(tmp_path: Path):
    peers = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},
             {"namespaceSelector": {"matchLabels": {"tuneloop.dev/gateway": "true"}}}]
    ro, mvs = objs()
    async with cluster(tmp_path) as kc:
        await setup(kc, ro, mvs)
        rec = Reconciler(kc.client, ServingConfig(), "http://prom", provider_factory=lambda url: PrometheusProvider(Scripted()),
                         serving_from=peers)
        await tick(kc, rec, 0)
        pol = await kc.get(r.NETWORKPOLICIES, NS, "bot-serving")
        assert pol["spec"]["podSelector"] == {"matchLabels": {"tuneloop.dev/rollout": "bot", "app.kubernetes.io/component": "serving"}}
        assert pol["spec"]["ingress"] == [{"from": peers, "ports": [{"protocol": "TCP", "port": 8000}]}]
        assert pol["metadata"]["ownerReferences"][0]["name"] == "bot"


def test_vllm_pods_mount_no_service_account_token():
    import copy

    from tuneloop.api.modelversion import ModelVersion
    from tuneloop.api.rollout import Rollout
    from tuneloop.operator.builders import serving

    from . import samples

    ro, _ = objs()
    mv = ModelVersion.model_validate({**copy.deepcopy(samples.model_version("v1")), "metadata": {"name": "v1", "namespace": NS}})
    dep = serving.build_deployment(ro, Rollout.model_validate(ro).spec, "stable", mv, 1, ServingConfig())
    assert dep["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
