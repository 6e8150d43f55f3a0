"""Pure reconcile helpers: Job states, termination messages, conditions, status diffs, progress, publish."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from tuneloop.api.conditions import set_condition
from tuneloop.operator.finetunejob import state as st
from tuneloop.operator.finetunejob.progress import rank0_pod
from tuneloop.operator.finetunejob.reconcile import validate
from tuneloop.operator.settings import OperatorSettings
from tuneloop_trainer import publish  # runs in the evaluation pod; the format is tuneloop.contract.termination

pytestmark = pytest.mark.unit


def _job(**status) -> dict:
    return {"metadata": {"name": "j"}, "spec": {}, "status": status}


@pytest.mark.parametrize(("job", "expected"), [
    (None, "Missing"),
    (_job(), "Pending"),
    (_job(active=2), "Running"),
    ({"spec": {"suspend": True}, "status": {}}, "Suspended"),
    (_job(conditions=[{"type": "Complete", "status": "True"}]), "Succeeded"),
    (_job(conditions=[{"type": "FailureTarget", "status": "True"}], active=1), "Failed"),
    (_job(conditions=[{"type": "Failed", "status": "False"}], active=1), "Running"),
])
def test_job_state(job, expected):
    assert st.job_state(job) == expected


def _pod(index: int, code: int, msg: str, finished: str) -> dict:
    return {"metadata": {"name": f"p{index}-{code}-{finished}", "labels": {st.INDEX_LABEL: str(index)}},
            "status": {"containerStatuses": [{"name": "trainer", "state": {"terminated": {"exitCode": code, "message": msg, "finishedAt": finished}}}]}}


def test_termination_prefers_rank0_on_success_and_latest_failure():
    pods = [_pod(1, 0, '{"rank": 1}', "t2"), _pod(0, 0, '{"rank": 0}', "t3"), _pod(0, 1, "boom", "t1"), _pod(1, 42, '{"reason": "InvalidData"}', "t4")]
    assert st.termination(pods, want_success=True)[0] == {"rank": 0}
    assert st.termination(pods, want_success=False)[0] == {"reason": "InvalidData"}
    assert st.termination([], want_success=True) == (None, None)


def test_plain_text_termination_message():
    assert st.parse_message("Killed\n", 137) == {"error": "Killed", "exitCode": 137}
    assert st.parse_message("", 1) == {"exitCode": 1}


def test_condition_transition_time_only_changes_with_status():
    """The FineTuneJob's conditions are set by the one setter, tuneloop.api.conditions.set_condition."""
    t1, t2 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC), dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
    conds: list = []
    set_condition(conds, "Training", "Unknown", "Starting", "", now=t1, generation=1)
    set_condition(conds, "Training", "Unknown", "Starting", "still", now=t2, generation=1)
    assert conds[0].last_transition_time == t1 and conds[0].message == "still"
    set_condition(conds, "Training", "True", "Running", "", now=t2, generation=2)
    assert conds[0].last_transition_time == t2 and conds[0].observed_generation == 2 and len(conds) == 1


def test_status_patch_only_when_changed():
    old = {"phase": "Training", "progress": {"step": 3, "updatedAt": "a"}, "message": "x"}
    assert not st.status_changed(old, {**old, "progress": {"step": 3, "updatedAt": "b"}})
    new = {"phase": "Training", "progress": {"step": 4, "updatedAt": "b"}}
    assert st.status_changed(old, new)
    assert st.status_patch(old, new) == {"progress": {"step": 4, "updatedAt": "b"}, "message": None}


def test_parse_progress_from_trainer_metrics():
    text = "\n".join([
        "# TYPE tuneloop_trainer_step gauge", 'tuneloop_trainer_step{job="a",namespace="n"} 30.0',
        "# TYPE tuneloop_trainer_total_steps gauge", 'tuneloop_trainer_total_steps{job="a",namespace="n"} 120.0',
        "# TYPE tuneloop_trainer_loss gauge", 'tuneloop_trainer_loss{job="a",namespace="n"} 1.5',
        "# TYPE tuneloop_trainer_eval_loss gauge", 'tuneloop_trainer_eval_loss{job="a",namespace="n"} NaN',
        "# TYPE other gauge", "other 1", ""])
    p = st.parse_progress(text)
    assert (p["step"], p["totalSteps"], p["loss"], p["percent"]) == (30, 120, 1.5, "25%")
    assert "evalLoss" not in p and p["updatedAt"]
    assert st.snake_progress(p) == {"step": 30, "total_steps": 120, "loss": 1.5}


