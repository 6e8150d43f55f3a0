"""Issue 21's shared-port defect: where training pods share the host's ports (hostNetwork; the loopback test cluster)
two trainers on the one trainer_metrics_port made the operator read one job's validation losses for both.

- the operator's choice of a job's port in trainer_metrics_port_range (a decision taken alone: property-tested),
- the builders putting that one port everywhere (env, container port, Service, NetworkPolicy),
- the poller reading the port from rank 0's pod spec and refusing an answer that names another FineTuneJob."""

from __future__ import annotations

import logging
from collections import Counter

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from pydantic import ValidationError
from tuneloop.api import FineTuneJobSpec
from tuneloop.contract import layout
from tuneloop.contract import progress as contract
from tuneloop.operator import builders
from tuneloop.operator.builders.common import RENDEZVOUS_PORT, JobMeta, port_in_range, trainer_metrics_port
from tuneloop.operator.finetunejob import progress
from tuneloop.operator.finetunejob import state as fstate
from tuneloop.operator.settings import OperatorSettings

pytestmark = pytest.mark.unit

DNS = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
RANGES = st.tuples(st.integers(1, 65535), st.integers(0, 20000)).map(lambda t: (t[0], min(65535, t[0] + t[1])))


# --- the choice ----------------------------------------------------------------------------------
@given(DNS, DNS, RANGES)
def test_the_port_is_in_the_range_never_the_rendezvous_port_and_deterministic(ns, name, rng):
    low, high = rng
    port = port_in_range(ns, name, low, high)
    assert low <= port <= high
    assert port != RENDEZVOUS_PORT or low == high == RENDEZVOUS_PORT  # (settings refuse that range)
    assert port_in_range(ns, name, low, high) == port  # a pure function: every pass, every replica, after a restart


def test_a_range_holding_the_rendezvous_port_skips_it():
    assert port_in_range("ns", "j", RENDEZVOUS_PORT, RENDEZVOUS_PORT + 1) == RENDEZVOUS_PORT + 1
    hits = {port_in_range("ns", f"j{i}", RENDEZVOUS_PORT - 1, RENDEZVOUS_PORT) for i in range(50)}
    assert hits == {RENDEZVOUS_PORT - 1}


