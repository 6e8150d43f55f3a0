"""The stage Jobs: data preparation, (multi-node) training, evaluation + report, exports (output.exports)."""

from __future__ import annotations

from typing import Any

from tuneloop.api import FineTuneJobSpec
from tuneloop.contract import layout

from ..settings import OperatorSettings
from .common import (
    CONTAINER,
    METRICS_PORT_NAME,
    RENDEZVOUS_PORT,
    SPEC_FILE,
    JobMeta,
    env,
    failure_policy,
    image,
    labels,
    metadata,
    names,
    scheduling,
    trainer_metrics_port,
    volumes,
    workdir,
)
from .security import container_security, pod_security

PREP_RESOURCES = {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"memory": "8Gi"}}


def _container(spec: FineTuneJobSpec, meta: JobMeta, config: OperatorSettings, *, command: list[str], args: list[str],
               resources: dict[str, Any], mounts: list[dict[str, Any]], extra_env: list[dict[str, Any]] | None = None, ports: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    c: dict[str, Any] = {
        "name": CONTAINER,
        "image": image(spec, config),
        "imagePullPolicy": config.image_pull_policy,
        "command": command,
        "args": args,
        "env": [*(extra_env or []), *env(spec, meta, config)],
        "resources": resources,
        "volumeMounts": mounts,
        "securityContext": container_security(),
        "terminationMessagePath": layout.TERMINATION_LOG,
        "terminationMessagePolicy": "File",
    }
    if ports:
        c["ports"] = ports
    return c


def _job(name: str, component: str, spec: FineTuneJobSpec, meta: JobMeta, config: OperatorSettings, *, container: dict[str, Any],
         vols: list[dict[str, Any]], backoff: int, suspend: bool, gpu_scheduling: bool, pods: int = 1, subdomain: str | None = None) -> dict[str, Any]:
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "securityContext": pod_security(config.run_as_user),
        "containers": [container],
        "volumes": vols,
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,  # the stages never call the API server (issue 25)
    }
    if config.service_account:
        pod_spec["serviceAccountName"] = config.service_account
    if subdomain:
        pod_spec["subdomain"] = subdomain
    if gpu_scheduling:
        pod_spec.update(scheduling(spec))
    job_spec: dict[str, Any] = {
        "backoffLimit": backoff,
        "podFailurePolicy": failure_policy(),
        "suspend": suspend,
        "template": {"metadata": {"labels": labels(meta, component)}, "spec": pod_spec},
    }
    if pods > 1 or subdomain:
        job_spec.update(completionMode="Indexed", completions=pods, parallelism=pods)
    if spec.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = spec.ttl_seconds_after_finished
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata(name, meta, component), "spec": job_spec}


def _stage_args(stage: str, wd: str) -> list[str]:
    return layout.stage_args(stage, SPEC_FILE, wd)


def data_job(spec: FineTuneJobSpec, meta: JobMeta, config: OperatorSettings, *, suspend: bool | None = None) -> dict[str, Any]:
    """`prepare` on a CPU pod: a broken dataset fails here, before any GPU is requested."""
    _, wd = workdir(spec, meta, config)
    vols, mounts = volumes(spec, meta, config, shm=False, cache=True)
    c = _container(spec, meta, config, command=["python"], args=_stage_args("prepare", wd), resources=PREP_RESOURCES, mounts=mounts)
    return _job(names(meta.name).data_job, "data-prep", spec, meta, config, container=c, vols=vols, backoff=1,
                suspend=spec.suspend if suspend is None else suspend, gpu_scheduling=False)


def _gpu_resources(spec: FineTuneJobSpec, gpus: int) -> dict[str, Any]:
    r = spec.resources
    requests: dict[str, Any] = {"cpu": r.cpu, "memory": r.memory}
    limits: dict[str, Any] = {"memory": r.memory}
    if gpus:
        requests[r.gpu_resource_name] = str(gpus)
        limits[r.gpu_resource_name] = str(gpus)
    return {"requests": requests, "limits": limits}


def rank0_host(meta: JobMeta) -> str:
    n = names(meta.name)
    return f"{n.train_job}-0.{n.service}.{meta.namespace}.svc"


