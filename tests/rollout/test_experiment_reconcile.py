"""The A/B experiment step through the Reconciler against kmock, with a scripted Prometheus (explicit clock): each
arm's counts are asked with the arm's own selector and the window since the split took effect; the decision and
its numbers land on the candidate's ModelVersion (status.experiment) and in `kubectl tuneloop report`; a fresh
Reconciler (an operator restart) recomputes the decision from the status and fresh counts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from tuneloop.cli.report_cmd import experiment_section, fetch
from tuneloop.operator.analysis.prometheus import PrometheusError, PrometheusProvider
from tuneloop.operator.builders.serving import ServingConfig
from tuneloop.operator.kube import resources as r
from tuneloop.operator.rollout.reconcile import Reconciler

from ..operator.harness import cluster
from .kmock_rollout import NS, setup, ticker
from .test_reconcile import T0, objs

pytestmark = pytest.mark.operator

# the application's counter: its series carry the model that answered, not the vLLM pods' labels ({{selector}})
FEEDBACK = {"successes": 'sum(increase(app_feedback_total{model="{{modelVersion}}", vote="up"}[{{window}}]))',
            "trials": 'sum(increase(app_feedback_total{model="{{modelVersion}}"}[{{window}}]))'}


class Feedback:
    """A QueryClient answering the feedback counters per arm (by the model label) and 1 % errors to the rest."""

    def __init__(self):
        self.counts = {"canary": (0.0, 0.0), "stable": (0.0, 0.0)}  # role -> (successes, trials)
        self.fail = False
        self.queries: list[str] = []

    async def query(self, promql: str) -> float | None:
        self.queries.append(promql)
        if "app_feedback_total" not in promql:
            return 0.01
        if self.fail:
            raise PrometheusError("Prometheus at http://prom unreachable: ClientConnectorError")
        role = "canary" if 'model="v2"' in promql else "stable"
        ups, trials = self.counts[role]
        value = ups if 'vote="up"' in promql else trials
        return None if value == 0 else value  # no series before the first vote: no data, counted as 0

    async def query_vector(self, promql: str) -> list[tuple[dict[str, str], float]]:
        return []


def rollout_objs(**experiment):
    ro, mvs = objs()
    ro["spec"]["steps"] = [{"setWeight": 10}, {"experiment": {
        "split": 50, "duration": "10m", "minSamples": 100, "minimumEffect": 0.02,
        "metric": {"name": "thumbs-up", "proportion": FEEDBACK}} | experiment}]
    return ro, mvs


at = ticker(T0)


async def status(kc) -> dict:
    return (await kc.get(r.ROLLOUTS, NS, "bot"))["status"]


async def into_the_experiment(kc, prov) -> Reconciler:
    rec = Reconciler(kc.client, ServingConfig(), "http://prom", provider_factory=lambda url: PrometheusProvider(prov))
    await at(kc, rec, 0)
    await kc.make_available(NS, "bot-canary")
    await at(kc, rec, 1)  # weight 10; the split needs 2 canary pods: the Deployment is scaled for it first
    assert (await status(kc))["waitingFor"] == "canary pods ready for 50%: 1/2 available"
    assert (await kc.get(r.DEPLOYMENTS, NS, "bot-canary"))["spec"]["replicas"] == 2
    await kc.make_available(NS, "bot-canary")
    await at(kc, rec, 2)
    st = await status(kc)
    assert st["canaryWeight"] == 50 and st["experiment"]["startedAt"] == "2026-11-22T05:00:02Z"
    route = await kc.get(r.HTTPROUTES, NS, "bot")
    assert [b["weight"] for b in route["spec"]["rules"][0]["backendRefs"]] == [50, 50]
    return rec


async def test_a_better_candidate_is_promoted_after_a_restart_with_its_result_on_the_model_version(tmp_path: Path):
    prov = Feedback()
    ro, mvs = rollout_objs()
    async with cluster(tmp_path) as kc:
        await setup(kc, ro, mvs)
        rec = await into_the_experiment(kc, prov)
        prov.counts = {"canary": (30.0, 60.0), "stable": (20.0, 60.0)}
        await at(kc, rec, 3)  # the first look, initialDelay (1s) after the split
        looks = [q for q in prov.queries if "app_feedback_total" in q]
        assert len(looks) == 4  # successes and trials, per arm
        assert all("[1s]" in q for q in looks)
        assert sorted(q.count('model="v2"') for q in looks) == [0, 0, 1, 1]  # each arm's own version
        assert all('namespace="default"' in q for q in looks)  # confined to the Rollout's namespace
        st = await status(kc)
        assert st["experiment"]["decision"] == "Collecting" and st["phase"] == "Progressing"
        arm = {k: v for k, v in st["experiment"]["measurements"][-1]["candidate"].items() if v is not None}  # (null: absent)
        assert arm == {"samples": 60.0, "successes": 30.0, "estimate": 0.5}
        # the operator restarts: a new Reconciler knows nothing but the status; the window still starts at the split
        rec = Reconciler(kc.client, ServingConfig(), "http://prom", provider_factory=lambda url: PrometheusProvider(prov))
        prov.queries.clear()
        prov.counts = {"canary": (1100.0, 2000.0), "stable": (800.0, 2000.0)}
        await at(kc, rec, 13)
        assert all("[11s]" in q for q in prov.queries if "app_feedback_total" in q)
        st = await status(kc)
        assert st["phase"] == "Promoted" and st["stableModelVersion"] == "v2" and st["experiment"]["decision"] == "Better"
        mv = (await kc.get(r.MODELVERSIONS, NS, "v2"))["status"]
        assert mv["phase"] == "Serving" and mv["rollout"] == "bot"
        ex = mv["experiment"]
        assert (ex["decision"], ex["metric"], ex["kind"], ex["step"], ex["split"]) == ("Better", "thumbs-up", "proportion", 2, 50)
        assert ex["candidate"] == {"modelVersion": "v2", "samples": 2000.0, "estimate": 0.55}
        assert ex["stable"] == {"modelVersion": "v1", "samples": 2000.0, "estimate": 0.4}
        assert ex["effect"] == pytest.approx(0.15) and 0 < ex["low"] < 0.15 < ex["high"] and ex["level"] == 0.999
        events = await kc.client.events_for(NS, "bot", "Rollout")
        assert [e["reason"] for e in events if e["reason"].startswith("Experiment")] == ["ExperimentStarted", "ExperimentPassed"]
        text, _ = await fetch(kc.client, NS, "v2")  # no report ConfigMap: the online experiment alone
        assert text.startswith("## Online A/B experiment\n")
        assert "| candidate | v2 | 2000 | 0.55 |" in text and "| stable | v1 | 2000 | 0.4 |" in text
        assert re.search(r"Effect \(candidate − stable, positive is better\): \+0\.15, 99\.9 % interval \[0\.\d+, 0\.\d+\]", text)
        assert "**Decision: Better**" in text


async def test_a_worse_candidate_is_rolled_back_and_the_report_says_why(tmp_path: Path):
    prov = Feedback()
    ro, mvs = rollout_objs()
    async with cluster(tmp_path) as kc:
        await setup(kc, ro, mvs)
        await kc.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "v2-report", "namespace": NS},
                        "data": {"report.md": "# Experiment report\n\nOffline: better.\n"}})
        rec = await into_the_experiment(kc, prov)
        prov.counts = {"canary": (900.0, 3000.0), "stable": (1200.0, 3000.0)}
        await at(kc, rec, 3)
        st = await status(kc)
        assert st["phase"] == "RolledBack" and st["canaryWeight"] == 0
        cond = next(c for c in st["conditions"] if c["type"] == "RolledBack")
        assert cond["reason"] == "ExperimentWorse" and "significantly worse" in cond["message"]
        route = await kc.get(r.HTTPROUTES, NS, "bot")
        assert [b["weight"] for b in route["spec"]["rules"][0]["backendRefs"]] == [100, 0]
        mv = (await kc.get(r.MODELVERSIONS, NS, "v2"))["status"]
        assert mv["phase"] == "RolledBack" and mv["experiment"]["decision"] == "Worse"
        assert mv["experiment"]["candidate"]["samples"] == 3000.0 and mv["experiment"]["effect"] == pytest.approx(-0.1)
        raw = await kc.get(r.MODELVERSIONS, NS, "v2")
        raw["spec"]["report"] = {"configMap": "v2-report"}  # as registration records it (the spec is immutable on a real server)
        section = experiment_section(raw)
        assert "**Decision: Worse**" in section and "thumbs-up" in section
        await kc.client.patch(r.MODELVERSIONS, NS, "v2", {"spec": {"report": {"configMap": "v2-report"}}})
        text, _ = await fetch(kc.client, NS, "v2")
        assert text.startswith("# Experiment report\n\nOffline: better.\n\n## Online A/B experiment\n")


async def test_an_unreachable_prometheus_never_decides_the_experiment(tmp_path: Path):
    prov = Feedback()
    ro, mvs = rollout_objs()
    async with cluster(tmp_path) as kc:
        await setup(kc, ro, mvs)
        rec = await into_the_experiment(kc, prov)
        prov.fail = True
        for k in range(4):
            await at(kc, rec, 3 + 10 * k)
            st = await status(kc)
            assert st["phase"] == "Progressing" and st["experiment"]["consecutiveErrors"] == k + 1
        assert "canary query failed: Prometheus at http://prom unreachable" in st["experiment"]["message"]
        await at(kc, rec, 43)
        st = await status(kc)
        assert st["phase"] == "RolledBack"
        assert next(c for c in st["conditions"] if c["type"] == "RolledBack")["reason"] == "AnalysisError"
        assert "experiment" not in ((await kc.get(r.MODELVERSIONS, NS, "v2")).get("status") or {})
