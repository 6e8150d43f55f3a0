"""The Gateway API Inference Extension as the cluster tier needs it for sharedBase Rollouts (a sibling of serving.py).

The loopback harness has no Gateway and no endpoint picker (EPP), so `EndpointPicker` plays the part an EPP plays for
an InferencePool, as the upstream one does (sigs.k8s.io/gateway-api-inference-extension, pkg/epp):
- it watches the pool's InferenceModelRewrites (here: polls the one the Rollout writes, every 0.25 s) and rewrites a
  request's `model` to one of the first matching rule's targets, by weight (weight / sum of weights; a lone unweighted
  target takes everything);
- it sends the request to a ready pod the InferencePool's selector picks: Discovery's pods (Running and announced) whose
  readiness the kubelet would report — process_kubelet.py runs no probe, so the picker runs the shared Deployment's
  readinessProbe itself (GET /v1/models lists the base and at least one adapter) every 0.25 s;
- it exports its own request series by the model asked for and the model it was rewritten to, with the upstream names,
  labels and buckets: inference_objective_request_total{model_name, target_model_name},
  inference_objective_request_error_total{..., error_code}, inference_objective_request_duration_seconds (histogram),
  inference_objective_output_tokens (histogram), on a port a real Prometheus scrapes.
Unlike a real EPP it does not prefer pods that already hold the adapter (LoRA affinity) nor queue by load: with one
shared pod in the tier that choice does not arise.

The CRDs are minimal (open schemas), installed by the test only where the cluster has none: InferenceModelRewrite
(inference.networking.x-k8s.io/v1alpha2) and InferencePool (inference.networking.k8s.io/v1).
"""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.error
import urllib.request
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from tests.rollout.promstack import free_port

from .kube import Kube
from .serving import Discovery


