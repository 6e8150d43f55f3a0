"""The vllm tier: real vLLM (the CPU build `make vllm` installs) serving a tiny local run through
`kubectl tuneloop local serve`, one engine for the whole module (a start takes 35-130 s on 2 cores):

1. the adapter answers a chat completion under the served name, and differs from its base;
2. the stand-in's metrics (tests/support/vllm_standin.py) follow the real engine's: names, types, label sets and
   histogram bucket bounds of every family the operator's analysis and drift queries (and the dashboard) read;
3. every PromQL query the operator builds returns a value against the real engine scraped by a real Prometheus;
4. Ctrl-C stops the server and its engine cleanly.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import vllm_executable
from tests.rollout.promstack import PrometheusServer, free_port, pod_labels, prometheus_binary
from tests.vllm.tiny import SERVED, make_run

pytestmark = pytest.mark.vllm

ROOT = Path(__file__).resolve().parents[2]
STANDIN = ROOT / "tests" / "support" / "vllm_standin.py"
START_TIMEOUT_S = 600

# Every family the operator reads (analysis builtins, drift watch, the dashboard and alerts: tests/deploy/test_metric_names.py).
HISTOGRAMS = ("vllm:time_to_first_token_seconds", "vllm:e2e_request_latency_seconds", "vllm:request_prompt_tokens",
              "vllm:request_generation_tokens")
COUNTERS = ("vllm:request_success", "vllm:prompt_tokens", "vllm:generation_tokens", "http_requests")
GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting")


def _post(url: str, body: dict, timeout: float = 120) -> tuple[int, dict]:
    req = urllib.request.Request(url, method="POST", headers={"Content-Type": "application/json"}, data=json.dumps(body).encode())
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _get(url: str, timeout: float = 10) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def chat(base: str, model: str, text: str = "hello there", max_tokens: int = 8) -> tuple[int, dict]:
    return _post(f"{base}/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": text}],
                                                 "max_tokens": max_tokens, "temperature": 0})


def traffic(base: str) -> None:
    """The same few requests for both engines: chat to the adapter and the base, a completion, an unknown model."""
    for i in range(3):
        assert chat(base, SERVED, f"question {i} how do i reset my password")[0] == 200
    assert chat(base, f"{SERVED}-base")[0] == 200
    assert _post(f"{base}/v1/completions", {"model": SERVED, "prompt": "order ship refund", "max_tokens": 4})[0] == 200
    assert chat(base, "no-such-model")[0] == 404


class Served:
    def __init__(self, root: Path):
        self.run = make_run(root)
        self.log = root / "local-serve.log"
        self.port = free_port()
        started = time.monotonic()
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tuneloop.cli.main", "local", "serve", str(self.run), "--port", str(self.port),
                 "--vllm", str(vllm_executable())],
                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        while time.monotonic() - started < START_TIMEOUT_S:
            text = self.log.read_text(errors="replace")
            m = re.search(r"ready in (\d+) s — OpenAI endpoint (http://\S+)/v1", text)
            if m:
                self.url, self.start_seconds = m.group(2), time.monotonic() - started
                self.output = text
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"local serve exited {self.proc.returncode} before it was ready:\n{text[-4000:]}")
            time.sleep(1)
        self.stop()
        raise AssertionError(f"vLLM was not ready within {START_TIMEOUT_S} s:\n{self.log.read_text()[-4000:]}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    s = Served(tmp_path_factory.mktemp("vllm-tier"))
    print(f"\nvllm tier: local serve ready in {s.start_seconds:.0f} s (load {os.getloadavg()[0]:.1f})")
    yield s
    s.stop()


def test_local_serve_answers_a_chat_completion_from_the_adapter(served: Served):
    models = json.loads(_get(f"{served.url}/v1/models"))["data"]
    assert {m["id"]: m["parent"] for m in models} == {f"{SERVED}-base": None, SERVED: f"{SERVED}-base"}
    code, body = chat(served.url, SERVED, "how do i reset my password")
    assert code == 200 and body["model"] == SERVED and body["choices"][0]["message"]["content"], body
    code, base = chat(served.url, f"{SERVED}-base", "how do i reset my password")
    assert code == 200
    assert body["choices"][0]["message"]["content"] != base["choices"][0]["message"]["content"], "the adapter changed nothing"
    # what it printed: the command the Deployment's serve_args decides (local paths), and a curl to try
    assert "--enable-lora --lora-modules tiny-bot=" in served.output and "--served-model-name tiny-bot-base" in served.output
    assert f"curl -s {served.url}/v1/chat/completions" in served.output and '"model": "tiny-bot"' in served.output


def _families(text: str) -> dict[str, dict]:
    """family → {type, labels: {sample suffix: set of label-name sets}, le: bucket bounds, reasons: finished_reason values}."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict] = {}
    for fam in text_string_to_metric_families(text):
        f = out.setdefault(fam.name, {"type": fam.type, "labels": {}, "le": set(), "reasons": set()})
        for s in fam.samples:
            suffix = s.name[len(fam.name):]
            if suffix == "_created":
                continue
            f["labels"].setdefault(suffix, set()).add(frozenset(k for k in s.labels if k != "le"))
            if "le" in s.labels:
                f["le"].add(s.labels["le"])
            if "finished_reason" in s.labels:
                f["reasons"].add(s.labels["finished_reason"])
    return out


