"""The mirror (shadow) step against a real Prometheus, with real output guards (kmock API, the reconciler ticked by the
test in real time, the guards' mirror set over HTTP by the operator's own client).

Two stable "pods" are real guards (tuneloop.guard, on 127.0.0.1 and 127.0.0.2: the pod IPs in kmock) in front of a fake
stable engine; a traffic generator sends live requests through them and checks that every answer is the stable's.
The guards copy the requests to a fake candidate engine (standing in for the candidate's Service, whose cluster DNS name
is the guards' only allowed target), compare the answers and export the shadow counters; Prometheus scrapes them every
second. A candidate that answers like the stable is promoted after its mirror step; the next one, which answers
otherwise half of the time, is rolled back by its shadow analysis; after each the guards hold no mirror.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import datetime as dt
import random
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest
from aiohttp import web
from tuneloop.guard.proxy import MIRROR_PATH, Guard, ShadowJob
from tuneloop.operator.analysis import prometheus
from tuneloop.operator.builders.serving import ServingConfig
from tuneloop.operator.kube import resources as r
from tuneloop.operator.rollout.reconcile import Reconciler

from ..operator.harness import cluster
from . import samples
from .promstack import PrometheusServer, free_port, prometheus_binary

pytestmark = [
    pytest.mark.operator,
    pytest.mark.timeout(150),
    pytest.mark.skipif(prometheus_binary() is None, reason="needs the prometheus binary: apt-get install -y prometheus"),
]
NS, NAME = "default", "bot"
TARGET = "http://bot-canary.default.svc:8000"  # serving.mirror_target of the Rollout below
SCHEMA = {"type": "object", "required": ["category"], "properties": {"category": {"enum": ["billing", "shipping"]}}}
STABLE_ANSWER = '{"category": "billing"}'


class ClusterDnsGuard(Guard):
    """A real guard whose copies to the candidate's Service go to the fake candidate engine (no cluster DNS here)."""

    def __init__(self, *args, candidate_url: str, **kw):
        super().__init__(*args, **kw)
        self.candidate_url = candidate_url

    async def shadow(self, job: ShadowJob) -> None:
        assert job.config.target == TARGET
        await super().shadow(dataclasses.replace(job, config=dataclasses.replace(job.config, target=self.candidate_url)))


async def serve(app: web.Application, *sites: tuple[str, int]) -> web.AppRunner:
    runner = web.AppRunner(app)
    await runner.setup()
    for host, port in sites:
        await web.TCPSite(runner, host, port).start()
    return runner


def engine(answer) -> web.Application:
    async def chat(_: web.Request) -> web.Response:
        return web.json_response({"choices": [{"index": 0, "message": {"role": "assistant", "content": answer()}}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


async def traffic(urls: list[str], wrong: list[str], stop: asyncio.Event) -> None:
    """Live requests through every guard (about 20 a second each); any answer but the stable's is recorded."""
    async with aiohttp.ClientSession() as sess:
        while not stop.is_set():
            for url in urls:
                async with sess.post(url + "/v1/chat/completions", json={"model": "support-bot", "messages": [
                        {"role": "user", "content": "where is my refund?"}]}) as resp:
                    doc = await resp.json()
                    if doc["choices"][0]["message"]["content"] != STABLE_ANSWER:
                        wrong.append(str(doc))
            await asyncio.sleep(0.05)


def objects(guard_port: int) -> tuple[dict, list[dict]]:
    mvs = []
    for n in ("v1", "v2", "v3"):
        mv = copy.deepcopy(samples.model_version(n))
        mv["metadata"] = {"name": n, "namespace": NS}
        mvs.append(mv)
    ro = samples.gateway_rollout()
    ro["metadata"] = {"name": NAME, "namespace": NS}
    ro["spec"].update(stable={"name": "v1"}, candidate={"name": "v2"}, steps=[{"mirror": {"percent": 100, "duration": "9s"}}])
    ro["spec"]["serving"]["guard"] = {"port": guard_port}
    ro["spec"]["trafficRouting"]["gatewayAPI"]["httpRoute"] = NAME
    ro["spec"]["analysis"] = {"interval": "2s", "initialDelay": "3s", "inconclusiveLimit": 3, "metrics": [
        {"name": "agreement", "builtin": "shadow-agreement-rate", "min": 0.9},
        {"name": "shadow-contract", "builtin": "shadow-contract-violation-rate", "max": 0.05},
        {"name": "shadow-errors", "builtin": "shadow-error-rate", "max": 0.05}]}
    return ro, mvs


async def stable_pod(kc, i: int, ip: str) -> None:
    name = f"{NAME}-stable-{i}"
    await kc.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS, "labels": {
        "app.kubernetes.io/name": "vllm", "app.kubernetes.io/component": "serving", "tuneloop.dev/rollout": NAME, "tuneloop.dev/role": "stable",
        "tuneloop.dev/model-version": "v1"}}, "spec": {"containers": [{"name": "vllm", "image": "x"}]}})
    await kc.client.patch(r.PODS, NS, name, {"status": {"phase": "Running", "podIP": ip}}, subresource="status")


