"""The real operator with trainer_metrics_port_range (issue 21): the training Job names the job's own port, the progress
poll goes there (not to the fixed port), and an answer labelled with another FineTuneJob never becomes this job's
progress — warned once, however many polls see it."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Gauge, start_http_server
from tuneloop.contract import progress as contract
from tuneloop.operator.kube import resources as r

from .harness import OperatorProcess
from .scenario import NS, PREPARE_MSG, ftj, phase

pytestmark = [pytest.mark.operator, pytest.mark.timeout(120)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _trainer(port: int = 0) -> tuple[Any, dict[str, Gauge]]:
    """A stand-in for a trainer's endpoint: the contract's gauges, each job's samples labelled with its identity."""
    reg = CollectorRegistry()
    gauges = {g.key: Gauge(g.metric, g.help, list(contract.LABELS), registry=reg) for g in contract.GAUGES}
    server, _ = start_http_server(port, addr="127.0.0.1", registry=reg)
    return server, gauges


async def test_the_jobs_own_port_and_only_its_own_metrics(kube, tmp_path):
    own_port = _free_port()
    own_server, own = _trainer(own_port)  # the port the range gives this job (a one-port range): first another job answers
    own["step"].labels(**contract.identity(NS, "another-trial")).set(10)
    own["eval_loss"].labels(**contract.identity(NS, "another-trial")).set(6.545815)
    fixed_server, fixed = _trainer()
    fixed_port = fixed_server.server_port  # the fixed port: a trainer of this job's name that must never be asked
    fixed["step"].labels(**contract.identity(NS, "support-bot")).set(99)
    op = OperatorProcess(kube.kubeconfig, tmp_path, env={
        "TUNELOOP_TRAINER_METRICS_PORT": str(fixed_port), "TUNELOOP_TRAINER_METRICS_PORT_RANGE": f"{own_port}-{own_port}",
        "TUNELOOP_PROGRESS_INTERVAL": "0.5", "TUNELOOP_TRAINER_IMAGE": "reg/trainer:test"})
    op.start()
    try:
        await kube.apply(ftj())
        await kube.wait_for(r.JOBS, NS, "support-bot-data")
        await kube.finish_job(NS, "support-bot-data", message=PREPARE_MSG)
        train = await kube.wait_for(r.JOBS, NS, "support-bot-train")
        c = train["spec"]["template"]["spec"]["containers"][0]
        assert {p["name"]: p["containerPort"] for p in c["ports"]}["metrics"] == own_port
        assert {"name": "TUNELOOP_METRICS_PORT", "value": str(own_port)} in c["env"]
        svc = await kube.get(r.SERVICES, NS, "support-bot-train")
        assert {p["name"]: p["port"] for p in svc["spec"]["ports"]}["metrics"] == own_port
        pol = await kube.get(r.NETWORKPOLICIES, NS, "support-bot-train")
        assert pol["spec"]["ingress"][1]["ports"] == [{"protocol": "TCP", "port": own_port}]
        await kube.wait_for(r.FINETUNEJOBS, NS, "support-bot", lambda o: phase(o) == "Training")

        # rank 0 runs (a pod without ports: the poll falls back to the job's port from the setting)
        await kube.start_job(NS, "support-bot-train", pod_ip="127.0.0.1")
        await op.wait_log("serves the metrics of default/another-trial", timeout=30)
        await asyncio.sleep(3)  # several more polls see the same foreign answer
        obj = await kube.get(r.FINETUNEJOBS, NS, "support-bot")
        assert not (obj["status"].get("progress") or {}).get("step"), obj["status"].get("progress")
        assert op.log_path is not None
        assert op.log_path.read_text().count("progress of default/support-bot ignored") == 1  # once, not every poll

        # this job's own trainer answers on its port: its progress, never the foreign 6.545815 nor the fixed port's 99
        own["step"].labels(**contract.identity(NS, "support-bot")).set(5)
        own["total_steps"].labels(**contract.identity(NS, "support-bot")).set(20)
        obj = await kube.wait_for(r.FINETUNEJOBS, NS, "support-bot", lambda o: (o["status"].get("progress") or {}).get("step") == 5,
                                  timeout=30)
        assert obj["status"]["progress"]["totalSteps"] == 20 and "evalLoss" not in obj["status"]["progress"]
    except BaseException:
        print(op.tail())
        raise
    finally:
        op.stop()
        for server in (own_server, fixed_server):
            server.shutdown()
            server.server_close()
