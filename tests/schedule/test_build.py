"""Pure builders: a run's FineTuneJob from the template (champion or none), and the content digest."""

from __future__ import annotations

import datetime as dt

import pytest
from tuneloop.api import schema_check
from tuneloop.api.schedule import FineTuneSchedule, TriggerKind
from tuneloop.contract.datadigest import digest
from tuneloop.operator.builders import schedule as build
from tuneloop.operator.schedule.decide import Fire

from . import samples

pytestmark = pytest.mark.unit
NOW = dt.datetime(2026, 11, 23, 3, 0, tzinfo=dt.UTC)
FIRE = Fire(TriggerKind.SCHEDULE, "schedule '0 3 * * 1' at 2026-11-23T03:00:00+00:00", "29623860")


def make(champion=None):
    obj = samples.schedule()
    return build.finetunejob(obj, FineTuneSchedule.model_validate(obj).spec, FIRE, "bot-29623860", champion, NOW)


def test_without_a_champion_the_serving_gates_are_dropped_and_the_job_is_valid():
    job, why = make()
    assert why is None and "serving" not in job["spec"]["evaluation"]
    assert [g.get("reference", "base") for g in job["spec"]["evaluation"]["gates"]] == ["base"]
    assert job["spec"]["registry"]["modelName"] == "support-bot"
    # the template names a model other than the schedule ("bot"): the version carries the schedule, so another schedule
    # registering support-bot in the same minute never names the same ModelVersion (support-bot-bot-29623860)
    assert job["spec"]["registry"]["version"] == "bot-29623860"
    assert job["metadata"]["labels"] == {"team": "support", "tuneloop.dev/schedule": "bot", "tuneloop.dev/trigger": "Schedule",
                                         "app.kubernetes.io/managed-by": "tuneloop-operator"}
    assert schema_check.check_document(job) == []  # what the API server (CRD + CEL) accepts


def test_a_champion_on_another_claim_cannot_be_compared_and_says_why():
    job, why = make(samples.model_version("support-bot-v1", claim="old-models"))
    assert why == "the serving version support-bot-v1 is on claim old-models, not on the runs' output claim models"
    assert "serving" not in job["spec"]["evaluation"] and job["metadata"]["annotations"]["tuneloop.dev/champion"] == "support-bot-v1"


def test_the_digest_covers_contents_names_and_files_not_mtimes(tmp_path):
    (tmp_path / "support").mkdir()
    a = tmp_path / "support" / "a.jsonl"
    a.write_text('{"x": 1}\n')
    first = digest(tmp_path, "support/*.jsonl")
    assert first["files"] == 1 and first["bytes"] == 9 and first["digest"].startswith("sha256:")
    a.touch()
    assert digest(tmp_path, "support/*.jsonl") == first
    a.write_text('{"x": 1}\n{"x": 2}\n')
    second = digest(tmp_path, "support/*.jsonl")
    assert second["digest"] != first["digest"]
    (tmp_path / "support" / "b.jsonl").write_text("")
    assert digest(tmp_path, "support/*.jsonl")["files"] == 2
    assert digest(tmp_path, "support/*.jsonl")["digest"] != second["digest"]
