"""Serving side of the cluster tier: a real Prometheus that scrapes the vLLM stand-in pods, and a
traffic "gateway" that sends chat completions along the HTTPRoute's weights.

Harness limits this works around (see ../shared/k8s-harness/README.md): every pod's IP is 127.0.0.1
and there is no Service proxy or Gateway. So:
- the stand-in (tests/support/bin/vllm) announces its real port in the registry folder
  (`$VLLM_STANDIN_REGISTRY`, default /var/tmp/vllm-standin/pods/<pod>.json);
- `Discovery` joins the live vLLM pods of the namespace (API) with those announcements and writes a
  Prometheus `file_sd` file with the labels a `labelmap: __meta_kubernetes_pod_label_(.+)` job would
  give (namespace, pod, tuneloop_dev_rollout, tuneloop_dev_role, tuneloop_dev_model_version), so the
  operator's built-in queries select them exactly as on a real cluster;
- `Gateway` reads the HTTPRoute the operator writes and sends each request to a Running pod of the
  Service a weighted backendRef names (Service selector → pods), like a Gateway implementation;
  no ready backend → a 503 counted as such.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.rollout.promstack import free_port, prometheus_binary

from .conftest import Env, phase, pod_log
from .kube import Kube

REGISTRY = Path(os.environ.get("VLLM_STANDIN_REGISTRY", "/var/tmp/vllm-standin/pods"))
ROOT = Path(__file__).resolve().parents[2]


def real_vllm() -> Path | None:
    """The vLLM CPU build the pods' `vllm` (tests/support/bin/vllm) runs when no fault knob asks for the stand-in."""
    wanted = os.environ.get("TUNELOOP_VLLM", "")
    if wanted == "standin":
        return None
    path = Path(wanted) if wanted else ROOT / ".venv-vllm" / "bin" / "vllm"
    return path if os.access(path, os.X_OK) else None


def rollout_debug(kube: Kube, env: Env, rollout: str, traffic: Callable[[], list[str]], pod_log_tail: int) -> str:
    """What a test prints when a Rollout does not get where it should: the Rollout's status (its last six measurements),
    the lines `traffic()` gives on what the test's traffic saw (a gateway's or a picker's counts, where it was sent),
    the last `pod_log_tail` characters of every vLLM pod's log, and the tail of the operator's log."""
    ro = kube.get("rollouts", rollout, env.ns) or {}
    st = dict(ro.get("status") or {})
    st["measurements"] = (st.get("measurements") or [])[-6:]
    out = [f"--- rollout status:\n{yaml.safe_dump(st)}", *traffic()]
    for p in kube.list("pods", env.ns, "app.kubernetes.io/name=vllm"):
        out.append(f"--- pod {p['metadata']['name']} {p['status'].get('phase')}: " + pod_log(env.ns, p, "vllm")[-pod_log_tail:])
    out.append(f"--- operator:\n{env.operator_log()[-6000:]}")
    return "\n".join(out)


def wait_modelversion(kube: Kube, env: Env, name: str, want: str) -> None:
    """Wait (30 s) for the ModelVersion's phase `want`: phases are written right after the Rollout's status (a
    separate request)."""
    kube.wait("modelversions", name, env.ns, lambda o: phase(o) == want, timeout=30, what=f"phase {want}")

# Gateway API is not part of Kubernetes: a minimal HTTPRoute CRD (open schema) so the operator's
# gatewayAPI traffic routing has something to write to. Installed only when the cluster has none.
HTTPROUTE_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "httproutes.gateway.networking.k8s.io",
                 "annotations": {"tuneloop.dev/note": "minimal stand-in installed by tuneloop's cluster tests",
                                 # *.k8s.io groups need it; the value Gateway API's own CRDs carry
                                 "api-approved.kubernetes.io": "https://github.com/kubernetes-sigs/gateway-api/pull/2466"}},
    "spec": {
        "group": "gateway.networking.k8s.io",
        "names": {"kind": "HTTPRoute", "listKind": "HTTPRouteList", "plural": "httproutes", "singular": "httproute"},
        "scope": "Namespaced",
        "versions": [{
            "name": "v1", "served": True, "storage": True, "subresources": {"status": {}},
            "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}},
        }],
    },
}