def test_stand_in_metrics_follow_real_vllm(served: Served, tmp_path: Path):
    """Names, types, label sets, bucket bounds and finished_reason values of every family the operator reads: the
    stand-in serving the same run (same arguments) after the same requests exposes what vLLM 0.32 exposes."""
    port = free_port()
    command = re.search(r"^\$ \S+ serve (.*)$", served.output, re.M).group(1).split()  # what local serve started vLLM with
    command[command.index("--port") + 1] = str(port)
    standin = subprocess.Popen([sys.executable, str(STANDIN), "serve", *command],
                               env={**os.environ, "HOSTNAME": "fidelity-standin", "VLLM_STANDIN_REGISTRY": str(tmp_path)},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        stand_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while not (tmp_path / "fidelity-standin.json").exists():
            assert standin.poll() is None and time.monotonic() < deadline, standin.stdout.read() if standin.poll() is not None else "no start"
            time.sleep(0.1)
        traffic(served.url)
        traffic(stand_url)
        real, stand = _families(_get(f"{served.url}/metrics")), _families(_get(f"{stand_url}/metrics"))
    finally:
        standin.terminate()
        standin.wait(10)
    problems = []
    for name in HISTOGRAMS + COUNTERS + GAUGES:
        if name not in real:
            problems.append(f"{name}: not exposed by vLLM 0.32 (the operator queries it)")
            continue
        if name not in stand:
            problems.append(f"{name}: missing from the stand-in")
            continue
        r, s = real[name], stand[name]
        if r["type"] != s["type"]:
            problems.append(f"{name}: type {s['type']} in the stand-in, {r['type']} in vLLM")
        if r["labels"] != s["labels"]:
            problems.append(f"{name}: label sets {s['labels']} in the stand-in, {r['labels']} in vLLM")
        if r["le"] != s["le"]:
            problems.append(f"{name}: bucket bounds {sorted(s['le'], key=float)} in the stand-in, {sorted(r['le'], key=float)} in vLLM")
        if r["reasons"] != s["reasons"]:
            problems.append(f"{name}: finished_reason values {sorted(s['reasons'])} in the stand-in, {sorted(r['reasons'])} in vLLM")
    assert not problems, "\n".join(problems)
    # vLLM labels adapter requests with the base's model_name: the stand-in does too
    assert real["vllm:request_success"]["labels"] == stand["vllm:request_success"]["labels"]


@pytest.mark.skipif(prometheus_binary() is None, reason="prometheus binary not installed (make sysdeps)")
def test_every_operator_query_returns_a_value_against_real_vllm(served: Served, tmp_path: Path):
    from tuneloop.operator.analysis.prometheus.queries import BUILTIN_QUERIES, DRIFT_QUERIES, GUARD_BUILTINS, render, render_drift

    class Target:
        port = int(served.url.rsplit(":", 1)[1])

    labels = pod_labels("llm", "bot", "stable", "bot-v1")
    prom = PrometheusServer(tmp_path, [(Target, labels)])
    prom.start()
    try:
        prom.wait_scraped(1, timeout=60)
        end = time.monotonic() + 8
        while time.monotonic() < end:  # requests spread over several scrapes, so rate() and increase() see them
            traffic(served.url)
        time.sleep(3)
        # every built-in that reads vLLM's own metrics (contract-violation-rate, harmful-rate and topic-violation-rate read the
        # guard sidecar's counters, not vLLM's: tests/rollout/test_rollout_prometheus.py scrapes them)
        queries = {f"analysis {k}": render(q, namespace="llm", rollout="bot", role="stable", window="2m", model_version="bot-v1")
                   for k, q in BUILTIN_QUERIES.items() if k not in GUARD_BUILTINS}
        queries |= {f"drift {k.value}": render_drift(k, namespace="llm", rollout="bot", model_version="bot-v1", window="2m")
                    for k in DRIFT_QUERIES}
        empty = {}
        for name, promql in queries.items():
            result = prom.query(promql)
            assert result["status"] == "success", (name, result)
            values = [float(r["value"][1]) for r in result["data"]["result"]]
            if not values or any(v != v for v in values):  # no series, or NaN (0/0: nothing counted)
                empty[name] = (promql, result["data"]["result"])
        assert not empty, f"queries without a value against real vLLM: {json.dumps(empty, indent=1)}"
    finally:
        prom.stop()


def test_ctrl_c_stops_the_server_and_its_engine(served: Served):
    pid = served.proc.pid
    started = time.monotonic()
    assert served.stop() == 0, served.log.read_text()[-3000:]
    took = time.monotonic() - started
    print(f"\nvllm tier: Ctrl-C stopped vLLM in {took:.1f} s")
    assert "vLLM stopped" in served.log.read_text()
    left = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if f"HOSTNAME=local-serve-{pid}".encode() in (proc / "environ").read_bytes().split(b"\0"):
                    left.append(proc.name)
            except OSError:
                continue
    assert not left, f"processes of the server outlived Ctrl-C: {left}"
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{served.url}/health", timeout=2)
