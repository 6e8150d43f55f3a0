"""The real operator (kmock) drives Rollouts from a real Prometheus scraping fake vLLM pods.

Prometheus (Debian package `prometheus`) runs on a loopback port with a 1 s scrape interval; the
test acts as the Deployment controller (marks pods available) and controls the canary's error rate.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import time
from pathlib import Path

import pytest
from tuneloop.operator.kube import resources as r

from ..operator.harness import Cluster, OperatorProcess, cluster
from . import samples
from .promstack import FakeVllm, PrometheusServer, pod_labels, prometheus_binary

pytestmark = [
    pytest.mark.operator,
    pytest.mark.timeout(120),
    pytest.mark.skipif(prometheus_binary() is None, reason="needs the prometheus binary: apt-get install -y prometheus"),
]

NS = "default"
NAME = "bot"


class Stack:
    def __init__(self, tmp: Path):
        self.stable = FakeVllm("stable", ttft=0.08, seed=1)
        self.canary = FakeVllm("canary", ttft=0.09, seed=2)
        # each pod carries its ModelVersion's label, as the operator's pods do: the analysis selects each role's version
        self.prom = PrometheusServer(tmp, [(self.stable, pod_labels(NS, NAME, "stable", "bot-v1")),
                                           (self.canary, pod_labels(NS, NAME, "canary", "bot-v2"))])
        self.prom.start()
        self.prom.wait_scraped(2)

    def close(self) -> None:
        self.prom.stop()
        self.stable.close()
        self.canary.close()


@pytest.fixture
def stack(tmp_path: Path):
    s = Stack(tmp_path)
    try:
        yield s
    finally:
        s.close()


def rollout(prom_url: str, steps: list | None = None, spec: dict | None = None, **analysis) -> dict:
    obj = samples.gateway_rollout()
    obj["metadata"] = {"name": NAME, "namespace": NS}
    obj["spec"]["servedModelName"] = NAME
    obj["spec"]["stable"] = {"name": "bot-v1"}
    obj["spec"]["candidate"] = {"name": "bot-v2"}
    obj["spec"]["trafficRouting"]["gatewayAPI"]["httpRoute"] = NAME
    obj["spec"]["serving"] = {"replicas": 2}
    obj["spec"]["steps"] = steps or [
        {"setWeight": 20}, {"analysis": {"count": 3}}, {"setWeight": 50}, {"pause": {"duration": "2s"}}, {"analysis": {"count": 2}}
    ]  # fmt: skip
    obj["spec"]["scaleDownDelaySeconds"] = 2
    obj["spec"].update(spec or {})
    obj["spec"]["analysis"] = {
        "prometheusAddress": prom_url,
        "interval": "1s",
        "window": "5s",
        "initialDelay": "3s",  # three 1 s scrapes of traffic at the new weight
        "count": 3,
        "consecutiveErrorLimit": 2,
        "metrics": [
            {"name": "error-rate", "builtin": "error-rate", "max": 0.05},
            {"name": "ttft-p95", "builtin": "ttft-p95", "maxRelativeToStable": 1.5},
            {"name": "e2e-p95", "builtin": "e2e-latency-p95", "max": 2.0},
            {"name": "aborts", "builtin": "abort-rate", "max": 0.1},
        ],
        **analysis,
    }
    return obj


def model_version(name: str) -> dict:
    mv = copy.deepcopy(samples.model_version(name))
    mv["metadata"] = {"name": name, "namespace": NS}
    return mv


async def deployment_controller(kc: Cluster, stop: asyncio.Event) -> None:
    """Play the Deployment controller: every Deployment's pods become available."""
    while not stop.is_set():
        for dep in await kc.list(r.DEPLOYMENTS, NS):
            n = dep["spec"].get("replicas", 1)
            want = {"observedGeneration": dep["metadata"].get("generation", 1), "replicas": n, "updatedReplicas": n, "readyReplicas": n, "availableReplicas": n}
            if {k: (dep.get("status") or {}).get(k) for k in want} != want:
                await kc.client.patch(r.DEPLOYMENTS, NS, dep["metadata"]["name"], {"status": want}, subresource="status")
        await asyncio.sleep(0.2)


