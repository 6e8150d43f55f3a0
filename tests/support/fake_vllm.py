"""A stand-in for a vLLM Python in the backend's unit tests (no vLLM needed): run as

    FAKE_PYTHON -c CODE                                   → the probe: prints a version, exit 0
    FAKE_PYTHON -m vllm.entrypoints.openai.api_server ... → by $FAKE_VLLM_MODE:
        serve: answers /v1/models (the served name) and /v1/completions (token_ids = the prompt's last 3 tokens, then
               the first stop token; finish_reason "stop"); starts a child process (pid in $FAKE_VLLM_PIDS) like vLLM's engine
        exit:  prints a line and exits 3 during start-up
        hang:  never answers

`write_fake_python(dir)` makes the executable (a shell script running this file with the test's Python).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def write_fake_python(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    exe = directory / "python"
    exe.write_text(f"#!/bin/sh\nexec {sys.executable} {Path(__file__).resolve()} \"$@\"\n")
    exe.chmod(0o755)
    return exe


def _arg(name: str, default: str = "") -> str:
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


def main() -> None:
    if sys.argv[1:2] == ["-c"]:
        print("0.32.0-fake")
        return
    mode = os.environ.get("FAKE_VLLM_MODE", "serve")
    name, port = _arg("--served-model-name", "m"), int(_arg("--port"))
    print(f"fake vllm: {mode} {name} on {port}", flush=True)
    if mode == "exit":
        print("fake vllm: engine failed to start", flush=True)
        sys.exit(3)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # like vLLM's engine process
    if os.environ.get("FAKE_VLLM_PIDS"):
        with open(os.environ["FAKE_VLLM_PIDS"], "a") as f:
            f.write(f"{os.getpid()} {child.pid}\n")
    if mode == "hang":
        time.sleep(600)
        return

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def _send(self, doc):
            body = json.dumps(doc).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self._send({"data": [{"id": name}]})

        def do_POST(self):
            req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            tokens = list(req["prompt"][-3:])[: req["max_tokens"]]
            if len(tokens) < req["max_tokens"] and req.get("stop_token_ids"):
                tokens.append(req["stop_token_ids"][0])
            self._send({"choices": [{"text": "", "token_ids": tokens, "finish_reason": "stop"}]})

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    main()
