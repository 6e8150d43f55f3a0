"""Issue 10 (real API server findings), operator side: what the FineTuneJob path must get right."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from tuneloop.api import FineTuneJobSpec
from tuneloop.operator import builders
from tuneloop.operator.builders.common import JobMeta
from tuneloop.operator.finetunejob import state as st
from tuneloop.operator.finetunejob.reconcile import model_version_status
from tuneloop.operator.settings import OperatorSettings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
QUICKSTART = ROOT / "manifests/samples/quickstart.yaml"


def _body(**meta) -> dict:
    return {"metadata": {"name": "x", "namespace": "ns", "uid": "u", "generation": 1, **meta},
            "spec": {"baseModel": {"huggingFace": {"id": "m"}}, "dataset": {"train": {"pvc": {"claimName": "d", "path": "t.jsonl"}}},
                     "output": {"pvc": {"claimName": "o"}}}}


# --- defect 9: the report's purpose/objective reach the stages -------------------------------
def test_spec_yaml_keeps_the_users_annotations_but_not_bookkeeping():
    body = _body(annotations={
        "tuneloop.dev/purpose": "triage tickets", "tuneloop.dev/objective": "valid JSON", "team": "support",
        "kubectl.kubernetes.io/last-applied-configuration": "{...}",
        "tuneloop.dev/last-handled-configuration": "{...}",
        "tuneloop.dev/finetunejob_created": '{"started":"2026-01-01T00:00:00","success":true}',
    })
    spec = FineTuneJobSpec.model_validate(body["spec"])
    cm = builders.config_map(spec, JobMeta.from_body(body), OperatorSettings())
    doc = yaml.safe_load(cm["data"]["spec.yaml"])
    assert doc["metadata"]["annotations"] == {"team": "support", "tuneloop.dev/objective": "valid JSON",
                                              "tuneloop.dev/purpose": "triage tickets"}


def test_spec_yaml_without_annotations_is_unchanged():
    body = _body()
    spec = FineTuneJobSpec.model_validate(body["spec"])
    doc = yaml.safe_load(builders.config_map(spec, JobMeta.from_body(body), OperatorSettings())["data"]["spec.yaml"])
    assert "annotations" not in doc["metadata"]


# --- defect 8: the quickstart sample is honest about where it runs ---------------------------
def test_quickstart_sample_says_it_is_local_only_and_validate_cluster_refuses_it(capsys):
    from tuneloop.cli.main import main as cli

    text = QUICKSTART.read_text()
    assert "valid cluster FineTuneJob" not in text and "Local runs only" in text
    assert cli(["validate", str(QUICKSTART)]) == 0  # schema-valid: local runs use it
    assert cli(["validate", "--cluster", str(QUICKSTART)]) == 1
    err = capsys.readouterr().err
    assert "FineTuneJob/quickstart: spec.dataset.train.path: a local path is for local runs" in err


def test_validate_cluster_accepts_the_cluster_sample():
    from tuneloop.cli.main import main as cli

    assert cli(["validate", "--cluster", str(ROOT / "manifests/samples/finetunejob-llama-2x8-zero3.yaml")]) == 0


# --- defect 10: progress ---------------------------------------------------------------------
def _exposition(**values: float) -> str:
    lines = []
    for k, v in values.items():
        lines += [f"# TYPE tuneloop_trainer_{k} gauge", f'tuneloop_trainer_{k}{{job="x",namespace="ns"}} {v}']
    return "\n".join(lines) + "\n"


def test_eval_loss_is_absent_until_reported_not_zero():
    p = st.parse_progress(_exposition(step=5, total_steps=20, loss=1.5, eval_loss=0.0))
    assert "evalLoss" not in p and p["loss"] == 1.5
    p = st.parse_progress(_exposition(step=5, total_steps=20, eval_loss=math.nan))
    assert "evalLoss" not in p
    assert st.parse_progress(_exposition(step=10, total_steps=20, eval_loss=0.8))["evalLoss"] == 0.8


def test_fresh_trainer_gauges_report_no_eval_loss():
    metrics = pytest.importorskip("tuneloop_trainer.training.metrics")
    from prometheus_client import generate_latest

    m = metrics.TrainerMetrics("x", "ns")
    m.update({"step": 3, "total_steps": 20, "loss": 2.0})
    p = st.parse_progress(generate_latest(m.registry).decode())
    assert p["step"] == 3 and p["loss"] == 2.0 and "evalLoss" not in p


def test_after_a_resume_the_last_eval_loss_is_kept_until_the_next_evaluation():
    old = {"step": 8, "totalSteps": 20, "loss": 1.1, "evalLoss": 0.9, "percent": "40%"}
    new = {"step": 9, "totalSteps": 20, "loss": 1.0, "percent": "45%", "updatedAt": "t"}
    assert st.merge_progress(old, new) == {**new, "evalLoss": 0.9}


def test_finished_progress_is_100_percent_with_the_last_steps_loss():
    old = {"step": 30, "totalSteps": 40, "loss": 0.7, "percent": "75%", "etaSeconds": 80}
    p = st.finished_progress(old, {"steps": 40, "total_steps": 40, "train_loss": 1.9, "final_loss": 0.61, "eval_loss": 0.72,
                                   "loss": "fused-chunked"})
    assert (p["step"], p["totalSteps"], p["percent"], p["etaSeconds"], p["loss"], p["evalLoss"]) == (40, 40, "100%", 0, 0.61, 0.72)
    assert st.finished_progress({}, {})["percent"] == "100%"


# --- defect 11: a never-evaluated ModelVersion says so ---------------------------------------
def test_model_version_status_distinguishes_not_evaluated():
    cond = lambda s, t: next(c for c in s["conditions"] if c["type"] == t)  # noqa: E731
    s = model_version_status(None, "job", 1)
    assert s["phase"] == "Ready" and "without evaluation" in s["message"]
    assert (cond(s, "Evaluated")["status"], cond(s, "Evaluated")["reason"]) == ("False", "NotEvaluated")
    assert cond(s, "Ready")["reason"] == "RegisteredNotEvaluated"
    s = model_version_status({"verdict": "NotEvaluated", "metrics": []}, "job", 1)
    assert cond(s, "Evaluated")["status"] == "False"
    s = model_version_status({"verdict": "Passed", "gates": [{"metric": "m", "passed": True}]}, "job", 1)
    assert (cond(s, "Evaluated")["status"], cond(s, "Evaluated")["reason"], cond(s, "Ready")["reason"]) == ("True", "Passed", "Registered")
    s = model_version_status({"verdict": "Failed", "gates": [{"metric": "m", "passed": False, "reason": "r"}]}, "job", 1)
    assert s["phase"] == "Rejected" and cond(s, "Evaluated")["status"] == "True" and cond(s, "Ready")["status"] == "False"
    json.dumps(s)


# --- less work per FineTuneJob: Kopf builds no diff base for event-only kinds -------------------
def test_diff_base_is_not_built_for_finetunejobs_and_jobs_but_for_rollouts():
    import kopf
    from tuneloop.operator import lifecycle

    settings = kopf.OperatorSettings()
    lifecycle.configure(settings)
    store = settings.persistence.diffbase_storage
    ftj = kopf.Body({"apiVersion": "tuneloop.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "x"}, "spec": {"a": 1}})
    job = kopf.Body({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "x-data"}, "spec": {"a": 1}})
    ro = kopf.Body({"apiVersion": "tuneloop.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": "r"}, "spec": {"a": 1}})
    assert store.build(body=ftj) is None and store.build(body=job) is None
    assert store.build(body=ro) == {"spec": {"a": 1}}


def test_a_pass_uses_our_own_status_write_until_the_watch_delivers_it():
    from tuneloop.operator.finetunejob import handlers as h

    key = ("ns", "x")
    indexed = {"metadata": {"name": "x", "resourceVersion": "10"}, "spec": {}, "status": {}}
    ftjs = {key: [indexed]}
    h.MEMORY.written.pop(key, None)
    assert h.current(ftjs, key) is indexed
    mine = {"metadata": {"name": "x", "resourceVersion": "12"}, "spec": {}, "status": {"phase": "ValidatingData"}}
    h.MEMORY.written[key] = mine
    assert h.current(ftjs, key) is mine  # the echo (rv 12) has not arrived yet
    newer = {"metadata": {"name": "x", "resourceVersion": "15"}, "spec": {"suspend": True}, "status": {"phase": "ValidatingData"}}
    ftjs[key] = [newer]
    assert h.current(ftjs, key) is newer  # a later change (e.g. the user's) wins
    assert h.current(ftjs, ("ns", "gone")) is None
    h.MEMORY.written.pop(key, None)


# --- 500 at once: the per-job CPU (bench/operator/README.md) -----------------------------------
_TRICKY = ["", "4", "007", "1.0", ".5", "1e5", "1e-05", "0x1F", "true", "yes", "No", "on", "null", "~", "=", "<<",
           "2026-01-01", "12:30", "a b", "a: b", "#x", "-x", "- x", "x-", "é", "a'b", 'a"b', "line\nbreak", " lead",
           "all-linear", "HuggingFaceTB/SmolLM2-135M-Instruct", "nvidia.com/gpu", "16Gi", "main", "_x", ".hidden", "a/b.c"]
_VALUES = [*_TRICKY, 0, -3, 2**40, 1.0, 0.0002, 1e-05, 5e-5, 1e16, -0.5, float("inf"), float("nan"), True, False, None, {}, []]


def _random_doc(rng, depth: int = 0) -> dict:
    doc = {}
    for _ in range(rng.randint(0, 5)):
        key = rng.choice(["a", "spec", "learningRate", "tuneloop.dev/purpose", *_TRICKY[:8], "k k"])
        r = rng.random()
        if r < 0.25 and depth < 3:
            doc[key] = _random_doc(rng, depth + 1)
        elif r < 0.45 and depth < 3:
            doc[key] = [_random_doc(rng, depth + 1) if rng.random() < 0.4 else rng.choice(_VALUES[:-2]) for _ in range(rng.randint(0, 3))]
        else:
            doc[key] = rng.choice(_VALUES)
    return doc


def test_spec_yaml_is_the_text_pyyaml_writes():
    """builders.config.dump_yaml (the per-job ConfigMap's spec.yaml) is PyYAML's `dump(sort_keys=False)`
    byte for byte — its fast path for the usual spec, PyYAML itself for anything else."""
    import random

    from tuneloop.operator.builders import config
    from tuneloop.operator.builders.config import _DUMPER, dump_yaml, spec_manifest

    def pyyaml(d: dict) -> str:
        return yaml.dump(d, Dumper=_DUMPER, sort_keys=False)

    def fast(d: dict) -> bool:
        try:
            config._block(d, "", [])
        except config._NotSimple:
            return False
        return True

    rng = random.Random(10)
    docs = [_random_doc(rng) for _ in range(3000)]
    for d in docs:
        assert dump_yaml(d) == pyyaml(d), d
    assert 500 < sum(map(fast, docs)) < 2900  # both paths were taken
    for name in ("manifests/samples/finetunejob-llama-2x8-zero3.yaml", "manifests/samples/quickstart.yaml"):
        body = yaml.safe_load((ROOT / name).read_text())
        body["metadata"].update(uid="u", generation=1)
        spec = FineTuneJobSpec.model_validate(body["spec"])
        doc = spec_manifest(spec, JobMeta.from_body(body))
        assert fast(doc) == (name != "manifests/samples/quickstart.yaml")  # the quickstart's annotations are free text
        assert dump_yaml(doc) == pyyaml(doc) and yaml.safe_load(dump_yaml(doc)) == doc


def test_phase_counts_stay_exact_when_every_pass_reports_the_phase():
    from prometheus_client import generate_latest
    from tuneloop.operator import telemetry as metrics

    def count(phase: str) -> float:
        return metrics.FINETUNEJOBS.labels(phase)._value.get()

    before = {p: count(p) for p in metrics.PHASES}
    for _ in range(3):  # three passes, one phase
        metrics.set_phase("ns10", "a", "ValidatingData")
    metrics.set_phase("ns10", "b", "Suspended")
    metrics.set_phase("ns10", "b", "ValidatingData")
    assert count("ValidatingData") == before["ValidatingData"] + 2 and count("Suspended") == before["Suspended"]
    metrics.forget("ns10", "a")
    metrics.forget("ns10", "b")
    metrics.forget("ns10", "b")  # a second DELETED changes nothing
    assert {p: count(p) for p in metrics.PHASES} == before
    assert 'tuneloop_finetunejobs{phase="Pending"}' in generate_latest(metrics.REGISTRY).decode()
