"""The drift watch against a real Prometheus scraping a fake vLLM pod (kmock API, the reconciler ticked by the test).

The serving version's ModelVersion carries the train split's token-length histograms (as `prepare`
records them); the fake pod's served lengths first match them, then its prompts get ten times longer
(the stand-in's `prompt_tokens` knob) and its error rate rises: the Rollout's and the ModelVersion's
Drifted and Degraded conditions and the tuneloop_serving_drift gauge follow.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import math
import random
from pathlib import Path

import pytest
from tuneloop.contract.tokenlengths import token_lengths
from tuneloop.operator.analysis import prometheus
from tuneloop.operator.builders.serving import ServingConfig
from tuneloop.operator.kube import resources as r
from tuneloop.operator.rollout import telemetry as rm
from tuneloop.operator.rollout.reconcile import Reconciler

from ..operator.harness import cluster
from . import samples
from .promstack import MAX_MODEL_LEN, FakeVllm, PrometheusServer, pod_labels, prometheus_binary

pytestmark = [
    pytest.mark.operator,
    pytest.mark.timeout(120),
    pytest.mark.skipif(prometheus_binary() is None, reason="needs the prometheus binary: apt-get install -y prometheus"),
]
NS, NAME, MV = "default", "bot", "bot-v1"


def trained_lengths(n: int = 2000) -> dict:
    """The histograms prepare would record for a train split like the fake pod's default traffic."""
    rng = random.Random(7)
    draw = lambda median: max(1, min(MAX_MODEL_LEN, round(rng.lognormvariate(math.log(median), 0.3))))  # noqa: E731
    return token_lengths([draw(40.0) for _ in range(n)], [draw(12.0) for _ in range(n)], 2048)


def objects(prom_url: str) -> tuple[dict, dict]:
    mv = copy.deepcopy(samples.model_version(MV))
    mv["metadata"] = {"name": MV, "namespace": NS}
    mv["spec"]["lineage"] = {"tokenLengths": trained_lengths()}
    ro = samples.gateway_rollout()
    ro["metadata"] = {"name": NAME, "namespace": NS}
    ro["spec"].pop("candidate")
    ro["spec"]["stable"] = {"name": MV}
    ro["spec"]["trafficRouting"]["gatewayAPI"]["httpRoute"] = NAME
    ro["spec"]["analysis"]["prometheusAddress"] = prom_url
    ro["spec"]["driftWatch"] = {"window": "6s", "interval": "1s", "minSamples": 100, "psiThreshold": 0.25,
                                "maxErrorRateIncrease": 0.05}
    return mv, ro


async def until(kc, rec, check, timeout: float = 40.0) -> dict:
    """Tick every second (real time, real Prometheus) until `check(rollout status, model version status)` holds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        dep = await kc.get(r.DEPLOYMENTS, NS, f"{NAME}-stable")
        if dep is not None and not (dep.get("status") or {}).get("availableReplicas"):
            await kc.make_available(NS, f"{NAME}-stable")  # the emulator has no Deployment controller
        obj = await kc.get(r.ROLLOUTS, NS, NAME)
        await rec.tick(obj, dt.datetime.now(dt.UTC))
        st = (await kc.get(r.ROLLOUTS, NS, NAME))["status"]
        mv = (await kc.get(r.MODELVERSIONS, NS, MV)).get("status") or {}
        if check(st, mv):
            return st
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out; drift status: {st.get('drift')}; conditions {st.get('conditions')}")
        await asyncio.sleep(1.0)


def cond(status: dict, type_: str) -> dict:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})


async def test_prompt_shift_sets_drifted_and_an_error_burst_sets_degraded(tmp_path: Path):
    pod = FakeVllm("stable", rps=80, seed=3)
    prom = PrometheusServer(tmp_path, [(pod, pod_labels(NS, NAME, "stable", MV))])
    try:
        prom.start()
        prom.wait_scraped(1)
        mv, ro = objects(prom.url)
        async with cluster(tmp_path) as kc:
            await kc.apply(mv)
            await kc.apply(ro)
            rec = Reconciler(kc.client, ServingConfig(), "http://unused", provider_factory=prometheus.provider_for)

            st = await until(kc, rec, lambda st, mv: cond(st, "Drifted").get("status") == "False"
                             and cond(st, "Degraded").get("status") == "False")
            assert st["phase"] == "Promoted" and st["drift"]["modelVersion"] == MV
            assert st["drift"]["baselineErrorRate"] == 0 and st["drift"]["baselineLatencyP95"] > 0
            sig = {s["signal"]: s for s in st["drift"]["signals"]}
            # below the threshold (0.25), not near 0: PSI over 8 buckets from ~100 samples carries sampling noise of
            # about (buckets - 1) / samples ≈ 0.07 (0.104 seen on a loaded machine, where fewer requests fit a window)
            assert sig["prompt_tokens"]["state"] == "OK" and sig["prompt_tokens"]["value"] < 0.25
            assert rm.SERVING_DRIFT.labels(NS, NAME, MV, "prompt_tokens")._value.get() < 0.25

            pod.set(prompt_tokens=400.0)  # the served prompts shift: ten times longer
            st = await until(kc, rec, lambda st, mv: cond(st, "Drifted").get("status") == "True"
                             and cond(mv, "Drifted").get("status") == "True")
            sig = {s["signal"]: s for s in st["drift"]["signals"]}
            assert sig["prompt_tokens"]["state"] == "Drifted" and sig["prompt_tokens"]["value"] > 0.25
            assert sig["generation_tokens"]["state"] == "OK"
            assert cond(st, "Drifted")["reason"] == "DistributionShifted"
            assert rm.SERVING_DRIFT.labels(NS, NAME, MV, "prompt_tokens")._value.get() > 0.25
            mv_status = (await kc.get(r.MODELVERSIONS, NS, MV))["status"]
            assert cond(mv_status, "Drifted")["reason"] == "DistributionShifted"
            assert mv_status["phase"] == "Serving"  # the phase is still the rollout's own field

            pod.set(error_rate=0.3)
            st = await until(kc, rec, lambda st, mv: cond(st, "Degraded").get("status") == "True"
                             and cond(mv, "Degraded").get("status") == "True")
            assert cond(st, "Degraded")["reason"] == "ServingDegraded" and "error_rate" in cond(st, "Degraded")["message"]
    finally:
        prom.stop()
        pod.close()