class Watch:
    """Records every canary weight and phase the Rollout shows, while the scenario runs."""

    def __init__(self, kc: Cluster):
        self.kc, self.weights, self.phases = kc, [], []

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            route = await self.kc.get(r.HTTPROUTES, NS, NAME)
            if route:
                w = route["spec"]["rules"][0]["backendRefs"][1]["weight"]
                if not self.weights or self.weights[-1] != w:
                    self.weights.append(w)
            ro = await self.kc.get(r.ROLLOUTS, NS, NAME)
            phase = ((ro or {}).get("status") or {}).get("phase")
            if phase and (not self.phases or self.phases[-1] != phase):
                self.phases.append(phase)
            await asyncio.sleep(0.1)


async def settled(watch: Watch) -> None:
    """Let the watcher (polling every 0.1 s) catch up with the writes that came with the final status."""
    await asyncio.sleep(0.5)


async def scenario(tmp_path: Path, prom: PrometheusServer, body, steps: list | None = None, spec: dict | None = None, **analysis):
    async with cluster(tmp_path) as kc:
        stop = asyncio.Event()
        watch = Watch(kc)
        tasks = [asyncio.create_task(deployment_controller(kc, stop)), asyncio.create_task(watch.run(stop))]
        # the admin's allowlist names this Prometheus; the Rollout's prometheusAddress is its exact address (issue 25)
        op = OperatorProcess(kc.kubeconfig, tmp_path, env={"TUNELOOP_METRICS_PROVIDERS": f"loop={prom.url}"})
        op.start()
        try:
            for mv in ("bot-v1", "bot-v2"):
                await kc.apply(model_version(mv))
            await kc.apply(rollout(prom.url, steps, spec, **analysis))
            await body(kc, watch)
        except BaseException:
            print(op.tail(120))
            raise
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            op.stop()


def phase(obj: dict) -> str | None:
    return (obj.get("status") or {}).get("phase")


async def test_healthy_canary_is_promoted_through_all_steps(stack: Stack, tmp_path: Path):
    async def body(kc: Cluster, watch: Watch):
        ro = await kc.wait_for(r.ROLLOUTS, NS, NAME, lambda o: phase(o) in ("Promoted", "RolledBack", "Paused"), timeout=60)
        st = ro["status"]
        await settled(watch)
        assert st["phase"] == "Promoted", st
        assert st["stableModelVersion"] == "bot-v2" and st["canaryWeight"] == 0
        assert watch.weights == [0, 20, 50, 0], watch.weights
        assert "RolledBack" not in watch.phases and "Promoted" == watch.phases[-1]
        ms = st["measurements"]
        assert {m["metric"] for m in ms} == {"error-rate", "ttft-p95", "e2e-p95", "aborts"}
        by_step = {i: len([m for m in ms if m["stepIndex"] == i]) for i in (1, 3, 4)}
        assert all(m["phase"] == "Successful" for m in ms) and by_step[1] == 4 * 3 and by_step[4] == 4 * 2, by_step
        # nothing measured before initialDelay after the switch to 50%; the window covers only the traffic since then
        changed = dt.datetime.fromisoformat(st["weightChangedAt"])
        assert all(dt.datetime.fromisoformat(m["at"]) - changed >= dt.timedelta(seconds=3) for m in ms if m["stepIndex"] >= 3)
        ttft = next(m for m in ms if m["metric"] == "ttft-p95")
        assert 0.05 < ttft["value"] < 0.2 and 0.05 < ttft["stableValue"] < 0.2
        stable = await kc.get(r.DEPLOYMENTS, NS, "bot-stable")
        assert stable["spec"]["template"]["metadata"]["labels"]["tuneloop.dev/model-version"] == "bot-v2"
        await kc.wait_for(r.DEPLOYMENTS, NS, "bot-canary", lambda d: d["spec"]["replicas"] == 0, timeout=8)
        new = await kc.wait_for(r.MODELVERSIONS, NS, "bot-v2", lambda o: phase(o) == "Serving", timeout=5)
        assert new["status"]["rollout"] == NAME
        await kc.wait_for(r.MODELVERSIONS, NS, "bot-v1", lambda o: phase(o) == "Retired", timeout=5)
        reasons = [e["reason"] for e in await kc.client.events_for(NS, NAME, "Rollout")]
        assert reasons.count("AnalysisPassed") == 2 and "Promoted" in reasons

    await scenario(tmp_path, stack.prom, body)


