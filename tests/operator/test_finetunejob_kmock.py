"""The real operator (subprocess) against kmock: the whole FineTuneJob lifecycle, restarts, bad specs."""

from __future__ import annotations

import asyncio
import json

import pytest
from prometheus_client import CollectorRegistry, Gauge, start_http_server
from tuneloop.operator.kube import resources as r

from .harness import OperatorProcess
from .scenario import EVAL_LOG, EVALUATION, NS, PREPARE_MSG, PUBLISH_MSG, REPORT_MD, TRAIN_MSG, cond, ftj, phase

pytestmark = [pytest.mark.operator, pytest.mark.timeout(120)]


async def _our_events(kube, name: str, until=lambda events: True, timeout: float = 20.0) -> list[dict]:
    """The operator's phase events (Kopf may add its own "Logging" events for retried errors).

    Events are posted right after the status patch, so poll until `until(events)` holds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        events = await kube.client.events_for(NS, name, "FineTuneJob")
        ours = [e for e in events if (e.get("source") or {}).get("component") == "tuneloop-operator"]
        if until(ours) or asyncio.get_running_loop().time() > deadline:
            return ours
        await asyncio.sleep(0.1)


def _trainer_metrics() -> tuple[int, dict[str, Gauge]]:
    """A stand-in for rank 0's metrics endpoint (same names and labels as the trainer)."""
    reg = CollectorRegistry()
    gauges = {k: Gauge(f"tuneloop_trainer_{k}", k, ["job", "namespace"], registry=reg)
              for k in ("step", "total_steps", "epoch", "loss", "tokens_per_second", "eta_seconds")}
    server, _ = start_http_server(0, addr="127.0.0.1", registry=reg)
    return server.server_port, gauges


