"""The mirror (shadow) step through the Reconciler against kmock, with fake stable guards (the GuardApi) and a scripted
Prometheus (explicit clock): the candidate's pods first, then the mirror set on every stable pod's guard (read back,
written once, written again to a guard that lost it), the shadow built-ins asked of the stable pods for this candidate
with the window since the mirror started, the weight untouched; at the end (or on a rollback) every guard is cleared.
The stable Deployment's guard may mirror only to the candidate's Service, and the NetworkPolicy lets the operator and
the Rollout's own pods reach the guard's port."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from tuneloop.contract import names
from tuneloop.operator.analysis.prometheus import PrometheusProvider
from tuneloop.operator.builders.serving import ServingConfig
from tuneloop.operator.kube import resources as r
from tuneloop.operator.rollout.reconcile import Reconciler

from ..operator.harness import cluster
from .test_reconcile import NS, T0, make_available, objs, setup

pytestmark = pytest.mark.operator

TARGET = "http://bot-canary.default.svc:8000"
GATEWAY_PEERS = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateway"}}}]


class FakeGuards:
    """The stable pods' guards: url -> the mirror each holds; `down` do not answer; every write is recorded."""

    def __init__(self):
        self.holds: dict[str, dict] = {}
        self.down: set[str] = set()
        self.refuse: str | None = None  # every PUT answered with this error
        self.writes: list[tuple[str, str]] = []

    async def mirror(self, base_url):
        return None if base_url in self.down else dict(self.holds.get(base_url, {}))

    async def set_mirror(self, base_url, want):
        self.writes.append(("set", base_url))
        if self.refuse:
            return self.refuse
        self.holds[base_url] = dict(want)
        return None

    async def clear_mirror(self, base_url):
        self.writes.append(("clear", base_url))
        self.holds.pop(base_url, None)
        return None


class Shadow:
    """A QueryClient: the shadow built-ins answer `agreement` (and 0 errors), everything else 1 % errors."""

    def __init__(self, agreement: float = 0.97):
        self.agreement = agreement
        self.queries: list[str] = []

    async def query(self, promql: str) -> float | None:
        self.queries.append(promql)
        if "tuneloop_shadow_comparisons_total" in promql:
            return self.agreement if 'result="agree" }' in promql.split("/")[0] else 0.0
        return 0.01

    async def query_vector(self, promql: str) -> list[tuple[dict[str, str], float]]:
        return []


def mirror_objs(duration: str = "30s"):
    ro, mvs = objs()
    ro["spec"]["serving"]["guard"] = {}
    ro["spec"]["steps"] = [{"mirror": {"percent": 50, "duration": duration}}]
    ro["spec"]["analysis"]["metrics"] += [{"name": "agreement", "builtin": "shadow-agreement-rate", "min": 0.9},
                                          {"name": "shadow-errors", "builtin": "shadow-error-rate", "max": 0.1}]
    return ro, mvs


async def add_stable_pods(kc, n: int = 2, version: str = "v1") -> list[str]:
    urls = []
    for i in range(n):
        name = f"bot-stable-{i}"
        await kc.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS, "labels": {
            "app.kubernetes.io/name": "vllm", "app.kubernetes.io/component": "serving", "tuneloop.dev/rollout": "bot", "tuneloop.dev/role": "stable",
            "tuneloop.dev/model-version": version}}, "spec": {"containers": [{"name": "vllm", "image": "x"}]}})
        await kc.client.patch(r.PODS, NS, name, {"status": {"phase": "Running", "podIP": f"10.0.1.{i + 1}"}}, subresource="status")
        urls.append(f"http://10.0.1.{i + 1}:8001")  # the guard's port
    return urls


async def at(kc, rec, seconds):
    return await rec.tick(await kc.get(r.ROLLOUTS, NS, "bot"), T0 + dt.timedelta(seconds=seconds))


async def status(kc) -> dict:
    return (await kc.get(r.ROLLOUTS, NS, "bot"))["status"]


def reconciler(kc, guards, prov) -> Reconciler:
    return Reconciler(kc.client, ServingConfig(), "http://prom", provider_factory=lambda _: PrometheusProvider(prov), guard_api=guards,
                      serving_from=GATEWAY_PEERS, operator_namespace="tuneloop-system")


async def mirroring(kc, rec, guards, urls) -> None:
    """Through the candidate's pods and the guards' mirror: it starts at 2 s."""
    await at(kc, rec, 0)
    st = await status(kc)
    assert st["waitingFor"] == "candidate pods to answer mirrored requests: 0/2 available" and st.get("mirror") is None
    assert (await kc.get(r.DEPLOYMENTS, NS, "bot-canary"))["spec"]["replicas"] == 2  # pods for the mirror's 50 %
    await make_available(kc, "bot-canary")
    await at(kc, rec, 1)
    st = await status(kc)
    assert st["mirror"]["requestedAt"] == "2026-11-22T05:00:01Z" and st["mirror"]["until"] == "2026-11-22T05:05:31Z"
    assert guards.writes == []  # written from the next tick on (what the status asks for)
    await at(kc, rec, 2)
    want = {"target": TARGET, "percent": 50, "until": "2026-11-22T05:05:31Z", "candidate": "v2"}
    assert all(guards.holds[u] == want for u in urls) and sorted(guards.writes) == [("set", u) for u in urls]
    st = await status(kc)
    assert st["mirror"]["startedAt"] == "2026-11-22T05:00:02Z" and st["mirror"]["guards"] == "2/2" and st["canaryWeight"] == 0


