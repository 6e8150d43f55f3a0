"""CPU per request type on a real API server, without the operator (where the CPU per FineTuneJob goes).

    python bench/operator/request_cost.py --kubeconfig /tmp/k8s/kubeconfig [--n 300] [--cel-variants]

For each kind of request the operator path makes for one FineTuneJob — the user's POST of the
FineTuneJob, the operator's POST ConfigMap, POST Job (suspended, as in bench.py; the Job
controller's status update follows), PATCH of the FineTuneJob's status, POST Event — N such requests
(50 concurrent) into a fresh namespace, then 3 s for the controllers to settle; the CPU seconds of
kube-apiserver, etcd, kube-controller-manager and this process over that window / N. Nothing else
may run against the server meanwhile. `--cel-variants`: the FineTuneJob POST and status PATCH again
against copies of the FineTuneJob CRD (groups `*.probe.tuneloop.dev`, removed afterwards) without
the transition rules (`oldSelf`) and without any CEL rule, to see what CEL costs.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import sys
import time
import uuid
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from real import _cpu, _proc_by_name
from tuneloop.api import FineTuneJobSpec
from tuneloop.operator import builders
from tuneloop.operator.builders.common import JobMeta
from tuneloop.operator.kube import KubeClient, discover
from tuneloop.operator.kube import resources as r
from tuneloop.operator.settings import OperatorSettings

from tests.operator.scenario import ftj

CRD = ROOT / "crds/tuneloop.dev_finetunejobs.yaml"
STATUS = {"phase": "Suspended", "message": "suspended", "baseModel": "HuggingFaceTB/SmolLM2-135M-Instruct@main",
          "observedGeneration": 1,
          "conditions": [{"type": "DataValidated", "status": "Unknown", "reason": "Validating",
                          "message": "preparing and checking the dataset", "lastTransitionTime": "2026-11-26T06:00:00Z",
                          "observedGeneration": 1}]}


def _procs() -> dict[str, psutil.Process | None]:
    return {"apiserver": _proc_by_name("kube-apiserver", "/tmp/k8s/run/kube-apiserver.pid"),
            "etcd": _proc_by_name("etcd", "/tmp/k8s/run/etcd.pid"),
            "controller_manager": _proc_by_name("kube-controller-manager", "/tmp/k8s/run/kube-controller-manager.pid"),
            "bench": psutil.Process()}


def _crd_variant(group: str, mode: str) -> dict:
    doc = yaml.safe_load(CRD.read_text())
    doc["metadata"]["name"] = f"finetunejobs.{group}"
    doc["spec"]["group"] = group

    def walk(node):
        if isinstance(node, dict):
            rules = node.get("x-kubernetes-validations")
            if rules is not None:
                keep = [] if mode == "none" else [x for x in rules if "oldSelf" not in x["rule"]]
                if keep:
                    node["x-kubernetes-validations"] = keep
                else:
                    del node["x-kubernetes-validations"]
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(doc["spec"]["versions"][0]["schema"])
    return doc


class Bench:
    def __init__(self, client: KubeClient, n: int):
        self.client, self.n = client, n
        self.procs = _procs()
        self.cfg = OperatorSettings()

    def cpu(self) -> dict[str, float]:
        return {k: _cpu(p) for k, p in self.procs.items()}

    async def _gather(self, calls) -> None:
        sem = asyncio.Semaphore(50)

        async def one(call):
            async with sem:
                await call()

        await asyncio.gather(*(one(c) for c in calls))

    async def measure(self, label: str, setup, calls) -> dict:
        ns = f"reqcost-{uuid.uuid4().hex[:6]}"
        await self.client.create(r.NAMESPACES, None, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        try:
            if setup:
                await self._gather(setup(ns))
            await asyncio.sleep(2)
            c0, t0 = self.cpu(), time.perf_counter()
            await self._gather(calls(ns))
            wall = time.perf_counter() - t0
            await asyncio.sleep(3)
            c1 = self.cpu()
        finally:
            await self.client.delete(r.NAMESPACES, None, ns)
            while await self.client.get(r.NAMESPACES, None, ns) is not None:
                await asyncio.sleep(0.5)
            await asyncio.sleep(2)  # the namespace's deletion is over before the next measurement
        row = {"request": label, "n": self.n, "wall_s": round(wall, 2),
               "cpu_ms_per_request": {k: round(1000 * (c1[k] - c0[k]) / self.n, 2) for k in c0}}
        print(json.dumps(row), flush=True)
        return row

    def _ftj(self, res: r.Resource, ns: str, i: int) -> dict:
        d = ftj(suspend=True)
        d["apiVersion"] = res.api_version
        d["metadata"].update(name=f"b-{i:04d}", namespace=ns)
        return d

    def post_ftj(self, res: r.Resource):
        return lambda ns: [lambda i=i: self.client.create(res, ns, self._ftj(res, ns, i)) for i in range(self.n)]

    def patch_status(self, res: r.Resource):
        def calls(ns):
            return [lambda i=i: self.client.patch(res, ns, f"b-{i:04d}", {"status": {
                **copy.deepcopy(STATUS), "children": {"configMap": f"b-{i:04d}-config", "dataJob": f"b-{i:04d}-data"}}},
                subresource="status") for i in range(self.n)]
        return calls

    def _child(self, kind: str, ns: str, i: int) -> dict:
        body = ftj(suspend=True)
        body["metadata"].update(name=f"b-{i:04d}", namespace=ns, uid=str(uuid.uuid4()), generation=1)
        spec, meta = FineTuneJobSpec.model_validate(body["spec"]), JobMeta.from_body(body)
        return builders.config_map(spec, meta, self.cfg) if kind == "cm" else builders.data_job(spec, meta, self.cfg)

    def post_child(self, res: r.Resource, kind: str):
        def calls(ns):
            docs = [self._child(kind, ns, i) for i in range(self.n)]
            return [lambda d=d: self.client.create(res, ns, d) for d in docs]
        return calls

    def post_event(self):
        def calls(ns):
            return [lambda i=i: self.client.event(
                {"apiVersion": "tuneloop.dev/v1alpha1", "kind": "FineTuneJob",
                 "metadata": {"name": f"b-{i:04d}", "namespace": ns, "uid": str(uuid.uuid4())}},
                type="Normal", reason="ValidatingData", message="preparing and checking the dataset") for i in range(self.n)]
        return calls


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kubeconfig", required=True)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--cel-variants", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    client = KubeClient(discover(args.kubeconfig), max_connections=64)
    b = Bench(client, args.n)
    rows = []
    try:
        ftjs = r.FINETUNEJOBS
        rows.append(await b.measure("POST FineTuneJob", None, b.post_ftj(ftjs)))
        rows.append(await b.measure("PATCH FineTuneJob status", b.post_ftj(ftjs), b.patch_status(ftjs)))
        rows.append(await b.measure("POST ConfigMap", None, b.post_child(r.CONFIGMAPS, "cm")))
        rows.append(await b.measure("POST Job (suspended)", None, b.post_child(r.JOBS, "job")))
        rows.append(await b.measure("POST Event", None, b.post_event()))
        if args.cel_variants:
            for mode, group in (("no transition rules", "notr.probe.tuneloop.dev"), ("no CEL rules", "none.probe.tuneloop.dev")):
                await client.create(r.CRDS, None, _crd_variant(group, "none" if mode == "no CEL rules" else "notr"))
                res = r.Resource(group, "v1alpha1", "finetunejobs", "FineTuneJob")
                try:
                    for _ in range(60):  # until the new resource is served
                        try:
                            await client.list(res, "default")
                            break
                        except Exception:  # noqa: BLE001 — not established yet
                            await asyncio.sleep(0.5)
                    rows.append(await b.measure(f"POST FineTuneJob, CRD with {mode}", None, b.post_ftj(res)))
                    rows.append(await b.measure(f"PATCH FineTuneJob status, CRD with {mode}", b.post_ftj(res), b.patch_status(res)))
                finally:
                    await client.delete(r.CRDS, None, f"finetunejobs.{group}")
    finally:
        await client.close()
    if args.json:
        Path(args.json).write_text(json.dumps({"load_average": list(psutil.getloadavg()), "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