async def test_error_burst_rolls_back(stack: Stack, tmp_path: Path):
    async def body(kc: Cluster, watch: Watch):
        await kc.wait_for(r.ROLLOUTS, NS, NAME, lambda o: any(m["phase"] == "Successful" for m in (o.get("status") or {}).get("measurements", [])), timeout=30)
        stack.canary.set(error_rate=0.5)  # the burst
        ro = await kc.wait_for(r.ROLLOUTS, NS, NAME, lambda o: phase(o) in ("Promoted", "RolledBack"), timeout=30)
        st = ro["status"]
        await settled(watch)
        assert st["phase"] == "RolledBack" and st["canaryWeight"] == 0 and st["stableModelVersion"] == "bot-v1"
        cond = next(c for c in st["conditions"] if c["type"] == "RolledBack")
        assert cond["status"] == "True" and cond["reason"] == "AnalysisFailed"
        failed = [m for m in st["measurements"] if m["phase"] == "Failed"]
        assert failed and failed[0]["metric"] == "error-rate" and failed[0]["value"] > 0.05
        assert "error-rate" in cond["message"] and f"{failed[0]['value']:.6g}" in cond["message"]
        route = await kc.get(r.HTTPROUTES, NS, NAME)
        assert [b["weight"] for b in route["spec"]["rules"][0]["backendRefs"]] == [100, 0]
        await kc.wait_for(r.DEPLOYMENTS, NS, "bot-canary", lambda d: d["spec"]["replicas"] == 0, timeout=8)
        mv = await kc.wait_for(r.MODELVERSIONS, NS, "bot-v2", lambda o: phase(o) == "RolledBack", timeout=5)
        assert "error-rate" in mv["status"]["message"]
        events = await kc.client.events_for(NS, NAME, "Rollout")
        assert any(e["type"] == "Warning" and e["reason"] == "AnalysisFailed" and "error-rate" in e["message"] for e in events)
        assert "Promoted" not in watch.phases and watch.weights[-1] == 0

    await scenario(tmp_path, stack.prom, body)


async def test_stopped_prometheus_never_promotes(stack: Stack, tmp_path: Path):
    async def body(kc: Cluster, watch: Watch):
        await kc.wait_for(r.ROLLOUTS, NS, NAME, lambda o: any(m["phase"] == "Successful" for m in (o.get("status") or {}).get("measurements", [])), timeout=30)
        stack.prom.stop(kill=True)  # an abrupt outage in the middle of the first analysis step
        ro = await kc.wait_for(r.ROLLOUTS, NS, NAME, lambda o: phase(o) in ("Promoted", "RolledBack"), timeout=30)
        st = ro["status"]
        await settled(watch)
        assert st["phase"] == "RolledBack" and "Promoted" not in watch.phases
        cond = next(c for c in st["conditions"] if c["type"] == "RolledBack")
        assert cond["reason"] == "AnalysisError" and "unreachable" in cond["message"]
        errors = [m for m in st["measurements"] if m["phase"] == "Error"]
        assert len(errors) >= 3 * 4 and all("unreachable" in m["message"] for m in errors)
        assert watch.weights[-1] == 0 and 50 not in watch.weights

    await scenario(tmp_path, stack.prom, body)


async def test_background_analysis_rolls_back_during_a_pause_within_an_interval(stack: Stack, tmp_path: Path):
    """Defect 5: a failing canary served errors for a whole pause step (18.8 s of a 20 s pause)."""
    steps = [{"setWeight": 20}, {"pause": {"duration": "40s"}}, {"analysis": {"count": 2}}]

    async def body(kc: Cluster, watch: Watch):
        def background_ok(o: dict) -> bool:
            ms = (o.get("status") or {}).get("measurements", [])
            return len([m for m in ms if m["stepIndex"] == 1 and m["phase"] == "Successful"]) >= 8

        await kc.wait_for(r.ROLLOUTS, NS, NAME, background_ok, timeout=30)
        stack.canary.set(error_rate=0.5)
        burst = time.monotonic()
        ro = await kc.wait_for(r.ROLLOUTS, NS, NAME, lambda o: phase(o) in ("Promoted", "RolledBack"), timeout=30)
        took = time.monotonic() - burst
        st = ro["status"]
        await settled(watch)
        assert st["phase"] == "RolledBack" and st["currentStepIndex"] == 1, st  # still in the 40 s pause
        cond = next(c for c in st["conditions"] if c["type"] == "RolledBack")
        assert cond["reason"] == "AnalysisFailed" and "background analysis at step 2" in cond["message"] and "error-rate" in cond["message"]
        # first failing sample <= 1 scrape after the burst, then <= 1 interval to the next measurement, + tick and write time
        assert took < 1 + 1 + 1.5, took
        assert watch.weights[-1] == 0

    await scenario(tmp_path, stack.prom, body, steps)


