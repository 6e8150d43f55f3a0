"""sharedBase reconcile ticks against kmock: one Deployment of the base, adapters loaded into every pod through a fake
vLLM runtime-LoRA API, weights on an InferenceModelRewrite, analysis from the traffic layer's per-model series."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from tuneloop.operator.analysis.prometheus import PrometheusProvider
from tuneloop.operator.builders.serving import ServingConfig
from tuneloop.operator.kube import ApiError, KubeClient
from tuneloop.operator.kube import resources as r
from tuneloop.operator.rollout.reconcile import Reconciler

from ..operator.harness import cluster
from . import samples
from .kmock_rollout import NS, rollout_objs, setup, ticker

pytestmark = pytest.mark.operator
T0 = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)


class FakeVllm:
    """vLLM's runtime LoRA API on every pod: url -> loaded adapters; `refuse` names adapters every load of fails."""

    def __init__(self):
        self.loaded: dict[str, set[str]] = {}
        self.down: set[str] = set()
        self.refuse: dict[str, str] = {}
        self.calls: list[tuple[str, str, str]] = []

    async def adapters(self, base_url):
        if base_url in self.down:
            return None
        return frozenset(self.loaded.setdefault(base_url, set()))

    async def load(self, base_url, name, path):
        self.calls.append(("load", base_url, name))
        if name in self.refuse:
            return self.refuse[name]
        assert path.startswith("/models/adapters/"), path
        self.loaded.setdefault(base_url, set()).add(name)
        return None

    async def unload(self, base_url, name):
        self.calls.append(("unload", base_url, name))
        self.loaded.setdefault(base_url, set()).discard(name)
        return None


class ByTarget:
    """Answers the traffic layer's queries by target model (the candidate's value, else the stable's)."""

    def __init__(self, candidate: str = "v2"):
        self.candidate = candidate
        self.values = {"canary": 0.0, "stable": 0.0}
        self.queries: list[str] = []

    async def query(self, promql):
        self.queries.append(promql)
        return self.values["canary" if f'target_model_name="{self.candidate}"' in promql else "stable"]

    async def query_vector(self, promql):
        self.queries.append(promql)
        return []


def objs(candidate: str = "v2", **spec):
    return rollout_objs(samples.shared_rollout(**spec), candidate, steps=[{"setWeight": 50}, {"analysis": {"count": 2}}],
                        scaleDownDelaySeconds=5)


tick = ticker(T0)


async def add_pods(kc, n: int = 2) -> list[str]:
    urls = []
    for i in range(n):
        name = f"bot-shared-{i}"
        await kc.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS, "labels": {
            "app.kubernetes.io/name": "vllm", "app.kubernetes.io/component": "serving", "app.kubernetes.io/managed-by": "tuneloop-operator",
            "tuneloop.dev/rollout": "bot", "tuneloop.dev/role": "shared"}}, "spec": {"containers": [{"name": "vllm", "image": "x"}]}})
        await kc.client.patch(r.PODS, NS, name, {"status": {"phase": "Running", "podIP": f"10.0.0.{i + 1}"}}, subresource="status")
        urls.append(f"http://10.0.0.{i + 1}:8000")
    return urls


async def targets(kc) -> list[dict]:
    imr = await kc.get(r.INFERENCEMODELREWRITES, NS, "bot")
    return imr["spec"]["rules"][0]["targets"]


def reconciler(kc, vllm, prov):
    return Reconciler(kc.client, ServingConfig(), "http://prom", provider_factory=lambda _: PrometheusProvider(prov), adapter_api=vllm)


