"""One ModelVersion for one job: the operator's registration and the trainer's report/modelversion.yaml
are built by the same contract builder from the same facts, so they are identical.

The operator path goes the way the reconciler goes: the prepare summary → status.dataReport, the
train stage's termination message, the publish step's (fitted) termination message. The trainer path
goes the way the report stage goes in the evaluation pod: the spec.yaml the operator wrote, the work
directory's files and the pod's environment.
"""

from __future__ import annotations

import json

import pytest
import yaml
from tuneloop.api import FineTuneJob
from tuneloop.contract import layout
from tuneloop.operator import builders
from tuneloop.operator.builders.config import spec_manifest
from tuneloop.operator.finetunejob import state as st
from tuneloop.operator.settings import OperatorSettings
from tuneloop_trainer import publish
from tuneloop_trainer.context import load_context
from tuneloop_trainer.report import modelversion as report_modelversion

pytestmark = pytest.mark.unit

UID = "0c5e9d2a-1b7f-4e0a-8d3c-6a4b2f9e1d77"
SHA = "cd" * 32
CONFIG = OperatorSettings(trainer_image="ghcr.io/tuneloop/trainer:0.1.0")
RECORD = {"metrics": [{"name": "exactMatch", "base": 0.1, "tuned": 0.6, "delta": 0.5}], "verdict": "Passed",
          "gates": [{"metric": "exactMatch", "passed": True, "reason": "exactMatch improved by 0.5 ≥ 0.1"}], "testExamples": 40}
METHODS = {
    "lora": {"type": "lora", "lora": {"r": 16, "alpha": 32}},
    "merged": {"type": "lora", "mergeAdapter": True},
    "full": {"type": "full"},
}
EXPECTED_ARTIFACT = {
    "lora": ("artifact", "lora-adapter"),
    "merged": ("artifact/merged", "merged"),
    "full": ("artifact", "full"),
}


LENGTHS = {"le": [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000], "prompt": [0, 0, 0, 0, 5, 60, 30, 5, 0, 0, 0, 0],
           "generation": [0, 0, 10, 40, 40, 10, 0, 0, 0, 0, 0, 0]}


def job(method: str, path: str, image: str | None = None) -> dict:
    output: dict = {"claimName": "models"}
    if path:
        output["path"] = path
    spec = {
        "baseModel": {"huggingFace": {"id": "HuggingFaceTB/SmolLM2-135M-Instruct", "revision": "main"}},
        "dataset": {"train": {"pvc": {"claimName": "datasets", "path": "tickets/train.jsonl"}}},
        "output": {"pvc": output},
        "method": METHODS[method],
        "resources": {"nodes": 1, "gpusPerNode": 1},
        "registry": {"modelName": "support-bot"},
    }
    if image:
        spec["image"] = image
    return {"apiVersion": "tuneloop.dev/v1alpha1", "kind": "FineTuneJob",
            "metadata": {"name": "support-bot-ft", "namespace": "ml", "uid": UID, "generation": 3}, "spec": spec}


def workdir_files(wd) -> tuple[dict, dict]:
    """What prepare, train and evaluate leave in DIR (the parts the ModelVersion reads)."""
    data_report = {"dataset_sha256": SHA, "counts": {"read": 120, "accepted": 118, "rejected": 2, "train": 100, "validation": 8, "test": 10},
                   "token_lengths": LENGTHS}
    lineage = {"job": {"name": "support-bot-ft", "namespace": "ml", "uid": UID}, "dataset": {"sha256": SHA, "format": "chat"},
               "libraries": {"torch": "2.13.0", "transformers": "4.57.0"}, "world_size": 1, "wall_time_seconds": 812.5,
               "tokens_seen": 123456, "steps": 40}
    (wd / "data").mkdir(parents=True)
    (wd / layout.DATA_REPORT_FILE).write_text(json.dumps(data_report))
    (wd / layout.LINEAGE_FILE).write_text(json.dumps(lineage))
    (wd / layout.EVAL_FILE).write_text(json.dumps({"record": RECORD}))
    (wd / "report").mkdir()
    (wd / layout.REPORT_FILE).write_text("# report\n")
    return lineage, data_report


def operator_path(doc: dict, wd, data_report: dict) -> dict:
    spec = FineTuneJob.model_validate(doc).spec
    meta = builders.JobMeta.from_body(doc)
    prepare_msg = {"stage": "prepare", "outcome": "Succeeded", **data_report}
    train_msg = {"stage": "train", "outcome": "Succeeded", "seconds": 901.7, "train_loss": 0.91, "world_size": 1, "tokens_seen": 123456}
    msg, report_md = publish.collect(wd)
    publish_msg = json.loads(publish.fit(msg))  # what the pod status carries
    train_summary = {**publish_msg["lineage"], **train_msg}  # as the reconciler merges them
    return builders.model_version(spec, meta, CONFIG, evaluation=publish_msg["evaluation"],
                                  data_summary=st.data_report(prepare_msg), train_summary=train_summary,
                                  has_report=report_md is not None)


