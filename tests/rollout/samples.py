"""Sample Rollouts and ModelVersions shared by the rollout tests."""

from __future__ import annotations

import copy
from typing import Any

NS = "llm"


def model_version(name: str, fmt: str = "lora-adapter", rank: int | None = 16, uri: str | None = None) -> dict[str, Any]:
    art: dict[str, Any] = {"uri": uri or f"pvc://tuneloop-output/{name}/artifact", "format": fmt}
    if rank is not None and fmt == "lora-adapter":
        art["loraRank"] = rank
    return {
        "apiVersion": "tuneloop.dev/v1alpha1",
        "kind": "ModelVersion",
        "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}"},
        "spec": {
            "modelName": "support-bot",
            "version": name.rsplit("-", 1)[-1],
            "baseModel": {"name": "HuggingFaceTB/SmolLM2-135M-Instruct", "revision": "main"},
            "artifact": art,
            "evaluation": {"verdict": "Passed"},
        },
        "status": {"phase": "Ready"},
    }


GATEWAY_ROLLOUT: dict[str, Any] = {
    "apiVersion": "tuneloop.dev/v1alpha1",
    "kind": "Rollout",
    "metadata": {"name": "support-bot", "namespace": NS, "uid": "uid-rollout", "generation": 1},
    "spec": {
        "servedModelName": "support-bot",
        "stable": {"name": "support-bot-v1"},
        "candidate": {"name": "support-bot-v2"},
        "serving": {"replicas": 4, "resources": {"gpus": 1}},
        "trafficRouting": {
            "gatewayAPI": {
                "httpRoute": "support-bot",
                "parentRefs": [{"name": "inference-gateway", "namespace": "gateway", "sectionName": "https"}],
                "hostnames": ["llm.example.com"],
            }
        },
        "steps": [
            {"setWeight": 10},
            {"analysis": {"count": 3}},
            {"setWeight": 50},
            {"pause": {"duration": "30s"}},
            {"analysis": {}},
        ],
        "analysis": {
            "interval": "10s",
            "window": "1m",
            "count": 3,
            "initialDelay": "1s",
            "metrics": [
                {"name": "error-rate", "builtin": "error-rate", "max": 0.05},
                {"name": "ttft", "builtin": "ttft-p95", "maxRelativeToStable": 1.2},
            ],
        },
    },
}


def gateway_rollout(**spec_overrides: Any) -> dict[str, Any]:
    obj = copy.deepcopy(GATEWAY_ROLLOUT)
    obj["spec"].update(spec_overrides)
    return obj


def replica_rollout(**spec_overrides: Any) -> dict[str, Any]:
    obj = gateway_rollout(**spec_overrides)
    obj["spec"]["trafficRouting"] = {"replicaWeighted": {"service": "support-bot"}}
    return obj


def shared_rollout(**spec_overrides: Any) -> dict[str, Any]:
    """serving.mode sharedBase: one Deployment of the base, adapters by name, weights on an InferenceModelRewrite."""
    obj = gateway_rollout(**spec_overrides)
    obj["spec"]["serving"] = {"mode": "sharedBase", "replicas": 2, "maxLoras": 2, "resources": {"gpus": 1}}
    obj["spec"]["trafficRouting"] = {"inferenceModelRewrite": {"poolRef": {"name": "support-bot-pool"}}}
    obj["spec"]["analysis"]["metrics"] = [
        {"name": "error-rate", "builtin": "error-rate", "max": 0.05},
        {"name": "latency", "builtin": "e2e-latency-p95", "maxRelativeToStable": 1.5},
    ]
    obj["spec"].update(spec_overrides)
    return obj