async def test_a_mirror_is_set_on_every_stable_guard_judged_and_cleared_then_the_candidate_goes_on(tmp_path: Path):
    guards, prov = FakeGuards(), Shadow()
    ro, mvs = mirror_objs()
    async with cluster(tmp_path) as kc:
        await setup(kc, ro, mvs)
        rec = reconciler(kc, guards, prov)
        urls = await add_stable_pods(kc)
        await mirroring(kc, rec, guards, urls)
        stable = await kc.get(r.DEPLOYMENTS, NS, "bot-stable")
        guard = next(c for c in stable["spec"]["template"]["spec"]["containers"] if c["name"] == "guard")
        assert guard["args"][guard["args"].index("--mirror-target") + 1] == TARGET  # the one target it accepts
        canary = await kc.get(r.DEPLOYMENTS, NS, "bot-canary")
        assert "--mirror-target" not in next(c for c in canary["spec"]["template"]["spec"]["containers"] if c["name"] == "guard")["args"]
        policy = await kc.get(r.NETWORKPOLICIES, NS, "bot-serving")
        own = policy["spec"]["ingress"][1]
        assert own["ports"] == [{"protocol": "TCP", "port": 8001}]
        assert {"podSelector": {"matchLabels": names.rollout_selector("bot")}} in own["from"]
        assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "tuneloop-system"}}} in own["from"]
        assert {"protocol": "TCP", "port": 8001} in policy["spec"]["ingress"][0]["ports"]  # the Services target the guard
        await at(kc, rec, 3)  # the first measurement: initialDelay (1 s) after the start
        shadow = [q for q in prov.queries if "tuneloop_shadow_" in q]
        assert len(shadow) == 2 and all('tuneloop_dev_role="stable"' in q and 'candidate="v2"' in q and "[1s]" in q for q in shadow)
        assert not [q for q in prov.queries if "http_requests_total" in q]  # the live metrics wait (no background here)
        writes = len(guards.writes)
        await at(kc, rec, 13)
        assert len(guards.writes) == writes  # unchanged: nothing written again
        guards.holds.pop(urls[1])  # that pod's guard restarted and lost its mirror
        await at(kc, rec, 23)
        assert guards.writes[-1] == ("set", urls[1]) and len(guards.writes) == writes + 1
        st = await status(kc)
        assert st["phase"] == "Progressing" and st["canaryWeight"] == 0 and "agreement 3 ok" in st["message"]
        await at(kc, rec, 32)  # the end: passed, and with it the last step: promoted
        st = await status(kc)
        assert st["phase"] == "Promoted" and st["mirror"]["endedAt"] == "2026-11-22T05:00:32Z" and not st["mirror"].get("cleared")
        await at(kc, rec, 33)
        assert all(u not in guards.holds for u in urls) and guards.writes[-2:] in ([("clear", urls[0]), ("clear", urls[1])],
                                                                                   [("clear", urls[1]), ("clear", urls[0])])
        assert (await status(kc))["mirror"]["cleared"] is True
        writes = len(guards.writes)
        await at(kc, rec, 60)
        assert len(guards.writes) == writes  # cleared: the guards are no longer asked


async def test_a_disagreeing_candidate_is_rolled_back_and_the_guards_cleared(tmp_path: Path):
    guards, prov = FakeGuards(), Shadow(agreement=0.42)
    ro, mvs = mirror_objs()
    async with cluster(tmp_path) as kc:
        await setup(kc, ro, mvs)
        rec = reconciler(kc, guards, prov)
        urls = await add_stable_pods(kc)
        await mirroring(kc, rec, guards, urls)
        guards.down = {urls[1]}  # one guard stops answering: left alone, its mirror ends at `until` anyway
        await at(kc, rec, 3)
        st = await status(kc)
        assert st["phase"] == "RolledBack" and "Failed shadow analysis at step 1" in st["message"] and "agreement" in st["message"]
        assert (await kc.get(r.MODELVERSIONS, NS, "v2"))["status"]["phase"] == "RolledBack"
        await at(kc, rec, 4)
        assert urls[0] not in guards.holds and urls[1] in guards.holds
        assert (await status(kc))["mirror"].get("cleared") is not True  # not while a guard is unknown … (it answers no longer)
        guards.down = set()
        await at(kc, rec, 6)
        assert not guards.holds and (await status(kc))["mirror"]["cleared"] is True


async def test_a_guard_that_refuses_the_mirror_says_why_in_the_status(tmp_path: Path):
    guards, prov = FakeGuards(), Shadow()
    guards.refuse = "HTTP 400: target 'http://bot-canary.default.svc:8000' is not one this guard may mirror to (--mirror-target): []"
    ro, mvs = mirror_objs()
    async with cluster(tmp_path) as kc:
        await setup(kc, ro, mvs)
        rec = reconciler(kc, guards, prov)
        await add_stable_pods(kc)
        await at(kc, rec, 0)
        await make_available(kc, "bot-canary")
        await at(kc, rec, 1)
        await at(kc, rec, 2)
        st = await status(kc)
        assert st["phase"] == "Progressing" and st["mirror"].get("startedAt") is None
        assert st["waitingFor"].startswith("the mirror on every stable pod's guard: 0/2 hold it (pod bot-stable-0: HTTP 400: target")
        assert not [q for q in prov.queries if "tuneloop_shadow_" in q]  # nothing measured before it runs