def test_data_report_from_prepare_summary():
    msg = {"dataset_sha256": "f" * 64, "counts": {"read": 10, "accepted": 9, "rejected": 1, "train": 7, "validation": 1, "test": 1, "blank_lines": 0},
           "rejected_by_rule": {"too_long": 1}}
    assert st.data_report(msg) == {"total": 10, "accepted": 9, "rejected": 1, "train": 7, "validation": 1, "test": 1,
                                   "datasetSha256": "f" * 64, "rejectedByReason": {"too_long": 1}}


def test_rank0_pod():
    pods = [{"metadata": {"labels": {st.INDEX_LABEL: "1"}}, "status": {"phase": "Running", "podIP": "10.0.0.2"}},
            {"metadata": {"labels": {st.INDEX_LABEL: "0"}}, "status": {"phase": "Pending"}},
            {"metadata": {"labels": {st.INDEX_LABEL: "0"}}, "status": {"phase": "Running", "podIP": "10.0.0.1"}}]
    assert rank0_pod(pods)["status"]["podIP"] == "10.0.0.1"


def test_publish_fits_termination_limit_and_report_roundtrip(tmp_path):
    record = {"verdict": "Failed", "metrics": [{"name": f"m{i}", "base": 0.1, "tuned": 0.2} for i in range(40)],
              "gates": [{"metric": "m", "passed": False, "reason": "x" * 500} for _ in range(20)]}
    (tmp_path / "eval.json").write_text(json.dumps({"record": record}))
    (tmp_path / "lineage.json").write_text(json.dumps({"dataset": {"sha256": "ab"}, "libraries": {"torch": "2.13.0"}, "tokens_seen": 5, "wall_time_seconds": 1.5}))
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "report.md").write_text("# Report\n\nok\n")
    msg, md = publish.collect(tmp_path)
    assert msg["lineage"] == {"datasetSha256": "ab", "libraryVersions": {"torch": "2.13.0"}, "trainSeconds": 1.5, "tokensSeen": 5}
    text = publish.fit(msg)
    assert len(text.encode()) <= 4096
    doc = json.loads(text)
    assert doc["evaluation"]["verdict"] == "Failed" and doc["truncated"] is True
    log = f"noise\n{publish.BEGIN}\n{md}{publish.END}\nmore noise\n"
    assert publish.extract_report(log) == md
    assert publish.extract_report("no markers") is None


def test_publish_main_writes_termination_log(tmp_path, monkeypatch, capsys):
    (tmp_path / "eval.json").write_text(json.dumps({"record": {"verdict": "Passed"}}))
    out = tmp_path / "term"
    monkeypatch.setenv("TUNELOOP_TERMINATION_LOG", str(out))
    assert publish.main(["--workdir", str(tmp_path)]) == 0
    assert json.loads(out.read_text())["evaluation"] == {"verdict": "Passed"}
    assert publish.BEGIN not in capsys.readouterr().out  # no report, nothing printed


BASE = {"baseModel": {"huggingFace": {"id": "m"}}, "dataset": {"train": {"pvc": {"claimName": "d", "path": "t.jsonl"}}},
        "output": {"pvc": {"claimName": "o"}}}


@pytest.mark.parametrize(("change", "where", "what"), [
    ({"method": {"type": "qlora"}}, "spec.method", "quantization.bits 4"),
    ({"hyperparameters": {"learningRate": 5}}, "spec.hyperparameters.learningRate", "less than 1"),
    ({"output": {"path": "/tmp/out"}}, "spec.output.path", "local runs"),
    ({"output": {"s3": {"uri": "s3://b/p"}}}, "spec.output.s3", "TUNELOOP_DEFAULT_OUTPUT_PVC"),
    ({"dataset": {"train": {"pvc": {"claimName": "a", "path": "x"}}, "test": {"pvc": {"claimName": "b", "path": "y"}}}},
     "spec.dataset.test.pvc.claimName", "same PVC"),
    ({"resources": {"nodes": 2, "gpusPerNode": 8}, "hyperparameters": {"batchSize": 24, "microBatchSize": 1}},
     "spec.hyperparameters.batchSize", "world size 16"),
])
def test_validate_reports_field_paths(change, where, what):
    spec, path, msg = validate({"metadata": {"name": "x", "namespace": "n", "uid": "u"}, "spec": {**BASE, **change}}, OperatorSettings())
    assert spec is None and path == where and what in msg, (path, msg)


def test_validate_accepts_s3_with_staging_pvc():
    spec, path, _ = validate({"metadata": {"name": "x"}, "spec": {**BASE, "output": {"s3": {"uri": "s3://b/p"}}}},
                               OperatorSettings(default_output_pvc="staging"))
    assert spec is not None and not path