async def test_a_good_adapter_is_loaded_into_every_pod_before_its_weight_moves_promoted_without_a_second_deployment(tmp_path: Path):
    vllm, prov = FakeVllm(), ByTarget()
    ro, mvs = objs()
    async with cluster(tmp_path) as kc:
        await setup(kc, ro, mvs)
        rec = reconciler(kc, vllm, prov)
        await tick(kc, rec, 0)  # no pod yet: the Deployment and the rewrite (stable only)
        dep = await kc.get(r.DEPLOYMENTS, NS, "bot-shared")
        assert dep["spec"]["replicas"] == 2 and await kc.get(r.DEPLOYMENTS, NS, "bot-canary") is None
        assert await kc.get(r.DEPLOYMENTS, NS, "bot-stable") is None
        assert await targets(kc) == [{"modelRewrite": "v1"}]
        st = (await kc.get(r.ROLLOUTS, NS, "bot"))["status"]
        assert st["canaryWeight"] == 0 and st["waitingFor"] == "the candidate adapter on every pod for 50%: 0/1 pods list it"
        urls = await add_pods(kc)
        vllm.down = {urls[1]}  # the second pod's engine is still starting: it does not answer
        await tick(kc, rec, 1)
        assert vllm.loaded[urls[0]] == {"v1", "v2"} and urls[1] not in vllm.loaded
        st = (await kc.get(r.ROLLOUTS, NS, "bot"))["status"]
        assert st["canaryWeight"] == 0 and st["waitingFor"].endswith("1/2 pods list it")
        assert await targets(kc) == [{"modelRewrite": "v1"}]
        vllm.down = set()
        await tick(kc, rec, 2)  # loaded into the second pod, observed, then the weight moves
        assert all(vllm.loaded[u] == {"v1", "v2"} for u in urls)
        st = (await kc.get(r.ROLLOUTS, NS, "bot"))["status"]
        assert st["canaryWeight"] == 50 and st["weights"] == "v1=50 v2=50"
        assert await targets(kc) == [{"modelRewrite": "v1", "weight": 50}, {"modelRewrite": "v2", "weight": 50}]
        rv = dep["metadata"]["resourceVersion"]
        await tick(kc, rec, 4)  # measured from the traffic layer, by target model
        assert prov.queries and 'target_model_name="v2"' in prov.queries[-1] and 'model_name="support-bot"' in prov.queries[-1]
        await tick(kc, rec, 14)
        st = (await kc.get(r.ROLLOUTS, NS, "bot"))["status"]
        assert st["phase"] == "Promoted" and st["stableModelVersion"] == "v2" and st["weights"] == "v2=100"
        assert await targets(kc) == [{"modelRewrite": "v2"}]
        assert (await kc.get(r.DEPLOYMENTS, NS, "bot-shared"))["metadata"]["resourceVersion"] == rv  # no pod restarts
        assert (await kc.get(r.MODELVERSIONS, NS, "v2"))["status"]["phase"] == "Serving"
        assert (await kc.get(r.MODELVERSIONS, NS, "v1"))["status"]["phase"] == "Retired"
        await tick(kc, rec, 16)  # scaleDownDelaySeconds (5) not over: the old adapter stays for late gateways
        assert all("v1" in vllm.loaded[u] for u in urls)
        await tick(kc, rec, 20)
        assert all(vllm.loaded[u] == {"v2"} for u in urls)
        assert ("unload", urls[0], "v1") in vllm.calls and not any(c[0] == "unload" and c[2] == "v2" for c in vllm.calls)
        assert await kc.get(r.DEPLOYMENTS, NS, "bot-canary") is None


async def test_a_bad_adapter_is_rolled_back_its_weight_removed_first_then_unloaded(tmp_path: Path):
    vllm, prov = FakeVllm(), ByTarget("v3")
    ro, mvs = objs("v3")
    async with cluster(tmp_path) as kc:
        await setup(kc, ro, mvs)
        rec = reconciler(kc, vllm, prov)
        urls = await add_pods(kc)
        await tick(kc, rec, 0)  # both pods answer: loaded, observed, weighted in one tick
        assert (await kc.get(r.ROLLOUTS, NS, "bot"))["status"]["canaryWeight"] == 50
        prov.values["canary"] = 0.4
        await tick(kc, rec, 1)
        st = (await kc.get(r.ROLLOUTS, NS, "bot"))["status"]
        assert st["phase"] == "RolledBack" and "error-rate 0.4 > max 0.05" in st["message"] and st["canaryWeight"] == 0
        assert await targets(kc) == [{"modelRewrite": "v1"}]
        assert (await kc.get(r.MODELVERSIONS, NS, "v3"))["status"]["phase"] == "RolledBack"
        assert all(vllm.loaded[u] == {"v1", "v3"} for u in urls)  # in flight requests still find it
        await tick(kc, rec, 7)
        assert all(vllm.loaded[u] == {"v1"} for u in urls)
        assert (await kc.get(r.ROLLOUTS, NS, "bot"))["status"]["stableModelVersion"] == "v1"


