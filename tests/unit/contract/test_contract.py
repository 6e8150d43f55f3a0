"""The contract's pieces on their own: the fitter, lineage facts, batch split, gauges vs the API, layout."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tuneloop.api import FineTuneJobSpec
from tuneloop.api.status import Progress
from tuneloop.contract import deepspeed, exits, layout, lineage, progress, termination

pytestmark = pytest.mark.unit

SPEC = {"baseModel": {"huggingFace": {"id": "m"}}, "dataset": {"train": {"path": "t.jsonl"}}, "output": {"pvc": {"claimName": "o"}}}


@pytest.mark.parametrize("limit", [64, 256, 4096])
def test_fit_is_always_valid_json_within_the_limit(limit):
    msg = {"stage": "train", "outcome": "Failed", "reason": "InternalError", "error": "x" * 10_000,
           "details": {"a": list(range(500))}, "note": "é" * 300}
    text = termination.fit(msg, limit)
    assert len(text.encode()) <= limit
    doc = json.loads(text)
    assert doc["truncated"] is True and doc["stage"] == "train"


def test_fit_leaves_a_small_message_alone():
    assert json.loads(termination.fit({"stage": "prepare", "outcome": "Succeeded", "n": 1})) == {"stage": "prepare", "outcome": "Succeeded", "n": 1}


def test_publish_reductions_keep_the_verdict_first():
    record = {"verdict": "Failed", "metrics": [{"name": f"m{i}", "base": 0.1, "tuned": 0.2} for i in range(60)],
              "gates": [{"metric": "m", "passed": False, "reason": "r" * 400} for _ in range(10)]}
    doc = json.loads(termination.fit_publish({"stage": "publish", "outcome": "Succeeded", "evaluation": record,
                                              "lineage": {"libraryVersions": {"torch": "2"}, "tokensSeen": 1}}))
    assert doc["evaluation"]["verdict"] == "Failed" and doc["truncated"] and "libraryVersions" not in doc["lineage"]
    assert all(len(g["reason"]) <= 80 for g in doc["evaluation"].get("gates", []))


def test_report_block_roundtrip():
    log = "noise\n" + termination.report_block("# R\n\nbody\n") + "tail\n"
    assert termination.extract_report(log) == "# R\n\nbody\n"
    assert termination.extract_report(termination.REPORT_BEGIN + "\nunfinished") is None


def test_lineage_file_and_facts_one_spelling_each_first_source_wins():
    from_file = {"dataset": {"sha256": "ab"}, "libraries": {"torch": "2.13"}, "wall_time_seconds": 12.34, "tokens_seen": 7, "world_size": 2}
    file_facts = lineage.LineageFile.of(from_file).facts()
    assert file_facts.wire() == {"datasetSha256": "ab", "libraryVersions": {"torch": "2.13"}, "trainSeconds": 12.3,
                                 "tokensSeen": 7, "worldSize": 2}
    from_message = {"datasetSha256": "cd", "trainSeconds": 99.0}  # the wire (camelCase alias)
    f = lineage.facts(from_message, file_facts)
    assert (f.dataset_sha256, f.train_seconds, f.tokens_seen) == ("cd", 99.0, 7)
    assert lineage.facts({"world_size": 3, "train_seconds": 5.0}).wire() == {"worldSize": 3, "trainSeconds": 5.0}  # a summary: the name
    assert lineage.facts({"seconds": True, "tokens_seen": "3"}, None).wire() == {}  # wrong types are not facts
    # the one conversion: a stage summary's wall time stands in for train_seconds it lost (never over it)
    assert lineage.facts({"seconds": 120.54}).wire() == {"trainSeconds": 120.5}
    assert lineage.facts({"seconds": 900.0, "train_seconds": 812.5}).train_seconds == 812.5
    # lineage.json's own names are not facts' names: a file is read through LineageFile, never as facts
    assert lineage.facts(from_file).wire() == {"tokensSeen": 7, "worldSize": 2}


def test_lineage_file_round_trips_and_keeps_what_it_does_not_know(tmp_path):
    doc = {"job": {"name": "j", "namespace": "ns", "uid": "u"}, "dataset": {"sha256": "ab", "format": "chat", "counts": {"train": 3}, "files": []},
           "base_model": {"source": "m", "revision": None}, "method": {"type": "lora"}, "hyperparameters": {"epochs": 1}, "deepspeed": None,
           "libraries": {"torch": "2.13"}, "python": "3.11.9", "finished_at": "2026-12-07T10:00:00Z", "world_size": 1,
           "wall_time_seconds": 1.5, "tokens_seen": 10, "steps": 2, "resumed_from_step": None, "train_loss": 0.5, "eval_loss": None,
           "batch_layout": "grouped"}
    path = lineage.LineageFile.of(doc).write(tmp_path / "lineage.json")
    assert path.read_text() == json.dumps(doc, indent=2)  # exactly what the trainer wrote before the model existed
    newer = {**doc, "future_field": {"x": 1}}
    assert lineage.LineageFile.of(newer).doc() == newer
    assert lineage.LineageFile.read(tmp_path / "missing.json") == lineage.LineageFile()


@given(st.dictionaries(st.sampled_from(["datasetSha256", "dataset_sha256", "trainSeconds", "train_seconds", "tokensSeen", "worldSize",
                                        "world_size", "libraryVersions", "tokenLengths", "other"]),
                       st.recursive(st.none() | st.booleans() | st.integers(-3, 10**6) | st.floats(allow_nan=False) | st.text(max_size=4),
                                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
                                    max_leaves=6)))
def test_reading_facts_never_fails_and_keeps_only_well_typed_values(doc):
    f = lineage.LineageFacts.read(doc)
    lineage.LineageFacts.model_validate(f.wire())  # what it read is valid on the wire
    for name in ("tokens_seen", "world_size"):
        v = getattr(f, name)
        assert v is None or (type(v) is int and v >= (1 if name == "world_size" else 0))
    assert f.dataset_sha256 is None or (isinstance(f.dataset_sha256, str) and f.dataset_sha256)
    assert f.train_seconds is None or f.train_seconds == round(f.train_seconds, 1) >= 0


def test_batch_split_is_checked_once_here():
    spec = FineTuneJobSpec.model_validate({**SPEC, "resources": {"nodes": 2, "gpusPerNode": 8},
                                           "hyperparameters": {"batchSize": 24, "microBatchSize": 1}})
    assert deepspeed.world_size(spec) == 16
    with pytest.raises(deepspeed.BatchSplitError, match="world size 16") as err:
        deepspeed.check_batch(spec)
    assert err.value.field == "spec.hyperparameters.batchSize" and "multiple of 16" in err.value.hint
    assert deepspeed.check_batch(spec, world=8) == 3


def test_every_gauge_lands_in_a_status_progress_field():
    fields = {f.alias for f in Progress.model_fields.values()}
    assert {g.status_key for g in progress.GAUGES} <= fields
    assert len({g.metric for g in progress.GAUGES}) == len(progress.GAUGES)
    assert all(g.metric.startswith("tuneloop_trainer_") for g in progress.GAUGES)


def test_exit_codes_and_layout():
    assert exits.EXIT_CONFIG_ERROR == 42 and exits.reason_for_exit(42, "BackoffLimitExceeded") == "InvalidSpec"
    assert exits.reason_for_exit(1, "BackoffLimitExceeded") == "BackoffLimitExceeded"
    assert layout.stage_args("train", "/etc/tuneloop/spec.yaml", "/output/x") == [
        "-m", "tuneloop_trainer", "train", "--spec", "/etc/tuneloop/spec.yaml", "--workdir", "/output/x"]
    spec = FineTuneJobSpec.model_validate(SPEC)
    assert layout.output_location(spec, "job", "ns") == ("o", "/output/job")
    assert layout.workdir_uri(*layout.output_location(spec, "job", "ns")) == "pvc://o/job"
    s3 = FineTuneJobSpec.model_validate({**SPEC, "output": {"s3": {"uri": "s3://b/p"}}})
    with pytest.raises(layout.LocationError, match="staging PVC"):
        layout.output_location(s3, "job", "ns")
    assert layout.output_location(s3, "job", "ns", "stage") == ("stage", "/output/ns/job")
    assert layout.resolve_workdir_uri(s3, "job", "ns", layout.Path("/tmp/wd"), {layout.ENV_WORKDIR_URI: "pvc://stage/ns/job/"}) == "pvc://stage/ns/job"
    assert layout.resolve_workdir_uri(s3, "job", "ns", layout.Path("/tmp/wd"), {}) == "file:///tmp/wd"
    # a local run of a cluster spec (output.pvc) records where the artifact really is, not the PVC (issue 12 defect 3)
    assert layout.resolve_workdir_uri(spec, "job", "ns", layout.Path("/tmp/wd"), {}) == "file:///tmp/wd"


def test_stage_results_keep_their_wire_form():
    from tuneloop.contract.results import Outcome, StageResult

    ok = StageResult.succeeded("train", 12.5, {"steps": 40, "resumed_from_step": None})
    assert ok.wire() == {"stage": "train", "outcome": "Succeeded", "seconds": 12.5, "steps": 40, "resumed_from_step": None}
    bad = StageResult.failed("prepare", exits.Reason.INVALID_DATA, "3 of 4 records rejected")
    assert bad.wire() == {"stage": "prepare", "outcome": "Failed", "reason": "InvalidData", "error": "3 of 4 records rejected"}
    back = StageResult.read(json.loads(termination.fit(ok.wire())))
    assert back.outcome is Outcome.SUCCEEDED and back.model_extra["steps"] == 40
    assert StageResult.read({"message": "OOMKilled"}) is None