def _label(key: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", key)


def _running(pod: dict) -> bool:
    return (pod.get("status") or {}).get("phase") == "Running" and not pod["metadata"].get("deletionTimestamp")


def _announced(pod: dict) -> dict | None:
    f = REGISTRY / f"{pod['metadata']['name']}.json"
    try:
        info = json.loads(f.read_text())
    except (OSError, ValueError):
        return None
    return info


class Discovery(threading.Thread):
    """Every `every` seconds: live vLLM pods of `ns` → file_sd targets, Services, the HTTPRoute."""

    def __init__(self, kube: Kube, ns: str, sd_file: Path, every: float = 1.0):
        super().__init__(daemon=True, name=f"discovery-{ns}")
        self.kube, self.ns, self.sd_file, self.every = kube, ns, sd_file, every
        self.pods: list[dict] = []
        self.services: dict[str, dict] = {}
        self.routes: dict[str, dict] = {}
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.errors = 0
        self.write([])

    def write(self, targets: list[dict]) -> None:
        tmp = self.sd_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(targets))
        os.replace(tmp, self.sd_file)

    def tick(self) -> None:
        pods = self.kube.list("pods", self.ns, "app.kubernetes.io/name=vllm")
        services = {s["metadata"]["name"]: s for s in self.kube.list("services", self.ns)}
        try:
            routes = {x["metadata"]["name"]: x for x in self.kube.list("httproutes", self.ns)}
        except Exception:  # noqa: BLE001 — no Gateway API CRD
            routes = {}
        live = []
        targets = []
        for p in pods:
            info = _announced(p)
            if _running(p):
                self.probe_readiness(p, info is not None)
            if not _running(p) or info is None:
                continue
            p["_port"] = info["port"]
            live.append(p)
            labels = {"namespace": self.ns, "pod": p["metadata"]["name"]}
            labels |= {_label(k): v for k, v in (p["metadata"].get("labels") or {}).items()}
            targets.append({"targets": [f"127.0.0.1:{info['port']}"], "labels": labels})
        with self.lock:
            self.pods, self.services, self.routes = live, services, routes
        self.write(targets)

    def probe_readiness(self, pod: dict, ready: bool) -> None:
        """Play the kubelet's readinessProbe, which process_kubelet.py does not run (it reports a pod Ready as soon as
        its process starts): a vLLM pod is Ready only once it announced itself, i.e. once GET /v1/models lists every
        served name (tools/vllm_cpu.py, the stand-in). The Deployment controller then counts available pods from
        this, as on a real cluster where the operator's probe checks /v1/models."""
        st = pod.get("status") or {}
        want = "True" if ready else "False"
        conds = [dict(c) for c in st.get("conditions") or []]
        if all(c.get("status") == want for c in conds if c.get("type") in ("Ready", "ContainersReady")):
            return
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        for c in conds:
            if c.get("type") in ("Ready", "ContainersReady"):
                c.update(status=want, lastTransitionTime=now)
        statuses = [dict(cs, ready=ready) for cs in st.get("containerStatuses") or []]
        self.kube.patch("pods", pod["metadata"]["name"], self.ns, {"status": {"conditions": conds, "containerStatuses": statuses}}, sub="status")

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.tick()
            except Exception:  # noqa: BLE001 — keep discovering; the API server may be busy
                self.errors += 1
            self.stop_event.wait(self.every)

    def backends(self, route_name: str) -> list[tuple[list[dict], int, str]]:
        """[(pods, weight, service name)] of the HTTPRoute's first rule."""
        with self.lock:
            route = self.routes.get(route_name)
            if route is None:
                return []
            out = []
            for ref in route["spec"]["rules"][0].get("backendRefs") or []:
                svc = self.services.get(ref["name"])
                sel = (svc or {}).get("spec", {}).get("selector") or {}
                pods = [p for p in self.pods if svc and all((p["metadata"].get("labels") or {}).get(k) == v for k, v in sel.items())]
                out.append((pods, int(ref.get("weight", 1)), ref["name"]))
            return out

    def stop(self) -> None:
        self.stop_event.set()


