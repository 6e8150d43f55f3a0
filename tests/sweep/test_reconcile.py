"""FineTuneSweep ticks against kmock (no operator process, explicit clock): trials as child FineTuneJobs (owner
reference, deterministic names, scored on validation, no ModelVersion), parallelism, pruning (the trial's FineTuneJob
suspended, the reason recorded), a restart (a fresh reconciler; a lost status patch) that neither repeats nor loses a
trial, the best trial's final run on the test split with the sweep lineage, and the hand-off by the schedule's rule."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
import yaml
from tuneloop.operator.kube import resources as r
from tuneloop.operator.sweep.reconcile import Reconciler

from ..operator.harness import cluster
from ..schedule import samples

pytestmark = pytest.mark.operator
NS = "default"
T0 = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)
SAMPLE = Path(__file__).resolve().parents[2] / "manifests" / "samples" / "sweep-quickstart.yaml"


def sweep(**spec) -> dict:
    """The sample's search over the FineTuneSchedule sample's template (data and output on PVCs: what a cluster runs;
    the quickstart's local paths are refused by the admission, as a FineTuneJob's are)."""
    obj = yaml.safe_load(SAMPLE.read_text())
    obj["metadata"] = {"name": "sw", "namespace": NS}
    obj["spec"]["jobTemplate"] = {"spec": yaml.safe_load((SAMPLE.parent / "finetuneschedule.yaml").read_text())["spec"]["jobTemplate"]["spec"]}
    obj["spec"]["objective"] = {"metric": "exactMatch"}
    obj["spec"].update({"maxTrials": 4, "parallelism": 2, "pruner": {"type": "median", "warmupSteps": 10, "startupTrials": 2}})
    obj["spec"].update(spec)
    return obj


def at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


async def tick(kc, rec, minutes):
    return await rec.tick(await kc.get(r.FINETUNESWEEPS, NS, "sw"), at(minutes))


async def status(kc) -> dict:
    return (await kc.get(r.FINETUNESWEEPS, NS, "sw"))["status"]


async def report(kc, name, **st):
    await kc.client.patch(r.FINETUNEJOBS, NS, name, {"status": st}, subresource="status")


async def test_a_sweep_runs_prunes_survives_a_restart_and_registers_its_best_trial(tmp_path: Path):
    async with cluster(tmp_path) as kc:
        await kc.apply(sweep())
        await tick(kc, Reconciler(kc.client), 0)
        jobs = {j["metadata"]["name"]: j for j in await kc.list(r.FINETUNEJOBS, NS)}
        assert sorted(jobs) == ["sw-t000", "sw-t001"]  # parallelism 2
        sw = await kc.get(r.FINETUNESWEEPS, NS, "sw")
        t0 = jobs["sw-t000"]
        assert t0["metadata"]["ownerReferences"][0] == {
            "apiVersion": "tuneloop.dev/v1alpha1", "kind": "FineTuneSweep", "name": "sw", "uid": sw["metadata"]["uid"],
            "controller": True, "blockOwnerDeletion": True}
        ev = t0["spec"]["evaluation"]
        assert ev["split"] == "validation" and ev["gates"] == [] and ev["baseline"] is False
        assert t0["spec"]["registry"]["createModelVersion"] is False
        assert t0["spec"]["output"]["pvc"]["path"] == "support-bot/sw-t000"
        st = await status(kc)
        params = st["trials"][0]["params"]
        assert t0["spec"]["hyperparameters"]["learningRate"] == params["hyperparameters.learningRate"]
        assert t0["spec"]["method"]["lora"]["r"] == params["method.lora.r"]
        assert (st["phase"], st["trialsRunning"], st["direction"]) == ("Running", 2, "maximize")

        # t000 and t001 report validation losses and finish on validation
        await report(kc, "sw-t000", phase="Training", progress={"step": 10, "evalLoss": 1.0})
        await report(kc, "sw-t001", phase="Training", progress={"step": 10, "evalLoss": 1.2})
        await tick(kc, Reconciler(kc.client), 1)
        await report(kc, "sw-t000", phase="Succeeded", metrics={"exactMatch": 0.7}, progress={"step": 20, "evalLoss": 0.8})
        await report(kc, "sw-t001", phase="Succeeded", metrics={"exactMatch": 0.6}, progress={"step": 20, "evalLoss": 1.0})
        await tick(kc, Reconciler(kc.client), 2)
        st = await status(kc)
        assert [(t["name"], t["state"]) for t in st["trials"]] == [
            ("sw-t000", "Complete"), ("sw-t001", "Complete"), ("sw-t002", "Running"), ("sw-t003", "Running")]
        assert (st["bestTrial"], st["bestValue"]) == ("sw-t000", 0.7)
        assert st["trials"][0]["intermediate"] == [{"step": 10, "evalLoss": 1.0}, {"step": 20, "evalLoss": 0.8}]

        # t002 falls behind the median at step 20: pruned, its FineTuneJob suspended, the reason recorded
        await report(kc, "sw-t002", phase="Training", progress={"step": 20, "evalLoss": 1.5})
        await tick(kc, Reconciler(kc.client), 3)
        st = await status(kc)
        t2 = st["trials"][2]
        assert t2["state"] == "Pruned" and "above the median" in t2["message"]
        assert (await kc.get(r.FINETUNEJOBS, NS, "sw-t002"))["spec"]["suspend"] is True
        assert st["trialsPruned"] == 1 and kc.count(r.FINETUNEJOBS) == 4  # the budget: no fifth trial

        # a restart whose last status patch was lost: trial t003 is missing from status, found on its job
        lost = {**st, "trials": st["trials"][:3], "trialsRunning": 0}
        await kc.client.patch(r.FINETUNESWEEPS, NS, "sw", {"status": {"trials": lost["trials"]}}, subresource="status")
        await tick(kc, Reconciler(kc.client), 4)
        st = await status(kc)
        assert [t["name"] for t in st["trials"]] == ["sw-t000", "sw-t001", "sw-t002", "sw-t003"]
        assert kc.count(r.FINETUNEJOBS) == 4  # neither repeated nor lost

        # t003 completes best; every trial has ended: the best trial's configuration runs again on the test split
        await report(kc, "sw-t003", phase="Succeeded", metrics={"exactMatch": 0.9})
        await tick(kc, Reconciler(kc.client), 5)
        st = await status(kc)
        assert st["trials"][3]["state"] == "Complete" and st["trials"][3]["split"] == "validation"
        assert st["bestTrial"] == "sw-t003" and st["phase"] == "Evaluating"
        best = await kc.get(r.FINETUNEJOBS, NS, "sw-best")
        assert best["spec"]["evaluation"]["split"] == "test" and best["spec"]["registry"]["createModelVersion"] is True
        assert best["spec"]["evaluation"]["gates"]  # the template's gates judge it on the test split
        lineage = json.loads(best["metadata"]["annotations"]["tuneloop.dev/sweep-lineage"])
        assert (lineage["name"], lineage["trial"], lineage["trialNumber"], lineage["value"]) == ("sw", "sw-t003", 3, 0.9)
        assert best["spec"]["hyperparameters"]["learningRate"] == st["trials"][3]["params"]["hyperparameters.learningRate"]

        # the final run registers its ModelVersion
        assert best["spec"]["registry"] == {"modelName": "support-bot", "version": "sw", "createModelVersion": True}
        mv = samples.model_version("support-bot-sw")
        await kc.apply(mv)
        await report(kc, "sw-best", phase="Succeeded", children={"modelVersion": "support-bot-sw"})
        await tick(kc, Reconciler(kc.client), 6)
        st = await status(kc)
        assert st["phase"] == "Succeeded" and st["best"]["outcome"] == "Registered" and st["best"]["verdict"] == "Passed"
        assert kc.count(r.FINETUNEJOBS) == 5

        # /metrics: trials by state, the best objective, no longer active (TuneloopSweepStalled stays quiet)
        from tuneloop.operator.telemetry import REGISTRY

        labels = {"namespace": NS, "name": "sw"}
        assert REGISTRY.get_sample_value("tuneloop_sweep_trials", {**labels, "state": "Pruned"}) == 1
        assert REGISTRY.get_sample_value("tuneloop_sweep_trials", {**labels, "state": "Complete"}) == 3
        assert REGISTRY.get_sample_value("tuneloop_sweep_best_objective", {**labels, "metric": "exactMatch"}) == 0.9
        assert REGISTRY.get_sample_value("tuneloop_sweep_active", labels) == 0
        assert REGISTRY.get_sample_value("tuneloop_sweep_trial_duration_seconds_count", {"state": "Pruned"}) >= 1


async def test_a_test_split_trial_is_never_best(tmp_path: Path):
    async with cluster(tmp_path) as kc:
        await kc.apply(sweep(maxTrials=2, pruner={"type": "none"}))
        rec = Reconciler(kc.client)
        await tick(kc, rec, 0)
        # t001's FineTuneJob replaced by one scoring the test split (same name, our owner reference copied)
        j = await kc.get(r.FINETUNEJOBS, NS, "sw-t001")
        await kc.client.delete(r.FINETUNEJOBS, NS, "sw-t001")
        j["metadata"] = {k: v for k, v in j["metadata"].items() if k in ("name", "namespace", "labels", "annotations", "ownerReferences")}
        j["spec"]["evaluation"]["split"] = "test"
        j.pop("status", None)
        await kc.apply(j)
        await report(kc, "sw-t000", phase="Succeeded", metrics={"exactMatch": 0.5})
        await report(kc, "sw-t001", phase="Succeeded", metrics={"exactMatch": 0.99})
        await tick(kc, rec, 1)
        st = await status(kc)
        assert st["bestTrial"] == "sw-t000"
        assert st["trials"][1]["state"] == "Failed" and "deleted" in st["trials"][1]["message"]  # not the job it created


async def test_the_winner_is_handed_to_the_rollout_by_the_schedule_rule(tmp_path: Path):
    async with cluster(tmp_path) as kc:
        await kc.apply(samples.model_version("support-bot-v1", phase="Serving"))
        ro = samples.rollout("support-bot-v1")
        ro_status = ro.pop("status")
        await kc.apply(ro)
        await kc.client.patch(r.ROLLOUTS, NS, "bot", {"status": ro_status}, subresource="status")
        obj = sweep(maxTrials=1, parallelism=1, handOff={"rollout": {"name": "bot"}})
        await kc.apply(obj)
        rec = Reconciler(kc.client)
        await tick(kc, rec, 0)
        await report(kc, "sw-t000", phase="Succeeded", metrics={"exactMatch": 0.5})
        await tick(kc, rec, 1)
        best = await kc.get(r.FINETUNEJOBS, NS, "sw-best")
        assert best["spec"]["evaluation"]["serving"]["modelVersion"] == "support-bot-v1"  # the champion, as a schedule's run
        better = {"modelVersion": "support-bot-v1", "outcome": "Better", "reason": "fieldAccuracy +0.1"}
        await kc.apply(samples.model_version("support-bot-sw", serving=better))
        await report(kc, "sw-best", phase="Succeeded", children={"modelVersion": "support-bot-sw"})
        await tick(kc, rec, 2)
        assert (await kc.get(r.ROLLOUTS, NS, "bot"))["spec"]["candidate"] == {"name": "support-bot-sw"}
        st = await status(kc)
        assert st["best"]["outcome"] == "HandedOff" and st["phase"] == "Succeeded"


def test_the_final_run_s_model_version_names_the_sweep_and_trial():
    from tuneloop.api import FineTuneJobSpec, ModelVersion
    from tuneloop.operator.builders.common import JobMeta
    from tuneloop.operator.builders.registration import model_version
    from tuneloop.operator.settings import OperatorSettings

    obj = sweep()
    spec = FineTuneJobSpec.model_validate(obj["spec"]["jobTemplate"]["spec"])
    lineage = {"name": "sw", "trial": "sw-t003", "trialNumber": 3, "objective": "exactMatch", "value": 0.9,
               "params": {"method.lora.r": "8"}}
    meta = JobMeta("sw-best", NS, "uid-1", 1, None, (("tuneloop.dev/sweep-lineage", json.dumps(lineage)),))
    mv = model_version(spec, meta, OperatorSettings(), evaluation=None)
    assert mv["metadata"]["name"] == "support-bot-v1-uid1"
    assert mv["spec"]["lineage"]["sweep"] == lineage
    assert ModelVersion.model_validate(mv).spec.lineage.sweep is not None


async def test_a_template_no_trial_could_run_is_refused_before_any_trial(tmp_path: Path):
    """The quickstart's local paths (a GGUF from a Python package, data files here): every trial would fail InvalidSpec."""
    async with cluster(tmp_path) as kc:
        obj = yaml.safe_load(SAMPLE.read_text())
        obj["metadata"] = {"name": "sw", "namespace": NS}
        await kc.apply(obj)
        await tick(kc, Reconciler(kc.client), 0)
        st = await status(kc)
        assert st["phase"] == "Failed" and "invalid FineTuneSweep at spec.jobTemplate.spec." in st["message"]
        assert "a trial's FineTuneJob would fail" in st["message"]
        assert kc.count(r.FINETUNEJOBS) == 0
