"""A Rollout declared before its first version (neither spec.stable nor spec.candidate), as a team declares it in Git
next to the FineTuneSchedule that will feed it: phase Waiting, nothing created, no polling; the first candidate is
then served as stable at once. Reconcile ticks against kmock (explicit clock), then the real operator (the spec change
must wake the sleeping daemon)."""

from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path

import pytest
from tuneloop.operator.analysis.prometheus import PrometheusProvider
from tuneloop.operator.builders.serving import ServingConfig
from tuneloop.operator.kube import resources as r
from tuneloop.operator.rollout import telemetry as rm
from tuneloop.operator.rollout.reconcile import Reconciler
from tuneloop.operator.rollout.steps import NOTHING_TO_SERVE, WAITING_RECHECK

from ..operator.harness import OperatorProcess, cluster
from . import samples

pytestmark = pytest.mark.operator
NS = "default"
T0 = dt.datetime(2026, 11, 22, 5, 0, tzinfo=dt.UTC)


class Recording:
    """A metrics backend that records every query: a Waiting Rollout must ask it nothing (no analysis, no drift watch)."""

    def __init__(self):
        self.queries: list[str] = []

    async def query(self, promql: str) -> float | None:
        self.queries.append(promql)
        return 0.0

    async def query_vector(self, promql: str) -> list[tuple[dict[str, str], float]]:
        self.queries.append(promql)
        return []


def empty_rollout(name: str, *, replica_weighted: bool = False) -> dict:
    ro = samples.replica_rollout() if replica_weighted else samples.gateway_rollout()
    ro["metadata"] = {"name": name, "namespace": NS}
    del ro["spec"]["stable"], ro["spec"]["candidate"]
    if replica_weighted:
        ro["spec"]["trafficRouting"]["replicaWeighted"]["service"] = name
    else:
        ro["spec"]["trafficRouting"]["gatewayAPI"]["httpRoute"] = name
    return ro


def model_version(name: str) -> dict:
    mv = copy.deepcopy(samples.model_version(name))
    mv["metadata"] = {"name": name, "namespace": NS}
    return mv


def created(kc) -> dict[str, int]:
    return {res.kind: kc.count(res) for res in (r.DEPLOYMENTS, r.SERVICES, r.HTTPROUTES)}


