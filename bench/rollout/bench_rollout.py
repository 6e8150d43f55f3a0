"""Rollout benchmarks: breach -> canary weight 0 latency, and false rollbacks over a noisy healthy run.

Both run the real operator (subprocess) against the kmock emulator, with a real Prometheus scraping
fake vLLM pods (tests/rollout/promstack.py) -- the same stack as the integration tests.

    python bench/rollout/bench_rollout.py breach --trials 5 --interval 10s --scrape 5s --window 30s
    python bench/rollout/bench_rollout.py noise --minutes 10 --interval 2s --scrape 1s --window 30s
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tuneloop.operator.kube import resources as r

from tests.operator.harness import Cluster, OperatorProcess, cluster
from tests.rollout.promstack import FakeVllm, PrometheusServer, free_port, pod_labels

NS = "default"
RESULTS = Path(__file__).parent / "results"


def model_version(name: str) -> dict:
    return {
        "apiVersion": "tuneloop.dev/v1alpha1", "kind": "ModelVersion",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"modelName": "bot", "version": name, "baseModel": {"name": "HuggingFaceTB/SmolLM2-135M-Instruct"},
                 "artifact": {"uri": f"pvc://out/{name}", "format": "lora-adapter", "loraRank": 16},
                 "evaluation": {"verdict": "Passed"}},
    }  # fmt: skip


def rollout(name: str, candidate: str, prom: str, interval: str, window: str, count: int, metrics: list[dict], failure_limit: int = 0,
            initial_delay: str = "10s", during_pause: bool = False) -> dict:
    # during_pause: the breach lands in a long pause step, where only background analysis measures
    steps = [{"setWeight": 20}, {"pause": {"duration": "1h"}}] if during_pause else [{"setWeight": 20}, {"analysis": {"count": count}}]
    return {
        "apiVersion": "tuneloop.dev/v1alpha1", "kind": "Rollout",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "servedModelName": "bot", "stable": {"name": "v1"}, "candidate": {"name": candidate},
            "serving": {"replicas": 2},
            "trafficRouting": {"gatewayAPI": {"httpRoute": name, "parentRefs": [{"name": "gw"}]}},
            "steps": steps,
            "analysis": {"prometheusAddress": prom, "interval": interval, "window": window, "count": count, "metrics": metrics,
                         "failureLimit": failure_limit, "initialDelay": initial_delay},
        },
    }  # fmt: skip


async def deployment_controller(kc: Cluster, stop: asyncio.Event) -> None:
    while not stop.is_set():
        for dep in await kc.list(r.DEPLOYMENTS, NS):
            n = dep["spec"].get("replicas", 1)
            want = {"observedGeneration": dep["metadata"].get("generation", 1), "updatedReplicas": n, "availableReplicas": n, "readyReplicas": n, "replicas": n}
            if {k: (dep.get("status") or {}).get(k) for k in want} != want:
                await kc.client.patch(r.DEPLOYMENTS, NS, dep["metadata"]["name"], {"status": want}, subresource="status")
        await asyncio.sleep(0.2)


async def canary_weight(kc: Cluster, route: str) -> int | None:
    obj = await kc.get(r.HTTPROUTES, NS, route)
    return None if obj is None else obj["spec"]["rules"][0]["backendRefs"][1]["weight"]


async def status(kc: Cluster, name: str) -> dict:
    return ((await kc.get(r.ROLLOUTS, NS, name)) or {}).get("status") or {}


def operator_metrics(port: int, prefix: str) -> dict[str, float]:
    """Samples of the operator's /metrics whose name starts with `prefix` (series text -> value)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith(prefix):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def operator_histogram(port: int) -> dict:
    return operator_metrics(port, "tuneloop_rollout_time_to_rollback_seconds_")


def measurements_by_phase(port: int) -> dict[str, int]:
    """tuneloop_analysis_measurements_total summed per phase (status keeps only the last 50)."""
    out: dict[str, int] = {}
    for key, value in operator_metrics(port, "tuneloop_analysis_measurements_total{").items():
        phase = key.split('phase="', 1)[1].split('"', 1)[0]
        out[phase] = out.get(phase, 0) + int(value)
    return out


