"""A real Prometheus scraping fake vLLM pods whose error rate and latency the test controls.

Used by the rollout integration tests and by bench/rollout. Each `FakeVllm` is one "pod": an
in-process prometheus-client HTTP server exposing vLLM's metric names, fed by a traffic thread.
Prometheus (the Debian `prometheus` binary) scrapes every pod each second and attaches the labels
a kubernetes_sd `labelmap` would give real pods (namespace, tuneloop_dev_rollout, tuneloop_dev_role).
"""

from __future__ import annotations

import math
import random
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
MAX_MODEL_LEN = 2048
TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)  # vLLM: build_1_2_5_buckets(max_model_len)


def prometheus_binary() -> str | None:
    return shutil.which("prometheus") or ("/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_text_format(registry: CollectorRegistry, port: int) -> ThreadingHTTPServer:
    """/metrics in the classic text format only.

    prometheus-client 0.26 rewrites `vllm:` to `vllm_` in its OpenMetrics output (escaping=underscores),
    which Prometheus 2.42 asks for first; vLLM's names keep their colon in the text format.
    """

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = generate_latest(registry)
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True, name=f"metrics-{port}").start()
    return server


class FakeVllm:
    """One vLLM pod's /metrics with traffic whose error rate and latency can be changed at any time."""

    def __init__(self, role: str, *, rps: float = 50.0, error_rate: float = 0.0, ttft: float = 0.08, e2e: float = 0.6,
                 abort_rate: float = 0.0, noise: float = 0.0, seed: int | None = None, prompt_tokens: float = 40.0,
                 generation_tokens: float = 12.0, violation_rate: float = 0.0, harmful_rate: float = 0.0,
                 off_topic_rate: float = 0.0):  # fmt: skip
        self.role = role
        # median request lengths (log-normal, sigma 0.3); set(prompt_tokens=...) shifts the served distribution
        self.prompt_tokens, self.generation_tokens = prompt_tokens, generation_tokens
        self.rps, self.error_rate, self.ttft, self.e2e, self.noise = rps, error_rate, ttft, e2e, noise
        self.abort_rate = abort_rate
        self.violation_rate = violation_rate  # the output guard's share of answers breaking the contract (tuneloop.guard)
        self.harmful_rate = harmful_rate  # ... of answers its harmful-content check flags
        self.off_topic_rate = off_topic_rate  # ... of requests its topic rule flags
        self.rng = random.Random(seed)
        self.registry = CollectorRegistry()
        self.http = Counter("http_requests", "Requests by handler/status.", ["handler", "status", "method"], registry=self.registry)
        self.ttft_h = Histogram("vllm:time_to_first_token_seconds", "TTFT.", ["model_name"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.e2e_h = Histogram("vllm:e2e_request_latency_seconds", "E2E latency.", ["model_name"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.success = Counter("vllm:request_success", "Finished requests.", ["finished_reason", "model_name"], registry=self.registry)
        self.prompt_h = Histogram("vllm:request_prompt_tokens", "Prompt tokens.", ["model_name"], buckets=TOKEN_BUCKETS, registry=self.registry)
        self.gen_h = Histogram("vllm:request_generation_tokens", "Generation tokens.", ["model_name"], buckets=TOKEN_BUCKETS,
                               registry=self.registry)
        self.http.labels("/v1/chat/completions", "2xx", "POST")  # present from the start, as after the first request
        # the guard sidecar's counter, same name and labels as tuneloop.guard.proxy (scraped from the same pod)
        self.guard = Counter("tuneloop_guard_answers", "Answers by contract verdict.", ["verdict"], registry=self.registry)
        for verdict in ("ok", "violation"):
            self.guard.labels(verdict)
        self.checks = Counter("tuneloop_guard_checks", "Guard checks by check, direction, outcome.", ["check", "direction", "outcome"],
                              registry=self.registry)
        for check, direction in (("harmful", "input"), ("harmful", "output"), ("topic", "input")):
            for outcome in ("pass", "flag", "refuse"):
                self.checks.labels(check, direction, outcome)
        self.port = free_port()
        self.server = serve_text_format(self.registry, self.port)
        self._stop = threading.Event()
        self._traffic = threading.Thread(target=self._run, daemon=True, name=f"fake-vllm-{role}")
        self._traffic.start()

    def set(self, **kw: float) -> None:
        for k, v in kw.items():
            setattr(self, k, v)

    def _jitter(self, value: float) -> float:
        return max(0.001, value * (1 + self.rng.gauss(0, self.noise))) if self.noise else value

    def _run(self) -> None:
        tick = 0.05
        carry = 0.0
        while not self._stop.wait(tick):
            carry += self.rps * tick
            n, carry = int(carry), carry - int(carry)
            for _ in range(n):
                handler = "/v1/chat/completions" if self.rng.random() < 0.8 else "/v1/completions"
                if self.rng.random() < self.error_rate:
                    self.http.labels(handler, "5xx", "POST").inc()
                    continue
                self.http.labels(handler, "2xx", "POST").inc()
                self.ttft_h.labels("bot").observe(self._jitter(self.ttft))
                self.e2e_h.labels("bot").observe(self._jitter(self.e2e))
                self.success.labels("abort" if self.rng.random() < self.abort_rate else "stop", "bot").inc()
                self.prompt_h.labels("bot").observe(self.length(self.prompt_tokens))
                self.gen_h.labels("bot").observe(self.length(self.generation_tokens))
                self.guard.labels("violation" if self.rng.random() < self.violation_rate else "ok").inc()
                self.checks.labels("harmful", "input", "pass").inc()  # the requests' side: the same for every role
                self.checks.labels("harmful", "output", "flag" if self.rng.random() < self.harmful_rate else "pass").inc()
                self.checks.labels("topic", "input", "flag" if self.rng.random() < self.off_topic_rate else "pass").inc()

    def length(self, median: float) -> int:
        return max(1, min(MAX_MODEL_LEN, round(self.rng.lognormvariate(math.log(median), 0.3))))

    def close(self) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()


class PortTaken(RuntimeError):
    """Prometheus could not bind its port: another process took it after free_port() chose it."""


class PrometheusServer:
    """`prometheus` on a loopback port, 1 s scrape interval, temp storage; stop() makes it unreachable."""

    def __init__(self, workdir: Path, pods: list[tuple[FakeVllm, dict[str, str]]], scrape_interval: str = "1s"):
        self.binary = prometheus_binary()
        if self.binary is None:
            raise RuntimeError("prometheus binary not found (apt-get install -y prometheus)")
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
            "scrape_configs": [
                {
                    "job_name": "vllm",
                    "scrape_interval": scrape_interval,
                    "scrape_timeout": scrape_interval,
                    "static_configs": [{"targets": [f"127.0.0.1:{pod.port}"], "labels": labels} for pod, labels in pods],
                }
            ],
        }
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / "prometheus.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> None:
        """Start on self.port; a port taken between free_port() and the bind (another test run on the machine) is
        retried on a fresh port, and "ready" counts only from our own process (not another server on that port)."""
        for _ in range(3):
            try:
                return self._start(timeout)
            except PortTaken:
                self.port = free_port()
                self.url = f"http://127.0.0.1:{self.port}"
        raise RuntimeError("prometheus could not bind a free port in 3 tries")

    def _start(self, timeout: float) -> None:
        (self.workdir / "tsdb").mkdir(exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, f"--config.file={self.config_path}", f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h"],
                stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = self.log_path.read_text()[-2000:]
                if "address already in use" in log:
                    raise PortTaken(log)
                raise RuntimeError(f"prometheus exited: {log}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as resp:
                    if resp.status == 200:
                        time.sleep(0.3)  # a bind failure of ours shows as an exit right after another server answered
                        if self.proc.poll() is None:
                            return
                        continue
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("prometheus did not become ready")

    def wait_scraped(self, targets: int, timeout: float = 30.0) -> None:
        """Block until every target was scraped (Prometheus applies new targets ~5 s after start)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self.query("up == 1")["data"]["result"]
            if len(result) >= targets:
                return
            time.sleep(0.2)
        raise RuntimeError(f"prometheus did not scrape {targets} targets in {timeout}s")

    def stop(self, kill: bool = False) -> None:
        """Terminate (or SIGKILL, for an abrupt outage) and wait until the port is closed."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill() if kill else self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def query(self, promql: str) -> dict:
        import json
        import urllib.parse

        with urllib.request.urlopen(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql}), timeout=5) as resp:
            return json.loads(resp.read())


def pod_labels(namespace: str, rollout: str, role: str, model_version: str | None = None) -> dict[str, str]:
    """The labels a real pod's series get via `labelmap: __meta_kubernetes_pod_label_(.+)`."""
    out = {"namespace": namespace, "tuneloop_dev_rollout": rollout, "tuneloop_dev_role": role}
    if model_version:
        out["tuneloop_dev_model_version"] = model_version
    return out