async def test_lifecycle_restart_and_modelversion(kube, tmp_path):
    port, g = _trainer_metrics()
    for k, v in {"step": 5, "total_steps": 20, "epoch": 0.25, "loss": 1.25, "tokens_per_second": 3100.0, "eta_seconds": 600}.items():
        g[k].labels("support-bot", NS).set(v)
    op = OperatorProcess(kube.kubeconfig, tmp_path, env={"TUNELOOP_TRAINER_METRICS_PORT": str(port), "TUNELOOP_TRAINER_IMAGE": "reg/trainer:test"})
    op.start()
    try:
        await kube.apply(ftj())
        data = await kube.wait_for(r.JOBS, NS, "support-bot-data")
        c = data["spec"]["template"]["spec"]["containers"][0]
        assert c["args"][:3] == ["-m", "tuneloop_trainer", "prepare"] and c["image"] == "reg/trainer:test"
        assert "nvidia.com/gpu" not in c["resources"]["requests"]  # no GPU before the data is valid
        assert await kube.get(r.JOBS, NS, "support-bot-train") is None
        obj = await kube.wait_for(r.FINETUNEJOBS, NS, "support-bot", lambda o: phase(o) == "ValidatingData")
        assert obj["status"]["children"]["dataJob"] == "support-bot-data"
        assert (await kube.get(r.CONFIGMAPS, NS, "support-bot-config"))["data"]["spec.yaml"]
        assert await kube.get(r.SERVICES, NS, "support-bot-train") is None  # only with the training Job

        await kube.finish_job(NS, "support-bot-data", message=PREPARE_MSG)
        train = await kube.wait_for(r.JOBS, NS, "support-bot-train")
        assert (await kube.get(r.SERVICES, NS, "support-bot-train"))["spec"]["clusterIP"] == "None"
        ts = train["spec"]
        assert (ts["completionMode"], ts["completions"], ts["parallelism"]) == ("Indexed", 1, 1)
        tc = ts["template"]["spec"]["containers"][0]
        assert tc["args"][:3] == ["-m", "tuneloop_trainer", "train"]  # the stage re-executes itself under torchrun
        assert {"name": "MASTER_ADDR", "value": "support-bot-train-0.support-bot-train.default.svc"} in tc["env"]
        assert ts["template"]["spec"]["subdomain"] == "support-bot-train"
        assert tc["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "tuneloop-hf-token", "key": "token"}}} in tc["env"]
        assert ts["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] == [42]
        assert train["metadata"]["ownerReferences"][0]["kind"] == "FineTuneJob"
        obj = await kube.wait_for(r.FINETUNEJOBS, NS, "support-bot", lambda o: phase(o) == "Training")
        assert cond(obj, "DataValidated")["status"] == "True"
        assert obj["status"]["dataReport"]["accepted"] == 118 and obj["status"]["dataReport"]["datasetSha256"] == "ab" * 32

        # rank 0 runs: progress is polled from its metrics endpoint
        await kube.start_job(NS, "support-bot-train", pod_ip="127.0.0.1")
        obj = await kube.wait_for(r.FINETUNEJOBS, NS, "support-bot",
                                  lambda o: (o["status"].get("progress") or {}).get("step") == 5, timeout=30)
        assert obj["status"]["progress"]["totalSteps"] == 20 and obj["status"]["progress"]["percent"] == "25%"
        assert cond(obj, "Training")["status"] == "True" and obj["status"]["startTime"]
        train_uid = train["metadata"]["uid"]

        # the operator dies mid-training and comes back: nothing duplicated, status continues
        op.kill()
        g["step"].labels("support-bot", NS).set(10)
        op.start()
        obj = await kube.wait_for(r.FINETUNEJOBS, NS, "support-bot",
                                  lambda o: (o["status"].get("progress") or {}).get("step") == 10, timeout=30)
        assert (await kube.get(r.JOBS, NS, "support-bot-train"))["metadata"]["uid"] == train_uid
        assert kube.count(r.JOBS) == 2

        await kube.finish_job(NS, "support-bot-train", message=TRAIN_MSG)
        ev = await kube.wait_for(r.JOBS, NS, "support-bot-eval")
        ec = ev["spec"]["template"]["spec"]["containers"][0]
        assert ec["command"][:2] == ["sh", "-c"] and "tuneloop_trainer evaluate" in ec["command"][2]
        obj = await kube.wait_for(r.FINETUNEJOBS, NS, "support-bot", lambda o: phase(o) == "Evaluating")
        assert cond(obj, "Training")["reason"] == "Completed"

        await kube.finish_job(NS, "support-bot-eval", message=PUBLISH_MSG, log=EVAL_LOG)
        obj = await kube.wait_for(r.FINETUNEJOBS, NS, "support-bot", lambda o: phase(o) == "Succeeded")
        assert cond(obj, "Succeeded")["status"] == "True" and cond(obj, "Evaluated")["reason"] == "Passed"
        assert obj["status"]["metrics"] == {"rougeL": 0.48, "perplexity": 6.5} and obj["status"]["verdict"] == "Passed"
        mv_name = obj["status"]["children"]["modelVersion"]
        mv = await kube.wait_for(r.MODELVERSIONS, NS, mv_name, lambda o: phase(o) == "Ready")
        ev = mv["spec"]["evaluation"]  # the record as published, plus the API's defaults (e.g. intervals)
        assert {k: ev[k] for k in EVALUATION if k != "metrics"} == {k: v for k, v in EVALUATION.items() if k != "metrics"}
        assert [{k: m[k] for k in want} for m, want in zip(ev["metrics"], EVALUATION["metrics"], strict=True)] == EVALUATION["metrics"]
        assert mv["spec"]["artifact"] == {"uri": "pvc://models/support-bot/artifact", "format": "lora-adapter", "loraRank": 8}
        lin = mv["spec"]["lineage"]
        assert lin["datasetSha256"] == "ab" * 32 and lin["tokensSeen"] == 123456 and lin["libraryVersions"] == {"torch": "2.13.0"}
        report = await kube.get(r.CONFIGMAPS, NS, mv["spec"]["report"]["configMap"])
        assert report["data"]["report.md"] == REPORT_MD
        assert report["metadata"]["ownerReferences"][0] == {**report["metadata"]["ownerReferences"][0], "kind": "ModelVersion", "uid": mv["metadata"]["uid"]}

        events = await _our_events(kube, "support-bot", until=lambda ev: len(ev) >= 3)
        # the first phase (ValidatingData) is in the status only: no Event at creation
        assert [e["reason"] for e in events] == ["Training", "Evaluating", "Succeeded"]

        # a second restart after the end changes nothing
        op.kill()
        op.start()
        await op.wait_log("watching FineTuneJob default/support-bot (phase Succeeded)")
        obj = await kube.get(r.FINETUNEJOBS, NS, "support-bot")
        assert phase(obj) == "Succeeded" and len(await _our_events(kube, "support-bot")) == 3
        assert kube.count(r.JOBS) == 3 and kube.count(r.MODELVERSIONS) == 1
    finally:
        op.stop()
        print(op.tail())


async def test_invalid_spec_fails_with_field_path_and_no_jobs(kube, operator_proc):
    bad = ftj(method={"type": "qlora"})  # qlora without quantization.bits 4
    bad["metadata"]["name"] = "broken"
    await kube.apply(bad)
    obj = await kube.wait_for(r.FINETUNEJOBS, NS, "broken", lambda o: phase(o) == "Failed")
    ready = cond(obj, "Ready")
    assert ready["status"] == "False" and ready["reason"] == "InvalidSpec"
    assert ready["message"].startswith("spec.method") and "qlora requires quantization.bits 4" in ready["message"]
    events = await _our_events(kube, "broken", until=lambda ev: len(ev) >= 1)
    assert [(e["type"], e["reason"]) for e in events] == [("Warning", "Failed")]
    assert kube.count(r.JOBS) == 0


async def test_data_error_fails_before_gpus(kube, operator_proc):
    await kube.apply(ftj())
    await kube.wait_for(r.JOBS, NS, "support-bot-data")
    msg = '{"stage":"prepare","outcome":"Failed","reason":"InvalidData","error":"train.jsonl:7 not valid JSON"}'
    await kube.finish_job(NS, "support-bot-data", exit_code=42, message=msg)
    obj = await kube.wait_for(r.FINETUNEJOBS, NS, "support-bot", lambda o: phase(o) == "Failed")
    dv = cond(obj, "DataValidated")
    assert (dv["status"], dv["reason"]) == ("False", "InvalidData") and "train.jsonl:7" in dv["message"]
    assert cond(obj, "Ready")["status"] == "False"
    assert await kube.get(r.JOBS, NS, "support-bot-train") is None


async def test_suspend_is_honoured(kube, operator_proc):
    await kube.apply(ftj(suspend=True))
    data = await kube.wait_for(r.JOBS, NS, "support-bot-data")
    assert data["spec"]["suspend"] is True
    await kube.wait_for(r.FINETUNEJOBS, NS, "support-bot", lambda o: phase(o) == "Suspended")
    await kube.client.patch(r.FINETUNEJOBS, NS, "support-bot", {"spec": {"suspend": False}})
    await kube.wait_for(r.JOBS, NS, "support-bot-data", lambda j: j["spec"]["suspend"] is False)
    await kube.wait_for(r.FINETUNEJOBS, NS, "support-bot", lambda o: phase(o) == "ValidatingData")


async def test_training_failure_reports_the_trainer_reason(kube, operator_proc):
    await kube.apply(ftj())
    await kube.wait_for(r.JOBS, NS, "support-bot-data")
    await kube.finish_job(NS, "support-bot-data", message=PREPARE_MSG)
    await kube.wait_for(r.JOBS, NS, "support-bot-train")
    oom = '{"stage":"train","outcome":"Failed","reason":"OutOfResources","error":"out of memory at microBatchSize 8 (lower microBatchSize)"}'
    await kube.finish_job(NS, "support-bot-train", exit_code=1, message=oom)
    obj = await kube.wait_for(r.FINETUNEJOBS, NS, "support-bot", lambda o: phase(o) == "Failed")
    tr = cond(obj, "Training")
    assert (tr["status"], tr["reason"]) == ("False", "OutOfResources") and "microBatchSize" in tr["message"]
    assert obj["status"]["message"].startswith("training failed: out of memory")
    assert await kube.get(r.JOBS, NS, "support-bot-eval") is None
    events = await _our_events(kube, "support-bot", until=lambda ev: ev and ev[-1]["reason"] == "Failed")
    assert events[-1]["type"] == "Warning" and events[-1]["reason"] == "Failed"


def _operator_requests(kube) -> list[tuple[str, str]]:
    """Requests the operator made (it authenticates; the test's own client does not), watches excluded."""
    return [(m, p) for m, p, params, auth in kube.emulator.recorded or [] if auth and params.get("watch") != "true"]


async def test_no_finalizer_no_kopf_bookkeeping_and_at_most_six_requests_to_the_data_job(kube, tmp_path):
    """Issue 10, defect 1 and "less work": no per-object timer (so no finalizer), no Kopf annotations,
    ≤ 6 API requests from creation to the data-prep Job, none while the job waits."""
    op = OperatorProcess(kube.kubeconfig, tmp_path)
    op.start()
    try:
        await op.wait_log("Initial authentication has finished")
        await asyncio.sleep(1.0)  # initial listings done
        kube.emulator.recorded = []
        await kube.apply(ftj())
        await kube.wait_for(r.JOBS, NS, "support-bot-data")
        await kube.wait_for(r.FINETUNEJOBS, NS, "support-bot", lambda o: phase(o) == "ValidatingData")
        await asyncio.sleep(2.5)  # echoes of our own writes, the Job's ADDED event, two periodic ticks (interval 1 s)
        reqs = _operator_requests(kube)
        assert len(reqs) <= 6, reqs
        assert sorted(m + " " + p.split("/")[-1] for m, p in reqs) == ["PATCH status", "POST configmaps", "POST jobs"], reqs
        assert await _our_events(kube, "support-bot") == []  # the status says ValidatingData; no Event for it
        assert [m for m, _ in reqs].count("GET") == 0, reqs  # create first; nothing to read back
        obj = await kube.get(r.FINETUNEJOBS, NS, "support-bot")
        assert not obj["metadata"].get("finalizers")
        assert not [a for a in obj["metadata"].get("annotations") or {} if a.startswith("tuneloop.dev/")]

        await kube.finish_job(NS, "support-bot-data", message=PREPARE_MSG)
        obj = await kube.wait_for(r.FINETUNEJOBS, NS, "support-bot", lambda o: phase(o) == "Training")
        await asyncio.sleep(2.5)  # progress polls while Training (rank 0 not reachable yet)
        obj = await kube.get(r.FINETUNEJOBS, NS, "support-bot")
        assert not obj["metadata"].get("finalizers")
        assert not [a for a in obj["metadata"].get("annotations") or {} if a.startswith("tuneloop.dev/")]
    finally:
        op.stop()
        print(op.tail())


async def test_a_finalizer_left_by_an_older_operator_is_removed(kube, operator_proc):
    """Upgrading from the timer-based operator: its finalizer must not keep blocking deletions."""
    doc = ftj()
    doc["metadata"]["finalizers"] = ["tuneloop.dev/finalizer"]
    doc["status"] = {"phase": "Succeeded"}  # finished: nothing of ours races Kopf's patch (kmock has no 409 on a stale test op)
    await kube.apply(doc)
    await kube.wait_for(r.FINETUNEJOBS, NS, "support-bot", lambda o: not o["metadata"].get("finalizers"))


async def test_progress_is_100_percent_when_training_ends_between_polls(kube, tmp_path):
    """Issue 10, defect 10: the job finishes before any poll saw rank 0: status still ends at 100 %
    with the last step's loss (not the run's mean) and the final evaluation loss."""
    op = OperatorProcess(kube.kubeconfig, tmp_path, env={"TUNELOOP_PROGRESS_INTERVAL": "60"})
    op.start()
    try:
        await kube.apply(ftj(evaluation={"enabled": False}))
        await kube.wait_for(r.JOBS, NS, "support-bot-data")
        await kube.finish_job(NS, "support-bot-data", message=PREPARE_MSG)
        await kube.wait_for(r.JOBS, NS, "support-bot-train")
        summary = {"stage": "train", "outcome": "Succeeded", "steps": 40, "total_steps": 40, "train_loss": 1.9,
                   "final_loss": 0.61, "eval_loss": 0.72, "train_seconds": 812.5}
        await kube.finish_job(NS, "support-bot-train", message=json.dumps(summary))
        obj = await kube.wait_for(r.FINETUNEJOBS, NS, "support-bot", lambda o: phase(o) == "Succeeded")
        p = obj["status"]["progress"]
        assert (p["step"], p["totalSteps"], p["percent"], p["etaSeconds"]) == (40, 40, "100%", 0)
        assert p["loss"] == 0.61 and p["evalLoss"] == 0.72
        assert "loss 0.61" in cond(obj, "Training")["message"]
        mv = await kube.get(r.MODELVERSIONS, NS, obj["status"]["children"]["modelVersion"])
        assert mv["spec"]["lineage"]["trainSeconds"] == 812.5
        ev = next(c for c in mv["status"]["conditions"] if c["type"] == "Evaluated")
        assert (ev["status"], ev["reason"]) == ("False", "NotEvaluated")
        assert mv["spec"]["evaluation"]["verdict"] == "NotEvaluated"
    finally:
        op.stop()
        print(op.tail())
