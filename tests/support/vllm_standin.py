"""A vLLM stand-in: speaks enough of `vllm serve` for the Rollout tests on the loopback cluster.

Its metrics follow vLLM 0.32 (tests/vllm/test_real_vllm.py compares them with the real CPU build's: names, label
sets and bucket bounds of every family the operator queries); its CLI and API are those of v0.11 and later.

Installed for pods as the executable `tests/support/bin/vllm` (put that folder on the pod PATH, e.g.
process_kubelet.py `--path-prefix tests/support/bin:.venv/bin`). No model is loaded; every answer
is a fixed, deterministic text. What it does like vLLM v0.11's OpenAI server:

- CLI: `vllm serve MODEL [--served-model-name NAME...] [--enable-lora --lora-modules NAME=PATH...
  --max-loras N --max-lora-rank N] [--revision R] [--host H] [--port P] [--tensor-parallel-size N]`
  and `vllm --version`. A MODEL or LoRA path that starts with `/` must exist (vLLM fails at startup
  when it cannot load it); the exit status is then 1 with the reason on stderr.
- `GET /health` (200, empty body), `GET /v1/models` (base names + LoRA modules, `parent` set),
  `POST /v1/chat/completions` and `POST /v1/completions` (OpenAI schema; an unknown `model` is a 404
  with vLLM's message), `GET /metrics` in the classic Prometheus text format (`vllm:` names keep
  their colon) with vLLM's exact metric names: `vllm:time_to_first_token_seconds`,
  `vllm:e2e_request_latency_seconds`, `vllm:request_prompt_tokens`, `vllm:request_generation_tokens`
  (histograms, vLLM's buckets; the token ones build_1_2_5_buckets(max_model_len): `--max-model-len`, else the
  MODEL directory's config.json max_position_embeddings, else 2048, as vLLM decides), `vllm:request_success_total
  {finished_reason}` (stop, length, abort, error, repetition: all present from the start, as in vLLM 0.32), `vllm:num_requests_running`, `vllm:num_requests_waiting`,
  `vllm:prompt_tokens_total`, `vllm:generation_tokens_total` (labels `model_name`, `engine`), and
  prometheus-fastapi-instrumentator's `http_requests_total{handler,method,status}` with the status
  grouped as `2xx`/`4xx`/`5xx`.

Knobs (JSON, re-read when the file changes), from the first of: the file named by
`$VLLM_STANDIN_CONTROL`, `vllm-standin.json` in a LoRA module's directory, `vllm-standin.json` in the
MODEL directory. So a test can make one ModelVersion's artifact misbehave while it is being served:

    {"error_rate": 0.3}        fraction of completions answered HTTP 500 (counted as 5xx)
    {"silent": true}           every endpoint, /health and /metrics included, hangs without answering
    {"latency": 0.05, "ttft": 0.01, "abort_rate": 0.0}
    {"prompt_scale": 10}       multiply every request's counted prompt tokens (shifts vllm:request_prompt_tokens)
    {"reply": "the answer is red"}  the text of every answer (default "stand-in answer from MODEL")
    {"tokenizer": true}        count prompt and generation tokens as vLLM does: the chat-templated prompt
                               (add_generation_prompt) and the answer plus its end-of-sequence token, with the
                               tokenizer of the MODEL directory (transformers, loaded on the first request after
                               the knob is set); otherwise the counts are whitespace-separated words of the request's
                               JSON and of the answer

Harness limit: every pod of the loopback cluster shares 127.0.0.1, so two pods cannot both listen
on `--port`. When the port is taken, the stand-in listens on a free port instead and says so on
stderr. Either way it announces where it listens in `$VLLM_STANDIN_REGISTRY/<HOSTNAME>.json`
(default `/var/tmp/vllm-standin/pods`; HOSTNAME is the pod name), which the tests use as their
service discovery (Prometheus file_sd targets and the traffic "gateway"). It removes the file on
SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import random
import signal
import socket
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

VERSION = "0.11.0+standin"
DEFAULT_REGISTRY = "/var/tmp/vllm-standin/pods"
KNOB_FILE = "vllm-standin.json"
# vLLM v0.11's buckets for these two histograms.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
                80.0, 160.0, 640.0, 2560.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0,
               1920.0, 7680.0)
MAX_MODEL_LEN = 2048  # when neither --max-model-len nor the model's config.json says
# vllm:request_success_total's finished_reason values, each exposed (0) from the start
FINISHED_REASONS = ("stop", "length", "abort", "error", "repetition")


def token_buckets(max_model_len: int) -> tuple[float, ...]:
    """vLLM's build_1_2_5_buckets(max_model_len): the bounds of vllm:request_prompt_tokens / request_generation_tokens."""
    return tuple(float(m * 10**e) for e in range(8) for m in (1, 2, 5) if m * 10**e <= max_model_len)


