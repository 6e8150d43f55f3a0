"""Issue 25, finding 7: a FineTuneSchedule judges and hands off only the FineTuneJobs it created. Before, it adopted
every FineTuneJob labelled `tuneloop.dev/schedule=<name>` and trusted its `tuneloop.dev/champion` annotation: a
self-made job with a self-made "Better" ModelVersion was handed off and the Rollout's candidate set to it.

Now a labelled job without the schedule's controller ownerReference (uid included) is ignored and named once in
condition RunsOwned (False, JobNotOwned) and a Warning; one that copies the ownerReference is adopted only when its
(immutable) spec is what the schedule's template builds; a recorded run is judged only on the object of the uid the
schedule created. The schedule's own runs are judged and adopted as before."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from tuneloop.operator.builders import schedule as build
from tuneloop.operator.kube import resources as r

from ..operator.harness import cluster
from . import samples
from .test_reconcile import at, finish, setup, tick

pytestmark = pytest.mark.operator
NS = samples.NS
BETTER = {"modelVersion": "support-bot-v1", "outcome": "Better", "reason": "exactMatch +0.5 (self-made)"}


def runs_owned(st: dict) -> dict | None:
    return next((c for c in st.get("conditions") or [] if c["type"] == "RunsOwned"), None)


async def forged(kc, name: str, *, owner: dict | None = None, spec: dict | None = None) -> None:
    """A FineTuneJob a tenant made: the schedule's labels and champion annotation, a finished status and a
    ModelVersion that claims to beat the champion."""
    sched = await kc.get(r.FINETUNESCHEDULES, NS, "bot")
    body = {"apiVersion": "tuneloop.dev/v1alpha1", "kind": "FineTuneJob",
            "metadata": {"name": name, "namespace": NS,
                         "labels": {build.LABEL_SCHEDULE: "bot", build.LABEL_TRIGGER: "Manual"},
                         "annotations": {build.ANNOTATION_CHAMPION: "support-bot-v1", build.ANNOTATION_REASON: "trust me"},
                         **({"ownerReferences": [owner]} if owner else {})},
            "spec": spec or copy.deepcopy(sched["spec"]["jobTemplate"]["spec"])}
    await kc.apply(body)
    await finish(kc, name, samples.model_version(f"{name}-mv", serving=BETTER))


async def test_a_self_made_labelled_job_is_never_handed_off(tmp_path: Path):
    async with cluster(tmp_path) as kc:
        rec = await setup(kc)
        await forged(kc, "bot-evil")
        await tick(kc, rec, at(-1))
        assert not (await kc.get(r.ROLLOUTS, NS, "bot"))["spec"].get("candidate")
        st = (await kc.get(r.FINETUNESCHEDULES, NS, "bot"))["status"]
        assert all(run["name"] != "bot-evil" for run in st.get("runs") or [])
        cond = runs_owned(st)
        assert (cond["status"], cond["reason"]) == ("False", "JobNotOwned") and "bot-evil (not created by this schedule)" in cond["message"]
        await tick(kc, rec, at(-0.5))  # the Warning is given once, not every tick
        events = [e for e in await kc.client.events_for(NS, "bot", "FineTuneSchedule") if e["reason"] == "JobNotOwned"]
        assert len(events) == 1 and "bot-evil" in events[0]["message"]
        assert (await kc.get(r.FINETUNEJOBS, NS, "bot-evil")) is not None  # ignored, not deleted
        await kc.client.delete(r.FINETUNEJOBS, NS, "bot-evil")
        await tick(kc, rec, at(-0.25))
        cond = runs_owned((await kc.get(r.FINETUNESCHEDULES, NS, "bot"))["status"])
        assert (cond["status"], cond["reason"]) == ("True", "Owned")


async def test_a_copied_owner_reference_does_not_make_a_job_with_other_gates_a_run(tmp_path: Path):
    """The ownerReference is metadata anyone may write; the spec (immutable) must be the template's."""
    async with cluster(tmp_path) as kc:
        rec = await setup(kc)
        sched = await kc.get(r.FINETUNESCHEDULES, NS, "bot")
        spec = copy.deepcopy(sched["spec"]["jobTemplate"]["spec"])
        spec["evaluation"]["gates"] = []  # no gate can fail
        await forged(kc, "bot-evil", owner=build.owner_ref(sched), spec=spec)
        await tick(kc, rec, at(-1))
        assert not (await kc.get(r.ROLLOUTS, NS, "bot"))["spec"].get("candidate")
        st = (await kc.get(r.FINETUNESCHEDULES, NS, "bot"))["status"]
        assert all(run["name"] != "bot-evil" for run in st.get("runs") or [])
        assert "its spec is not what the schedule's template builds" in runs_owned(st)["message"]


async def test_a_run_replaced_under_its_name_is_not_judged_on_the_replacement(tmp_path: Path):
    async with cluster(tmp_path) as kc:
        rec = await setup(kc)
        await tick(kc, rec, at(0))
        st = (await kc.get(r.FINETUNESCHEDULES, NS, "bot"))["status"]
        run = st["runs"][0]
        assert run["uid"] == (await kc.get(r.FINETUNEJOBS, NS, run["name"]))["metadata"]["uid"]
        await kc.client.delete(r.FINETUNEJOBS, NS, run["name"])
        sched = await kc.get(r.FINETUNESCHEDULES, NS, "bot")
        await forged(kc, run["name"], owner=build.owner_ref(sched))
        await tick(kc, rec, at(1))
        assert not (await kc.get(r.ROLLOUTS, NS, "bot"))["spec"].get("candidate")
        st = (await kc.get(r.FINETUNESCHEDULES, NS, "bot"))["status"]
        assert st["runs"][0]["outcome"] != "HandedOff"
        assert run["name"] in runs_owned(st)["message"]


async def test_its_own_run_is_adopted_after_a_lost_status_patch_and_handed_off(tmp_path: Path):
    async with cluster(tmp_path) as kc:
        rec = await setup(kc)
        await tick(kc, rec, at(0))
        name = (await kc.get(r.FINETUNESCHEDULES, NS, "bot"))["status"]["runs"][0]["name"]
        # the status patch after the create was lost: the schedule knows no run
        await kc.client.patch(r.FINETUNESCHEDULES, NS, "bot", {"status": {"runs": None, "active": None}}, subresource="status")
        await finish(kc, name, samples.model_version("support-bot-v2", serving={**BETTER, "reason": "exactMatch +0.08"}))
        await tick(kc, rec, at(120))
        assert (await kc.get(r.ROLLOUTS, NS, "bot"))["spec"]["candidate"] == {"name": "support-bot-v2"}
        st = (await kc.get(r.FINETUNESCHEDULES, NS, "bot"))["status"]
        assert [x["outcome"] for x in st["runs"] if x["name"] == name] == ["HandedOff"] and runs_owned(st) is None
