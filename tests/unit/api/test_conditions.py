"""The one condition setter and the reason enums (tuneloop.api.conditions)."""

from __future__ import annotations

import datetime as dt

import pytest
from tuneloop.api.common import Condition
from tuneloop.api.conditions import (
    MAX_MESSAGE,
    DriftReason,
    FineTuneJobCondition,
    FineTuneJobReason,
    RolloutCondition,
    StageFailureReason,
    find_condition,
    set_condition,
    step_reason,
)
from tuneloop.contract import exits

pytestmark = pytest.mark.unit

T0 = dt.datetime(2026, 11, 26, 4, 0, tzinfo=dt.UTC)
T1 = T0 + dt.timedelta(minutes=5)


def test_transition_time_moves_only_when_the_status_changes():
    conds: list[Condition] = []
    c = set_condition(conds, FineTuneJobCondition.TRAINING, "Unknown", FineTuneJobReason.STARTING, "1 node", now=T0, generation=1)
    assert conds == [c] and (c.type, c.status, c.reason, c.last_transition_time, c.observed_generation) == \
        ("Training", "Unknown", "Starting", T0, 1)
    set_condition(conds, "Training", "Unknown", "Starting", "still 1 node", now=T1)  # same status: time kept, generation kept
    assert (conds[0].message, conds[0].last_transition_time, conds[0].observed_generation) == ("still 1 node", T0, 1)
    set_condition(conds, FineTuneJobCondition.TRAINING, True, FineTuneJobReason.RUNNING, "x" * (MAX_MESSAGE + 10), now=T1, generation=2)
    assert (conds[0].status, conds[0].reason, conds[0].last_transition_time, conds[0].observed_generation) == ("True", "Running", T1, 2)
    assert len(conds[0].message) == MAX_MESSAGE
    set_condition(conds, RolloutCondition.PROGRESSING, False, step_reason(3), "", now=T1)
    assert [c.type for c in conds] == ["Training", "Progressing"] and conds[1].reason == "Step3"
    assert find_condition(conds, RolloutCondition.PROGRESSING) is conds[1] and find_condition(conds, "Ready") is None
    # reasons are stored as their plain string (what the API server gets), not as an enum member
    assert type(conds[0].reason) is str and conds[0].wire()["reason"] == "Running"


def test_reasons_have_one_source():
    assert exits.Reason is StageFailureReason  # the trainer's failure reasons are the FineTuneJob's condition reasons
    assert exits.reason_for_exit(exits.EXIT_CONFIG_ERROR, "JobFailed") == "InvalidSpec"
    assert DriftReason.PROVIDER_ERROR.value == "ProviderError"  # provider-neutral; the old "PrometheusError" is a documented deprecation
    with pytest.raises(ValueError):
        set_condition([], "Ready", "Maybe", "x", "", now=T0)
