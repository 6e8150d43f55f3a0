"""Reusable kmock harness: a Kubernetes API emulator plus the real operator in a subprocess.

Used by tests/operator (FineTuneJob) and by the rollout tests. Typical use (pytest-asyncio)::

    from tests.operator.harness import cluster, OperatorProcess   # or via the fixtures in conftest.py

    async with cluster(tmp_path) as kc:                     # emulator + HTTP server + client
        async with OperatorProcess(kc.kubeconfig, tmp_path) as op:   # `tuneloop-operator -A`
            await kc.apply(ftj_manifest)
            job = await kc.wait_for(r.JOBS, "ns", "x-train")           # polls until it exists
            await kc.finish_job("ns", "x-train", exit_code=0, message='{"outcome":"Succeeded"}')
            await kc.wait_for(r.FINETUNEJOBS, "ns", "x", lambda o: phase(o) == "Evaluating")

What the emulator adds over plain kmock 0.8 (its known gaps):
- the resources are declared (v1 namespaces/pods/services/configmaps/events/secrets/pvcs,
  batch jobs, apps deployments, Gateway API httproutes, the tuneloop CRDs with status subresources),
- created objects get uid, resourceVersion, creationTimestamp, generation; generateName works;
  every write bumps resourceVersion.
Still not emulated (covered by unit tests instead): stale-resourceVersion conflicts, PUT, label
selectors (the operator's client filters client-side), generation bumps on spec changes, garbage
collection by owner references, the bare ``/api/v1/namespaces`` path (kmock parses it as a
namespaced prefix: run the operator cluster-wide with namespace scanning disabled, as it does),
pod logs (declare a reaction: ``kc.emulator['get /api/v1/…/log'] << b'…'``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Self

import kmock
import yaml
from kmock._internal import enums
from tuneloop.operator.kube import Connection, KubeClient
from tuneloop.operator.kube import resources as r

ROOT = Path(__file__).resolve().parents[2]
_rv = itertools.count(1000)


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Emulator(kmock.KubernetesEmulator):
    """kmock's emulator plus server-side metadata: uid, resourceVersion, generateName, timestamps.

    kmock re-filters its whole request log for every request and every reaction (quadratic: a GET
    takes ~0.3 s after a few hundred requests), so by default the log is cut to the request being
    served; set `history` to a number (or None: unlimited) when a test asserts on
    ``emulator.requests``.
    """

    history: int | None = 0
    recorded: list[tuple[str, str, dict, bool]] | None = None  # set to [] to record (method, path, params, authenticated)

    async def _handle(self, request: Any) -> Any:
        if self.recorded is not None:
            self.recorded.append((str(request.method.value if request.method else ""), str(request.url.path), dict(request.params),
                                  bool((request.headers or {}).get("Authorization"))))
        if self.history is not None:
            del self._requests[: -(self.history + 1)]
            for payload in self._payloads:
                del payload._requests[: -(self.history + 1) if self.history else len(payload._requests)]
        return await self._handle_with_metadata(request)

    async def _handle_with_metadata(self, request: Any) -> Any:
        if request.resource is not None and isinstance(request.data, dict):
            meta = request.data.get("metadata")
            if request.action == enums.action.CREATE:
                meta = request.data.setdefault("metadata", {})
                if not meta.get("name") and meta.get("generateName"):
                    meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
                if request.namespace and not meta.get("namespace") and request.resource.plural != "namespaces":
                    meta["namespace"] = request.namespace
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("creationTimestamp", _now())
                meta.setdefault("generation", 1)
                meta["resourceVersion"] = str(next(_rv))
            elif request.action == enums.action.UPDATE:
                request.data.setdefault("metadata", meta or {})
                request.data["metadata"]["resourceVersion"] = str(next(_rv))
        return await super()._handle(request)


def declare_resources(emulator: kmock.KubernetesEmulator) -> None:
    """Declare every resource the operator (and the rollout part) reads or writes."""
    verbs = {"get", "list", "watch", "create", "patch", "update", "delete"}
    for res in r.ALL:
        subresources = {"status"} if res.kind in {"Job", "Pod", "Deployment", "HTTPRoute", "FineTuneJob", "ModelVersion", "Rollout"} else set()
        emulator.resources[f"{res.api_version}/{res.plural}"] = kmock.ResourceInfo(
            kind=res.kind, namespaced=res.namespaced, verbs=verbs, subresources=subresources, singular=res.kind.lower(),
        )


class Cluster:
    """The emulator, its URL, a client for the test, and helpers to drive the scenario."""

    def __init__(self, emulator: Emulator, url: str, kubeconfig: Path):
        self.emulator = emulator
        self.url = url
        self.kubeconfig = kubeconfig
        self.client = KubeClient(Connection(server=url))

    # --- objects ---------------------------------------------------------------------------
    async def apply(self, obj: dict) -> dict:
        """Create the object (its namespace defaults to "default")."""
        res = r.for_object(obj)
        ns = obj["metadata"].setdefault("namespace", "default") if res.namespaced else None
        created, _ = await self.client.create(res, ns, obj)
        return created

    async def get(self, res: r.Resource, namespace: str | None, name: str) -> dict | None:
        return await self.client.get(res, namespace, name)

    async def list(self, res: r.Resource, namespace: str | None = None, labels: dict | None = None) -> list[dict]:
        return await self.client.list(res, namespace, labels=labels)

    async def wait_for(
        self, res: r.Resource, namespace: str | None, name: str,
        predicate: Callable[[dict], bool] = lambda o: True, timeout: float = 45.0,
    ) -> dict:
        """Poll until the object exists and `predicate(obj)` holds; fail with the last state seen."""
        deadline = asyncio.get_running_loop().time() + timeout
        last = None
        while True:
            last = await self.get(res, namespace, name)
            if last is not None and predicate(last):
                return last
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out waiting for {res.kind} {namespace}/{name}; last seen: {yaml.safe_dump(last)}")
            await asyncio.sleep(0.1)

    async def finish_job(
        self, namespace: str, job: str, *, exit_code: int = 0, message: str = "", index: int = 0, container: str = "trainer",
        log: str | None = None,
    ) -> dict:
        """Act as the Job controller + kubelet: a pod of `job` terminated with `exit_code` and a termination message.

        `log` (optional) is served as the pod's log (``GET …/pods/NAME/log``).
        """
        pod_name = f"{job}-{index}-{uuid.uuid4().hex[:5]}"
        if log is not None:
            self.emulator[f"get /api/v1/namespaces/{namespace}/pods/{pod_name}/log"] << log.encode()
        pod = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": pod_name, "namespace": namespace,
                "labels": {"job-name": job, "batch.kubernetes.io/job-name": job,
                           "batch.kubernetes.io/job-completion-index": str(index)},
                "annotations": {"batch.kubernetes.io/job-completion-index": str(index)},
            },
            "spec": {"containers": [{"name": container, "image": "trainer"}]},
            "status": {
                "phase": "Succeeded" if exit_code == 0 else "Failed",
                "containerStatuses": [{
                    "name": container, "ready": False, "restartCount": 0, "image": "trainer",
                    "state": {"terminated": {"exitCode": exit_code, "message": message,
                                             "reason": "Completed" if exit_code == 0 else "Error",
                                             "startedAt": _now(), "finishedAt": _now()}},
                }],
            },
        }
        await self.apply(pod)
        cond = "Complete" if exit_code == 0 else "Failed"
        status: dict[str, Any] = {
            "conditions": [{"type": cond, "status": "True", "reason": "Completed" if exit_code == 0 else "PodFailurePolicy",
                            "lastTransitionTime": _now(), "message": ""}],
            "startTime": _now(),
        }
        if exit_code == 0:
            status.update(succeeded=1, completionTime=_now())
        else:
            status.update(failed=1)
        return await self.client.patch(r.JOBS, namespace, job, {"status": status}, subresource="status")

    async def start_job(self, namespace: str, job: str, *, pod_ip: str | None = None, index: int = 0) -> dict:
        """Mark a Job as running: one active pod (with `pod_ip`, e.g. 127.0.0.1 to serve rank 0's metrics)."""
        if pod_ip is not None:
            await self.apply({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": f"{job}-{index}-running", "namespace": namespace,
                             "labels": {"job-name": job, "batch.kubernetes.io/job-name": job,
                                        "batch.kubernetes.io/job-completion-index": str(index)}},
                "spec": {"containers": [{"name": "trainer", "image": "trainer"}]},
                "status": {"phase": "Running", "podIP": pod_ip},
            })
        return await self.client.patch(r.JOBS, namespace, job, {"status": {"active": 1, "startTime": _now()}}, subresource="status")

    async def make_available(self, namespace: str, name: str) -> dict:
        """Play the Deployment controller and the kubelet for one Deployment: all its pods available (the emulator has
        no controllers)."""
        dep = await self.get(r.DEPLOYMENTS, namespace, name)
        assert dep is not None, f"Deployment {namespace}/{name} does not exist"
        n = dep["spec"].get("replicas", 1)
        status = {"observedGeneration": dep["metadata"].get("generation", 1), "replicas": n, "updatedReplicas": n,
                  "readyReplicas": n, "availableReplicas": n}
        return await self.client.patch(r.DEPLOYMENTS, namespace, name, {"status": status}, subresource="status")

    def count(self, res: r.Resource) -> int:
        """How many live objects of a resource the emulator holds (duplicate detection)."""
        key = kmock.resource(f"{res.api_version}/{res.plural}")
        return sum(1 for (rr, _, _), obj in self.emulator.objects.items() if rr == key and not obj.deleted)