TOKEN_BUCKETS = token_buckets(MAX_MODEL_LEN)


def max_model_len(args: argparse.Namespace) -> int:
    """What vLLM serves: --max-model-len, else the model's max_position_embeddings (config.json), else MAX_MODEL_LEN."""
    if args.max_model_len:
        return int(args.max_model_len)
    try:
        cfg = json.loads((Path(args.model) / "config.json").read_text())
        cfg = cfg.get("text_config", cfg)
        return int(cfg.get("max_position_embeddings") or MAX_MODEL_LEN)
    except (OSError, ValueError, TypeError):
        return MAX_MODEL_LEN
DEFAULT_KNOBS: dict[str, Any] = {"error_rate": 0.0, "silent": False, "latency": 0.02, "ttft": 0.005, "abort_rate": 0.0,
                                 "prompt_scale": 1.0, "reply": None, "tokenizer": False}


class TokenCounter:
    """vLLM's token counts with the served model's own tokenizer and chat template (loaded once, lazily)."""

    def __init__(self, model_dir: str):
        self.model_dir = model_dir
        self.lock = threading.Lock()
        self.tok: Any = None
        self.error: str | None = None

    def _load(self) -> Any:
        with self.lock:
            if self.tok is None and self.error is None:
                try:
                    from transformers import AutoTokenizer

                    self.tok = AutoTokenizer.from_pretrained(self.model_dir)
                except Exception as exc:  # noqa: BLE001 — no tokenizer there: say so, count words
                    self.error = f"{type(exc).__name__}: {exc}"
                    print(f"stand-in: no tokenizer in {self.model_dir} ({self.error}); counting words", file=sys.stderr, flush=True)
            return self.tok

    def prompt(self, req: dict) -> int | None:
        tok = self._load()
        if tok is None:
            return None
        if req.get("messages") is not None:
            text = tok.apply_chat_template(req["messages"], add_generation_prompt=True, tokenize=False)
            return len(tok(text, add_special_tokens=False).input_ids)
        return len(tok(str(req.get("prompt") or "")).input_ids)

    def generation(self, text: str) -> int | None:
        tok = self._load()
        if tok is None:
            return None
        return len(tok(text, add_special_tokens=False).input_ids) + (1 if tok.eos_token_id is not None else 0)


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="vllm", description="vLLM stand-in for tests (no model is loaded)")
    ap.add_argument("--version", action="store_true")
    sub = ap.add_subparsers(dest="command")
    s = sub.add_parser("serve")
    s.add_argument("model")
    s.add_argument("--served-model-name", nargs="+", default=None)
    s.add_argument("--enable-lora", action="store_true")
    s.add_argument("--lora-modules", nargs="+", default=[])
    s.add_argument("--max-loras", type=int, default=1)
    s.add_argument("--max-lora-rank", type=int, default=16)
    s.add_argument("--revision", default=None)
    s.add_argument("--host", default="0.0.0.0")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--tensor-parallel-size", type=int, default=1)
    s.add_argument("--max-model-len", type=int, default=None)
    args, unknown = ap.parse_known_args(argv)
    args.unknown = unknown
    return args


class Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0
        self.sum = 0.0

    def observe(self, v: float) -> None:
        for i, b in enumerate(self.buckets):
            if v <= b:
                self.counts[i] += 1
        self.total += 1
        self.sum += v


