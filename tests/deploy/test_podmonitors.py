"""The PodMonitors select exactly the pods the operator's builders create, on the ports they expose."""

from __future__ import annotations

import pytest
import yaml
from tuneloop.api import FineTuneJob, ModelVersion
from tuneloop.api.rollout import RolloutSpec
from tuneloop.operator.builders import serving
from tuneloop.operator.builders.common import JobMeta
from tuneloop.operator.builders.jobs import data_job, eval_job, export_job, train_job
from tuneloop.operator.settings import OperatorSettings

from ._support import ROOT, by_kind, objects

pytestmark = pytest.mark.unit

SAMPLES = ROOT / "manifests" / "samples"


def _selects(selector: dict, labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        present = expr["key"] in labels
        if (expr["operator"] == "Exists" and not present) or (expr["operator"] == "DoesNotExist" and present):
            return False
    return True


@pytest.fixture(scope="module")
def monitors() -> dict[str, dict]:
    return {pm["metadata"]["name"].rsplit("-", 1)[1]: pm for pm in by_kind(objects(None))["PodMonitor"]}


def _pods_of_job(job: dict) -> list[tuple[dict[str, str], list[str]]]:
    """(labels, port names) of each pod the Job controller creates, completion-index label included."""
    template = job["spec"]["template"]
    ports = [p["name"] for c in template["spec"]["containers"] for p in c.get("ports", [])]
    count = job["spec"].get("completions", 1) if job["spec"].get("completionMode") == "Indexed" else 1
    out = []
    for i in range(count):
        labels = dict(template["metadata"]["labels"])
        if job["spec"].get("completionMode") == "Indexed":
            labels["batch.kubernetes.io/job-completion-index"] = str(i)
        out.append((labels, ports))
    return out


def test_trainer_podmonitor_scrapes_rank0_only(monitors):
    ftj = FineTuneJob.model_validate(yaml.safe_load((SAMPLES / "finetunejob-llama-2x8-zero3.yaml").read_text()))
    meta, config = JobMeta(name="llama", namespace="ml-team", uid="u-1"), OperatorSettings()
    pm = monitors["trainer"]
    port = pm["spec"]["podMetricsEndpoints"][0]["port"]
    train_pods = _pods_of_job(train_job(ftj.spec, meta, config))
    assert len(train_pods) == 2
    selected = [(labels, ports) for labels, ports in train_pods if _selects(pm["spec"]["selector"], labels)]
    assert len(selected) == 1 and selected[0][0]["batch.kubernetes.io/job-completion-index"] == "0"
    assert port in selected[0][1]
    for other in (data_job(ftj.spec, meta, config), eval_job(ftj.spec, meta, config), export_job(ftj.spec, meta, config)):
        assert not any(_selects(pm["spec"]["selector"], labels) for labels, _ in _pods_of_job(other))


def test_vllm_podmonitor_scrapes_both_roles(monitors):
    ro = yaml.safe_load((SAMPLES / "rollout.yaml").read_text())
    ro["metadata"]["uid"] = "u-2"
    spec = RolloutSpec.model_validate(ro["spec"])
    mv = ModelVersion.model_validate(yaml.safe_load((SAMPLES / "modelversion.yaml").read_text()))
    pm = monitors["vllm"]
    for role in ("stable", "canary"):
        d = serving.build_deployment(ro, spec, role, mv, 1, serving.ServingConfig())
        labels = d["spec"]["template"]["metadata"]["labels"]
        ports = [p["name"] for c in d["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])]
        assert _selects(pm["spec"]["selector"], labels)
        assert pm["spec"]["podMetricsEndpoints"][0]["port"] in ports
        # the labels the analysis queries and the dashboard split on come from these pod labels
        assert {"tuneloop.dev/rollout", "tuneloop.dev/role"} <= set(pm["spec"]["podTargetLabels"]) <= set(labels)
