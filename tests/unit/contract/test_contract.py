"""The contract's pieces on their own: the fitter, lineage facts, batch split, gauges vs the API, layout."""

from __future__ import annotations

import json

import pytest
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


def test_lineage_facts_read_every_spelling_first_source_wins():
    from_file = {"dataset": {"sha256": "ab"}, "libraries": {"torch": "2.13"}, "wall_time_seconds": 12.34, "tokens_seen": 7, "world_size": 2}
    from_message = {"datasetSha256": "cd", "trainSeconds": 99.0}
    assert lineage.facts(from_file).wire() == {"datasetSha256": "ab", "libraryVersions": {"torch": "2.13"}, "trainSeconds": 12.3,
                                               "tokensSeen": 7, "worldSize": 2}
    f = lineage.facts(from_message, from_file)
    assert (f.dataset_sha256, f.train_seconds, f.tokens_seen) == ("cd", 99.0, 7)
    assert lineage.facts({"seconds": True, "tokens_seen": "3"}, None).wire() == {}  # wrong types are not facts


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