def test_ports_spread_over_the_range():
    """1000 jobs over 10 000 ports: about as many collisions as random ports would give (birthday: ~48), and every
    tenth of the range used about equally; a sweep's trials (names one digit apart) rarely share a port."""
    ports = [port_in_range("team-a", f"hpo-t{i:03d}", 20000, 29999) for i in range(1000)]
    assert len(set(ports)) >= 930
    deciles = Counter((p - 20000) // 1000 for p in ports)
    assert set(deciles) == set(range(10)) and max(deciles.values()) < 140 and min(deciles.values()) > 60
    # the same name in another namespace is another job: its own port (not a fixed offset of this one)
    other = [port_in_range("team-b", f"hpo-t{i:03d}", 20000, 29999) for i in range(1000)]
    assert sum(a == b for a, b in zip(ports, other, strict=True)) <= 3


@settings(max_examples=50)
@given(DNS, DNS)
def test_without_a_range_every_job_uses_the_fixed_port(ns, name):
    assert trainer_metrics_port(OperatorSettings(trainer_metrics_port=9555), ns, name) == 9555
    cfg = OperatorSettings(trainer_metrics_port=9555, trainer_metrics_port_range=(20000, 20099))
    assert 20000 <= trainer_metrics_port(cfg, ns, name) <= 20099


# --- the setting ---------------------------------------------------------------------------------
def test_the_range_setting_parses_from_the_environment(monkeypatch):
    monkeypatch.setenv("TUNELOOP_TRAINER_METRICS_PORT_RANGE", " 20000 - 29999 ")
    assert OperatorSettings().trainer_metrics_port_range == (20000, 29999)
    monkeypatch.setenv("TUNELOOP_TRAINER_METRICS_PORT_RANGE", "")
    assert OperatorSettings().trainer_metrics_port_range is None
    monkeypatch.delenv("TUNELOOP_TRAINER_METRICS_PORT_RANGE")
    assert OperatorSettings().trainer_metrics_port_range is None  # default: today's fixed port


@pytest.mark.parametrize("bad", ["20000", "20000-", "a-b", "30000-20000", "0-10", "60000-70000", "-5-10", f"{RENDEZVOUS_PORT}-{RENDEZVOUS_PORT}"])
def test_a_bad_range_is_refused_with_its_name(bad):
    with pytest.raises(ValidationError, match="trainer_metrics_port_range"):
        OperatorSettings(trainer_metrics_port_range=bad)


def test_the_rendezvous_port_is_one_constant():
    assert builders.common.RENDEZVOUS_PORT == layout.RENDEZVOUS_PORT == 29500


# --- the builders --------------------------------------------------------------------------------
SPEC = FineTuneJobSpec.model_validate({
    "baseModel": {"huggingFace": {"id": "org/m"}},
    "dataset": {"train": {"pvc": {"claimName": "datasets", "path": "t.jsonl"}}},
    "output": {"pvc": {"claimName": "models", "path": "out"}},
    "resources": {"nodes": 2, "gpusPerNode": 1},
})


def _ports_in(spec: FineTuneJobSpec, meta: JobMeta, cfg: OperatorSettings) -> dict[str, object]:
    train = builders.train_job(spec, meta, cfg)["spec"]["template"]["spec"]["containers"][0]
    evaluation = builders.eval_job(spec, meta, cfg)["spec"]["template"]["spec"]["containers"][0]
    svc = {p["name"]: p for p in builders.headless_service(spec, meta, cfg)["spec"]["ports"]}
    policy = builders.rendezvous_policy(spec, meta, cfg)
    assert policy is not None
    return {
        "train env": next(e["value"] for e in train["env"] if e["name"] == layout.ENV_METRICS_PORT),
        "eval env": next(e["value"] for e in evaluation["env"] if e["name"] == layout.ENV_METRICS_PORT),
        "container": {p["name"]: p["containerPort"] for p in train["ports"]}["metrics"],
        "service": (svc["metrics"]["port"], svc["metrics"]["targetPort"]),
        "policy": policy["spec"]["ingress"][1]["ports"],
    }


@settings(max_examples=40, deadline=None)
@given(DNS, DNS)
def test_every_builder_names_the_jobs_own_port(ns, name):
    cfg = OperatorSettings(trainer_metrics_port_range=(20000, 29999), operator_namespace="tuneloop-system")
    meta = JobMeta(name=name, namespace=ns, uid="u")
    port = port_in_range(ns, name, 20000, 29999)
    assert _ports_in(SPEC, meta, cfg) == {"train env": str(port), "eval env": str(port), "container": port,
                                          "service": (port, port), "policy": [{"protocol": "TCP", "port": port}]}


def test_without_a_range_the_builders_keep_the_fixed_port():
    cfg = OperatorSettings(trainer_metrics_port=9400, operator_namespace="tuneloop-system")
    got = _ports_in(SPEC, JobMeta(name="a", namespace="ns", uid="u"), cfg)
    assert got == {"train env": "9400", "eval env": "9400", "container": 9400, "service": (9400, 9400),
                   "policy": [{"protocol": "TCP", "port": 9400}]}


# --- the poller ----------------------------------------------------------------------------------
def _trainer_answer(ns: str, job: str, step: float, eval_loss: float) -> str:
    """What a trainer's registry serves (the contract's names and identity labels)."""
    reg = CollectorRegistry()
    values = {"step": step, "total_steps": 200, "eval_loss": eval_loss}
    for g in contract.GAUGES:
        Gauge(g.metric, g.help, list(contract.LABELS), registry=reg).labels(**contract.identity(ns, job)).set(values.get(g.key, float("nan")))
    return generate_latest(reg).decode()


class FakePods:
    """Rank 0 of the polled job: 127.0.0.1, its spec naming `metrics` (or no port: an older pod)."""

    def __init__(self, container_port: int | None):
        self.container_port = container_port

    async def list(self, res, ns, labels=None):
        ports = [{"name": "rendezvous", "containerPort": RENDEZVOUS_PORT}]
        if self.container_port is not None:
            ports.append({"name": "metrics", "containerPort": self.container_port})
        return [{"metadata": {"name": "x-train-0", "labels": {"batch.kubernetes.io/job-completion-index": "0"}},
                 "spec": {"containers": [{"name": "trainer", "ports": ports}]},
                 "status": {"phase": "Running", "podIP": "127.0.0.1"}}]


async def _serving(text: str) -> TestServer:
    async def metrics(req: web.Request) -> web.Response:
        return web.Response(text=text, content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    srv = TestServer(app)
    await srv.start_server()
    return srv


@pytest.fixture(autouse=True)
def _fresh_refusals():
    progress.REFUSED.clear()
    yield
    progress.REFUSED.clear()


async def test_another_jobs_metrics_are_never_this_jobs_progress(caplog):
    """The run of 2026-12-07: hpo-t003's poll reached hpo-t002's trainer (same host port) and recorded its evalLoss."""
    srv = await _serving(_trainer_answer("ns", "hpo-t002", step=10, eval_loss=6.545815))
    try:
        with caplog.at_level(logging.WARNING, logger="tuneloop.finetunejob.progress"):
            got = [await progress.poll(FakePods(srv.port), "ns", "hpo-t003", 1) for _ in range(3)]  # type: ignore[arg-type]
            mine = await progress.poll(FakePods(srv.port), "ns", "hpo-t002", 1)  # type: ignore[arg-type]
    finally:
        await srv.close()
    assert got == [None, None, None]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings  # once per job, not every poll
    assert "ns/hpo-t003" in warnings[0] and "ns/hpo-t002" in warnings[0] and "trainer_metrics_port_range" in warnings[0]
    assert mine is not None and mine["step"] == 10 and mine["evalLoss"] == 6.545815  # the owner still reads its own


async def test_the_same_name_in_another_namespace_is_another_job():
    srv = await _serving(_trainer_answer("team-b", "run", step=3, eval_loss=1.0))
    try:
        assert await progress.poll(FakePods(srv.port), "team-a", "run", 1) is None  # type: ignore[arg-type]
        assert (await progress.poll(FakePods(srv.port), "team-b", "run", 1))["step"] == 3  # type: ignore[arg-type,index]
    finally:
        await srv.close()


async def test_a_port_holder_that_is_no_trainer_is_refused_once(caplog):
    srv = await _serving("# HELP other_thing x\n# TYPE other_thing gauge\nother_thing 1\n")
    try:
        with caplog.at_level(logging.WARNING, logger="tuneloop.finetunejob.progress"):
            assert await progress.poll(FakePods(srv.port), "ns", "j", 1) is None  # type: ignore[arg-type]
            assert await progress.poll(FakePods(srv.port), "ns", "j", 1) is None  # type: ignore[arg-type]
    finally:
        await srv.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "without any tuneloop_trainer_* metric" in warnings[0]


async def test_the_port_comes_from_rank_0s_pod_spec_then_the_setting():
    srv = await _serving(_trainer_answer("ns", "j", step=7, eval_loss=float("nan")))
    try:
        from_spec = await progress.poll(FakePods(srv.port), "ns", "j", 1)  # type: ignore[arg-type]  # fallback 1: unused
        fallback = await progress.poll(FakePods(None), "ns", "j", srv.port)  # type: ignore[arg-type]
        wrong_fallback = await progress.poll(FakePods(None), "ns", "j", 1)  # type: ignore[arg-type]
    finally:
        await srv.close()
    assert from_spec is not None and from_spec["step"] == 7 and "evalLoss" not in from_spec
    assert fallback is not None and fallback["step"] == 7
    assert wrong_fallback is None


async def test_a_warning_comes_again_after_the_job_read_its_own_metrics(caplog):
    foreign = await _serving(_trainer_answer("ns", "other", step=1, eval_loss=2.0))
    own = await _serving(_trainer_answer("ns", "j", step=2, eval_loss=2.0))
    try:
        with caplog.at_level(logging.INFO, logger="tuneloop.finetunejob.progress"):
            assert await progress.poll(FakePods(foreign.port), "ns", "j", 1) is None  # type: ignore[arg-type]
            assert await progress.poll(FakePods(own.port), "ns", "j", 1) is not None  # type: ignore[arg-type]
            assert await progress.poll(FakePods(foreign.port), "ns", "j", 1) is None  # type: ignore[arg-type]
    finally:
        await foreign.close()
        await own.close()
    assert sum(r.levelno == logging.WARNING for r in caplog.records) == 2
    progress.forget("ns", "j")
    assert ("ns", "j") not in progress.REFUSED


@pytest.mark.parametrize(("ports", "want"), [
    ([{"name": "metrics", "containerPort": 21234}], 21234),
    ([{"name": "rendezvous", "containerPort": 29500}], 9400),
    ([{"name": "metrics", "containerPort": "21234"}], 9400),
    ([{"name": "metrics", "containerPort": 0}], 9400),
    ([{"name": "metrics", "containerPort": True}], 9400),
    (None, 9400),
])
def test_metrics_port_of_a_pod(ports, want):
    pod = {"spec": {"containers": [{"name": "trainer", **({"ports": ports} if ports is not None else {})}]}}
    assert progress.metrics_port(pod, 9400) == want
    assert progress.metrics_port({}, 9400) == 9400


def test_parse_progress_reads_only_the_named_jobs_samples():
    reg = CollectorRegistry()
    for g in contract.GAUGES:
        gauge = Gauge(g.metric, g.help, list(contract.LABELS), registry=reg)
        gauge.labels(**contract.identity("ns", "b")).set(9 if g.key == "step" else 100)
        gauge.labels(**contract.identity("ns", "a")).set(5 if g.key == "step" else 100)
    text = generate_latest(reg).decode()
    assert fstate.trainer_identities(text) == {("ns", "a"), ("ns", "b")}
    assert fstate.parse_progress(text, ("ns", "a"))["step"] == 5
    assert fstate.parse_progress(text, ("ns", "b"))["step"] == 9
    assert fstate.parse_progress(text, ("ns", "zzz")) == {}
