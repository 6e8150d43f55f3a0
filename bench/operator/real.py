"""Operator bench against a real API server (a kubeconfig): creation → data-prep Job, requests, CPU, RSS, deletion.

    python bench/operator/bench.py --kubeconfig /tmp/k8s/kubeconfig --jobs 100 500 --rate 0 10

Per run: a fresh namespace `tlbench-…` (labelled tuneloop.dev/bench=true, deleted afterwards), the
real operator (`tuneloop-operator --namespace NS`, wrapped by counting_operator.py so every HTTP
request it makes — its own and Kopf's — is counted), N FineTuneJobs created at once (50 concurrent
POSTs) or at RATE per second. The FineTuneJobs are `suspend: true`: their data-prep Jobs are
created (what is measured) but no pods run, so nothing but the control plane and the operator
uses the CPUs. Measured:

- creation (just before the POST) → the data-prep Job's ADDED event on the bench's own watch: p50/p99/max;
  split into the POST itself (until its response) and POST returned → data-prep Job (p50/p99);
- operator requests per FineTuneJob (non-watch) from the first POST until every data-prep Job
  exists and the operator went quiet (2 s without a request), with a breakdown by verb/resource;
- CPU seconds per FineTuneJob of the operator, kube-apiserver, etcd and kube-controller-manager (their
  processes, read via psutil), and of the bench process itself (its POSTs and its watch);
- operator RSS (idle, peak, after), the machine's load average and CPU busy share during the run;
- steady state: operator CPU (cores) and requests/s over `--steady` seconds with the N jobs unfinished;
- deletion: all FineTuneJobs deleted at once (DELETE collection) with the operator running → gone
  (the list is empty), and their children gone (garbage collection); then the operator is stopped
  and the namespace deleted → gone (nothing may wait for a finalizer).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]

from tuneloop.operator.kube import KubeClient, discover
from tuneloop.operator.kube import resources as r

from tests.operator.scenario import ftj


def pct(values: list[float], q: float) -> float:
    vs = sorted(values)
    if not vs:
        return float("nan")
    return vs[min(len(vs) - 1, max(0, round(q * (len(vs) - 1))))]


def _proc_by_name(name: str, pidfile: str | None = None) -> psutil.Process | None:
    if pidfile and Path(pidfile).exists():
        try:
            return psutil.Process(int(Path(pidfile).read_text().strip()))
        except (ValueError, psutil.Error):
            pass
    for p in psutil.process_iter(["name", "cmdline"]):
        try:
            if p.info["name"] == name or (p.info["cmdline"] and Path(p.info["cmdline"][0]).name == name):
                return p
        except psutil.Error:
            continue
    return None


def _cpu(p: psutil.Process | None) -> float:
    if p is None:
        return float("nan")
    try:
        t = p.cpu_times()
        return t.user + t.system + getattr(t, "children_user", 0) + getattr(t, "children_system", 0)
    except psutil.Error:
        return float("nan")


def _rss(p: psutil.Process) -> float:
    try:
        return p.memory_info().rss / 2**20
    except psutil.Error:
        return 0.0


def _counts(path: Path) -> dict[str, int]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _delta(a: dict[str, int], b: dict[str, int], *, watches: bool = False) -> dict[str, int]:
    out = {k: b.get(k, 0) - a.get(k, 0) for k in set(a) | set(b)}
    return {k: v for k, v in sorted(out.items()) if v and (k.startswith("WATCH") == watches)}


class JobWatch:
    """The bench's own watch on Jobs in the namespace: when each `<ftj>-data` Job first appeared."""

    def __init__(self, client: KubeClient, ns: str):
        self.client, self.ns = client, ns
        self.seen: dict[str, float] = {}
        self.task: asyncio.Task | None = None
        self.ready = asyncio.Event()

    async def _run(self) -> None:
        sess = await self.client._sess()
        rv = ((await self.client.request("GET", r.JOBS.path(self.ns))) or {}).get("metadata", {}).get("resourceVersion")
        while True:
            params = {"watch": "true", "resourceVersion": rv or "0", "timeoutSeconds": "600", "allowWatchBookmarks": "true"}
            async with sess.get(self.client.conn.server + r.JOBS.path(self.ns), params=params) as resp:
                self.ready.set()
                async for line in resp.content:
                    now = time.perf_counter()
                    if not line.strip():
                        continue
                    ev = json.loads(line)
                    obj = ev.get("object") or {}
                    rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                    name = (obj.get("metadata") or {}).get("name", "")
                    if ev.get("type") == "ADDED" and name.endswith("-data"):
                        self.seen.setdefault(name[: -len("-data")], now)

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


async def _wait_quiet(counts_path: Path, quiet: float = 2.0, limit: float = 60.0) -> None:
    """Until the operator made no (non-watch) request for `quiet` seconds."""
    deadline = time.monotonic() + limit
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        cur = sum(v for k, v in _counts(counts_path).items() if not k.startswith("WATCH"))
        if cur != last:
            last, since = cur, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        await asyncio.sleep(0.25)


