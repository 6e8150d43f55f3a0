"""The FineTuneJob scenario against a real cluster (`pytest -m cluster --kubeconfig PATH`).

Runs the operator locally (namespace-scoped, in a fresh namespace) against the cluster and checks
what kmock cannot: the CRD's CEL validation, real Job/Service/ConfigMap admission of the built
manifests, `generation`/observedGeneration, suspend/resume through the real Job controller, and
garbage collection through owner references. The job stays suspended, so no GPU or trainer image
is needed.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
import yaml
from tuneloop.operator.kube import ApiError, KubeClient, discover
from tuneloop.operator.kube import resources as r

from .harness import ROOT, OperatorProcess
from .scenario import cond, ftj, phase

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]


async def _wait(client: KubeClient, res, ns, name, pred=lambda o: True, timeout=120.0):
    deadline = asyncio.get_running_loop().time() + timeout
    last = None
    while asyncio.get_running_loop().time() < deadline:
        last = await client.get(res, ns, name)
        if last is not None and pred(last):
            return last
        await asyncio.sleep(1)
    raise AssertionError(f"timed out waiting for {res.kind} {ns}/{name}: {yaml.safe_dump(last)}")


async def test_scenario_on_a_real_cluster(kubeconfig, tmp_path: Path):
    client = KubeClient(discover(kubeconfig))
    ns = f"tuneloop-test-{uuid.uuid4().hex[:6]}"
    for crd in sorted((ROOT / "crds").glob("*.yaml")):
        doc = yaml.safe_load(crd.read_text())
        await client.create(r.CRDS, None, doc)
    await client.create(r.NAMESPACES, None, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    op = OperatorProcess(Path(kubeconfig), tmp_path, args=["--namespace", ns])
    op.start()
    try:
        # the API server refuses what the models refuse (CEL), before the operator sees it
        bad = ftj(method={"type": "qlora"})
        bad["metadata"].update(name="broken", namespace=ns)
        with pytest.raises(ApiError) as info:
            await client.create(r.FINETUNEJOBS, ns, bad)
        assert info.value.status == 422 and "qlora" in info.value.message

        good = ftj(suspend=True)
        good["metadata"]["namespace"] = ns
        await client.create(r.FINETUNEJOBS, ns, good)
        data = await _wait(client, r.JOBS, ns, "support-bot-data")
        assert data["spec"]["suspend"] is True
        assert data["spec"]["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] == [42]
        obj = await _wait(client, r.FINETUNEJOBS, ns, "support-bot", lambda o: phase(o) == "Suspended")
        assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
        assert cond(obj, "DataValidated")["status"] == "Unknown"
        assert await client.get(r.SERVICES, ns, "support-bot-train") is not None

        # spec.suspend is the one mutable field: generation moves, the Job follows
        await client.patch(r.FINETUNEJOBS, ns, "support-bot", {"spec": {"suspend": False}})
        await _wait(client, r.JOBS, ns, "support-bot-data", lambda j: j["spec"]["suspend"] is False)
        await client.patch(r.FINETUNEJOBS, ns, "support-bot", {"spec": {"suspend": True}})
        obj = await _wait(client, r.FINETUNEJOBS, ns, "support-bot",
                          lambda o: phase(o) == "Suspended" and o["status"]["observedGeneration"] == o["metadata"]["generation"])
        assert obj["metadata"]["generation"] >= 3

        # deleting the FineTuneJob garbage-collects its children (owner references)
        await client.delete(r.FINETUNEJOBS, ns, "support-bot", propagation="Foreground")
        for res, name in ((r.JOBS, "support-bot-data"), (r.CONFIGMAPS, "support-bot-config"), (r.SERVICES, "support-bot-train")):
            deadline = asyncio.get_running_loop().time() + 120
            while await client.get(res, ns, name) is not None:
                assert asyncio.get_running_loop().time() < deadline, f"{res.kind} {name} not garbage-collected"
                await asyncio.sleep(1)
    finally:
        op.stop()
        try:
            await client.delete(r.NAMESPACES, None, ns)
        finally:
            await client.close()
