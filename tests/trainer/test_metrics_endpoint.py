"""Rank 0's metrics endpoint (tuneloop_trainer.training.metrics): it names its FineTuneJob on every gauge, the way the
operator's poller reads it, and a port that another process holds is said loudly while training goes on."""

from __future__ import annotations

import io
import socket
import urllib.request

import pytest
from tuneloop.contract import progress as contract
from tuneloop.operator.finetunejob import state as fstate
from tuneloop_trainer.training.metrics import TrainerMetrics

pytestmark = pytest.mark.unit


def _scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def test_every_gauge_names_the_finetunejob_the_way_the_operator_reads_it():
    m = TrainerMetrics(job="hpo-t002", namespace="team-a")
    m.update({"step": 10, "total_steps": 200, "eval_loss": 6.545815})
    port = m.serve_or_warn(0, "127.0.0.1")
    try:
        assert port
        text = _scrape(port)
    finally:
        m.close()
    assert fstate.trainer_identities(text) == {("team-a", "hpo-t002")}  # every trainer gauge, no other identity
    assert {line.split("{")[0] for line in text.splitlines() if line.startswith("tuneloop_trainer_")} == {g.metric for g in contract.GAUGES}
    assert fstate.parse_progress(text, ("team-a", "hpo-t002"))["evalLoss"] == 6.545815
    assert fstate.parse_progress(text, ("team-a", "hpo-t003")) == {}  # another trial's poll reads nothing of it


def test_the_identity_comes_from_the_environment_in_a_pod(monkeypatch):
    monkeypatch.setenv("TUNELOOP_JOB_NAME", "run-7")
    monkeypatch.setenv("TUNELOOP_NAMESPACE", "ml")
    assert TrainerMetrics().labels == contract.identity("ml", "run-7") == {"job": "run-7", "namespace": "ml"}


def test_a_taken_port_is_said_loudly_and_training_goes_on():
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    out = io.StringIO()
    m = TrainerMetrics(job="hpo-t003", namespace="team-a")
    try:
        assert m.serve_or_warn(port, "127.0.0.1", out=out) is None  # no exception: the stage trains on
        m.update({"step": 3})  # the gauges still work (nothing serves them)
    finally:
        m.close()
        holder.close()
    text = out.getvalue()
    assert text.count("WARNING") >= 2 and "NOT started" in text and f"127.0.0.1:{port}" in text
    assert "team-a/hpo-t003" in text and "trainer_metrics_port_range" in text


def test_the_port_comes_from_the_environment(monkeypatch):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    free = holder.getsockname()[1]
    holder.close()
    monkeypatch.setenv("TUNELOOP_METRICS_PORT", str(free))
    m = TrainerMetrics(job="j", namespace="n")
    try:
        assert m.serve_or_warn(addr="127.0.0.1") == free
        assert 'tuneloop_trainer_step{job="j",namespace="n"} 0.0' in _scrape(free)
    finally:
        m.close()
