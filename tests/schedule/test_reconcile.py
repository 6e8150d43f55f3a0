"""FineTuneSchedule ticks against kmock (no operator process, explicit clock): a cron run that beats the champion is
handed to the Rollout, a later run that loses is recorded and the Rollout untouched; the new-data trigger's digest
Job; the manual trigger; the history limits."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from tuneloop.operator.kube import resources as r
from tuneloop.operator.schedule.reconcile import Reconciler

from ..operator.harness import cluster
from . import samples

pytestmark = pytest.mark.operator
NS = samples.NS
T3 = dt.datetime(2026, 11, 23, 3, 0, tzinfo=dt.UTC)  # the sample's cron time (Monday 03:00)


def at(minutes: float) -> dt.datetime:
    return T3 + dt.timedelta(minutes=minutes)


async def setup(kc, **spec):
    await kc.apply(samples.model_version("support-bot-v1", phase="Serving"))
    ro = samples.rollout("support-bot-v1")
    status = ro.pop("status")
    await kc.apply(ro)
    await kc.client.patch(r.ROLLOUTS, NS, "bot", {"status": status}, subresource="status")
    await kc.apply(samples.schedule(**spec))
    return Reconciler(kc.client, prometheus_url="http://prom:9090", trainer_image="trainer:test")


async def tick(kc, rec, when):
    return await rec.tick(await kc.get(r.FINETUNESCHEDULES, NS, "bot"), when)


async def finish(kc, name, mv):
    await kc.apply(mv)
    await kc.client.patch(r.FINETUNEJOBS, NS, name, {"status": {"phase": "Succeeded", "completionTime": "2026-11-23T05:00:00Z",
                                                                "children": {"modelVersion": mv["metadata"]["name"]}}},
                          subresource="status")


async def test_winner_is_handed_off_and_a_loser_is_recorded_with_the_rollout_untouched(tmp_path: Path):
    async with cluster(tmp_path) as kc:
        rec = await setup(kc)
        delay = await tick(kc, rec, at(-1))
        assert 59 <= delay <= 61  # sleeps until the cron time, no polling
        assert kc.count(r.FINETUNEJOBS) == 0

        await tick(kc, rec, at(0))
        run1 = f"bot-{int(T3.timestamp()) // 60}"
        job = await kc.get(r.FINETUNEJOBS, NS, run1)
        assert job["spec"]["evaluation"]["serving"] == {"modelVersion": "support-bot-v1", "evalJson": "/output/support-bot/support-bot-v1-run/eval.json"}
        assert job["spec"]["output"]["pvc"] == {"claimName": "models", "path": f"support-bot/{run1}"}
        assert job["metadata"]["ownerReferences"][0]["kind"] == "FineTuneSchedule"
        assert job["metadata"]["labels"]["tuneloop.dev/trigger"] == "Schedule"
        st = (await kc.get(r.FINETUNESCHEDULES, NS, "bot"))["status"]
        assert st["phase"] == "Running" and st["active"] == [run1] and st["servingModelVersion"] == "support-bot-v1"
        assert st["runs"][0]["reason"] == "schedule '0 3 * * 1' at 2026-11-23T03:00:00+00:00"
        assert st["nextScheduleTime"].startswith("2026-11-30T03:00:00")

        better = {"modelVersion": "support-bot-v1", "outcome": "Better", "reason": "exactMatch +0.08 [0.03, 0.12]"}
        await finish(kc, run1, samples.model_version("support-bot-v2", serving=better))
        await tick(kc, rec, at(120))
        assert (await kc.get(r.ROLLOUTS, NS, "bot"))["spec"]["candidate"] == {"name": "support-bot-v2"}
        run = (await kc.get(r.FINETUNESCHEDULES, NS, "bot"))["status"]["runs"][0]
        assert (run["outcome"], run["modelVersion"], run["verdict"], run["servingOutcome"]) == ("HandedOff", "support-bot-v2", "Passed", "Better")

        # the Rollout promotes v2 (as its own loop would); a manual retrain then loses to it
        await kc.client.patch(r.ROLLOUTS, NS, "bot", {"status": {"stableModelVersion": "support-bot-v2", "phase": "Promoted",
                                                                 "candidateModelVersion": "support-bot-v2"}}, subresource="status")
        await kc.apply(samples.model_version("support-bot-v2", serving=better, phase="Serving"))
        await kc.client.patch(r.FINETUNESCHEDULES, NS, "bot", {"metadata": {"annotations": {"tuneloop.dev/retrain": "2026-11-24T09:00:00Z"}}})
        await tick(kc, rec, at(30 * 60))
        st = (await kc.get(r.FINETUNESCHEDULES, NS, "bot"))["status"]
        run2 = st["active"][0]
        assert st["runs"][-1]["trigger"] == "Manual" and st["lastRetrainRequest"] == "2026-11-24T09:00:00Z"
        job2 = await kc.get(r.FINETUNEJOBS, NS, run2)
        assert job2["spec"]["evaluation"]["serving"]["modelVersion"] == "support-bot-v2"
        worse = {"modelVersion": "support-bot-v2", "outcome": "Worse", "reason": "exactMatch −0.05 [−0.09, −0.01]"}
        await finish(kc, run2, samples.model_version("support-bot-v3", serving=worse))
        await tick(kc, rec, at(31 * 60))
        assert (await kc.get(r.ROLLOUTS, NS, "bot"))["spec"]["candidate"] == {"name": "support-bot-v2"}  # untouched
        st = (await kc.get(r.FINETUNESCHEDULES, NS, "bot"))["status"]
        assert st["runs"][-1]["outcome"] == "LostToServing" and "lost to the serving version support-bot-v2" in st["runs"][-1]["message"]
        assert st["servingModelVersion"] == "support-bot-v2" and st["phase"] == "Idle"
        await tick(kc, rec, at(32 * 60))  # the same annotation does not start another run
        assert kc.count(r.FINETUNEJOBS) == 2


async def test_first_winning_run_is_handed_off_to_a_rollout_declared_without_a_version(tmp_path: Path):
    """A team declares the Rollout (no stable, no candidate) together with its schedule, e.g. in Git: the Rollout
    waits, the first run is compared with nothing, wins on its own gates and is handed off at once; the Rollout then
    serves it as its first version, and the next run is compared with it."""
    from tuneloop.operator.builders.serving import ServingConfig
    from tuneloop.operator.rollout.reconcile import Reconciler as RolloutReconciler

    async with cluster(tmp_path) as kc:
        ro = samples.rollout(None, phase="Waiting")
        del ro["status"]
        await kc.apply(ro)
        from tuneloop.operator.analysis.provider import ProviderError

        class NoMetrics:  # the drift watch of the served version asks; this test has no Prometheus
            async def measure(self, *args):
                raise ProviderError("no metrics in this test")

            value = histogram = measure

        rollouts = RolloutReconciler(kc.client, ServingConfig(), "http://prom:9090", provider_factory=lambda url: NoMetrics())

        async def rollout_tick(when):
            return await rollouts.tick(await kc.get(r.ROLLOUTS, NS, "bot"), when)

        await rollout_tick(at(-10))
        assert (await kc.get(r.ROLLOUTS, NS, "bot"))["status"]["phase"] == "Waiting"
        await kc.apply(samples.schedule())
        rec = Reconciler(kc.client, prometheus_url="http://prom:9090", trainer_image="trainer:test")

        await tick(kc, rec, at(0))
        run1 = f"bot-{int(T3.timestamp()) // 60}"
        job = await kc.get(r.FINETUNEJOBS, NS, run1)
        assert "serving" not in job["spec"]["evaluation"]  # nothing serves: no champion, its serving gates are dropped
        assert [g.get("reference") for g in job["spec"]["evaluation"]["gates"]] == ["base"]
        st = (await kc.get(r.FINETUNESCHEDULES, NS, "bot"))["status"]
        assert st["runs"][0].get("champion") is None and st.get("servingModelVersion") is None

        await finish(kc, run1, samples.model_version("support-bot-v1"))
        assert await tick(kc, rec, at(120)) > 5.0  # handed off in this tick: no winner left to poll for
        assert (await kc.get(r.ROLLOUTS, NS, "bot"))["spec"]["candidate"] == {"name": "support-bot-v1"}
        run = (await kc.get(r.FINETUNESCHEDULES, NS, "bot"))["status"]["runs"][0]
        assert (run["outcome"], run["modelVersion"], run["verdict"]) == ("HandedOff", "support-bot-v1", "Passed")
        assert run["message"] == "support-bot-v1 is the first version (nothing serving); set as the candidate of Rollout bot"
        events = await kc.client.events_for(NS, "bot", "FineTuneSchedule")
        assert [e["reason"] for e in events if e["reason"] == "HandedOff"] == ["HandedOff"]

        # the Rollout's own loop serves it as its first version (no canary: nothing served before it)
        await rollout_tick(at(121))
        ro_st = (await kc.get(r.ROLLOUTS, NS, "bot"))["status"]
        assert (ro_st["phase"], ro_st["stableModelVersion"]) == ("Progressing", "support-bot-v1")  # served once a pod serves
        await kc.make_available(NS, "bot-stable")
        await rollout_tick(at(121))
        ro_st = (await kc.get(r.ROLLOUTS, NS, "bot"))["status"]
        assert (ro_st["phase"], ro_st["stableModelVersion"]) == ("Promoted", "support-bot-v1")
        await tick(kc, rec, at(122))
        assert (await kc.get(r.FINETUNESCHEDULES, NS, "bot"))["status"]["servingModelVersion"] == "support-bot-v1"
        # the next run is compared with it
        await tick(kc, rec, at(7 * 24 * 60))
        st = (await kc.get(r.FINETUNESCHEDULES, NS, "bot"))["status"]
        job2 = await kc.get(r.FINETUNEJOBS, NS, st["active"][0])
        assert job2["spec"]["evaluation"]["serving"]["modelVersion"] == "support-bot-v1" and st["runs"][-1]["champion"] == "support-bot-v1"


async def test_new_data_trigger_reads_the_digest_job_and_starts_a_run_when_it_changes(tmp_path: Path):
    async with cluster(tmp_path) as kc:
        rec = await setup(kc, schedule=None, triggers={"newData": {"claimName": "datasets", "glob": "support/*.jsonl", "checkInterval": "15m"}})
        assert await tick(kc, rec, at(0)) == 5.0  # polls only while the digest Job runs
        st = (await kc.get(r.FINETUNESCHEDULES, NS, "bot"))["status"]
        job = await kc.get(r.JOBS, NS, st["data"]["checkJob"])
        pod = job["spec"]["template"]["spec"]
        assert pod["containers"][0]["command"][:3] == ["python", "-m", "tuneloop.contract.datadigest"]
        assert pod["volumes"][0]["persistentVolumeClaim"] == {"claimName": "datasets", "readOnly": True}

        await kc.finish_job(NS, job["metadata"]["name"], message=json.dumps({"digest": "sha256:aaaa", "files": 2, "bytes": 100}))
        delay = await tick(kc, rec, at(1))
        st = (await kc.get(r.FINETUNESCHEDULES, NS, "bot"))["status"]
        assert st["data"]["digest"] == st["data"]["lastRunDigest"] == "sha256:aaaa"  # the baseline starts nothing
        assert kc.count(r.FINETUNEJOBS) == 0 and "checkJob" not in st["data"] and 13 * 60 <= delay <= 14 * 60

        await tick(kc, rec, at(15))
        st = (await kc.get(r.FINETUNESCHEDULES, NS, "bot"))["status"]
        await kc.finish_job(NS, st["data"]["checkJob"], message=json.dumps({"digest": "sha256:bbbb", "files": 3, "bytes": 180}))
        await tick(kc, rec, at(16))
        st = (await kc.get(r.FINETUNESCHEDULES, NS, "bot"))["status"]
        assert [x["trigger"] for x in st["runs"]] == ["NewData"] and st["runs"][0]["dataDigest"] == "sha256:bbbb"
        assert "data digest aaaa → bbbb (3 files, 180 bytes" in st["runs"][0]["reason"]
        assert st["data"]["lastRunDigest"] == "sha256:bbbb"


async def test_history_limit_deletes_old_finished_runs(tmp_path: Path):
    async with cluster(tmp_path) as kc:
        rec = await setup(kc, schedule="0 * * * *", successfulRunsHistoryLimit=1)
        names = []
        for h in range(3):
            await tick(kc, rec, at(h * 60))
            name = (await kc.get(r.FINETUNESCHEDULES, NS, "bot"))["status"]["active"][0]
            names.append(name)
            await finish(kc, name, samples.model_version(f"support-bot-r{h}", verdict="Failed", phase="Rejected"))
            await tick(kc, rec, at(h * 60 + 30))
        st = (await kc.get(r.FINETUNESCHEDULES, NS, "bot"))["status"]
        assert [x["name"] for x in st["runs"]] == names[-1:] and st["runs"][0]["outcome"] == "Rejected"
        assert kc.count(r.FINETUNEJOBS) == 1


async def test_kubectl_tuneloop_retrain_starts_a_manual_run(tmp_path: Path, capsys):
    import asyncio

    from tuneloop.cli.main import main

    async with cluster(tmp_path) as kc:
        rec = await setup(kc)
        assert await asyncio.to_thread(main, ["retrain", "bot", "--kubeconfig", str(kc.kubeconfig), "-n", NS]) == 0
        assert "retrain requested for FineTuneSchedule default/bot (tuneloop.dev/retrain=" in capsys.readouterr().out
        await tick(kc, rec, at(-30))  # before the cron time: only the manual trigger
        st = (await kc.get(r.FINETUNESCHEDULES, NS, "bot"))["status"]
        assert [x["trigger"] for x in st["runs"]] == ["Manual"] and st["runs"][0]["reason"].startswith("kubectl tuneloop retrain")
        assert await asyncio.to_thread(main, ["retrain", "nope", "--kubeconfig", str(kc.kubeconfig), "-n", NS]) == 1