async def until(kc, rec, check, timeout: float = 45.0) -> dict:
    """Tick twice a second (real time, real Prometheus) until `check(rollout status)` holds; the candidate's pods serve."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        for role in ("canary", "stable"):
            if await kc.get(r.DEPLOYMENTS, NS, f"{NAME}-{role}") is not None:
                await kc.make_available(NS, f"{NAME}-{role}")  # the emulator has no Deployment controller
        await rec.tick(await kc.get(r.ROLLOUTS, NS, NAME), dt.datetime.now(dt.UTC))
        st = (await kc.get(r.ROLLOUTS, NS, NAME))["status"]
        if check(st):
            return st
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out; phase {st.get('phase')}: {st.get('message')}; mirror {st.get('mirror')}")
        await asyncio.sleep(0.5)


async def test_a_candidate_that_answers_like_the_stable_is_promoted_and_one_that_does_not_is_rolled_back(tmp_path: Path):
    rng = random.Random(5)
    bad = {"on": False}
    cand_port, stable_port, port, scrape2 = free_port(), free_port(), free_port(), free_port()
    candidate = await serve(engine(lambda: "billing, I think" if bad["on"] and rng.random() < 0.5 else STABLE_ANSWER),
                            ("127.0.0.1", cand_port))
    stable = await serve(engine(lambda: STABLE_ANSWER), ("127.0.0.1", stable_port))
    guards = [ClusterDnsGuard(f"http://127.0.0.1:{stable_port}", SCHEMA, mirror_targets=(TARGET,),
                              candidate_url=f"http://127.0.0.1:{cand_port}") for _ in range(2)]
    runners = [await serve(guards[0].app(), ("127.0.0.1", port)), await serve(guards[1].app(), ("127.0.0.2", port), ("127.0.0.1", scrape2))]
    labels = {"namespace": NS, "tuneloop_dev_rollout": NAME, "tuneloop_dev_role": "stable", "tuneloop_dev_model_version": "v1"}
    prom = PrometheusServer(tmp_path, [(SimpleNamespace(port=port), labels), (SimpleNamespace(port=scrape2), labels)])
    stop, wrong = asyncio.Event(), []
    load = asyncio.create_task(traffic([f"http://127.0.0.1:{port}", f"http://127.0.0.2:{port}"], wrong, stop))
    try:
        prom.start()
        await asyncio.to_thread(prom.wait_scraped, 2)  # (the guards answer the scrapes on this loop meanwhile)
        ro, mvs = objects(port)
        async with cluster(tmp_path) as kc:
            for mv in mvs:
                await kc.apply(mv)
            await kc.apply(ro)
            for i, ip in enumerate(("127.0.0.1", "127.0.0.2")):
                await stable_pod(kc, i, ip)
            rec = Reconciler(kc.client, ServingConfig(), prom.url, provider_factory=prometheus.provider_for)

            st = await until(kc, rec, lambda st: st.get("phase") in ("Promoted", "RolledBack", "Paused"))
            assert st["phase"] == "Promoted" and st["stableModelVersion"] == "v2", st.get("message")
            assert st["canaryWeight"] == 0 and st["mirror"]["guards"] == "2/2"
            values = [m["value"] for m in st["measurements"] if m["metric"] == "agreement" and m["value"] is not None]
            assert values and min(values) >= 0.99, st["measurements"]
            await until(kc, rec, lambda st: st["mirror"].get("cleared") is True, timeout=10)
            async with aiohttp.ClientSession() as sess:
                for ip in ("127.0.0.1", "127.0.0.2"):
                    async with sess.get(f"http://{ip}:{port}{MIRROR_PATH}") as resp:
                        assert await resp.json() == {}

            bad["on"] = True
            await kc.client.patch(r.ROLLOUTS, NS, NAME, {"spec": {"candidate": {"name": "v3"}}})
            st = await until(kc, rec, lambda st: st.get("candidateModelVersion") == "v3"
                             and st.get("phase") in ("Promoted", "RolledBack", "Paused"))
            assert st["phase"] == "RolledBack" and st["stableModelVersion"] == "v2", st.get("message")
            assert next(c for c in st["conditions"] if c["type"] == "RolledBack")["reason"] == "AnalysisFailed"
            assert "shadow analysis" in st["message"]
            failed = [m for m in st["measurements"] if m["phase"] == "Failed"]
            assert failed and all(m["metric"] in ("agreement", "shadow-contract") for m in failed)
            assert (await kc.get(r.MODELVERSIONS, NS, "v3"))["status"]["phase"] == "RolledBack"
            await until(kc, rec, lambda st: st["mirror"].get("cleared") is True, timeout=10)
        assert not wrong, wrong[:3]  # no client ever saw a candidate's answer
    finally:
        stop.set()
        await asyncio.gather(load, return_exceptions=True)
        prom.stop()
        for runner in (*runners, candidate, stable):
            await runner.cleanup()
