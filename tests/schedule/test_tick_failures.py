"""Schedule ticks against kmock when something fails or comes back (issue 20 items 1, 3, 4, 5; issue 25 finding 4):
each test is named after the behaviour that failed before the fix."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from tuneloop.operator.analysis.prometheus import PrometheusError
from tuneloop.operator.kube import resources as r
from tuneloop.operator.schedule import decide
from tuneloop.operator.schedule.reconcile import ERROR_DELAY, Reconciler

from ..operator.harness import cluster
from . import samples
from .test_reconcile import at, finish, setup, tick

pytestmark = pytest.mark.operator
NS = samples.NS
DATA = {"newData": {"claimName": "datasets", "glob": "support/*.jsonl", "checkInterval": "15m"}}


def ready(st: dict) -> dict:
    return next(c for c in st.get("conditions") or [] if c["type"] == "Ready")


async def status(kc) -> dict:
    return (await kc.get(r.FINETUNESCHEDULES, NS, "bot"))["status"]


async def test_a_failing_tick_records_its_digest_job_once_and_writes_the_failure_to_status(tmp_path: Path, monkeypatch):
    """Before: the digest Job was created before the decision that raised, status was never written, and every retry
    (5 s) created another digest Job."""
    def boom(*a, **kw):
        raise RuntimeError("a defect in the decision")

    monkeypatch.setattr(decide, "decide", boom)
    async with cluster(tmp_path) as kc:
        rec = await setup(kc, schedule=None, triggers=DATA)
        for s in range(0, 30, 5):
            assert await tick(kc, rec, at(s / 60)) == ERROR_DELAY
        assert kc.count(r.JOBS) == 1
        st = await status(kc)
        assert st["data"]["checkJob"] and st["data"]["checkStartedAt"]
        cond = ready(st)
        assert (cond["status"], cond["reason"]) == ("False", "TickFailed")
        assert "RuntimeError: a defect in the decision" in cond["message"] and "tick failed" in st["message"]


async def test_a_cron_date_that_never_comes_makes_the_schedule_failed_instead_of_raising_every_tick(tmp_path: Path):
    """Before: `0 0 30 2 *` passed validation, and every tick raised CroniterBadDateError; the schedule never showed
    Failed. (The API server now refuses it through the model; a schedule stored before that still fails visibly.)"""
    async with cluster(tmp_path) as kc:
        rec = await setup(kc, schedule="0 0 30 2 *", triggers=DATA)
        await tick(kc, rec, at(0))
        st = await status(kc)
        assert st["phase"] == "Failed" and "never fires" in st["message"] and "spec.schedule" in st["message"]
        assert (ready(st)["status"], ready(st)["reason"]) == ("False", "InvalidSpec")
        assert kc.count(r.JOBS) == 0 and kc.count(r.FINETUNEJOBS) == 0


class Answers:
    """A Prometheus provider that answers from a list: numbers, None, exceptions, or a malformed body."""

    def __init__(self, answers):
        self.answers = list(answers)

    async def query(self, q):
        a = self.answers.pop(0)
        if isinstance(a, Exception):
            raise a
        return a


async def test_a_prometheus_outage_or_a_malformed_answer_after_the_trigger_held_is_recorded_not_a_crash(tmp_path: Path):
    answers = Answers([0.5, 0.5, PrometheusError("connection refused"), [1], 0.7])
    trig = {"prometheus": [{"name": "drift", "query": "q", "for": "30m", "interval": "5m"}]}
    async with cluster(tmp_path) as kc:
        rec = await setup(kc, schedule=None, triggers=trig)
        rec.provider_factory = lambda url, ns: answers
        await tick(kc, rec, at(0))
        await tick(kc, rec, at(25))
        await tick(kc, rec, at(30))  # held for 30m, but this check got no answer: nothing fires, nothing crashes
        st = await status(kc)
        assert st["prometheus"][0]["message"] == "connection refused" and st["prometheus"][0]["holdingSince"]
        assert kc.count(r.FINETUNEJOBS) == 0 and ready(st)["reason"] == "Reconciled"
        await tick(kc, rec, at(35))  # a body like [1]: not a number
        st = await status(kc)
        assert "not a number" in st["prometheus"][0]["message"] and kc.count(r.FINETUNEJOBS) == 0
        await tick(kc, rec, at(40))  # answers again and still holds: the run starts now
        st = await status(kc)
        assert [x["trigger"] for x in st["runs"]] == ["Prometheus"] and "value 0.7" in st["runs"][0]["reason"]


async def digest(kc, rec, when, value: str):
    await tick(kc, rec, when)
    st = await status(kc)
    await kc.finish_job(NS, st["data"]["checkJob"], message=json.dumps({"digest": value, "files": 1, "bytes": 10}))
    await tick(kc, rec, when + dt.timedelta(seconds=30))


async def test_data_that_returns_to_an_earlier_digest_starts_a_new_run_not_a_409(tmp_path: Path):
    """Before: A→B→C→B named the second B run like the first (`d<B>`): the create returned 409, nothing started,
    and lastRunDigest said it had run."""
    a, b, c = (f"sha256:{ch * 64}" for ch in "abc")
    async with cluster(tmp_path) as kc:
        rec = await setup(kc, schedule=None, triggers=DATA, successfulRunsHistoryLimit=0)
        await digest(kc, rec, at(0), a)  # the baseline
        names = []
        for i, d in enumerate((b, c, b)):
            await digest(kc, rec, at(15 * (i + 1)), d)
            run = (await status(kc))["active"][0]
            names.append(run)
            # the ModelVersion the run registers (support-bot-<schedule>-<key>) outlives its FineTuneJob
            await finish(kc, run, samples.model_version(f"support-bot-{run}", verdict="Failed", phase="Rejected"))
            await tick(kc, rec, at(15 * (i + 1) + 5))  # judged Rejected; the history limit (0) deletes its FineTuneJob
        assert names == ["bot-dbbbbbbbbbbbb", "bot-dcccccccccccc", "bot-dbbbbbbbbbbbb-2"]
        st = await status(kc)
        assert st["data"]["lastRunDigest"] == b and kc.count(r.FINETUNEJOBS) == 0  # the first B's job was gone: its
        # ModelVersion alone kept the name from being reused


async def test_a_winner_waiting_for_its_rollout_survives_a_history_limit_of_zero(tmp_path: Path):
    """Before: the succeeded-but-Pending winner counted toward the limit; its FineTuneJob was deleted and the Rollout
    created later never got its candidate."""
    async with cluster(tmp_path) as kc:
        await kc.apply(samples.schedule(successfulRunsHistoryLimit=0))
        rec = Reconciler(kc.client, prometheus_url="http://prom:9090", trainer_image="trainer:test")
        await tick(kc, rec, at(0))
        run = (await status(kc))["active"][0]
        await finish(kc, run, samples.model_version("support-bot-v1"))
        await tick(kc, rec, at(60))
        st = await status(kc)
        assert st["runs"][0]["outcome"] == "Pending" and kc.count(r.FINETUNEJOBS) == 1
        ro = samples.rollout(None, phase="Waiting")
        del ro["status"]
        await kc.apply(ro)
        await tick(kc, rec, at(61))
        assert (await kc.get(r.ROLLOUTS, NS, "bot"))["spec"]["candidate"] == {"name": "support-bot-v1"}
        st = await status(kc)
        assert st["runs"] == [] and kc.count(r.FINETUNEJOBS) == 0  # handed off, then the limit applies
        events = await kc.client.events_for(NS, "bot", "FineTuneSchedule")
        assert any(e["reason"] == "RunDeleted" and run in e["message"] for e in events)


async def test_a_glob_that_matches_no_files_says_so_instead_of_a_silent_baseline(tmp_path: Path):
    """Before: a digest of 0 files became the baseline with nothing in status or events."""
    async with cluster(tmp_path) as kc:
        rec = await setup(kc, schedule=None, triggers=DATA)
        await tick(kc, rec, at(0))
        await kc.finish_job(NS, (await status(kc))["data"]["checkJob"],
                            message=json.dumps({"digest": "sha256:e3b0", "files": 0, "bytes": 0}))
        await tick(kc, rec, at(1))
        st = await status(kc)
        assert "glob 'support/*.jsonl' matched no files on claim datasets" in st["data"]["message"]
        assert "matched no files" in st["message"]
        events = await kc.client.events_for(NS, "bot", "FineTuneSchedule")
        assert [e["reason"] for e in events if e["reason"] == "NoDataFiles"] == ["NoDataFiles"]


async def test_two_winners_finishing_in_the_same_tick_under_allow_hand_off_only_the_first(tmp_path: Path):
    """Suspected before: both were judged against the same stale Rollout, and the second hand-off overwrote the first."""
    async with cluster(tmp_path) as kc:
        rec = await setup(kc, schedule="0 * * * *", concurrencyPolicy="Allow")
        await tick(kc, rec, at(0))
        await tick(kc, rec, at(60))
        first, second = (await status(kc))["active"]
        better = {"modelVersion": "support-bot-v1", "outcome": "Better", "reason": "exactMatch +0.08"}
        await finish(kc, first, samples.model_version("support-bot-v2", serving=better))
        await finish(kc, second, samples.model_version("support-bot-v3", serving=better))
        await tick(kc, rec, at(90))
        assert (await kc.get(r.ROLLOUTS, NS, "bot"))["spec"]["candidate"] == {"name": "support-bot-v2"}
        runs = {x["name"]: x for x in (await status(kc))["runs"]}
        assert runs[first]["outcome"] == "HandedOff"
        assert runs[second]["outcome"] == "Pending" and "waiting for the Rollout to finish rolling out support-bot-v2" in runs[second]["message"]


class Recording:
    """Stands in for PrometheusClient behind the operator's Endpoints: records (address, query), answers 1."""

    sent: list[tuple[str, str]] = []

    def __init__(self, url, **_):
        self.url = url

    async def query(self, q):
        Recording.sent.append((self.url, q))
        return 1.0


