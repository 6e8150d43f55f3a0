"""tools/vllm_cpu.py (`.venv-vllm/bin/vllm`) around a fake API server, and tests/support/bin/vllm's choice of engine.

The fake takes vLLM's API-server options, serves /v1/models and records its environment, so the port,
announcement, signal, exit-status and CPU-slot behaviour is checked here in seconds, without vLLM.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
WRAPPER = ROOT / "tools" / "vllm_cpu.py"
CHOOSER = ROOT / "tests" / "support" / "bin" / "vllm"

FAKE = r'''
import argparse, json, os, signal, subprocess, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
ap = argparse.ArgumentParser()
ap.add_argument("--model"); ap.add_argument("--host", default="0.0.0.0"); ap.add_argument("--port", type=int, default=8000)
ap.add_argument("--served-model-name", nargs="+"); ap.add_argument("--lora-modules", nargs="+", default=[])
ap.add_argument("--enable-lora", action="store_true")
a, _ = ap.parse_known_args()
out = os.environ["FAKE_OUT"]
started = time.time()
lora_delay = float(os.environ.get("FAKE_LORA_DELAY", "0"))
engine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # like vLLM's engine-core process
json.dump({"env": {k: v for k, v in os.environ.items() if k.startswith("VLLM_")}, "port": a.port, "engine_pid": engine.pid,
           "argv": sys.argv[1:]}, open(out + ".json", "w"))
def names():
    ns = list(a.served_model_name or [a.model])
    if time.time() - started >= lora_delay:
        if lora_delay:
            open(out + ".lora-listed", "a").write(str(time.time()))
        ns += [m.partition("=")[0] for m in a.lora_modules]
    return ns
class H(BaseHTTPRequestHandler):
    def log_message(self, *x): pass
    def do_GET(self):
        body = json.dumps({"object": "list", "data": [{"id": n} for n in names()]}).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
time.sleep(float(os.environ.get("FAKE_BIND_DELAY", "0")))  # vLLM binds its port only once the model is loaded
srv = ThreadingHTTPServer(("127.0.0.1" if a.host == "0.0.0.0" else a.host, a.port), H)
def stop(signum, frame):
    open(out + ".signal", "w").write(signal.Signals(signum).name)
    threading.Thread(target=srv.shutdown).start()
signal.signal(signal.SIGTERM, stop); signal.signal(signal.SIGINT, stop)
exit_after = os.environ.get("FAKE_EXIT_AFTER")
if exit_after:
    threading.Timer(float(exit_after), srv.shutdown).start()
srv.serve_forever(0.05)
sys.exit(0)  # like vLLM after its engine died: 0
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Wrapped:
    def __init__(self, tmp: Path, pod: str, args: list[str], **env: str):
        (tmp / "fakevllm.py").write_text(FAKE)
        self.registry = tmp / "registry"
        self.out = tmp / pod
        self.file = self.registry / f"{pod}.json"
        self.proc = subprocess.Popen(
            [sys.executable, str(WRAPPER), "serve", *args],
            env={**{k: v for k, v in os.environ.items() if k not in ("VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_KVCACHE_SPACE")},
                 "PYTHONPATH": str(tmp), "TUNELOOP_VLLM_SERVER_MODULE": "fakevllm", "HOSTNAME": pod,
                 "VLLM_STANDIN_REGISTRY": str(self.registry), "FAKE_OUT": str(self.out),
                 "TUNELOOP_VLLM_PORT_DIR": str(tmp / "ports"), **env},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def announced(self, timeout: float = 20) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.file.exists():
                return json.loads(self.file.read_text())
            assert self.proc.poll() is None, self.proc.stdout.read()
            time.sleep(0.05)
        raise AssertionError("the wrapper did not announce the server")

    def fake(self) -> dict:
        deadline = time.monotonic() + 10
        while not Path(str(self.out) + ".json").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return json.loads(Path(str(self.out) + ".json").read_text())

    def finish(self, timeout: float = 20) -> tuple[int, str]:
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        return self.proc.returncode, out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie has exited: /proc says "Z"
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_announces_only_once_every_served_name_is_listed(tmp_path: Path):
    w = Wrapped(tmp_path, "pod-a", ["/models/base", "--served-model-name", "bot-base", "--enable-lora",
                                    "--lora-modules", "bot=/models/artifact", "--port", str(_free_port())], FAKE_LORA_DELAY="1.5")
    try:
        info = w.announced()
        listed_at = float(Path(str(w.out) + ".lora-listed").read_text()[:17])
        assert info["served"] == ["bot-base", "bot"]
        assert info["started"] >= listed_at, "announced before /v1/models listed the adapter"
        assert info["host"] == "127.0.0.1" and info["engine"] == "vllm" and info["model"] == "/models/base"
        assert w.fake()["argv"][:2] == ["--model", "/models/base"]
    finally:
        w.proc.send_signal(signal.SIGTERM)
        w.finish()


def test_takes_a_free_port_when_the_rendered_one_is_taken(tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        w = Wrapped(tmp_path, "pod-b", ["/m", "--host", "0.0.0.0", "--port", str(port)])
        try:
            info = w.announced()
            assert info["port"] != port and w.fake()["port"] == info["port"]
        finally:
            w.proc.send_signal(signal.SIGTERM)
            rc, out = w.finish()
    assert f"port {port} is taken" in out and f"listening on {info['port']} instead" in out


def test_sigterm_is_forwarded_the_engine_is_reaped_and_the_exit_is_0(tmp_path: Path):
    w = Wrapped(tmp_path, "pod-c", ["/m", "--port", str(_free_port())])
    w.announced()
    engine = w.fake()["engine_pid"]
    assert _alive(engine)
    w.proc.send_signal(signal.SIGTERM)
    rc, out = w.finish()
    assert rc == 0, out
    assert Path(str(w.out) + ".signal").read_text() == "SIGTERM"
    assert not w.file.exists(), "the announcement outlived the server"
    time.sleep(0.2)
    assert not _alive(engine), "the engine process outlived the wrapper"


def test_a_wrapper_killed_outright_takes_its_server_with_it(tmp_path: Path):
    """A pod deleted: its process group gets SIGTERM, then SIGKILL a second later, before vLLM has stopped. The
    server (in its own session) must not survive the wrapper (two orphaned vLLM servers were found after a cluster run)."""
    w = Wrapped(tmp_path, "pod-k", ["/m", "--port", str(_free_port())])
    w.announced()
    server = [int(p) for p in Path(f"/proc/{w.proc.pid}/task/{w.proc.pid}/children").read_text().split()]
    assert server and all(_alive(pid) for pid in server)
    w.proc.kill()
    w.proc.wait(10)
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in server) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in server), "the server outlived its wrapper"


def test_a_server_that_exits_0_unasked_is_a_failure(tmp_path: Path):
    w = Wrapped(tmp_path, "pod-d", ["/m", "--port", str(_free_port())], FAKE_EXIT_AFTER="1.0")
    w.announced()
    rc, out = w.finish()
    assert rc == 1, out
    assert "exited with status 0 without being asked to stop" in out
    assert not w.file.exists()


def test_two_engines_claim_distinct_cpu_slots_and_kv_cache_defaults_to_1(tmp_path: Path):
    slots = tmp_path / "slots"
    env = {"TUNELOOP_VLLM_CPU_SLOTS": "2", "TUNELOOP_VLLM_CPU_SLOT_DIR": str(slots)}
    one = Wrapped(tmp_path, "pod-e", ["/m", "--port", str(_free_port())], **env)
    two = Wrapped(tmp_path, "pod-f", ["/m", "--port", str(_free_port())], **env)
    three = Wrapped(tmp_path, "pod-g", ["/m", "--port", str(_free_port())], **env, VLLM_CPU_OMP_THREADS_BIND="5")
    try:
        for w in (one, two, three):
            w.announced()
        binds = [w.fake()["env"].get("VLLM_CPU_OMP_THREADS_BIND") for w in (one, two, three)]
        assert sorted(binds[:2]) == ["0", "1"], binds
        assert binds[2] == "5", "an explicit VLLM_CPU_OMP_THREADS_BIND must win"
        assert {w.fake()["env"].get("VLLM_CPU_KVCACHE_SPACE") for w in (one, two)} == {"1"}
    finally:
        for w in (one, two, three):
            w.proc.send_signal(signal.SIGTERM)
            w.finish()
    # both slots are free again: a new engine gets slot 0
    again = Wrapped(tmp_path, "pod-h", ["/m", "--port", str(_free_port())], **env)
    try:
        again.announced()
        assert again.fake()["env"]["VLLM_CPU_OMP_THREADS_BIND"] == "0"
    finally:
        again.proc.send_signal(signal.SIGTERM)
        again.finish()


def test_model_given_as_option_and_unsupported_commands(tmp_path: Path):
    w = Wrapped(tmp_path, "pod-i", ["--model", "/m", "--port", str(_free_port())])
    try:
        assert w.announced()["served"] == ["/m"]
        assert w.fake()["argv"].count("--model") == 1
    finally:
        w.proc.send_signal(signal.SIGINT)
        assert w.finish()[0] == 0
    bad = subprocess.run([sys.executable, str(WRAPPER), "chat"], capture_output=True, text=True, timeout=10)
    assert bad.returncode == 2 and "only `serve` and `--version`" in bad.stderr


def _load(path: Path, name: str):
    """A script without a .py suffix (tests/support/bin/vllm) or outside any package (tools/vllm_cpu.py) as a module."""
    loader = importlib.machinery.SourceFileLoader(name, str(path))
    spec = importlib.util.spec_from_loader(name, loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def _chooser():
    return _load(CHOOSER, "vllm_chooser")


def test_pods_run_the_real_engine_unless_a_knob_file_asks_for_faults(tmp_path: Path):
    choose = _chooser().choose
    real = tmp_path / "vllm"
    real.write_text("#!/bin/sh\n")
    real.chmod(0o755)
    base, art = tmp_path / "base", tmp_path / "artifact"
    base.mkdir()
    art.mkdir()
    argv = ["serve", str(base), "--enable-lora", "--lora-modules", f"bot={art}", "--port", "8000"]
    assert choose(argv, {"TUNELOOP_VLLM": str(real)})[0] == str(real)
    assert choose(argv, {"TUNELOOP_VLLM": str(tmp_path / "absent")}) == (None, f"no vLLM CPU build at {tmp_path / 'absent'} (make vllm installs it)")
    assert choose(argv, {"TUNELOOP_VLLM": "standin"}) == (None, "TUNELOOP_VLLM=standin")
    assert choose(argv, {"TUNELOOP_VLLM": str(real), "VLLM_STANDIN_CONTROL": "/x.json"})[0] is None
    (art / "vllm-standin.json").write_text(json.dumps({"error_rate": 0.5}))
    kind, why = choose(argv, {"TUNELOOP_VLLM": str(real)})
    assert kind is None and str(art / "vllm-standin.json") in why
    (art / "vllm-standin.json").unlink()
    (base / "vllm-standin.json").write_text("{}")
    assert choose(argv, {"TUNELOOP_VLLM": str(real)})[0] is None


def test_a_port_reserved_by_a_loading_server_is_not_taken_by_the_next(tmp_path: Path):
    """Seen on the cluster tier: vLLM binds its port only after loading the model (40 s and more), so a second pod
    found the rendered port still free and took it too. The first wrapper's reservation sends the second elsewhere."""
    port = _free_port()
    one = Wrapped(tmp_path, "pod-r1", ["/m", "--port", str(port)], FAKE_BIND_DELAY="2")
    try:
        time.sleep(0.5)  # one's server is still "loading": nothing listens on the port yet
        two = Wrapped(tmp_path, "pod-r2", ["/m", "--port", str(port)])
        try:
            assert two.announced()["port"] != port
            assert one.announced()["port"] == port
        finally:
            two.proc.send_signal(signal.SIGTERM)
            two.finish()
    finally:
        one.proc.send_signal(signal.SIGTERM)
        one.finish()


