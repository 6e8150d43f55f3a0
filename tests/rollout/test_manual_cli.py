"""`kubectl tuneloop promote|abort` against the real operator on kmock (no Prometheus needed), plus its pure checks."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path

import pytest
from tuneloop.cli import rollout_cmd
from tuneloop.cli.main import main as cli
from tuneloop.operator.kube import resources as r

from ..operator.harness import OperatorProcess, cluster
from . import samples

NS = "default"


def mv(name: str) -> dict:
    obj = copy.deepcopy(samples.model_version(name))
    obj["metadata"] = {"name": name, "namespace": NS}
    return obj


def paused_rollout(name: str, replica_weighted: bool = False) -> dict:
    obj = samples.replica_rollout() if replica_weighted else samples.gateway_rollout()
    obj["metadata"] = {"name": name, "namespace": NS}
    obj["spec"].update(stable={"name": f"{name}-v1"}, candidate={"name": f"{name}-v2"}, steps=[{"setWeight": 30}, {"pause": {}}])
    obj["spec"]["analysis"] = {}
    if not replica_weighted:
        obj["spec"]["trafficRouting"]["gatewayAPI"]["httpRoute"] = name
    else:
        obj["spec"]["trafficRouting"]["replicaWeighted"]["service"] = name
    return obj


def phase(o: dict) -> str | None:
    return (o.get("status") or {}).get("phase")


@pytest.mark.operator
@pytest.mark.timeout(90)
async def test_promote_and_abort_by_hand_across_an_operator_restart(tmp_path: Path, capsys):
    async with cluster(tmp_path) as kc:
        op = OperatorProcess(kc.kubeconfig, tmp_path)
        op.start()
        try:
            for name in ("gw", "rw"):
                await kc.apply(mv(f"{name}-v1"))
                await kc.apply(mv(f"{name}-v2"))
            await kc.apply(paused_rollout("rw", replica_weighted=True))
            await kc.apply(paused_rollout("gw"))
            # behind a gateway the weight waits for the canary pod: play the Deployment controller once
            dep = await kc.wait_for(r.DEPLOYMENTS, NS, "gw-canary", timeout=20)
            n = dep["spec"]["replicas"]
            await kc.client.patch(r.DEPLOYMENTS, NS, "gw-canary", {"status": {"observedGeneration": 1, "updatedReplicas": n, "availableReplicas": n}}, subresource="status")
            gw = await kc.wait_for(r.ROLLOUTS, NS, "gw", lambda o: phase(o) == "Paused", timeout=20)
            assert gw["status"]["canaryWeight"] == 30 and "kubectl tuneloop promote" in gw["status"]["waitingFor"]
            rw = await kc.wait_for(r.ROLLOUTS, NS, "rw", lambda o: phase(o) == "Paused", timeout=20)
            # replica-weighted: 30% of 4 replicas -> 1 canary pod; one Service selects both roles
            canary = await kc.get(r.DEPLOYMENTS, NS, "rw-canary")
            assert canary["spec"]["replicas"] == 1
            svc = await kc.get(r.SERVICES, NS, "rw")
            assert svc["spec"]["selector"] == {"tuneloop.dev/rollout": "rw", "app.kubernetes.io/component": "serving"}
            assert rw["status"]["canaryWeight"] == 30

            # the operator dies (SIGKILL) and comes back: no duplicates, the status carries on
            op.kill()
            op.start()
            await asyncio.sleep(3)
            assert kc.count(r.DEPLOYMENTS) == 4 and kc.count(r.HTTPROUTES) == 1
            gw = await kc.get(r.ROLLOUTS, NS, "gw")
            assert phase(gw) == "Paused" and gw["status"]["canaryWeight"] == 30 and gw["status"]["currentStepIndex"] == 1

            base = ["--kubeconfig", str(kc.kubeconfig), "-n", NS]
            assert await asyncio.to_thread(cli, ["promote", "gw", *base, "--wait", "--timeout", "30"]) == 0
            gw = await kc.get(r.ROLLOUTS, NS, "gw")
            assert phase(gw) == "Promoted" and gw["status"]["stableModelVersion"] == "gw-v2"
            await kc.wait_for(r.ROLLOUTS, NS, "gw", lambda o: o["spec"].get("promote") is False, timeout=10)
            route = await kc.get(r.HTTPROUTES, NS, "gw")
            assert [b["weight"] for b in route["spec"]["rules"][0]["backendRefs"]] == [100, 0]
            await kc.wait_for(r.MODELVERSIONS, NS, "gw-v2", lambda o: phase(o) == "Serving", timeout=10)

            assert await asyncio.to_thread(cli, ["abort", "rw", *base, "--wait", "--timeout", "30"]) == 0
            rw = await kc.get(r.ROLLOUTS, NS, "rw")
            assert phase(rw) == "Aborted" and rw["status"]["canaryWeight"] == 0 and rw["status"]["stableModelVersion"] == "rw-v1"
            await kc.wait_for(r.DEPLOYMENTS, NS, "rw-canary", lambda d: d["spec"]["replicas"] == 0, timeout=10)
            await kc.wait_for(r.DEPLOYMENTS, NS, "rw-stable", lambda d: d["spec"]["replicas"] == 4, timeout=10)
            await kc.wait_for(r.MODELVERSIONS, NS, "rw-v2", lambda o: phase(o) == "RolledBack", timeout=10)

            # nothing left to act on: a clear refusal, exit 1
            capsys.readouterr()
            assert await asyncio.to_thread(cli, ["abort", "gw", *base]) == 1
            assert "gw-v2 is already stable" in capsys.readouterr().err
            assert await asyncio.to_thread(cli, ["promote", "missing", *base]) == 1
            assert "not found" in capsys.readouterr().err
        except BaseException:
            print(op.tail(120))
            raise
        finally:
            op.stop()


def _obj(phase_: str | None = "Paused", **spec) -> dict:
    return {
        "metadata": {"name": "bot", "namespace": "llm"},
        "spec": {"candidate": {"name": "v2"}, "stable": {"name": "v1"}, "steps": [{"setWeight": 10}, {"pause": {}}], **spec},
        "status": {"phase": phase_, "candidateModelVersion": "v2", "stableModelVersion": "v1", "currentStepIndex": 1, "canaryWeight": 10},
    }


@pytest.mark.unit
@pytest.mark.parametrize(
    ("obj", "action", "needle"),
    [
        (_obj(), "promote", None),
        (_obj("Progressing"), "abort", None),
        (_obj("RolledBack"), "promote", "is over (phase RolledBack)"),
        (_obj(candidate=None), "abort", "has no candidate"),
        (_obj(promote=True), "promote", "already requested"),
    ],
)
def test_refusal(obj, action, needle):
    why = rollout_cmd.refusal(action, obj)
    assert (why is None) if needle is None else (needle in why)


@pytest.mark.unit
def test_describe():
    assert rollout_cmd.describe(_obj()) == "candidate v2 (step 2/2, canary weight 10%), stable v1"