async def _count(client: KubeClient, res: r.Resource, ns: str, **kw) -> int:
    return len(await client.list(res, ns, **kw))


async def run(kubeconfig: str, n: int, rate: float, steady: float, timeout: float) -> dict:
    client = KubeClient(discover(kubeconfig), max_connections=64)
    tag = "burst" if not rate else f"{rate:g}ps"
    ns = f"tlbench-{n}-{tag}-{uuid.uuid4().hex[:5]}".replace(".", "-")
    tmp = Path(tempfile.mkdtemp(prefix="tuneloop-bench-real-"))
    counts_path = tmp / "counts.json"
    await client.create(r.NAMESPACES, None, {"apiVersion": "v1", "kind": "Namespace",
                                             "metadata": {"name": ns, "labels": {"tuneloop.dev/bench": "true"}}})
    env = {**os.environ, "KUBECONFIG": kubeconfig, "TUNELOOP_METRICS_PORT": "0", "TUNELOOP_HEALTH_PORT": "0",
           "BENCH_COUNTS": str(counts_path), "PYTHONUNBUFFERED": "1"}
    log = open(tmp / "operator.log", "wb")
    proc = subprocess.Popen([sys.executable, str(ROOT / "bench/operator/counting_operator.py"), "--namespace", ns],
                            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(ROOT))
    watch = JobWatch(client, ns)
    result: dict = {"jobs": n, "arrival": "at once" if not rate else f"{rate:g}/s", "namespace": ns}
    try:
        op = psutil.Process(proc.pid)
        apiserver = _proc_by_name("kube-apiserver", "/tmp/k8s/run/kube-apiserver.pid")
        etcd = _proc_by_name("etcd", "/tmp/k8s/run/etcd.pid")
        kcm = _proc_by_name("kube-controller-manager", "/tmp/k8s/run/kube-controller-manager.pid")
        deadline = time.monotonic() + 60
        while "Initial authentication has finished" not in (tmp / "operator.log").read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("operator did not start:\n" + (tmp / "operator.log").read_text(errors="replace")[-3000:])
            await asyncio.sleep(0.2)
        watch.start()
        await asyncio.wait_for(watch.ready.wait(), 30)
        await _wait_quiet(counts_path, quiet=2.0)
        idle_rss = _rss(op)
        rss: list[float] = []
        stop = asyncio.Event()

        async def sample() -> None:
            while not stop.is_set():
                rss.append(_rss(op))
                await asyncio.sleep(0.25)

        sampler = asyncio.create_task(sample())
        c0 = _counts(counts_path)
        cpu0 = {"operator": _cpu(op), "apiserver": _cpu(apiserver), "etcd": _cpu(etcd), "controller_manager": _cpu(kcm)}
        mach0 = psutil.cpu_times()
        load0 = os.getloadavg()
        created: dict[str, float] = {}
        posted: dict[str, float] = {}  # the FineTuneJob's POST returned
        bench0 = _cpu(psutil.Process())
        sem = asyncio.Semaphore(50)

        async def create(i: int) -> None:
            doc = ftj(suspend=True)
            doc["metadata"].update(name=f"bench-{i:04d}", namespace=ns)
            async with sem:
                created[doc["metadata"]["name"]] = time.perf_counter()
                await client.create(r.FINETUNEJOBS, ns, doc)
                posted[doc["metadata"]["name"]] = time.perf_counter()

        t0 = time.perf_counter()
        if rate:
            tasks = []
            for i in range(n):
                delay = t0 + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(create(i)))
            await asyncio.gather(*tasks)
        else:
            await asyncio.gather(*(create(i) for i in range(n)))
        create_s = time.perf_counter() - t0
        end = time.monotonic() + timeout
        while len(watch.seen) < n and time.monotonic() < end:
            await asyncio.sleep(0.05)
        all_data_s = time.perf_counter() - t0
        await _wait_quiet(counts_path, quiet=2.0)
        c1 = _counts(counts_path)
        cpu1 = {"operator": _cpu(op), "apiserver": _cpu(apiserver), "etcd": _cpu(etcd), "controller_manager": _cpu(kcm)}
        mach1 = psutil.cpu_times()
        load1 = os.getloadavg()
        busy = 1 - (mach1.idle - mach0.idle + getattr(mach1, "iowait", 0) - getattr(mach0, "iowait", 0)) / max(
            1e-9, sum(mach1) - sum(mach0))
        peak = max(rss) if rss else _rss(op)
        lat = [watch.seen[k] - created[k] for k in created if k in watch.seen]
        post = [posted[k] - created[k] for k in posted]
        after_post = [watch.seen[k] - posted[k] for k in posted if k in watch.seen]
        reqs = _delta(c0, c1)
        result.update({
            "data_jobs_seen": len(lat), "create_all_s": round(create_s, 2), "all_data_jobs_s": round(all_data_s, 2),
            "create_to_data_job_p50_s": round(pct(lat, 0.5), 3), "create_to_data_job_p99_s": round(pct(lat, 0.99), 3),
            "create_to_data_job_max_s": round(max(lat), 3) if lat else None,
            "post_p50_p99_s": [round(pct(post, 0.5), 3), round(pct(post, 0.99), 3)],
            "post_to_data_job_p50_p99_s": [round(pct(after_post, 0.5), 3), round(pct(after_post, 0.99), 3)],
            "bench_cpu_ms_per_job": round(1000 * (_cpu(psutil.Process()) - bench0) / n, 1),
            "operator_requests_per_job": round(sum(reqs.values()) / n, 2), "operator_requests": reqs,
            "operator_watch_requests": _delta(c0, c1, watches=True),
            "cpu_ms_per_job": {k: round(1000 * (cpu1[k] - cpu0[k]) / n, 1) for k in cpu0},
            "rss_idle_mib": round(idle_rss, 1), "rss_peak_mib": round(peak, 1),
            "machine_busy_share": round(busy, 3), "load_average_before": [round(x, 2) for x in load0],
            "load_average_after": [round(x, 2) for x in load1], "cpus": psutil.cpu_count(),
            "phases": {},
        })
        # steady state with N unfinished (suspended, non-training) jobs
        s0, sc0, st0 = _cpu(op), _counts(counts_path), time.perf_counter()
        await asyncio.sleep(steady)
        s1, sc1, st1 = _cpu(op), _counts(counts_path), time.perf_counter()
        result["steady_operator_cores"] = round((s1 - s0) / (st1 - st0), 4)
        result["steady_requests_per_s"] = round(sum(_delta(sc0, sc1).values()) / (st1 - st0), 2)
        result["steady_seconds"] = round(st1 - st0, 1)
        result["rss_steady_mib"] = round(_rss(op), 1)
        phases: dict[str, int] = {}
        for o in await client.list(r.FINETUNEJOBS, ns):
            ph = (o.get("status") or {}).get("phase") or "none"
            phases[ph] = phases.get(ph, 0) + 1
        result["phases"] = phases
        fin = [o["metadata"]["name"] for o in await client.list(r.FINETUNEJOBS, ns) if o["metadata"].get("finalizers")]
        result["finetunejobs_with_finalizers"] = len(fin)
        stop.set()
        await sampler
        # delete all with the operator running
        t = time.perf_counter()
        await client.request("DELETE", r.FINETUNEJOBS.path(ns), body={"propagationPolicy": "Background"})
        end = time.monotonic() + 300
        while await _count(client, r.FINETUNEJOBS, ns) and time.monotonic() < end:
            await asyncio.sleep(0.1)
        result["delete_all_s"] = round(time.perf_counter() - t, 2)
        result["finetunejobs_left"] = await _count(client, r.FINETUNEJOBS, ns)
        while (await _count(client, r.JOBS, ns) or await _count(client, r.CONFIGMAPS, ns, labels={"app.kubernetes.io/managed-by": "tuneloop-operator"})) \
                and time.monotonic() < end:
            await asyncio.sleep(0.25)
        result["children_gone_s"] = round(time.perf_counter() - t, 2)
    finally:
        await watch.stop()
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        log.close()
        # the namespace goes with the operator stopped: nothing may wait for a finalizer
        t = time.perf_counter()
        try:
            await client.delete(r.NAMESPACES, None, ns)
            end = time.monotonic() + 180
            while await client.get(r.NAMESPACES, None, ns) is not None and time.monotonic() < end:
                await asyncio.sleep(0.25)
            result["namespace_delete_operator_stopped_s"] = round(time.perf_counter() - t, 2)
            result["namespace_gone"] = await client.get(r.NAMESPACES, None, ns) is None
        finally:
            await client.close()
        result["operator_log"] = str(tmp / "operator.log")
    return result


def table(results: list[dict]) -> str:
    rows = ["| FineTuneJobs | arrival | create→data Job p50 / p99 / max | operator requests per job | CPU ms per job operator / apiserver / etcd "
            "| RSS idle / peak / steady | steady CPU, req/s (N unfinished) | delete all (children) | machine busy, load 1m |",
            "|---|---|---|---|---|---|---|---|---|"]
    for x in results:
        c = x["cpu_ms_per_job"]
        rows.append(
            f"| {x['jobs']} | {x['arrival']} | {x['create_to_data_job_p50_s']} / {x['create_to_data_job_p99_s']} / {x['create_to_data_job_max_s']} s "
            f"| {x['operator_requests_per_job']} | {c['operator']} / {c['apiserver']} / {c['etcd']} "
            f"| {x['rss_idle_mib']} / {x['rss_peak_mib']} / {x['rss_steady_mib']} MiB "
            f"| {x['steady_operator_cores']} core, {x['steady_requests_per_s']} | {x['delete_all_s']} s ({x['children_gone_s']} s) "
            f"| {round(100 * x['machine_busy_share'])} %, {x['load_average_before'][0]} → {x['load_average_after'][0]} |")
    return "\n".join(rows)
