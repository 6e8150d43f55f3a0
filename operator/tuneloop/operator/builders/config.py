"""The per-job ConfigMap (spec + DeepSpeed config) and the headless rendezvous Service."""

from __future__ import annotations

import importlib
import json
from typing import Any

import yaml

from tuneloop.api import API_VERSION, FineTuneJobSpec

from ..settings import OperatorSettings
from .common import RENDEZVOUS_PORT, BuildError, JobMeta, metadata, names


def world_size(spec: FineTuneJobSpec) -> int:
    return spec.resources.nodes * max(1, spec.resources.gpus_per_node)


def deepspeed_json(spec: FineTuneJobSpec) -> str | None:
    """The trainer's own generator (`tuneloop_trainer.dsconfig.deepspeed_config`): the same config the
    train stage builds at run time, shown in the ConfigMap for users.

    None when DeepSpeed is off or the trainer package is not installed next to the operator.
    Raises BuildError when the trainer refuses the spec (e.g. batchSize vs world size).
    """
    if spec.deepspeed is None or not spec.deepspeed.enabled:
        return None
    try:
        fn = importlib.import_module("tuneloop_trainer.dsconfig").deepspeed_config
        trainer_error = importlib.import_module("tuneloop_trainer.errors").TrainerError
    except (ImportError, AttributeError):
        return None
    try:
        return json.dumps(fn(spec, world_size(spec)), indent=2, sort_keys=True)
    except trainer_error as exc:
        text = exc.one_line()
        field = "spec.hyperparameters.batchSize" if "batchSize" in text else "spec.deepspeed"
        raise BuildError(field, text) from None


def check_batch(spec: FineTuneJobSpec) -> None:
    """batchSize must split evenly over microBatchSize × world size (the trainer refuses it otherwise)."""
    hp = spec.hyperparameters
    per_step = hp.micro_batch_size * world_size(spec)
    if hp.batch_size % per_step:
        raise BuildError("spec.hyperparameters.batchSize",
                         f"{hp.batch_size} is not a multiple of microBatchSize {hp.micro_batch_size} × world size "
                         f"{world_size(spec)} (= {per_step})")


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