async def test_a_trigger_query_goes_only_to_the_admins_providers_and_only_into_its_namespace(tmp_path: Path, monkeypatch):
    """Issue 25 finding 1, the schedule's side: a trigger's PromQL was sent as written to any prometheusAddress; it
    now goes through the operator's Endpoints (as a Rollout's analysis does): a provider by name, the address of one,
    or a refusal naming the allowed ones; and the query is confined to the schedule's namespace."""
    from tuneloop.operator.analysis import prometheus
    from tuneloop.operator.analysis.prometheus import provider as prov

    monkeypatch.setattr(prov, "PrometheusClient", Recording)
    Recording.sent = []
    trig = {"prometheus": [
        {"name": "named", "query": "sum(rate(http_requests_total[5m])) > 0", "provider": "team-a"},
        {"name": "fallback", "query": "up"},
        {"name": "foreign", "query": "up", "prometheusAddress": "http://169.254.169.254/latest"},
    ]}
    async with cluster(tmp_path) as kc:
        rec = await setup(kc, schedule=None, triggers=trig)
        # the operator's wiring (schedule/handlers.py): `default` is the operator's prometheus_url
        endpoints = prometheus.Endpoints({"default": rec.prometheus_url, "team-a": "http://team-a-prom:9090"})
        rec.provider_factory = endpoints.client
        await tick(kc, rec, at(0))
        st = await status(kc)
    by_name = {p["name"]: p for p in st["prometheus"]}
    sent = dict(Recording.sent)
    assert set(sent) == {"http://team-a-prom:9090", rec.prometheus_url}  # nothing to the foreign address
    for q in sent.values():
        assert f'namespace="{NS}"' in q, q
    assert "not configured by the operator's administrator" in by_name["foreign"]["message"]
    assert "default" in by_name["foreign"]["message"] and "team-a" in by_name["foreign"]["message"]
    assert not by_name["named"].get("message") and not by_name["fallback"].get("message")