class Gateway(threading.Thread):
    """`rps` chat completions per second for `model` along the HTTPRoute `route`'s weights."""

    def __init__(self, discovery: Discovery, route: str, model: str, rps: float = 8.0, timeout: float = 2.0):
        super().__init__(daemon=True, name=f"gateway-{route}")
        self.discovery, self.route, self.model, self.rps, self.timeout = discovery, route, model, rps, timeout
        self.counts: Counter[tuple[str, int]] = Counter()  # (service, status) ; status 0 = no answer
        self.no_backend = 0
        self.stop_event = threading.Event()
        self.rng = random.Random(7)
        self.sem = threading.Semaphore(16)
        # what clients ask; a test may replace the list while traffic flows (e.g. to shift prompt lengths)
        self.prompts: list[str] = ["where is my order ORD-123456?"]

    def _send(self, service: str, port: int) -> None:
        prompt = self.rng.choice(self.prompts)
        body = json.dumps({"model": self.model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 16}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                status = resp.status
        except urllib.error.HTTPError as e:
            status = e.code
        except OSError:
            status = 0
        finally:
            self.sem.release()
        self.counts[(service, status)] += 1

    def run(self) -> None:
        period = 1.0 / self.rps
        while not self.stop_event.wait(period):
            backends = [(pods, w, s) for pods, w, s in self.discovery.backends(self.route) if w > 0]
            total = sum(w for _, w, _ in backends)
            if not total:
                self.no_backend += 1
                continue
            pick = self.rng.uniform(0, total)
            for pods, w, service in backends:
                pick -= w
                if pick <= 0:
                    break
            if not pods:
                self.counts[(service, 503)] += 1  # a Gateway answers 503 when a weighted backend has no endpoint
                continue
            pod = self.rng.choice(pods)
            if self.sem.acquire(blocking=False):
                threading.Thread(target=self._send, args=(service, pod["_port"]), daemon=True).start()
            else:
                self.counts[(service, 0)] += 1

    def summary(self) -> dict[str, int]:
        return {f"{s}:{c}": n for (s, c), n in sorted(self.counts.items())} | {"no-backend": self.no_backend}

    def stop(self) -> None:
        self.stop_event.set()


class Prometheus:
    """The real `prometheus` binary scraping the file_sd targets every second."""

    def __init__(self, workdir: Path, *, static_targets: dict[str, str] | None = None, rules: dict | None = None,
                 static_labels: dict[str, dict[str, str]] | None = None):
        """`static_targets`: job name -> host:port scraped besides the vLLM pods (e.g. the operator's /metrics), with
        `static_labels[job]` as target labels (e.g. the namespace a PodMonitor would give an endpoint picker's series);
        `rules`: a rule-file document ({"groups": [...]}) Prometheus evaluates every second."""
        binary = prometheus_binary()
        if binary is None:
            raise RuntimeError("prometheus binary not found (apt-get install -y prometheus)")
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.sd_file = workdir / "vllm-targets.json"
        self.sd_file.write_text("[]")
        config: dict[str, Any] = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "vllm", "scrape_interval": "1s", "scrape_timeout": "1s",
                                "file_sd_configs": [{"files": [str(self.sd_file)], "refresh_interval": "1s"}]}],
        }
        for job, target in (static_targets or {}).items():
            config["scrape_configs"].append({"job_name": job, "scrape_interval": "1s", "scrape_timeout": "1s",
                                             "static_configs": [{"targets": [target], **({"labels": static_labels[job]}
                                                                                         if static_labels and job in static_labels else {})}]})
        if rules is not None:
            (workdir / "rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))
            config["rule_files"] = [str(workdir / "rules.yaml")]
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        (self.workdir / "tsdb").mkdir(exist_ok=True)
        with open(self.workdir / "prometheus.log", "ab") as log:
            self.proc = subprocess.Popen([self.binary, f"--config.file={self.workdir / 'prometheus.yml'}",
                                          f"--storage.tsdb.path={self.workdir / 'tsdb'}", f"--web.listen-address=127.0.0.1:{self.port}",
                                          "--storage.tsdb.retention.time=2h"], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("prometheus did not become ready")

    def query(self, promql: str) -> list[dict]:
        import urllib.parse

        with urllib.request.urlopen(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql}), timeout=5) as resp:
            return json.loads(resp.read())["data"]["result"]

    def alerts(self) -> list[dict]:
        """Active alerts (pending and firing) as Prometheus's /api/v1/alerts lists them."""
        with urllib.request.urlopen(f"{self.url}/api/v1/alerts", timeout=5) as resp:
            return json.loads(resp.read())["data"]["alerts"]

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
