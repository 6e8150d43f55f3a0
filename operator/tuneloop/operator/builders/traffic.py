"""How a Rollout's traffic reaches its pods (pure builders): the Gateway API HTTPRoute (one rule, two weighted
backendRefs: stable, canary), or in replica-weighted mode one Service in front of both roles' pods."""

from __future__ import annotations

from typing import Any

from tuneloop.api.rollout import RolloutSpec
from tuneloop.contract import names

from .serving import service_manifest


def build_http_route(rollout: dict[str, Any], spec: RolloutSpec, canary_weight: int) -> dict[str, Any]:
    """HTTPRoute (gateway.networking.k8s.io/v1) sending `canary_weight` % to the canary Service."""
    gw = spec.traffic_routing.gateway_api
    if gw is None:
        raise ValueError("build_http_route needs spec.trafficRouting.gatewayAPI")
    meta = rollout["metadata"]
    name, ns = meta["name"], meta.get("namespace")
    parents = []
    for p in gw.parent_refs:
        ref: dict[str, Any] = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": p.name}
        if p.namespace:
            ref["namespace"] = p.namespace
        if p.section_name:
            ref["sectionName"] = p.section_name
        parents.append(ref)
    port = spec.serving.port
    spec_out: dict[str, Any] = {
        "parentRefs": parents,
        "rules": [
            {
                "matches": [{"path": {"type": "PathPrefix", "value": gw.path_prefix}}],
                "backendRefs": [
                    {"group": "", "kind": "Service", "name": names.service_name(name, names.STABLE), "port": port, "weight": 100 - canary_weight},
                    {"group": "", "kind": "Service", "name": names.service_name(name, names.CANARY), "port": port, "weight": canary_weight},
                ],
            }
        ],
    }
    if gw.hostnames:
        spec_out = {"hostnames": list(gw.hostnames)} | spec_out
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {
            "name": gw.http_route,
            "namespace": ns,
            "labels": names.serving_labels(name),
            "ownerReferences": [names.owner_reference(rollout)],
        },
        "spec": spec_out,
    }


def build_shared_service(rollout: dict[str, Any], spec: RolloutSpec) -> dict[str, Any]:
    """Replica-weighted mode: one Service in front of the pods of both roles."""
    rw = spec.traffic_routing.replica_weighted
    if rw is None:
        raise ValueError("build_shared_service needs spec.trafficRouting.replicaWeighted")
    name = rollout["metadata"]["name"]
    return service_manifest(rollout, spec, rw.service, names.serving_labels(name), names.rollout_selector(name))


def serving_network_policy(rollout: dict[str, Any], spec: RolloutSpec, peers: list[dict[str, Any]]) -> dict[str, Any]:
    """The NetworkPolicy of a Rollout's vLLM pods (issue 25, finding 9): only `peers` (the admin's: the Gateway's data
    plane and Prometheus) may connect, to the serving port only."""
    meta = rollout["metadata"]
    name = meta["name"]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": f"{name}-serving",
            "namespace": meta.get("namespace"),
            "labels": names.serving_labels(name),
            "ownerReferences": [names.owner_reference(rollout)],
        },
        "spec": {
            "podSelector": {"matchLabels": names.rollout_selector(name)},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [dict(p) for p in peers], "ports": [{"protocol": "TCP", "port": spec.serving.port}]}] if peers else [],
        },
    }
