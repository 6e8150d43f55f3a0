"""A FineTuneJob whose ModelVersion name is taken by another job's version fails instead of adopting it (issue 20
item 5: a rerun under a reused name took over the old ModelVersion and its old evaluation)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from tuneloop.operator.finetunejob.reconcile import Reconciler
from tuneloop.operator.kube import resources as r
from tuneloop.operator.settings import OperatorSettings

from ..operator.harness import cluster
from ..operator.scenario import EVAL_LOG, NS, PREPARE_MSG, PUBLISH_MSG, TRAIN_MSG, ftj

pytestmark = pytest.mark.operator


async def run_to_the_end(kc, rec: Reconciler, name: str) -> dict:
    for job, msg, log in ((f"{name}-data", PREPARE_MSG, None), (f"{name}-train", TRAIN_MSG, None), (f"{name}-eval", PUBLISH_MSG, EVAL_LOG)):
        await rec.run(await kc.get(r.FINETUNEJOBS, NS, name))
        await kc.finish_job(NS, job, message=msg, **({"log": log} if log else {}))
    await rec.run(await kc.get(r.FINETUNEJOBS, NS, name))
    return await kc.get(r.FINETUNEJOBS, NS, name)


async def test_a_job_does_not_adopt_a_model_version_another_job_registered(tmp_path: Path):
    async with cluster(tmp_path) as kc:
        rec = Reconciler(kc.client, OperatorSettings())
        await kc.apply(ftj())  # support-bot registers support-bot-v1
        first = await run_to_the_end(kc, rec, "support-bot")
        assert first["status"]["phase"] == "Succeeded"
        mv = await kc.get(r.MODELVERSIONS, NS, "support-bot-v1")

        again = copy.deepcopy(ftj())
        again["metadata"]["name"] = "support-bot-rerun"  # the same modelName and version: the same ModelVersion name
        await kc.apply(again)
        second = await run_to_the_end(kc, rec, "support-bot-rerun")
        st = second["status"]
        assert st["phase"] == "Failed" and "ModelVersion support-bot-v1 already exists, registered by FineTuneJob support-bot" in st["message"]
        assert (st.get("children") or {}).get("modelVersion") is None
        assert (await kc.get(r.MODELVERSIONS, NS, "support-bot-v1"))["spec"]["lineage"] == mv["spec"]["lineage"]
