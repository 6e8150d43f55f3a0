"""The A/B experiment step against a real Prometheus (kmock API, the reconciler ticked by the test in real time).

A small exporter plays the application: it counts users' votes per answering ModelVersion,
`app_feedback_total{model, vote}`, at a known thumbs-up share per version, and Prometheus scrapes it every second.
The experiment promotes a candidate that users like better, and rolls back the next one that they like less, each
from the counts Prometheus returns for the window since its split took effect; the result lands on the ModelVersion.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import random
import threading
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter
from tuneloop.operator.analysis import prometheus
from tuneloop.operator.builders.serving import ServingConfig
from tuneloop.operator.kube import resources as r
from tuneloop.operator.rollout.reconcile import Reconciler

from ..operator.harness import cluster
from . import samples
from .promstack import PrometheusServer, free_port, prometheus_binary, serve_text_format

pytestmark = [
    pytest.mark.operator,
    pytest.mark.timeout(150),
    pytest.mark.skipif(prometheus_binary() is None, reason="needs the prometheus binary: apt-get install -y prometheus"),
]
NS, NAME = "default", "bot"
FEEDBACK = {"successes": 'sum(increase(app_feedback_total{model="{{modelVersion}}", vote="up"}[{{window}}]))',
            "trials": 'sum(increase(app_feedback_total{model="{{modelVersion}}"}[{{window}}]))'}


class FeedbackApp:
    """The application's /metrics: votes per answering version, `rate` a second each, thumbs-up with `share[model]`."""

    def __init__(self, share: dict[str, float], rate: float = 40.0, seed: int = 11):
        self.share, self.rate, self.rng = share, rate, random.Random(seed)
        self.registry = CollectorRegistry()
        self.votes = Counter("app_feedback", "Users' votes on answers.", ["model", "vote"], registry=self.registry)
        self.port = free_port()
        self.server = serve_text_format(self.registry, self.port)
        self._stop = threading.Event()
        threading.Thread(target=self._run, daemon=True, name="feedback-app").start()

    def _run(self) -> None:
        tick = 0.05
        while not self._stop.wait(tick):
            for model, p in self.share.items():
                for _ in range(int(self.rate * tick) + (self.rng.random() < (self.rate * tick) % 1)):
                    self.votes.labels(model, "up" if self.rng.random() < p else "down").inc()

    def close(self) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()


def objects() -> tuple[dict, list[dict]]:
    mvs = []
    for n in ("v1", "v2", "v3"):
        mv = copy.deepcopy(samples.model_version(n))
        mv["metadata"] = {"name": n, "namespace": NS}
        mvs.append(mv)
    ro = samples.gateway_rollout()
    ro["metadata"] = {"name": NAME, "namespace": NS}
    ro["spec"].update(stable={"name": "v1"}, candidate={"name": "v2"})
    ro["spec"]["trafficRouting"]["gatewayAPI"]["httpRoute"] = NAME
    ro["spec"]["steps"] = [{"experiment": {"split": 50, "duration": "40s", "minSamples": 150, "minimumEffect": 0.05,
                                           "metric": {"name": "thumbs-up", "proportion": FEEDBACK}}}]
    ro["spec"]["analysis"] = {"interval": "2s", "initialDelay": "2s", "metrics": []}
    return ro, mvs


async def until(kc, rec, check, timeout: float = 50.0) -> dict:
    """Tick every second (real time, real Prometheus) until `check(rollout status)` holds; the canary pods serve."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        for role in ("canary", "stable"):
            dep = await kc.get(r.DEPLOYMENTS, NS, f"{NAME}-{role}")
            if dep is not None:
                await kc.make_available(NS, f"{NAME}-{role}")  # the emulator has no Deployment controller
        await rec.tick(await kc.get(r.ROLLOUTS, NS, NAME), dt.datetime.now(dt.UTC))
        st = (await kc.get(r.ROLLOUTS, NS, NAME))["status"]
        if check(st):
            return st
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out; phase {st.get('phase')}: {st.get('message')}; experiment {st.get('experiment')}")
        await asyncio.sleep(1.0)


async def test_users_feedback_promotes_a_better_candidate_and_rolls_back_a_worse_one(tmp_path: Path):
    app = FeedbackApp({"v1": 0.40, "v2": 0.70, "v3": 0.30})
    prom = PrometheusServer(tmp_path, [(app, {"namespace": NS, "job_app": "support-ui"})])
    try:
        prom.start()
        prom.wait_scraped(1)
        ro, mvs = objects()
        async with cluster(tmp_path) as kc:
            for mv in mvs:
                await kc.apply(mv)
            await kc.apply(ro)
            rec = Reconciler(kc.client, ServingConfig(), prom.url, provider_factory=prometheus.provider_for)

            st = await until(kc, rec, lambda st: st.get("phase") in ("Promoted", "RolledBack", "Paused"))
            assert st["phase"] == "Promoted" and st["stableModelVersion"] == "v2", st.get("message")
            ex = st["experiment"]
            assert ex["decision"] == "Better" and ex["measurements"][-1]["candidate"]["samples"] >= 150
            # decided before the end of the duration: on the 99.9 % interval, from what Prometheus counted
            assert ex["measurements"][-1]["level"] == 0.999 and ex["measurements"][-1]["low"] > 0
            result = (await kc.get(r.MODELVERSIONS, NS, "v2"))["status"]["experiment"]
            assert result["decision"] == "Better" and result["candidate"]["modelVersion"] == "v2"
            assert 0.55 < result["candidate"]["estimate"] < 0.85 and 0.25 < result["stable"]["estimate"] < 0.55

            await kc.client.patch(r.ROLLOUTS, NS, NAME, {"spec": {"candidate": {"name": "v3"}}})
            st = await until(kc, rec, lambda st: st.get("candidateModelVersion") == "v3"
                             and st.get("phase") in ("Promoted", "RolledBack", "Paused"))
            assert st["phase"] == "RolledBack" and st["stableModelVersion"] == "v2", st.get("message")
            assert next(c for c in st["conditions"] if c["type"] == "RolledBack")["reason"] == "ExperimentWorse"
            mv = (await kc.get(r.MODELVERSIONS, NS, "v3"))["status"]
            assert mv["phase"] == "RolledBack" and mv["experiment"]["decision"] == "Worse"
            assert mv["experiment"]["stable"]["modelVersion"] == "v2" and mv["experiment"]["high"] < 0
    finally:
        prom.stop()
        app.close()
