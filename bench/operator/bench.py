"""Operator bench against the kmock emulator: create → training-Job-created latency and RSS.

    python bench/operator/bench.py --jobs 100 500 [--json out.json]
    python bench/operator/bench.py --kubeconfig /tmp/k8s/kubeconfig --jobs 100 500 --rate 0 10   # a real API server (real.py)

For N FineTuneJobs created at once (20 concurrent creates) the bench acts as the Job controller:
each data-prep Job is marked finished (with a prepare termination message) as soon as it appears;
it records when each FineTuneJob's data-prep Job and training Job first appear (object store
polled every 20 ms), samples the operator process's RSS every 0.25 s, and keeps the operator
running 20 s after the last training Job to see its steady-state RSS with N progress timers.
The operator's own `tuneloop_create_to_training_job_seconds` histogram is scraped as a cross-check.
The emulator runs in this process, so its cost is part of the numbers (a real API server is faster).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tuneloop.operator.kube import resources as r

from tests.operator.harness import OperatorProcess, cluster
from tests.operator.scenario import PREPARE_MSG, ftj


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], q: float) -> float:
    vs = sorted(values)
    if not vs:
        return float("nan")
    k = min(len(vs) - 1, max(0, round(q * (len(vs) - 1))))
    return vs[k]


def _rss(proc: psutil.Process) -> float:
    try:
        return proc.memory_info().rss / 2**20
    except psutil.Error:
        return 0.0


async def run(n: int, settle: float, timeout: float) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix=f"tuneloop-bench-{n}-"))
    metrics_port = _free_port()
    async with cluster(tmp) as kc:
        op = OperatorProcess(kc.kubeconfig, tmp, env={"TUNELOOP_METRICS_PORT": str(metrics_port), "TUNELOOP_PROGRESS_INTERVAL": "15"})
        op.start()
        try:
            return await _measure(kc, op, n, settle, timeout, metrics_port)
        finally:
            op.stop()


async def _measure(kc, op: OperatorProcess, n: int, settle: float, timeout: float, metrics_port: int) -> dict:
    await op.wait_log("Initial authentication has finished", timeout=60)
    await asyncio.sleep(1.0)
    proc = psutil.Process(op.proc.pid)
    idle_rss = _rss(proc)
    me = psutil.Process()
    cpu0_op, cpu0_me = sum(proc.cpu_times()[:2]), sum(me.cpu_times()[:2])
    load0 = psutil.getloadavg()[0]
    created: dict[str, float] = {}
    data_seen: dict[str, float] = {}
    train_seen: dict[str, float] = {}
    rss: list[float] = []
    stop = asyncio.Event()

    async def sample() -> None:
        while not stop.is_set():
            rss.append(_rss(proc))
            await asyncio.sleep(0.25)

    async def controller() -> None:
        """The Job controller's part: finish data-prep Jobs, note training Jobs."""
        finishing: set[str] = set()
        while not stop.is_set():
            now = time.perf_counter()
            for (res, _ns, name), obj in list(kc.emulator.objects.items()):
                if res.plural != "jobs" or obj.deleted:
                    continue
                owner = name.rsplit("-", 1)[0]
                if name.endswith("-data") and name not in data_seen:
                    data_seen[owner] = data_seen.get(owner, now)
                    if name not in finishing:
                        finishing.add(name)
                        asyncio.create_task(kc.finish_job("default", name, message=PREPARE_MSG))
                elif name.endswith("-train") and owner not in train_seen:
                    train_seen[owner] = now
            await asyncio.sleep(0.02)

    tasks = [asyncio.create_task(sample()), asyncio.create_task(controller())]
    sem = asyncio.Semaphore(20)

    async def create(i: int) -> None:
        doc = ftj()
        doc["metadata"]["name"] = f"bench-{i:04d}"
        async with sem:
            created[doc["metadata"]["name"]] = time.perf_counter()
            await kc.apply(doc)

    t0 = time.perf_counter()
    await asyncio.gather(*(create(i) for i in range(n)))
    create_s = time.perf_counter() - t0
    deadline = time.perf_counter() + timeout
    while len(train_seen) < n and time.perf_counter() < deadline:
        await asyncio.sleep(0.2)
    all_done_s = time.perf_counter() - t0
    peak_during = max(rss) if rss else 0.0
    cpu_op, cpu_me = sum(proc.cpu_times()[:2]) - cpu0_op, sum(me.cpu_times()[:2]) - cpu0_me
    await asyncio.sleep(settle)
    steady = _rss(proc)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    try:
        scraped = (await asyncio.to_thread(urllib.request.urlopen, f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)).read().decode()
        hist_count = next((float(line.split()[-1]) for line in scraped.splitlines()
                           if line.startswith("tuneloop_create_to_training_job_seconds_count")), None)
    except OSError:
        hist_count = None
    jobs = kc.count(r.JOBS)

    to_data = [data_seen[k] - created[k] for k in created if k in data_seen]
    to_train = [train_seen[k] - created[k] for k in created if k in train_seen]
    return {
    "jobs": n, "training_jobs_created": len(to_train), "jobs_in_store": jobs,
    "create_all_s": round(create_s, 2), "all_training_jobs_s": round(all_done_s, 2),
    "create_to_data_job_p50_s": round(pct(to_data, 0.5), 3), "create_to_data_job_p99_s": round(pct(to_data, 0.99), 3),
    "create_to_training_job_p50_s": round(pct(to_train, 0.5), 3), "create_to_training_job_p99_s": round(pct(to_train, 0.99), 3),
    "create_to_training_job_max_s": round(max(to_train), 3) if to_train else None,
    "rss_idle_mib": round(idle_rss, 1), "rss_peak_mib": round(peak_during, 1), "rss_steady_mib": round(steady, 1),
    "operator_histogram_count": hist_count,
    "operator_cpu_s": round(cpu_op, 1), "emulator_and_bench_cpu_s": round(cpu_me, 1),
    "load_average_at_start": round(load0, 2), "cpus": psutil.cpu_count(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, nargs="+", default=[100, 500])
    ap.add_argument("--settle", type=float, default=20.0, help="seconds to keep running after the last training Job")
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--kubeconfig", default=None, help="bench against this real API server instead of kmock (see real.py)")
    ap.add_argument("--rate", type=float, nargs="+", default=[0.0], help="with --kubeconfig: arrivals per second (0 = all at once)")
    ap.add_argument("--steady", type=float, default=30.0, help="with --kubeconfig: seconds of steady-state measurement")
    args = ap.parse_args()
    if args.kubeconfig:
        import real  # bench/operator/real.py (this directory is on sys.path)

        results = []
        for n in args.jobs:
            for rate in args.rate:
                res = asyncio.run(real.run(args.kubeconfig, n, rate, args.steady, args.timeout))
                print(json.dumps(res), flush=True)
                results.append(res)
                if args.json:
                    Path(args.json).write_text(json.dumps(results, indent=2))
        print()
        print(real.table(results))
        return 0
    results = []
    for n in args.jobs:
        res = asyncio.run(run(n, args.settle, args.timeout))
        print(json.dumps(res), flush=True)
        results.append(res)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    print("\n| FineTuneJobs | create→data Job p50 / p99 | create→training Job p50 / p99 (max) | RSS idle / peak / steady | CPU s operator / emulator | load avg |")
    print("|---|---|---|---|---|---|")
    for x in results:
        print(f"| {x['jobs']} | {x['create_to_data_job_p50_s']} s / {x['create_to_data_job_p99_s']} s | "
              f"{x['create_to_training_job_p50_s']} s / {x['create_to_training_job_p99_s']} s ({x['create_to_training_job_max_s']} s) | "
              f"{x['rss_idle_mib']} / {x['rss_peak_mib']} / {x['rss_steady_mib']} MiB | "
              f"{x['operator_cpu_s']} / {x['emulator_and_bench_cpu_s']} | {x['load_average_at_start']} on {x['cpus']} CPUs |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