def test_readiness_is_never_read_from_another_process_on_its_port(tmp_path: Path):
    """The same race against a process that ignores reservations: another server answers /v1/models with the same
    names on the port before ours binds it. The wrapper must not call that ready (it would announce, and be measured
    as, the other server); ours then fails to bind and the pod fails."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Other(BaseHTTPRequestHandler):
        def log_message(self, *a: object) -> None:
            pass

        def do_GET(self) -> None:
            body = json.dumps({"data": [{"id": "/m"}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    port = _free_port()
    w = Wrapped(tmp_path, "pod-x", ["/m", "--port", str(port)], FAKE_BIND_DELAY="3")
    other = None
    try:
        time.sleep(1.0)
        other = ThreadingHTTPServer(("127.0.0.1", port), Other)
        threading.Thread(target=other.serve_forever, args=(0.05,), daemon=True).start()
        rc, out = w.finish(timeout=30)
    finally:
        if other is not None:
            other.shutdown()
            other.server_close()
    assert not w.file.exists() and ": ready in " not in out, out
    assert f"port {port} answers, but not from this server" in out
    assert rc != 0, out


def test_the_stand_in_keeps_off_a_port_a_starting_engine_reserved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import fcntl
    from http.server import BaseHTTPRequestHandler

    sys.path.insert(0, str(ROOT / "tests" / "support"))
    try:
        import vllm_standin
    finally:
        sys.path.pop(0)
    monkeypatch.setenv("TUNELOOP_VLLM_PORT_DIR", str(tmp_path))
    port = _free_port()
    fd = os.open(tmp_path / f"port-{port}.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # what tools/vllm_cpu.py holds while its engine loads
    try:
        server = vllm_standin.bind("0.0.0.0", port, BaseHTTPRequestHandler)
        assert server.server_address[1] != port
        server.server_close()
    finally:
        os.close(fd)
    server = vllm_standin.bind("0.0.0.0", port, BaseHTTPRequestHandler)  # released: the port is used as asked
    assert server.server_address[1] == port
    server.server_close()


def test_a_stale_copy_of_the_wrapper_is_noticed(tmp_path: Path):
    """`make vllm` copies tools/vllm_cpu.py with the venv's shebang; a copy from older code (the cluster tier ran one for
    hours, without the port reservation) is noticed, and the pods' `vllm` then runs the repository's file."""
    stale = _chooser().stale
    source = (ROOT / "tools" / "vllm_cpu.py").read_text()
    copy = tmp_path / "vllm"
    copy.write_text("#!/some/venv/bin/python\n" + source.split("\n", 1)[1])
    assert not stale(copy)  # only the shebang differs: up to date
    copy.write_text("#!/some/venv/bin/python\n" + source.split("\n", 1)[1].replace("def reserve_port", "def old_reserve_port"))
    assert stale(copy)
    assert not stale(tmp_path / "absent")  # nothing to compare: the choice of engine says what is missing


def _wrapper_module():
    return _load(WRAPPER, "vllm_cpu_wrapper")


def test_a_taken_slot_is_waited_for_before_it_is_shared(tmp_path: Path):
    """A pod being replaced holds its slot for a few seconds more: the next engine waits for it rather than bind its
    OpenMP thread to a core another engine keeps busy (seen to hang in sched_setaffinity for minutes here)."""
    import fcntl
    import threading

    w = _wrapper_module()
    slots = tmp_path / "slots"
    slots.mkdir()
    held = []
    for i in range(2):
        fd = os.open(slots / f"slot-{i}.lock", os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        held.append(fd)
    env = {"TUNELOOP_VLLM_CPU_SLOTS": "2", "TUNELOOP_VLLM_CPU_SLOT_DIR": str(slots), "TUNELOOP_VLLM_CPU_SLOT_WAIT": "0.6"}
    assert w.claim_cpu_slot(dict(env)) is None  # nothing freed within the wait: shared, as the last resort
    threading.Timer(0.5, os.close, args=(held[1],)).start()  # the old pod's wrapper exits
    env["TUNELOOP_VLLM_CPU_SLOT_WAIT"] = "20"
    t0 = time.monotonic()
    fd = w.claim_cpu_slot(env)
    assert fd is not None and env["VLLM_CPU_OMP_THREADS_BIND"] == "1" and time.monotonic() - t0 < 10
    os.close(fd)
    os.close(held[0])