def trainer_path(doc: dict, wd, lineage: dict, data_report: dict, tmp_path) -> dict:
    spec = FineTuneJob.model_validate(doc).spec
    meta = builders.JobMeta.from_body(doc)
    spec_file = tmp_path / "spec.yaml"  # the ConfigMap's spec.yaml, as mounted in the pod
    spec_file.write_text(builders.config_map(spec, meta, CONFIG)["data"]["spec.yaml"])
    assert yaml.safe_load(spec_file.read_text()) == spec_manifest(spec, meta)
    eval_pod = builders.eval_job(spec, meta, CONFIG)["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in eval_pod["env"] if "value" in e}
    ctx = load_context(spec_file, wd)
    record = json.loads((wd / layout.EVAL_FILE).read_text())["record"]
    return report_modelversion.manifest(ctx, lineage, data_report, record, env=env)


@pytest.mark.parametrize("path", ["", "team/tickets"])
@pytest.mark.parametrize("method", ["lora", "merged", "full"])
@pytest.mark.parametrize("image", [None, "registry.example/trainer:custom"])
def test_operator_and_trainer_report_build_the_same_model_version(tmp_path, method, path, image):
    doc = job(method, path, image)
    wd = tmp_path / "output"
    lineage, data_report = workdir_files(wd)
    op = operator_path(doc, wd, data_report)
    tr = trainer_path(doc, wd, lineage, data_report, tmp_path)
    assert tr == op
    sub, fmt = EXPECTED_ARTIFACT[method]
    root = f"pvc://models/{path or 'support-bot-ft'}"
    assert op["spec"]["artifact"]["uri"] == f"{root}/{sub}" and op["spec"]["artifact"]["format"] == fmt
    assert op["spec"]["report"] == {"uri": f"{root}/report/report.md", "configMap": f"{op['metadata']['name']}-report"}
    assert op["spec"]["lineage"]["trainerImage"] == (image or CONFIG.trainer_image)
    assert op["spec"]["lineage"]["trainSeconds"] == 812.5 and op["spec"]["lineage"]["datasetSha256"] == SHA
    assert op["spec"]["lineage"]["tokenLengths"] == LENGTHS  # prepare's histograms, through status.dataReport too


@pytest.mark.parametrize("method", ["lora", "merged", "full"])
def test_local_run_of_a_cluster_spec_names_the_local_artifact(tmp_path, method):
    """Without the pod's environment (kubectl tuneloop local run) the ModelVersion names where the artifact
    really is — the local work directory — not the PVC a cluster would use (issue 12, defect 3); the rest
    is the operator's manifest."""
    doc = job(method, "")
    wd = tmp_path / "output"
    lineage, data_report = workdir_files(wd)
    op = operator_path(doc, wd, data_report)
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(doc))
    local = report_modelversion.manifest(load_context(spec_file, wd), lineage, data_report, RECORD, env={})
    here = wd.resolve().as_uri()
    assert local["spec"]["artifact"] == {**op["spec"]["artifact"], "uri": op["spec"]["artifact"]["uri"].replace(
        op["spec"]["artifact"]["uri"].split("/artifact")[0], here)}
    assert local["spec"]["report"] == {"uri": f"{here}/report/report.md"}  # no ConfigMap outside a cluster
    assert local["metadata"] == op["metadata"]


TOPIC = {"method": "tfidf-char_wb-3-5-nearest-neighbour-cosine", "trainPrompts": 324, "calibration": "validation", "calibrationPrompts": 36,
         "passRate": 0.99, "threshold": 0.3121, "testPassRate": 0.95, "testPrompts": 60}


def test_a_topic_profile_the_evaluation_built_is_recorded_by_both_paths_and_carried_to_exports(tmp_path):
    """The evaluate stage's record says it wrote DIR/topic-profile.json: both paths give the ModelVersion
    spec.topicProfile.uri (where the Rollout's guard mounts it from) and spec.evaluation.topicProfile (its calibration),
    through the fitted publish message too; an export's ModelVersion serves with the same profile."""
    doc = job("lora", "team/tickets")
    wd = tmp_path / "output"
    lineage, data_report = workdir_files(wd)
    (wd / layout.EVAL_FILE).write_text(json.dumps({"record": {**RECORD, "topicProfile": TOPIC}}))
    op = operator_path(doc, wd, data_report)
    assert trainer_path(doc, wd, lineage, data_report, tmp_path) == op
    assert op["spec"]["topicProfile"] == {"uri": "pvc://models/team/tickets/topic-profile.json"}
    assert op["spec"]["evaluation"]["topicProfile"] == TOPIC
    export = builders.registration.build_export(op, {"format": "merged", "sizeBytes": 10, "equivalence": {
        "testItems": 4, "agreement": 1.0, "minAgreement": 0.9, "passed": True}}, workdir_uri="pvc://models/team/tickets")
    assert export["spec"]["topicProfile"] == op["spec"]["topicProfile"]
    (wd / layout.EVAL_FILE).write_text(json.dumps({"record": RECORD}))  # none built: no location
    assert "topicProfile" not in operator_path(doc, wd, data_report)["spec"]