def _crd(group: str, version: str, kind: str, plural: str, *, approved: bool) -> dict[str, Any]:
    annotations = {"tuneloop.dev/note": "minimal stand-in installed by tuneloop's cluster tests"}
    if approved:  # *.k8s.io groups need it (the value the upstream CRDs carry); x-k8s.io groups must not have it
        annotations["api-approved.kubernetes.io"] = "https://github.com/kubernetes-sigs/gateway-api-inference-extension/pull/1173"
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}", "annotations": annotations},
        "spec": {
            "group": group, "scope": "Namespaced",
            "names": {"kind": kind, "listKind": f"{kind}List", "plural": plural, "singular": kind.lower()},
            "versions": [{"name": version, "served": True, "storage": True, "subresources": {"status": {}},
                          "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                              "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                              "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}}}],
        },
    }


IMR_CRD = _crd("inference.networking.x-k8s.io", "v1alpha2", "InferenceModelRewrite", "inferencemodelrewrites", approved=False)
POOL_CRD = _crd("inference.networking.k8s.io", "v1", "InferencePool", "inferencepools", approved=True)
IMR_CRD_NAME = IMR_CRD["metadata"]["name"]
POOL_CRD_NAME = POOL_CRD["metadata"]["name"]

# pkg/epp/metrics/metrics.go: requestLatencies' and outputTokens' buckets
DURATION_BUCKETS = (0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 45, 60, 120, 180,
                    240, 300, 360, 480, 600, 900, 1200, 1800, 2700, 3600)
TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


def pick_target(rewrite: dict | None, model: str, rng: random.Random) -> str | None:
    """The model a request for `model` is rewritten to: the first rule whose Exact match names it, a target drawn by
    weight (weight / sum; all unweighted: equal shares). None: no rule matches (the request keeps its model)."""
    for rule in ((rewrite or {}).get("spec") or {}).get("rules") or []:
        matches = rule.get("matches") or []
        if matches and not any((m.get("model") or {}).get("value") == model for m in matches):
            continue
        targets = rule.get("targets") or []
        if not targets:
            return None
        weighted = any("weight" in t for t in targets)
        weights = [float(t.get("weight") or 0) if weighted else 1.0 for t in targets]
        if sum(weights) <= 0:
            return None
        return rng.choices([t["modelRewrite"] for t in targets], weights=weights)[0]
    return None


class EndpointPicker(threading.Thread):
    """`rps` chat completions per second for `model` through the InferencePool `pool` and the InferenceModelRewrite
    `rewrite` of namespace `ns`; the EPP's series on `self.port` (/metrics)."""

    def __init__(self, kube: Kube, discovery: Discovery, ns: str, *, rewrite: str, pool: str, model: str, rps: float = 8.0,
                 timeout: float = 15.0, max_tokens: int = 32, port: int | None = None):
        super().__init__(daemon=True, name=f"epp-{pool}")
        self.kube, self.discovery, self.ns = kube, discovery, ns
        self.rewrite_name, self.pool_name, self.model = rewrite, pool, model
        self.rps, self.timeout, self.max_tokens = rps, timeout, max_tokens
        self.rng = random.Random(11)
        self.stop_event = threading.Event()
        self.sem = threading.Semaphore(16)
        self.lock = threading.Lock()
        self.rewrite: dict | None = None
        self.pool: dict | None = None
        self.ready: set[str] = set()  # pods whose readinessProbe passes (the shared one: base and an adapter listed)
        self.counts: dict[tuple[str, int], int] = {}  # (target, status) ; status 0 = no answer
        self.first_ok: dict[str, float] = {}  # target -> time.time() of its first 200
        self.first_routed: dict[str, float] = {}  # target -> when a request was first rewritten to it
        self.first_latencies: dict[str, list[float]] = {}  # target -> seconds of its first answers (200), in order
        self.registry = CollectorRegistry()
        labels = ["model_name", "target_model_name"]
        self.requests = Counter("inference_objective_request", "Counter of inference objective requests broken out for each model and target model.",
                                labels, registry=self.registry)
        self.errors = Counter("inference_objective_request_error", "Counter of inference objective requests errors broken out for each model and "
                              "target model.", [*labels, "error_code"], registry=self.registry)
        self.latency = Histogram("inference_objective_request_duration_seconds", "Inference objective response latency distribution in seconds "
                                 "for each model and target model.", labels, buckets=DURATION_BUCKETS, registry=self.registry)
        self.output_tokens = Histogram("inference_objective_output_tokens", "Inference objective output token count distribution for requests "
                                       "in each model.", labels, buckets=TOKEN_BUCKETS, registry=self.registry)
        self.port = port or free_port()
        self._server = start_http_server(self.port, addr="127.0.0.1", registry=self.registry)
        self._watcher = threading.Thread(target=self._watch, daemon=True, name=f"epp-watch-{pool}")

    # --- the pool's objects ----------------------------------------------------------------------------------------
    def _watch(self) -> None:
        while not self.stop_event.is_set():
            try:
                rewrite = self.kube.get("inferencemodelrewrites", self.rewrite_name, self.ns)
                pool = self.kube.get("inferencepools", self.pool_name, self.ns)
            except Exception:  # noqa: BLE001 — CRDs not installed yet, or the API server is busy
                rewrite, pool = None, None
            ready = {p["metadata"]["name"] for p in self._selected(pool) if self._probe(p)}
            with self.lock:
                self.rewrite, self.pool, self.ready = rewrite, pool, ready
            self.stop_event.wait(0.25)

    @staticmethod
    def _probe(pod: dict) -> bool:
        """The shared Deployment's readinessProbe (builders.serving.shared_readiness_probe), as the kubelet would run it."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{pod['_port']}/v1/models", timeout=1) as resp:
                data = json.loads(resp.read())["data"]
        except (OSError, ValueError, KeyError):
            return False
        return any(not m.get("parent") for m in data) and any(m.get("parent") for m in data)

    def _selected(self, pool: dict | None) -> list[dict]:
        sel = (((pool or {}).get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        if not sel:
            return []
        with self.discovery.lock:
            pods = list(self.discovery.pods)
        return [p for p in pods if all((p["metadata"].get("labels") or {}).get(k) == v for k, v in sel.items())]

    def endpoints(self) -> list[dict]:
        """Ready pods the pool's selector picks (matchLabels, as InferencePool v1's selector)."""
        with self.lock:
            pool, ready = self.pool, set(self.ready)
        return [p for p in self._selected(pool) if p["metadata"]["name"] in ready]

    # --- requests ----------------------------------------------------------------------------------------------------
    def _record(self, target: str, status: int, seconds: float | None, tokens: int | None) -> None:
        with self.lock:
            self.counts[(target, status)] = self.counts.get((target, status), 0) + 1
            if status == 200 and target not in self.first_ok:
                self.first_ok[target] = time.time()
            if status == 200 and seconds is not None and len(self.first_latencies.setdefault(target, [])) < 12:
                self.first_latencies[target].append(round(seconds, 3))
        self.requests.labels(self.model, target).inc()
        if status != 200:
            self.errors.labels(self.model, target, str(status) if status else "Unavailable").inc()
            return
        if seconds is not None:
            self.latency.labels(self.model, target).observe(seconds)
        if tokens:
            self.output_tokens.labels(self.model, target).observe(tokens)

    def _send(self, target: str, port: int) -> None:
        body = json.dumps({"model": target, "messages": [{"role": "user", "content": "where is my order ORD-123456?"}],
                           "max_tokens": self.max_tokens, "temperature": 0}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        start = time.monotonic()
        tokens = None
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                status = resp.status
                tokens = int((json.loads(resp.read()).get("usage") or {}).get("completion_tokens") or 0)
        except urllib.error.HTTPError as e:
            status = e.code
        except (OSError, ValueError):
            status = 0
        finally:
            self.sem.release()
        self._record(target, status, time.monotonic() - start, tokens)

    def run(self) -> None:
        self._watcher.start()
        period = 1.0 / self.rps
        while not self.stop_event.wait(period):
            with self.lock:
                rewrite = self.rewrite
            target = pick_target(rewrite, self.model, self.rng)
            if target is None:
                continue  # no rewrite yet: the Rollout has not written its weights
            with self.lock:
                self.first_routed.setdefault(target, time.time())
            pods = self.endpoints()
            if not pods:
                self._record(target, 503, None, None)  # the EPP answers 503 when the pool has no ready endpoint
                continue
            pod = self.rng.choice(pods)
            if self.sem.acquire(blocking=False):
                threading.Thread(target=self._send, args=(target, pod["_port"]), daemon=True).start()
            else:
                self._record(target, 0, None, None)

    def summary(self) -> dict[str, int]:
        with self.lock:
            return {f"{t}:{s}": n for (t, s), n in sorted(self.counts.items())}

    def ok(self, target: str) -> int:
        with self.lock:
            return self.counts.get((target, 200), 0)

    def stop(self) -> None:
        self.stop_event.set()
        try:
            self._server[0].shutdown()  # prometheus_client >= 0.20 returns (server, thread)
        except (TypeError, AttributeError):
            pass