def train_job(spec: FineTuneJobSpec, meta: JobMeta, config: OperatorSettings, *, suspend: bool | None = None) -> dict[str, Any]:
    """Indexed Job, one pod per node. Every pod runs `python -m tuneloop_trainer train`; the stage
    re-executes itself under torchrun (torch.distributed.run) with NNODES × NPROC_PER_NODE ranks,
    node rank = the pod's completion index and rank 0's stable DNS name as master address."""
    r = spec.resources
    _, wd = workdir(spec, meta, config)
    vols, mounts = volumes(spec, meta, config, shm=True, cache=True)
    n = names(meta.name)
    rank_env: list[dict[str, Any]] = [
        {"name": "NNODES", "value": str(r.nodes)},
        {"name": "NPROC_PER_NODE", "value": str(max(1, r.gpus_per_node))},
        {"name": "NODE_RANK", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}},
        {"name": "MASTER_ADDR", "value": rank0_host(meta)},
        {"name": "MASTER_PORT", "value": str(RENDEZVOUS_PORT)},
    ]
    ports = [{"name": "rendezvous", "containerPort": RENDEZVOUS_PORT},
             {"name": METRICS_PORT_NAME, "containerPort": trainer_metrics_port(config, meta.namespace, meta.name)}]
    c = _container(spec, meta, config, command=["python"], args=_stage_args("train", wd), resources=_gpu_resources(spec, r.gpus_per_node),
                   mounts=mounts, extra_env=rank_env, ports=ports)
    return _job(n.train_job, "training", spec, meta, config, container=c, vols=vols, backoff=spec.backoff_limit,
                suspend=spec.suspend if suspend is None else suspend, gpu_scheduling=True, pods=r.nodes, subdomain=n.service)


EVAL_SCRIPT = f"""set -e
python -m {layout.TRAINER_MODULE} evaluate --spec "$1" --workdir "$2"
python -m {layout.TRAINER_MODULE} report --spec "$1" --workdir "$2"
exec python -m {layout.PUBLISH_MODULE} --workdir "$2"
"""


def eval_job(spec: FineTuneJobSpec, meta: JobMeta, config: OperatorSettings, *, suspend: bool | None = None) -> dict[str, Any]:
    """`evaluate` then `report` on one GPU of the training node type, then `publish` hands the results over:
    the ≤4 KiB evaluation record in the termination message, report.md in the pod log."""
    _, wd = workdir(spec, meta, config)
    vols, mounts = volumes(spec, meta, config, shm=True, cache=True)
    gpus = 1 if spec.resources.gpus_per_node else 0
    c = _container(spec, meta, config, command=["sh", "-c", EVAL_SCRIPT, "tuneloop-eval"], args=[SPEC_FILE, wd],
                   resources=_gpu_resources(spec, gpus), mounts=mounts)
    return _job(names(meta.name).eval_job, "evaluation", spec, meta, config, container=c, vols=vols, backoff=1,
                suspend=spec.suspend if suspend is None else suspend, gpu_scheduling=True)


EXPORT_SCRIPT = f"""set -e
python -m {layout.TRAINER_MODULE} export --spec "$1" --workdir "$2"
python -m {layout.TRAINER_MODULE} report --spec "$1" --workdir "$2"
exec python -m {layout.PUBLISH_MODULE} --workdir "$2" --exports
"""


def export_job(spec: FineTuneJobSpec, meta: JobMeta, config: OperatorSettings, *, suspend: bool | None = None) -> dict[str, Any]:
    """output.exports on a CPU pod after the evaluation: `export` (merge, GGUF conversion, each export answering the test
    items next to its source), `report` again (with the exports table), then `publish --exports` hands over the
    exports' equivalence records (termination message) and the report (pod log)."""
    _, wd = workdir(spec, meta, config)
    vols, mounts = volumes(spec, meta, config, shm=True, cache=True)
    c = _container(spec, meta, config, command=["sh", "-c", EXPORT_SCRIPT, "tuneloop-export"], args=[SPEC_FILE, wd],
                   resources=_gpu_resources(spec, 0), mounts=mounts)
    return _job(names(meta.name).export_job, "export", spec, meta, config, container=c, vols=vols, backoff=1,
                suspend=spec.suspend if suspend is None else suspend, gpu_scheduling=False)
