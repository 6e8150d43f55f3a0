"""The real operator (subprocess) against kmock: a FineTuneSweep's trials are created by the sweep daemon, the operator is
SIGKILLed mid-sweep and restarted, and the study continues from its status: no trial repeated, none lost, the budget
kept (the cluster tier's version of this, on a real API server with training, is not written yet)."""

from __future__ import annotations

import asyncio

import pytest
import pytest_asyncio
from tuneloop.operator.kube import resources as r

from ..operator.harness import OperatorProcess, cluster
from .test_reconcile import NS, sweep

pytestmark = [pytest.mark.operator, pytest.mark.timeout(180)]


@pytest_asyncio.fixture
async def kube(tmp_path):
    async with cluster(tmp_path) as kc:
        yield kc


def trials(obj: dict) -> list[dict]:
    return (obj.get("status") or {}).get("trials") or []


async def test_sigkill_mid_sweep_neither_repeats_nor_loses_a_trial(kube, tmp_path):
    await kube.apply(sweep(maxTrials=3, parallelism=2, pruner={"type": "none"}))
    op = OperatorProcess(kube.kubeconfig, tmp_path, env={"TUNELOOP_TRAINER_IMAGE": "reg/trainer:test"})
    op.start()
    try:
        obj = await kube.wait_for(r.FINETUNESWEEPS, NS, "sw", lambda o: len(trials(o)) == 2, timeout=60)
        first = [(t["name"], t["params"], t["uid"]) for t in trials(obj)]
        assert [n for n, _, _ in first] == ["sw-t000", "sw-t001"]

        op.kill()  # mid-sweep: two trials running
        op.start()
        await asyncio.sleep(3)  # the restarted daemon ticks on what it finds
        obj = await kube.get(r.FINETUNESWEEPS, NS, "sw")
        assert [(t["name"], t["params"], t["uid"]) for t in trials(obj)] == first
        assert len([j for j in await kube.list(r.FINETUNEJOBS, NS) if j["metadata"]["name"].startswith("sw-t")]) == 2

        # a trial's FineTuneJob goes away: that trial failed, the third (last) trial starts in its slot
        await kube.client.delete(r.FINETUNEJOBS, NS, "sw-t000")
        obj = await kube.wait_for(r.FINETUNESWEEPS, NS, "sw", lambda o: len(trials(o)) == 3, timeout=60)
        assert [(t["name"], t["state"]) for t in trials(obj)] == [("sw-t000", "Failed"), ("sw-t001", "Running"), ("sw-t002", "Running")]
        third = trials(obj)[2]

        op.kill()
        op.start()
        await asyncio.sleep(3)
        obj = await kube.get(r.FINETUNESWEEPS, NS, "sw")
        assert [(t["name"], t["state"], t["params"]) for t in trials(obj)][2] == ("sw-t002", "Running", third["params"])
        assert len(trials(obj)) == 3 and obj["status"]["trialsRunning"] == 2
        names = sorted(j["metadata"]["name"] for j in await kube.list(r.FINETUNEJOBS, NS))
        assert [n for n in names if n.startswith("sw-t")] == ["sw-t001", "sw-t002"]  # no fourth trial: the budget holds
    finally:
        op.stop()
        print(op.tail(30))