class Metrics:
    """vLLM's and the HTTP instrumentator's series, rendered in the classic text format."""

    def __init__(self, model_name: str, token_bounds: tuple[float, ...] = TOKEN_BUCKETS):
        self.model = model_name
        self.lock = threading.Lock()
        self.http: dict[tuple[str, str, str], int] = {("/v1/chat/completions", "POST", "2xx"): 0}
        self.ttft = Histogram(TTFT_BUCKETS)
        self.e2e = Histogram(E2E_BUCKETS)
        self.prompt_h = Histogram(token_bounds)
        self.gen_h = Histogram(token_bounds)
        self.success: dict[str, int] = dict.fromkeys(FINISHED_REASONS, 0)
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.running = 0

    def request(self, handler: str, status: int) -> None:
        with self.lock:
            key = (handler, "POST" if handler.startswith("/v1/c") else "GET", f"{status // 100}xx")
            self.http[key] = self.http.get(key, 0) + 1

    def finished(self, reason: str, ttft: float, e2e: float, prompt: int, generated: int) -> None:
        with self.lock:
            self.success[reason] = self.success.get(reason, 0) + 1
            self.ttft.observe(ttft)
            self.e2e.observe(e2e)
            self.prompt_tokens += prompt
            self.generation_tokens += generated
            self.prompt_h.observe(prompt)
            self.gen_h.observe(generated)

    def render(self) -> str:
        m = f'model_name="{self.model}",engine="0"'
        out: list[str] = []

        def hist(name: str, doc: str, h: Histogram) -> None:
            out.append(f"# HELP {name} {doc}\n# TYPE {name} histogram")
            for b, c in zip(h.buckets, h.counts):
                out.append(f'{name}_bucket{{{m},le="{b}"}} {float(c)}')
            out.append(f'{name}_bucket{{{m},le="+Inf"}} {float(h.total)}')
            out.append(f"{name}_count{{{m}}} {float(h.total)}")
            out.append(f"{name}_sum{{{m}}} {h.sum}")

        with self.lock:
            out.append("# HELP http_requests_total Total number of requests by method, status and handler.\n"
                       "# TYPE http_requests_total counter")
            for (handler, method, status), n in sorted(self.http.items()):
                out.append(f'http_requests_total{{handler="{handler}",method="{method}",status="{status}"}} {float(n)}')
            out.append("# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
                       "# TYPE vllm:num_requests_running gauge")
            out.append(f"vllm:num_requests_running{{{m}}} {float(self.running)}")
            out.append("# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
                       "# TYPE vllm:num_requests_waiting gauge")
            out.append(f"vllm:num_requests_waiting{{{m}}} 0.0")
            out.append("# HELP vllm:prompt_tokens_total Number of prefill tokens processed.\n# TYPE vllm:prompt_tokens_total counter")
            out.append(f"vllm:prompt_tokens_total{{{m}}} {float(self.prompt_tokens)}")
            out.append("# HELP vllm:generation_tokens_total Number of generation tokens processed.\n"
                       "# TYPE vllm:generation_tokens_total counter")
            out.append(f"vllm:generation_tokens_total{{{m}}} {float(self.generation_tokens)}")
            out.append("# HELP vllm:request_success_total Count of successfully processed requests.\n"
                       "# TYPE vllm:request_success_total counter")
            for reason, n in self.success.items():
                out.append(f'vllm:request_success_total{{{m},finished_reason="{reason}"}} {float(n)}')
            hist("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", self.ttft)
            hist("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", self.e2e)
            hist("vllm:request_prompt_tokens", "Number of prefill tokens processed.", self.prompt_h)
            hist("vllm:request_generation_tokens", "Number of generation tokens processed.", self.gen_h)
        return "\n".join(out) + "\n"


class Knobs:
    """The first existing knob file wins; re-read when its mtime changes (checked at most every 0.2 s)."""

    def __init__(self, candidates: list[Path]):
        self.candidates = candidates
        self.cache: tuple[Path | None, float, dict[str, Any]] = (None, 0.0, dict(DEFAULT_KNOBS))
        self.checked = 0.0
        self.lock = threading.Lock()

    def get(self) -> dict[str, Any]:
        with self.lock:
            now = time.monotonic()
            if now - self.checked < 0.2:
                return self.cache[2]
            self.checked = now
            for path in self.candidates:
                try:
                    mtime = path.stat().st_mtime
                except OSError:
                    continue
                if self.cache[0] == path and self.cache[1] == mtime:
                    return self.cache[2]
                try:
                    knobs = {**DEFAULT_KNOBS, **json.loads(path.read_text() or "{}")}
                except (OSError, ValueError) as e:
                    print(f"vllm-standin: ignoring unreadable knob file {path}: {e}", file=sys.stderr, flush=True)
                    continue
                self.cache = (path, mtime, knobs)
                print(f"vllm-standin: knobs from {path}: {json.dumps(knobs, sort_keys=True)}", file=sys.stderr, flush=True)
                return knobs
            if self.cache[0] is not None:
                print("vllm-standin: knob file gone, back to defaults", file=sys.stderr, flush=True)
            self.cache = (None, 0.0, dict(DEFAULT_KNOBS))
            return self.cache[2]