async def test_an_adapter_a_pod_refuses_is_rolled_back_without_traffic(tmp_path: Path):
    vllm, prov = FakeVllm(), ByTarget()
    vllm.refuse["v2"] = "HTTP 400: LoRA rank 64 is greater than max_lora_rank 16"
    ro, mvs = objs()
    async with cluster(tmp_path) as kc:
        await setup(kc, ro, mvs)
        rec = reconciler(kc, vllm, prov)
        await add_pods(kc)
        await tick(kc, rec, 0)
        st = (await kc.get(r.ROLLOUTS, NS, "bot"))["status"]
        assert st["phase"] == "RolledBack" and "max_lora_rank" in st["message"]
        assert any(c["reason"] == "AdapterLoadFailed" for c in st["conditions"])
        assert await targets(kc) == [{"modelRewrite": "v1"}]
        assert not [q for q in prov.queries if "target_model_name" in q]  # never measured (the drift watch of v1 may run)
        assert (await kc.get(r.MODELVERSIONS, NS, "v2"))["status"]["phase"] == "RolledBack"


class NoInferenceExtension(KubeClient):
    """The API server without the Inference Extension's CRDs: every request for its group is a 404, as a real one answers."""

    async def request(self, method, path, **kw):
        if "/apis/inference.networking.x-k8s.io/" in path:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return await super().request(method, path, **kw)


async def test_without_the_inference_extension_the_rollout_says_what_is_missing(tmp_path: Path):
    vllm, prov = FakeVllm(), ByTarget()
    ro, mvs = objs()
    async with cluster(tmp_path) as kc:
        await setup(kc, ro, mvs)
        client = NoInferenceExtension(kc.client.conn)
        rec = Reconciler(client, ServingConfig(), "http://prom", provider_factory=lambda _: PrometheusProvider(prov), adapter_api=vllm)
        await add_pods(kc)
        await tick(kc, rec, 0)
        await tick(kc, rec, 1)
        st = (await kc.get(r.ROLLOUTS, NS, "bot"))["status"]
        prog = next(c for c in st["conditions"] if c["type"] == "Progressing")
        assert st["phase"] == "Degraded" and prog["reason"] == "InferenceExtensionMissing", st
        assert "InferenceModelRewrite (inference.networking.x-k8s.io/v1alpha2)" in st["message"]
        assert st["canaryWeight"] == 0 and not [q for q in prov.queries if "target_model_name" in q]
        assert await kc.get(r.INFERENCEMODELREWRITES, NS, "bot") is None
        await client.close()
        await tick(kc, reconciler(kc, vllm, prov), 2)  # installed: the rollout proceeds by itself
        st = (await kc.get(r.ROLLOUTS, NS, "bot"))["status"]
        assert st["phase"] == "Progressing" and st["canaryWeight"] == 50, st


async def test_a_candidate_of_another_base_is_refused_and_never_loaded(tmp_path: Path):
    vllm, prov = FakeVllm(), ByTarget()
    ro, mvs = objs()
    mvs[1]["spec"]["baseModel"] = {"name": "Qwen/Qwen2.5-0.5B-Instruct"}
    async with cluster(tmp_path) as kc:
        await setup(kc, ro, mvs)
        rec = reconciler(kc, vllm, prov)
        urls = await add_pods(kc)
        await tick(kc, rec, 0)
        st = (await kc.get(r.ROLLOUTS, NS, "bot"))["status"]
        assert st["phase"] == "Degraded" and "cannot share" in st["message"]
        assert any(c["reason"] == "BaseMismatch" for c in st["conditions"])
        assert all(vllm.loaded[u] == {"v1"} for u in urls)  # the stable keeps serving