def test_a_trigger_names_a_provider_or_an_address_not_both_and_checks_no_faster_than_the_floor():
    from pydantic import ValidationError
    from tuneloop.api.schedule import PrometheusTrigger

    with pytest.raises(ValidationError, match="provider or prometheusAddress"):
        PrometheusTrigger.model_validate({"name": "x", "query": "up", "provider": "a", "prometheusAddress": "http://p:9090"})
    with pytest.raises(ValidationError, match="interval must be at least"):
        PrometheusTrigger.model_validate({"name": "x", "query": "up", "interval": "100ms"})
    assert PrometheusTrigger.model_validate({"name": "x", "query": "up", "provider": "team-a"}).provider == "team-a"


async def test_a_deprecated_trigger_prometheus_address_is_converted_and_warned_once(tmp_path: Path):
    """Issue 24: a trigger's prometheusAddress is still accepted (the mock API server takes it under the CRD schema),
    converted (the provider factory is asked for that address) and warned about: condition DeprecatedFields, one
    Warning event however many ticks."""
    asked: list[str] = []
    trig = {"prometheus": [{"name": "drift", "query": "q", "interval": "5m", "prometheusAddress": "http://old-prom:9090"}]}
    async with cluster(tmp_path) as kc:
        rec = await setup(kc, schedule=None, triggers=trig)
        rec.provider_factory = lambda ref, ns: asked.append(ref) or Answers([0.0, 0.0])
        await tick(kc, rec, at(0))
        await tick(kc, rec, at(5))
        st = await status(kc)
        cond = {c["type"]: c for c in st["conditions"]}["DeprecatedFields"]
        assert (cond["status"], cond["reason"]) == ("True", "DeprecatedField")
        assert "spec.triggers.prometheus[0].prometheusAddress is deprecated" in cond["message"]
        assert "spec.triggers.prometheus[0].provider" in cond["message"]
        assert asked == ["http://old-prom:9090", "http://old-prom:9090"]
        events = await kc.client.events_for(NS, "bot", "FineTuneSchedule")
        assert [e["reason"] for e in events if e["reason"] == "DeprecatedField"] == ["DeprecatedField"]
        assert ready(st)["reason"] == "Reconciled"