@pytest.mark.parametrize("replica_weighted", [False, True], ids=["gateway", "replica-weighted"])
async def test_waiting_rollout_creates_nothing_then_serves_its_first_candidate_at_once(tmp_path: Path, replica_weighted: bool):
    prov = Recording()
    async with cluster(tmp_path) as kc:
        await kc.apply(model_version("v1"))
        await kc.apply(empty_rollout("bot", replica_weighted=replica_weighted))
        rec = Reconciler(kc.client, ServingConfig(), "http://prom", provider_factory=lambda url: PrometheusProvider(prov))

        delay = await rec.tick(await kc.get(r.ROLLOUTS, NS, "bot"), T0)
        assert delay == WAITING_RECHECK  # no polling while waiting: the daemon sleeps until a spec change wakes it
        st = (await kc.get(r.ROLLOUTS, NS, "bot"))["status"]
        assert (st["phase"], st["message"], st["waitingFor"]) == ("Waiting", NOTHING_TO_SERVE, "a first ModelVersion in spec.candidate")
        assert st["message"] == "no ModelVersion to serve yet: set spec.candidate (a FineTuneSchedule hands off its first winning run here)"
        assert [(c["type"], c["status"], c["reason"]) for c in st["conditions"]] == [("Progressing", "False", "WaitingForFirstVersion")]
        assert "stableModelVersion" not in st and "candidateModelVersion" not in st and "drift" not in st
        assert created(kc) == {"Deployment": 0, "Service": 0, "HTTPRoute": 0}
        assert prov.queries == []  # neither analysis nor the drift watch: nothing serves
        assert rm.ROLLOUT_PHASE.labels(NS, "bot", "Waiting")._value.get() == 1
        assert await kc.client.events_for(NS, "bot", "Rollout") == []

        rv = (await kc.get(r.ROLLOUTS, NS, "bot"))["metadata"]["resourceVersion"]
        assert await rec.tick(await kc.get(r.ROLLOUTS, NS, "bot"), T0 + dt.timedelta(hours=1)) == WAITING_RECHECK
        assert (await kc.get(r.ROLLOUTS, NS, "bot"))["metadata"]["resourceVersion"] == rv  # nothing changed: no status write
        assert created(kc) == {"Deployment": 0, "Service": 0, "HTTPRoute": 0} and prov.queries == []

        # the FineTuneSchedule hands off its first winning run (as `decide.judge` + `_judge_runs` do)
        await kc.client.patch(r.ROLLOUTS, NS, "bot", {"spec": {"candidate": {"name": "v1"}}})
        delay = await rec.tick(await kc.get(r.ROLLOUTS, NS, "bot"), T0 + dt.timedelta(hours=1, seconds=1))
        assert delay < WAITING_RECHECK
        st = (await kc.get(r.ROLLOUTS, NS, "bot"))["status"]  # its Deployment is made; it serves once a pod is available
        assert (st["phase"], st["stableModelVersion"], st["waitingFor"]) == ("Progressing", "v1", "pods of v1 to serve (0/4 ready)")
        assert (await kc.get(r.MODELVERSIONS, NS, "v1")).get("status", {}).get("phase") != "Serving"
        await kc.make_available(NS, "bot-stable")
        await rec.tick(await kc.get(r.ROLLOUTS, NS, "bot"), T0 + dt.timedelta(hours=1, seconds=1.5))
        st = (await kc.get(r.ROLLOUTS, NS, "bot"))["status"]
        assert (st["phase"], st["stableModelVersion"], st["canaryWeight"]) == ("Promoted", "v1", 0)
        assert {c["type"]: c["reason"] for c in st["conditions"]}["Progressing"] == "FirstVersion"
        stable = await kc.get(r.DEPLOYMENTS, NS, "bot-stable")
        assert stable["spec"]["replicas"] == 4 and stable["spec"]["template"]["metadata"]["labels"]["tuneloop.dev/model-version"] == "v1"
        assert await kc.get(r.DEPLOYMENTS, NS, "bot-canary") is None  # no canary: nothing served before it
        if replica_weighted:
            assert created(kc) == {"Deployment": 1, "Service": 1, "HTTPRoute": 0}
        else:
            route = await kc.get(r.HTTPROUTES, NS, "bot")
            assert [(b["name"], b["weight"]) for b in route["spec"]["rules"][0]["backendRefs"]] == [("bot-stable", 100), ("bot-canary", 0)]
            assert created(kc) == {"Deployment": 1, "Service": 2, "HTTPRoute": 1}
        mv = (await kc.get(r.MODELVERSIONS, NS, "v1"))["status"]
        assert (mv["phase"], mv["rollout"]) == ("Serving", "bot")
        assert [e["reason"] for e in await kc.client.events_for(NS, "bot", "Rollout")] == ["FirstVersion"]
        assert rm.ROLLOUT_PHASE.labels(NS, "bot", "Waiting")._value.get() == 0
        assert rm.ROLLOUT_PHASE.labels(NS, "bot", "Promoted")._value.get() == 1
        # from now on the drift watch has a serving version to watch
        await rec.tick(await kc.get(r.ROLLOUTS, NS, "bot"), T0 + dt.timedelta(hours=1, seconds=2))
        assert prov.queries and (await kc.get(r.ROLLOUTS, NS, "bot"))["status"]["drift"]["modelVersion"] == "v1"


@pytest.mark.timeout(90)
async def test_the_operator_wakes_a_waiting_rollout_when_its_candidate_is_set(tmp_path: Path):
    """The real operator: the Waiting Rollout's daemon sleeps (an hour), and setting spec.candidate wakes it at once."""
    async with cluster(tmp_path) as kc:
        op = OperatorProcess(kc.kubeconfig, tmp_path)
        op.start()
        try:
            await kc.apply(model_version("v1"))
            await kc.apply(empty_rollout("bot"))
            ro = await kc.wait_for(r.ROLLOUTS, NS, "bot", lambda o: (o.get("status") or {}).get("phase") == "Waiting", timeout=30)
            assert ro["status"]["message"] == NOTHING_TO_SERVE
            assert created(kc) == {"Deployment": 0, "Service": 0, "HTTPRoute": 0}
            await kc.client.patch(r.ROLLOUTS, NS, "bot", {"spec": {"candidate": {"name": "v1"}}})
            await kc.wait_for(r.DEPLOYMENTS, NS, "bot-stable", timeout=10)
            ro = await kc.wait_for(r.ROLLOUTS, NS, "bot", lambda o: o["status"].get("phase") == "Progressing", timeout=10)
            assert ro["status"]["waitingFor"] == "pods of v1 to serve (0/4 ready)"  # not served before a pod serves
            await kc.make_available(NS, "bot-stable")
            ro = await kc.wait_for(r.ROLLOUTS, NS, "bot", lambda o: o["status"].get("phase") == "Promoted", timeout=15)
            assert ro["status"]["stableModelVersion"] == "v1"
            await kc.wait_for(r.MODELVERSIONS, NS, "v1", lambda o: (o.get("status") or {}).get("phase") == "Serving", timeout=10)
        except BaseException:
            print(op.tail(120))
            raise
        finally:
            op.stop()
