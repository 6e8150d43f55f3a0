"""Pure builders: (spec, meta, config) -> Kubernetes manifest dicts. No I/O, no Kopf.

A FineTuneJob's children (`common`, `config`, `jobs`, `registration`: the ModelVersion it registers): every child carries the
FineTuneJob's labels and an owner reference (except the ModelVersion, a registry record that outlives
the job; its report ConfigMap is owned by the ModelVersion). A Rollout's serving objects (`serving`:
the vLLM Deployment and Service of a role; `traffic`: the HTTPRoute or the replica-weighted Service):
the Rollout's labels (`tuneloop.contract.names`, the same managed-by value) and an owner reference.
A FineTuneSchedule's children (`schedule`: each run's FineTuneJob, the new-data digest Job).

One home per shared helper: owner references and labels in `tuneloop.contract.names`
(`controller_reference`, `LABEL_*`), pod and container security contexts in `security`, durations in
`tuneloop.api.durations`.
"""

from .common import BuildError, JobMeta, names
from .config import config_map, headless_service, rendezvous_policy
from .jobs import data_job, eval_job, export_job, train_job
from .registration import model_version, report_config_map, workdir_uri

__all__ = [
    "BuildError",
    "JobMeta",
    "config_map",
    "data_job",
    "eval_job",
    "export_job",
    "headless_service",
    "model_version",
    "names",
    "rendezvous_policy",
    "report_config_map",
    "train_job",
    "workdir_uri",
]