class Server:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.base_names = args.served_model_name or [args.model]
        self.loras: dict[str, str] = {}
        for item in args.lora_modules:
            if item.startswith("{"):  # vLLM also takes JSON: {"name": ..., "path": ...}
                d = json.loads(item)
                self.loras[d["name"]] = d["path"]
            else:
                name, _, path = item.partition("=")
                self.loras[name] = path
        self.max_model_len = max_model_len(args)
        self.metrics = Metrics(self.base_names[0], token_buckets(self.max_model_len))
        knob_files = [Path(os.environ["VLLM_STANDIN_CONTROL"])] if os.environ.get("VLLM_STANDIN_CONTROL") else []
        knob_files += [Path(p) / KNOB_FILE for p in self.loras.values() if p.startswith("/")]
        if args.model.startswith("/"):
            knob_files.append(Path(args.model) / KNOB_FILE)
        self.knobs = Knobs(knob_files)
        self.tokens = TokenCounter(args.model)
        self.rng = random.Random()
        self.created = int(time.time())

    def check_paths(self) -> str | None:
        if self.args.model.startswith("/") and not Path(self.args.model).exists():
            return f"model path {self.args.model} does not exist"
        if self.loras and not self.args.enable_lora:
            return "--lora-modules needs --enable-lora"
        for name, path in self.loras.items():
            if path.startswith("/") and not (Path(path) / "adapter_config.json").exists():
                return f"LoRA module {name}: no adapter_config.json in {path}"
        return None

    def models(self) -> dict[str, Any]:
        data = [{"id": n, "object": "model", "created": self.created, "owned_by": "vllm", "root": self.args.model,
                 "parent": None, "max_model_len": self.max_model_len} for n in self.base_names]
        data += [{"id": n, "object": "model", "created": self.created, "owned_by": "vllm", "root": p,
                  "parent": self.base_names[0], "max_model_len": self.max_model_len} for n, p in self.loras.items()]
        return {"object": "list", "data": data}

    def served(self) -> list[str]:
        return list(self.base_names) + list(self.loras)


