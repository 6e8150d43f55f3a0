"""lineage trainSeconds sums the runs of one training (issue 10, defect 10): a run resumed from a
checkpoint adds its time to the killed runs' instead of replacing it."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.unit


def test_resumed_run_adds_its_time_to_the_killed_runs(tmp_path, monkeypatch):
    from tuneloop_trainer.training import callbacks

    clock = {"now": 1000.0}
    monkeypatch.setattr(callbacks.time, "time", lambda: clock["now"])
    path = tmp_path / "train-time.json"
    state = SimpleNamespace(is_world_process_zero=True)

    first = callbacks.TrainTimeCallback(path, started=1000.0, resumed=False)
    clock["now"] = 1300.0
    first.on_save(None, state, None)  # checkpoint at 300 s; then the pod is killed (no end)
    clock["now"] = 1310.0
    first.on_log(None, state, None)   # last record before the kill: 310 s

    clock["now"] = 2000.0
    second = callbacks.TrainTimeCallback(path, started=2000.0, resumed=True)
    clock["now"] = 2200.0
    assert second.total() == 510.0    # 310 s + 200 s, not 200 s
    assert json.loads(path.read_text())["runs"] == {"1000.000": 310.0, "2000.000": 200.0}

    clock["now"] = 3000.0
    fresh = callbacks.TrainTimeCallback(path, started=3000.0, resumed=False)  # from scratch: earlier runs don't count
    clock["now"] = 3050.0
    assert fresh.total() == 50.0


def test_a_missing_or_broken_ledger_counts_this_run_only(tmp_path, monkeypatch):
    from tuneloop_trainer.training import callbacks

    monkeypatch.setattr(callbacks.time, "time", lambda: 100.0)
    path = tmp_path / "train-time.json"
    path.write_text("not json")
    assert callbacks.TrainTimeCallback(path, started=40.0, resumed=True).total() == 60.0
