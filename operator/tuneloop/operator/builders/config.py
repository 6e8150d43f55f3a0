"""The per-job ConfigMap (spec + DeepSpeed config) and the headless rendezvous Service."""

from __future__ import annotations

import importlib
import json
from typing import Any

import yaml

from tuneloop.api import API_VERSION, FineTuneJobSpec

from ..settings import OperatorSettings
from .common import RENDEZVOUS_PORT, JobMeta, metadata, names


def world_size(spec: FineTuneJobSpec) -> int:
    return spec.resources.nodes * max(1, spec.resources.gpus_per_node)


def deepspeed_json(spec: FineTuneJobSpec) -> str | None:
    """The trainer's own generator (`tuneloop_trainer.deepspeed.deepspeed_config`), so both agree.

    None when DeepSpeed is off, or when the trainer in this install has no generator (the trainer
    then builds the config itself at run time).
    """
    if spec.deepspeed is None or not spec.deepspeed.enabled:
        return None
    for module in ("tuneloop_trainer.deepspeed", "tuneloop_trainer.ds_config", "tuneloop_trainer.train"):
        try:
            fn = getattr(importlib.import_module(module), "deepspeed_config", None)
        except ImportError:
            continue
        if fn is not None:
            return json.dumps(fn(spec, world_size(spec)), indent=2, sort_keys=True)
    return None


def spec_manifest(spec: FineTuneJobSpec, meta: JobMeta) -> dict[str, Any]:
    """The FineTuneJob as the stages read it (`--spec /etc/tuneloop/spec.yaml`)."""
    return {
        "apiVersion": API_VERSION,
        "kind": "FineTuneJob",
        "metadata": {"name": meta.name, "namespace": meta.namespace, "uid": meta.uid, "generation": meta.generation},
        "spec": spec.wire(),
    }


def config_map(spec: FineTuneJobSpec, meta: JobMeta, config: OperatorSettings) -> dict[str, Any]:
    data = {"spec.yaml": yaml.safe_dump(spec_manifest(spec, meta), sort_keys=False)}
    ds = deepspeed_json(spec)
    if ds is not None:
        data["deepspeed.json"] = ds
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata(names(meta.name).config_map, meta, "config"), "data": data}


def headless_service(spec: FineTuneJobSpec, meta: JobMeta, config: OperatorSettings) -> dict[str, Any]:
    """Stable DNS for the training pods: `<train-job>-<index>.<service>.<ns>.svc` (rank 0 = index 0)."""
    n = names(meta.name)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(n.service, meta, "rendezvous"),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {"batch.kubernetes.io/job-name": n.train_job},
            "ports": [
                {"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT, "protocol": "TCP"},
                {"name": "metrics", "port": config.trainer_metrics_port, "targetPort": config.trainer_metrics_port, "protocol": "TCP"},
            ],
        },
    }