def write_kubeconfig(path: Path, url: str) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
        "clusters": [{"name": "kmock", "cluster": {"server": url}}],
        "users": [{"name": "kmock", "user": {"token": "kmock"}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock", "namespace": "default"}}],
    }))
    return path


@asynccontextmanager
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    """An emulated cluster with the resources declared and a `default` namespace."""
    async with Emulator() as emulator, kmock.Server(emulator) as server:
        declare_resources(emulator)
        url = str(server.url).rstrip("/")
        kc = Cluster(emulator, url, write_kubeconfig(tmp_path / "kubeconfig.yaml", url))
        try:
            yield kc
        finally:
            await kc.client.close()


class OperatorProcess:
    """`python -m tuneloop.operator.main` against a kubeconfig, in a subprocess (kill/restart-able).

    The log goes to `workdir/operator-N.log` (N = start count) and is printed when a test fails
    via `tail()`. `env` overrides TUNELOOP_* settings.
    """

    def __init__(self, kubeconfig: Path, workdir: Path, *, args: list[str] | None = None, env: dict[str, str] | None = None):
        self.kubeconfig = kubeconfig
        self.workdir = workdir
        self.args = args or ["--all-namespaces"]
        self.env = env or {}
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.log_path: Path | None = None

    def start(self) -> None:
        self.starts += 1
        self.log_path = self.workdir / f"operator-{self.starts}.log"
        env = {
            **os.environ, "KUBECONFIG": str(self.kubeconfig), "TUNELOOP_METRICS_PORT": "0", "TUNELOOP_HEALTH_PORT": "0",
            "TUNELOOP_PROGRESS_INTERVAL": "1", "PYTHONUNBUFFERED": "1", **self.env,
        }
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tuneloop.operator.main", *self.args], env=env, stdout=log, stderr=subprocess.STDOUT,
                cwd=str(ROOT),
            )

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, like a node loss or OOM kill."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def tail(self, lines: int = 80) -> str:
        out = []
        for i in range(1, self.starts + 1):
            p = self.workdir / f"operator-{i}.log"
            if p.exists():
                out.append(f"--- operator run {i} ---\n" + "\n".join(p.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(out)

    async def wait_log(self, text: str, timeout: float = 20.0) -> None:
        """Wait until the current run's log contains `text` (e.g. "watching FineTuneJob NS/NAME", logged for each
        FineTuneJob listed at startup)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            if self.log_path and self.log_path.exists() and text in self.log_path.read_text(errors="replace"):
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"operator exited with {self.proc.returncode}:\n{self.tail()}")
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{text!r} not logged within {timeout}s:\n{self.tail()}")
            await asyncio.sleep(0.1)

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop()
