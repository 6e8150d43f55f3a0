"""How a Rollout's traffic reaches its pods (pure builders): the Gateway API HTTPRoute (one rule, two weighted
backendRefs: stable, canary), or in replica-weighted mode one Service in front of both roles' pods, or in sharedBase
mode the Inference Extension's InferenceModelRewrite (requests for the served name rewritten to adapter names by weight)."""

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


IMR_API_VERSION = "inference.networking.x-k8s.io/v1alpha2"


def rewrite_name(rollout: dict[str, Any], spec: RolloutSpec) -> str:
    imr = spec.traffic_routing.inference_model_rewrite
    if imr is None:
        raise ValueError("an InferenceModelRewrite needs spec.trafficRouting.inferenceModelRewrite")
    return imr.name or rollout["metadata"]["name"]


def rewrite_targets(stable: str, candidate: str | None, canary_weight: int) -> list[dict[str, Any]]:
    """The weighted targets of the served name: `stable` takes 100-w, `candidate` w. A target's weight must be at least
    1 (and all targets weighted, or none), so a side at 0 % is left out rather than weighted 0: one target, unweighted."""
    w = 0 if candidate is None or candidate == stable else max(0, min(100, canary_weight))
    if w == 0:
        return [{"modelRewrite": stable}]
    if w == 100:
        return [{"modelRewrite": candidate}]
    return [{"modelRewrite": stable, "weight": 100 - w}, {"modelRewrite": candidate, "weight": w}]


def build_inference_model_rewrite(rollout: dict[str, Any], spec: RolloutSpec, stable: str, candidate: str | None,
                                  canary_weight: int) -> dict[str, Any]:
    """InferenceModelRewrite (inference.networking.x-k8s.io/v1alpha2) of a sharedBase Rollout: one rule matching the
    served model name exactly, its targets the stable and candidate adapters (ModelVersion names, as the shared pods
    load them) by weight; the endpoint picker of the pool rewrites each request's model to one of them."""
    imr = spec.traffic_routing.inference_model_rewrite
    if imr is None:
        raise ValueError("build_inference_model_rewrite needs spec.trafficRouting.inferenceModelRewrite")
    meta = rollout["metadata"]
    pool = {"group": imr.pool_ref.group, "kind": imr.pool_ref.kind, "name": imr.pool_ref.name}
    return {
        "apiVersion": IMR_API_VERSION,
        "kind": "InferenceModelRewrite",
        "metadata": {
            "name": rewrite_name(rollout, spec),
            "namespace": meta.get("namespace"),
            "labels": names.serving_labels(meta["name"]),
            "ownerReferences": [names.owner_reference(rollout)],
        },
        "spec": {
            "poolRef": pool,
            "rules": [{"matches": [{"model": {"type": "Exact", "value": spec.served_model_name}}],
                       "targets": rewrite_targets(stable, candidate, canary_weight)}],
        },
    }


def rewrite_weights(imr: dict[str, Any]) -> dict[str, float]:
    """Share (0..1) of each target model of an InferenceModelRewrite's first rule, as an endpoint picker splits it:
    weight / sum of weights, equal shares when no target is weighted. {} when it has no targets."""
    try:
        targets = imr["spec"]["rules"][0].get("targets") or []
    except (KeyError, IndexError, TypeError, AttributeError):
        return {}
    weights = [float(t.get("weight") or 0) if any("weight" in x for x in targets) else 1.0 for t in targets]
    total = sum(weights)
    return {t["modelRewrite"]: w / total for t, w in zip(targets, weights, strict=True)} if total > 0 else {}


def build_shared_service(rollout: dict[str, Any], spec: RolloutSpec) -> dict[str, Any]:
    """Replica-weighted mode: one Service in front of the pods of both roles."""
    rw = spec.traffic_routing.replica_weighted
    if rw is None:
        raise ValueError("build_shared_service needs spec.trafficRouting.replicaWeighted")
    name = rollout["metadata"]["name"]
    return service_manifest(rollout, spec, rw.service, names.serving_labels(name), names.rollout_selector(name))


def serving_network_policy(rollout: dict[str, Any], spec: RolloutSpec, peers: list[dict[str, Any]],
                           guard_peers: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The NetworkPolicy of a Rollout's vLLM pods (issue 25, finding 9): only `peers` (the admin's: the Gateway's data
    plane and Prometheus) may connect, to the serving port (and the output guard's, which the Services target). With
    mirror steps, `guard_peers` (the operator, which sets the mirror on each stable guard) and the Rollout's own pods
    (a stable guard sends the copies to the candidate's Service) may reach the guard's port too."""
    meta = rollout["metadata"]
    name = meta["name"]
    ports = [{"protocol": "TCP", "port": spec.serving.port}]
    if spec.serving.guard is not None:
        ports.append({"protocol": "TCP", "port": spec.serving.guard.port})
    ingress = [{"from": [dict(p) for p in peers], "ports": ports}] if peers else []
    if spec.serving.guard is not None and any(s.mirror is not None for s in spec.steps):
        own = [{"podSelector": {"matchLabels": names.rollout_selector(name)}}, *[dict(p) for p in guard_peers or []]]
        ingress.append({"from": own, "ports": [{"protocol": "TCP", "port": spec.serving.guard.port}]})
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
            "ingress": ingress,
        },
    }