def make_handler(srv: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a: object) -> None:
            pass

        def _silent(self) -> bool:
            if not srv.knobs.get().get("silent"):
                return False
            # hang while silent: clients time out, Prometheus' scrape fails; then drop the connection
            deadline = time.monotonic() + 3600
            while srv.knobs.get().get("silent") and time.monotonic() < deadline:
                time.sleep(0.2)
            self.close_connection = True
            return True

        def _send(self, code: int, body: Any, ctype: str = "application/json") -> None:
            data = body if isinstance(body, bytes) else (json.dumps(body).encode() if not isinstance(body, str) else body.encode())
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self._silent():
                return
            path = self.path.split("?")[0]
            if path == "/health":
                self._send(200, b"", "text/plain")
            elif path == "/v1/models":
                self._send(200, srv.models())
            elif path == "/metrics":
                self._send(200, srv.metrics.render(), "text/plain; version=0.0.4; charset=utf-8")
            elif path == "/version":
                self._send(200, {"version": VERSION})
            else:
                self._send(404, {"detail": "Not Found"})

        def do_POST(self) -> None:
            path = self.path.split("?")[0]
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if self._silent():
                return
            if path not in ("/v1/chat/completions", "/v1/completions"):
                self._send(404, {"detail": "Not Found"})
                return
            try:
                req = json.loads(raw or b"{}")
            except ValueError:
                srv.metrics.request(path, 400)
                self._send(400, {"object": "error", "message": "invalid JSON", "type": "BadRequestError", "code": 400})
                return
            model = req.get("model")
            if model not in srv.served():
                srv.metrics.request(path, 404)
                self._send(404, {"object": "error", "message": f"The model `{model}` does not exist.",
                                 "type": "NotFoundError", "param": None, "code": 404})
                return
            knobs = srv.knobs.get()
            start = time.monotonic()
            with srv.metrics.lock:
                srv.metrics.running += 1
            try:
                time.sleep(float(knobs.get("ttft", 0.0)))
                ttft = time.monotonic() - start
                time.sleep(max(0.0, float(knobs.get("latency", 0.0)) - ttft))
                if srv.rng.random() < float(knobs.get("error_rate", 0.0)):
                    srv.metrics.request(path, 500)
                    self._send(500, {"object": "error", "message": "stand-in: injected failure", "type": "InternalServerError",
                                     "param": None, "code": 500})
                    return
                text = str(knobs.get("reply") or f"stand-in answer from {model}")
                counted = (srv.tokens.prompt(req), srv.tokens.generation(text)) if knobs.get("tokenizer") else (None, None)
                prompt_tokens = counted[0] if counted[0] is not None else len(json.dumps(req.get("messages") or req.get("prompt") or "").split())
                prompt_tokens = min(srv.max_model_len, max(1, round(prompt_tokens * float(knobs.get("prompt_scale", 1.0)))))
                gen_tokens = counted[1] if counted[1] is not None else len(text.split())
                reason = "abort" if srv.rng.random() < float(knobs.get("abort_rate", 0.0)) else "stop"
                srv.metrics.finished(reason, ttft, time.monotonic() - start, prompt_tokens, gen_tokens)
                srv.metrics.request(path, 200)
                rid = uuid.uuid4().hex
                usage = {"prompt_tokens": prompt_tokens, "completion_tokens": gen_tokens, "total_tokens": prompt_tokens + gen_tokens}
                if path == "/v1/chat/completions":
                    body = {"id": f"chatcmpl-{rid}", "object": "chat.completion", "created": int(time.time()), "model": model,
                            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                            "usage": usage}
                else:
                    body = {"id": f"cmpl-{rid}", "object": "text_completion", "created": int(time.time()), "model": model,
                            "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}], "usage": usage}
                self._send(200, body)
            finally:
                with srv.metrics.lock:
                    srv.metrics.running -= 1

    return Handler


def reserved_elsewhere(port: int) -> bool:
    """Whether another process holds tools/vllm_cpu.py's reservation of `port` (a flock in its port folder)."""
    import fcntl

    lock_dir = Path(os.environ.get("TUNELOOP_VLLM_PORT_DIR") or "/var/tmp/tuneloop-vllm-ports")
    try:
        fd = os.open(lock_dir / f"port-{port}.lock", os.O_RDWR)
    except OSError:
        return False  # never reserved
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing drops a lock we just took
    return False


def bind(host: str, port: int, handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    """Listen on host:port, or on a free port when it is taken (all loopback-cluster pods share one IP)."""
    host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    try:
        if reserved_elsewhere(port):  # a real engine (tools/vllm_cpu.py) holds it while it loads its model
            raise OSError(errno.EADDRINUSE, f"port {port} is reserved by a vLLM server that is starting")
        server = ThreadingHTTPServer((host, port), handler)
    except OSError as e:
        if e.errno != errno.EADDRINUSE:
            raise
        server = ThreadingHTTPServer((host, 0), handler)
        print(f"vllm-standin: port {port} is taken (shared loopback IP); listening on {server.server_address[1]} instead",
              file=sys.stderr, flush=True)
    server.daemon_threads = True
    return server


def announce(server: ThreadingHTTPServer, srv: Server) -> Path | None:
    registry = Path(os.environ.get("VLLM_STANDIN_REGISTRY", DEFAULT_REGISTRY))
    pod = os.environ.get("HOSTNAME") or socket.gethostname()
    try:
        registry.mkdir(parents=True, exist_ok=True)
        path = registry / f"{pod}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pod": pod, "host": server.server_address[0], "port": server.server_address[1], "pid": os.getpid(),
                                   "served": srv.served(), "model": srv.args.model, "started": time.time()}))
        os.replace(tmp, path)
        return path
    except OSError as e:
        print(f"vllm-standin: cannot announce in {registry}: {e}", file=sys.stderr, flush=True)
        return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.version:
        print(VERSION)
        return 0
    if args.command != "serve":
        print("usage: vllm serve MODEL [options]   (stand-in: only `serve` and `--version`)", file=sys.stderr)
        return 2
    if args.unknown:
        print(f"vllm-standin: ignoring options {args.unknown}", file=sys.stderr, flush=True)
    srv = Server(args)
    problem = srv.check_paths()
    if problem:
        print(f"vllm-standin: ERROR: {problem}", file=sys.stderr, flush=True)
        return 1
    server = bind(args.host, args.port, make_handler(srv))
    announced = announce(server, srv)

    def stop(signum: int, frame: object) -> None:
        if announced is not None:
            announced.unlink(missing_ok=True)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"vllm-standin {VERSION}: serving {srv.served()} on http://{server.server_address[0]}:{server.server_address[1]}",
          file=sys.stderr, flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        if announced is not None:
            announced.unlink(missing_ok=True)
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