async def test_a_canary_that_serves_nothing_is_rolled_back_at_the_progress_deadline(stack: Stack, tmp_path: Path):
    """Defect 4: no data -> Inconclusive -> Paused forever with traffic on a dead canary."""
    stack.canary.set(rps=0.0)
    steps = [{"setWeight": 20}, {"analysis": {"count": 3}}, {"setWeight": 50}]

    async def body(kc: Cluster, watch: Watch):
        ro = await kc.wait_for(r.ROLLOUTS, NS, NAME, lambda o: phase(o) in ("Promoted", "RolledBack"), timeout=40)
        st = ro["status"]
        await settled(watch)
        assert st["phase"] == "RolledBack", st
        assert "Paused" in watch.phases  # inconclusive first, as before: the deadline ends the pause
        cond = next(c for c in st["conditions"] if c["type"] == "RolledBack")
        assert cond["reason"] == "ProgressDeadlineExceeded" and "no data from the canary at 20% for 8s" in cond["message"]
        assert all(m["phase"] == "Inconclusive" and m.get("value") is None for m in st["measurements"] if m["metric"] == "error-rate")
        assert watch.weights[-1] == 0 and 50 not in watch.weights

    await scenario(tmp_path, stack.prom, body, steps, {"progressDeadlineSeconds": 8})


async def test_a_canary_whose_answers_break_the_output_contract_is_rolled_back(stack: Stack, tmp_path: Path):
    """Issue 22: the built-in contract-violation-rate (the output guard's counter) in a real Prometheus rolls back a
    canary whose answers stop following the ModelVersion's output contract, while its error rate stays 0."""
    async def body(kc: Cluster, watch: Watch):
        await kc.wait_for(r.ROLLOUTS, NS, NAME, lambda o: any(m["phase"] == "Successful" for m in (o.get("status") or {}).get("measurements", [])), timeout=30)
        stack.canary.set(violation_rate=0.4)
        ro = await kc.wait_for(r.ROLLOUTS, NS, NAME, lambda o: phase(o) in ("Promoted", "RolledBack"), timeout=30)
        st = ro["status"]
        assert st["phase"] == "RolledBack" and st["canaryWeight"] == 0
        failed = [m for m in st["measurements"] if m["phase"] == "Failed"]
        assert failed and failed[0]["metric"] == "contract" and failed[0]["value"] > 0.05
        assert all(m["value"] == 0 for m in st["measurements"] if m["metric"] == "error-rate")

    await scenario(tmp_path, stack.prom, body, metrics=[{"name": "error-rate", "builtin": "error-rate", "max": 0.05},
                                                        {"name": "contract", "builtin": "contract-violation-rate", "max": 0.05}])


async def test_a_canary_whose_answers_turn_harmful_is_rolled_back_while_the_topic_rate_holds(stack: Stack, tmp_path: Path):
    """Issue 22: the built-in harmful-rate (the guard's tuneloop_guard_checks_total, answers) in a real Prometheus rolls back
    a canary whose answers its harmful-content check starts flagging; topic-violation-rate (the requests' side, 10 % of
    traffic off-topic on both roles) reads its value and holds under its max; the flagged requests' input series do not count."""
    stack.canary.set(off_topic_rate=0.1)
    stack.stable.set(off_topic_rate=0.1)

    async def body(kc: Cluster, watch: Watch):
        await kc.wait_for(r.ROLLOUTS, NS, NAME, lambda o: any(m["phase"] == "Successful" and m["metric"] == "harmful"
                                                              for m in (o.get("status") or {}).get("measurements", [])), timeout=30)
        stack.canary.set(harmful_rate=0.3)
        ro = await kc.wait_for(r.ROLLOUTS, NS, NAME, lambda o: phase(o) in ("Promoted", "RolledBack"), timeout=30)
        st = ro["status"]
        assert st["phase"] == "RolledBack" and st["canaryWeight"] == 0
        failed = [m for m in st["measurements"] if m["phase"] == "Failed"]
        assert failed and {m["metric"] for m in failed} == {"harmful"} and failed[0]["value"] > 0.05
        topic = [m["value"] for m in st["measurements"] if m["metric"] == "topic" and m.get("value") is not None]
        assert topic and all(0.0 < v < 0.3 for v in topic)  # ~0.1 of the requests

    await scenario(tmp_path, stack.prom, body, metrics=[{"name": "harmful", "builtin": "harmful-rate", "max": 0.05},
                                                        {"name": "topic", "builtin": "topic-violation-rate", "max": 0.5}])
