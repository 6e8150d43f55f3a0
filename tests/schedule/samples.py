"""A FineTuneSchedule, its Rollout and ModelVersions for the schedule tests."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
NS = "default"


def schedule(**spec: Any) -> dict[str, Any]:
    obj = yaml.safe_load((ROOT / "manifests" / "samples" / "finetuneschedule.yaml").read_text())
    obj["metadata"] = {"name": "bot", "namespace": NS, "uid": "uid-bot", "generation": 1,
                       "creationTimestamp": "2026-11-23T00:00:00Z"}
    obj["spec"]["handOff"]["rollout"]["name"] = "bot"
    obj["spec"]["triggers"] = {}
    obj["spec"].update(spec)
    return obj


def model_version(name: str, *, verdict: str = "Passed", serving: dict | None = None, phase: str = "Ready",
                  claim: str = "models") -> dict[str, Any]:
    ev: dict[str, Any] = {"verdict": verdict}
    if serving is not None:
        ev["serving"] = serving
    if verdict == "Failed":
        ev["gates"] = [{"metric": "exactMatch", "passed": False, "reason": "exactMatch: improvement 0.01 < required 0.02"}]
    return {
        "apiVersion": "tuneloop.dev/v1alpha1", "kind": "ModelVersion",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"modelName": "support-bot", "version": name, "baseModel": {"name": "HuggingFaceTB/SmolLM2-1.7B-Instruct"},
                 "artifact": {"uri": f"pvc://{claim}/support-bot/{name}-run/artifact", "format": "lora-adapter", "loraRank": 16},
                 "evaluation": ev},
        "status": {"phase": phase},
    }


def rollout(stable: str | None, *, candidate: str | None = None, phase: str = "Promoted") -> dict[str, Any]:
    """The Rollout `bot`; `rollout(None, phase="Waiting")` is one declared before its first version (no stable, no
    candidate in spec or status)."""
    st: dict[str, Any] = {"phase": phase}
    if stable:
        st["stableModelVersion"] = stable
    if candidate:
        st["candidateModelVersion"] = candidate
    spec: dict[str, Any] = {"servedModelName": "support-bot", "trafficRouting": {"replicaWeighted": {"service": "bot"}}}
    if stable:
        spec["stable"] = {"name": stable}
    if candidate:
        spec["candidate"] = {"name": candidate}
    return {"apiVersion": "tuneloop.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": "bot", "namespace": NS},
            "spec": spec, "status": st}


def finished_job(name: str, phase: str = "Succeeded", mv: str | None = None) -> dict[str, Any]:
    st: dict[str, Any] = {"phase": phase, "completionTime": "2026-11-23T05:00:00Z"}
    if mv:
        st["children"] = {"modelVersion": mv}
    if phase == "Failed":
        st["message"] = "training pod OOMKilled"
    return {"metadata": {"name": name}, "status": st}


def copy_of(obj: dict) -> dict:
    return copy.deepcopy(obj)