async def with_stack(pods_labels, fn, scrape: str):
    tmp = Path(tempfile.mkdtemp(prefix="tuneloop-bench-"))
    pods = [(FakeVllm(role, **kw), pod_labels(NS, name, role)) for name, role, kw in pods_labels]
    prom = PrometheusServer(tmp, pods, scrape_interval=scrape)
    prom.start()
    prom.wait_scraped(len(pods), timeout=60)
    metrics_port = free_port()
    try:
        async with cluster(tmp) as kc:
            stop = asyncio.Event()
            ctl = asyncio.create_task(deployment_controller(kc, stop))
            op = OperatorProcess(kc.kubeconfig, tmp, env={"TUNELOOP_METRICS_PORT": str(metrics_port)})
            op.start()
            try:
                for mv in ("v1", "v2", "v3"):
                    await kc.apply(model_version(mv))
                return await fn(kc, prom, {p[0].role + "@" + p[1]["tuneloop_dev_rollout"]: p[0] for p in pods}, metrics_port)
            finally:
                stop.set()
                await asyncio.gather(ctl, return_exceptions=True)
                op.stop()
    finally:
        prom.stop()
        for pod, _ in pods:
            pod.close()


async def breach(args: argparse.Namespace) -> dict:
    metrics = [{"name": "error-rate", "builtin": "error-rate", "max": 0.05}]
    names = [f"t{i}" for i in range(args.trials)]
    pods = [(n, role, {"rps": args.rps, "error_rate": 0.0, "seed": i * 2 + j}) for i, n in enumerate(names) for j, role in enumerate(("stable", "canary"))]

    async def run(kc: Cluster, prom: PrometheusServer, fakes: dict, metrics_port: int) -> dict:
        trials = []
        for name in names:
            await kc.apply(rollout(name, "v2", prom.url, args.interval, args.window, 1000, metrics,
                                   initial_delay=args.initial_delay, during_pause=args.during_pause))
            deadline = time.monotonic() + 120
            while True:  # wait until the canary has traffic and the analysis is measuring
                st = await status(kc, name)
                if st.get("measurements"):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"rollout {name} never started measuring: {st}")
                await asyncio.sleep(0.2)
            await asyncio.sleep(random.uniform(0, 10))  # breach at a random phase of the interval
            t0 = time.monotonic()
            fakes[f"canary@{name}"].set(error_rate=args.error_rate)
            while await canary_weight(kc, name) != 0:
                await asyncio.sleep(0.05)
            latency = time.monotonic() - t0
            for _ in range(100):  # the weight is cut first; the status is written right after
                st = await status(kc, name)
                if st.get("phase") != "Progressing":
                    break
                await asyncio.sleep(0.05)
            trials.append({"rollout": name, "breach_to_weight0_s": round(latency, 2), "phase": st.get("phase"), "message": st.get("message")})
            print(f"  {name}: breach -> weight 0 in {latency:.1f}s ({st.get('phase')}: {st.get('message')})", flush=True)
        lat = [t["breach_to_weight0_s"] for t in trials]
        hist = operator_histogram(metrics_port)
        return {
            "benchmark": "breach_to_weight0", "during_pause": args.during_pause, "initial_delay": args.initial_delay, "interval": args.interval, "scrape_interval": args.scrape, "window": args.window,
            "canary_error_rate": args.error_rate, "threshold": 0.05, "rps_per_pod": args.rps, "trials": trials,
            "p50_s": round(statistics.median(lat), 2), "max_s": round(max(lat), 2), "mean_s": round(statistics.mean(lat), 2),
            "operator_time_to_rollback_metric": {
                "count": hist.get("tuneloop_rollout_time_to_rollback_seconds_count"),
                "sum_s": round(hist.get("tuneloop_rollout_time_to_rollback_seconds_sum", 0.0), 3),
            },
        }  # fmt: skip

    return await with_stack(pods, run, args.scrape)


