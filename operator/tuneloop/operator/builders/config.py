"""The per-job ConfigMap (spec + DeepSpeed config) and the headless rendezvous Service."""

from __future__ import annotations

import json
from typing import Any

import yaml

from tuneloop.api import API_VERSION, FineTuneJobSpec
from tuneloop.contract import deepspeed
from tuneloop.contract.deepspeed import world_size

from ..settings import OperatorSettings
from .common import RENDEZVOUS_PORT, BuildError, JobMeta, metadata, names

__all__ = ["check_batch", "config_map", "deepspeed_json", "headless_service", "spec_manifest", "world_size"]


def check_batch(spec: FineTuneJobSpec) -> None:
    """batchSize must split evenly over microBatchSize × world size (tuneloop.contract.deepspeed, the
    trainer's own check)."""
    try:
        deepspeed.check_batch(spec)
    except deepspeed.BatchSplitError as exc:
        raise BuildError(exc.field, f"{exc.message} ({exc.hint})") from None


def deepspeed_json(spec: FineTuneJobSpec) -> str | None:
    """The DeepSpeed config the train stage will build (tuneloop.contract.deepspeed), shown in the
    ConfigMap for users; None when DeepSpeed is off. Raises BuildError when batchSize does not split."""
    if not deepspeed.enabled(spec):
        return None
    check_batch(spec)
    return json.dumps(deepspeed.deepspeed_config(spec, world_size(spec)), indent=2, sort_keys=True)


_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def spec_manifest(spec: FineTuneJobSpec, meta: JobMeta) -> dict[str, Any]:
    """The FineTuneJob as the stages read it (`--spec /etc/tuneloop/spec.yaml`)."""
    return {
        "apiVersion": API_VERSION,
        "kind": "FineTuneJob",
        "metadata": {"name": meta.name, "namespace": meta.namespace, "uid": meta.uid, "generation": meta.generation,
                     **({"annotations": dict(meta.annotations)} if meta.annotations else {})},
        "spec": spec.wire(),
    }


def config_map(spec: FineTuneJobSpec, meta: JobMeta, config: OperatorSettings) -> dict[str, Any]:
    # libyaml's emitter when present (the same YAML, ~10x less CPU: this is built once per job)
    data = {"spec.yaml": yaml.dump(spec_manifest(spec, meta), Dumper=_DUMPER, sort_keys=False)}
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