async def noise(args: argparse.Namespace) -> dict:
    if args.latency == "relative":
        latency = [
            {"name": "ttft-p95", "builtin": "ttft-p95", "maxRelativeToStable": 1.5},
            {"name": "e2e-p95", "builtin": "e2e-latency-p95", "maxRelativeToStable": 1.5},
        ]
    else:  # docs/rollout.md "Choosing thresholds": absolute latency SLOs, isolated failures tolerated
        latency = [
            {"name": "ttft-p95", "builtin": "ttft-p95", "max": 0.5, "failureLimit": 1},
            {"name": "e2e-p95", "builtin": "e2e-latency-p95", "max": 5.0, "failureLimit": 1},
        ]
    metrics = [
        {"name": "error-rate", "builtin": "error-rate", "max": 0.05},
        *latency,
        {"name": "aborts", "builtin": "abort-rate", "max": 0.05},
    ]
    healthy = {"rps": args.rps, "error_rate": 0.01, "abort_rate": 0.005, "ttft": 0.12, "e2e": 1.2, "noise": args.noise}
    pods = [("noisy", "stable", healthy | {"seed": 1}), ("noisy", "canary", healthy | {"seed": 2})]

    async def run(kc: Cluster, prom: PrometheusServer, fakes: dict, metrics_port: int) -> dict:
        end = time.monotonic() + args.minutes * 60
        rollouts, false_rollbacks, worst = 0, 0, {}
        candidates = ["v2", "v3"]
        await kc.apply(rollout("noisy", candidates[0], prom.url, args.interval, args.window, args.count, metrics, args.failure_limit,
                               initial_delay=args.initial_delay))
        cur = candidates[0]
        while time.monotonic() < end:
            await asyncio.sleep(1)
            st = await status(kc, "noisy")
            if st.get("phase") not in ("Promoted", "RolledBack", "Paused") or st.get("candidateModelVersion") != cur:
                continue
            ms = [m for m in st.get("measurements", []) if m.get("stepIndex") == 1]  # the latest 50
            for m in ms:
                if m.get("value") is not None:
                    ratio = m["value"] / m["stableValue"] if m.get("stableValue") else m["value"]
                    worst[m["metric"]] = max(worst.get(m["metric"], 0.0), ratio)
            rollouts += 1
            if st["phase"] != "Promoted":
                false_rollbacks += 1
                print(f"  FALSE {st['phase']}: {st.get('message')}", flush=True)
            print(f"  rollout {rollouts}: {st['phase']} ({measurements_by_phase(metrics_port)} so far)", flush=True)
            # next candidate: promote stable back and forth (v1 is always `spec.stable`, status tracks the real one)
            nxt = candidates[rollouts % 2]
            await kc.client.patch(r.ROLLOUTS, NS, "noisy", {"spec": {"candidate": {"name": nxt}}})
            cur = nxt
        return {
            "benchmark": "false_rollbacks_noisy_healthy", "minutes": args.minutes, "interval": args.interval, "scrape_interval": args.scrape,
            "window": args.window, "count_per_rollout": args.count, "failure_limit": args.failure_limit, "metrics": metrics, "pods": healthy, "completed_rollouts": rollouts,
            "false_rollbacks": false_rollbacks, "measurements_by_phase": measurements_by_phase(metrics_port),
            "worst_value_or_ratio_to_stable_in_last_50": {k: round(v, 3) for k, v in worst.items()},
        }  # fmt: skip

    return await with_stack(pods, run, args.scrape)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="bench", required=True)
    b = sub.add_parser("breach")
    b.add_argument("--trials", type=int, default=5)
    b.add_argument("--interval", default="10s")
    b.add_argument("--scrape", default="5s")
    b.add_argument("--window", default="30s")
    b.add_argument("--error-rate", type=float, default=0.2)
    b.add_argument("--rps", type=float, default=20.0)
    b.add_argument("--initial-delay", default="10s", help="analysis.initialDelay")
    b.add_argument("--during-pause", action="store_true", help="breach during a pause step (background analysis)")
    b.add_argument("--tag", default="", help="suffix of the result file name")
    n = sub.add_parser("noise")
    n.add_argument("--minutes", type=float, default=10.0)
    n.add_argument("--interval", default="2s")
    n.add_argument("--scrape", default="1s")
    n.add_argument("--window", default="30s")
    n.add_argument("--count", type=int, default=30)
    n.add_argument("--rps", type=float, default=20.0)
    n.add_argument("--noise", type=float, default=0.3, help="relative sd of each request's latency")
    n.add_argument("--failure-limit", type=int, default=0, help="analysis.failureLimit")
    n.add_argument("--initial-delay", default="2s", help="analysis.initialDelay")
    n.add_argument("--latency", choices=["relative", "absolute"], default="relative",
                   help="latency thresholds: maxRelativeToStable 1.5, or absolute max with a per-metric failureLimit 1")
    n.add_argument("--tag", default="", help="suffix of the result file name")
    args = p.parse_args()
    result = asyncio.run(breach(args) if args.bench == "breach" else noise(args))
    result["date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{args.bench}-{args.interval}{getattr(args, 'tag', '')}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("trials",)}, indent=2))
    print(f"written to {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
