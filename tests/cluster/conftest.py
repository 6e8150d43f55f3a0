"""Fixtures of the real-API-server tier (`pytest -m cluster --kubeconfig PATH`).

What the tier needs from the cluster (../shared/k8s-harness/ gives all of it):
- an API server the admin kubeconfig reaches, with controller-manager (Job, Deployment, GC,
  namespace, PV controllers) and scheduler;
- pods that run: process_kubelet.py with `--root $TUNELOOP_K8S_POD_ROOT` (default /var/tmp/k8s-pods;
  the tests write the PVC contents there) and a PATH holding the project's venv *and*
  tests/support/bin (the `vllm` stand-in), e.g. `--path-prefix $PWD/tests/support/bin:$PWD/.venv/bin`;
- `prometheus` and `kubectl` on this machine's PATH.

Everything the tier creates lives in namespaces named `tl-e2e-*` (deleted at the end; set
TUNELOOP_CLUSTER_KEEP=1 to keep them) plus cluster-scoped CRDs (kept) and PersistentVolumes (deleted).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.operator.harness import ROOT, OperatorProcess
from tests.rollout.promstack import free_port

from .kube import ApiError, Kube

POD_ROOT = Path(os.environ.get("TUNELOOP_K8S_POD_ROOT", "/var/tmp/k8s-pods"))
KEEP = os.environ.get("TUNELOOP_CLUSTER_KEEP") == "1"
CRD_FILES = sorted((ROOT / "crds").glob("*.yaml"))
CRD_NAMES = [yaml.safe_load(f.read_text())["metadata"]["name"] for f in CRD_FILES]  # every CRD the checkout ships
RELEASE = "tuneloop"
# The chart's operator Deployment is installed (it proves restricted-PSA admission of its pod template) but must not
# run: the operator under test runs on this machine as the chart's ServiceAccount instead.
NO_NODE = {"tuneloop.dev/e2e-no-such-node": "true"}
_started = time.monotonic()


# ------------------------------------------------------------------------------------------------
# the summary line (quoted in the closing note of issue 10)
# ------------------------------------------------------------------------------------------------
def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if not config.getoption("--kubeconfig"):
        return
    stats = terminalreporter.stats
    counts = {k: len([r for r in stats.get(k, []) if getattr(r, "when", "call") in ("call", "setup") and _is_cluster(r)])
              for k in ("passed", "failed", "error", "skipped", "xfailed", "xpassed")}
    version = _SESSION.get("server_version", "?")
    for line in vllm_engine_lines():
        terminalreporter.write_line(line)
    terminalreporter.write_sep("=", f"cluster tier: {counts['passed']} passed, {counts['failed']} failed, {counts['error']} errors, "
                                    f"{counts['skipped']} skipped, {counts['xfailed']} xfailed in {time.monotonic() - _started:.0f} s "
                                    f"against {version}")


def vllm_engine_lines() -> list[str]:
    """Which engine each vLLM pod of this run ran, from the first line tests/support/bin/vllm writes to its log
    ("vllm: real vLLM (why)" or "vllm: stand-in (why)"): the real engine wherever a scenario needs no injected fault."""
    real: list[str] = []
    standin: dict[str, list[str]] = {}
    for ns in _SESSION.get("namespaces", []):
        for log in sorted((POD_ROOT / "pods").glob(f"{ns}_*/vllm.log")):
            pod = log.parent.name.split("_")[1]
            first = next((ln for ln in log.read_text(errors="replace").splitlines() if ln.startswith("vllm: ")), "")
            if first.startswith("vllm: real vLLM"):
                real.append(pod)
            elif first.startswith("vllm: stand-in"):
                why = first.removeprefix("vllm: stand-in (").removesuffix(")")
                why = re.sub(r"^/\S*/(serve-[^/]+)/\S*", r"\1/.../vllm-standin.json", why)
                standin.setdefault(why, []).append(pod)
    if not real and not standin:
        return []
    lines = [f"vLLM pods: {len(real)} ran the real engine (vLLM CPU build), {sum(map(len, standin.values()))} the stand-in"]
    lines += [f"  stand-in: {len(pods)} pod(s): {why}" for why, pods in sorted(standin.items())]
    return lines


def _is_cluster(report: Any) -> bool:
    return report.nodeid in _SESSION.get("cluster_ids", set())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    _SESSION["cluster_ids"] = {i.nodeid for i in items if i.get_closest_marker("cluster")}


_SESSION: dict[str, Any] = {}
_STATUS_403 = re.compile(r"(?<![\d.])403(?![\d.])")
_LOG_TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")


# ------------------------------------------------------------------------------------------------
# cluster access
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def kube(kubeconfig: str | None) -> Kube:
    assert kubeconfig, "the cluster tier needs --kubeconfig"
    k = Kube(kubeconfig)
    try:
        info = k.request("GET", "/version")
    except OSError as e:
        pytest.fail(f"API server in {kubeconfig} unreachable: {e}")
    _SESSION["server_version"] = f"kube-apiserver {info.get('gitVersion')} ({k.server})"
    for tool in ("kubectl", "prometheus"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not on PATH")
    return k


def restricted_namespace(kube: Kube, prefix: str = "tl-e2e") -> str:
    ns = f"{prefix}-{uuid.uuid4().hex[:6]}"
    _SESSION.setdefault("namespaces", []).append(ns)
    kube.create("namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {
        "pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "latest",
        "pod-security.kubernetes.io/warn": "restricted", "pod-security.kubernetes.io/audit": "restricted",
        "tuneloop.dev/e2e": "true"}}})
    return ns


def delete_namespace(kube: Kube, ns: str) -> None:
    if KEEP:
        return
    try:
        kube.delete("namespaces", ns)
    except ApiError:
        pass


def pvc_dir(ns: str, claim: str) -> Path:
    """Where process_kubelet.py keeps a claim's files (its --root)."""
    return POD_ROOT / "pvc" / ns / claim


def make_claim(kube: Kube, ns: str, claim: str) -> None:
    """A PersistentVolume pre-bound to a claim of the same name (the scheduler needs bound claims)."""
    pv = f"{ns}-{claim}"
    d = pvc_dir(ns, claim)
    d.mkdir(parents=True, exist_ok=True)
    kube.create("persistentvolumes", {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv, "labels": {"tuneloop.dev/e2e": ns}},
                                      "spec": {"capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteMany"],
                                               "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                                               "claimRef": {"namespace": ns, "name": claim}, "hostPath": {"path": str(d)}}})
    kube.create("persistentvolumeclaims", {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim, "namespace": ns},
                                           "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": pv,
                                                    "resources": {"requests": {"storage": "10Gi"}}}})


def delete_claims(kube: Kube, ns: str) -> None:
    if KEEP:
        return
    for pv in kube.list("persistentvolumes", selector=f"tuneloop.dev/e2e={ns}"):
        kube.delete("persistentvolumes", pv["metadata"]["name"])


# ------------------------------------------------------------------------------------------------
# installation
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def crds(kube: Kube) -> None:
    """`kubectl apply --server-side -f crds/` (the README's way), plus a minimal HTTPRoute CRD when the cluster has no Gateway API."""
    # kubectl's own field manager, as a user's `kubectl apply --server-side -f crds/`; --force-conflicts because a shared
    # cluster's CRDs may also be owned by an earlier helm install or kustomize apply of another checkout's copy
    out = kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"), check=False)
    if out.returncode != 0:
        pytest.fail(f"the API server refused crds/ (issue 10 blocker):\n{out.stderr.strip()}")
    if kube.get("customresourcedefinitions", "httproutes.gateway.networking.k8s.io") is None:
        from .serving import HTTPROUTE_CRD

        kube.apply(HTTPROUTE_CRD)
    for name in [*CRD_NAMES, "httproutes.gateway.networking.k8s.io"]:
        kube.wait("customresourcedefinitions", name, None,
                  lambda o: any(c["type"] == "Established" and c["status"] == "True" for c in o.get("status", {}).get("conditions", [])),
                  timeout=60, what="Established")
    # Established is not yet served: a fresh API server publishes a new CRD's discovery and OpenAPI a moment later
    # (seen: `kubectl explain` "couldn't find resource" right after Established on a just-started cluster)
    deadline = time.monotonic() + 60
    for name in CRD_NAMES:
        while True:
            out = kube.kubectl("explain", name.split(".", 1)[0], check=False)
            if out.returncode == 0:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"{name} is Established but `kubectl explain` still cannot find it after 60 s:\n{out.stderr}")
            time.sleep(1)


def adopt_crds_for_helm(kube: Kube, release: str, ns: str) -> None:
    """Helm refuses to install over objects it does not own; existing CRDs (from `kubectl apply -f crds/` or an
    earlier run) are adopted the way Helm documents: its release annotations and managed-by label."""
    for name in CRD_NAMES:
        if kube.get("customresourcedefinitions", name) is not None:
            kube.patch("customresourcedefinitions", name, None, {"metadata": {
                "annotations": {"meta.helm.sh/release-name": release, "meta.helm.sh/release-namespace": ns},
                "labels": {"app.kubernetes.io/managed-by": "Helm"}}})


def helm_install(kube: Kube, ns: str, values: dict[str, Any], release: str = RELEASE) -> dict:
    """`helm install RELEASE charts/tuneloop -n NS` through helm-python-sdk (Helm's Go SDK; no helm binary needed)."""
    import helm_python as helm

    cfg = helm.Config(kubeconfig_path=kube.kubeconfig, namespace=ns)
    try:
        return cfg.install(str(ROOT / "charts" / "tuneloop"), release, values, namespace=ns, timeout=120)
    finally:
        cfg.close() if hasattr(cfg, "close") else None


def sa_kubeconfig(kube: Kube, ns: str, sa: str, path: Path) -> Path:
    """A kubeconfig that authenticates as the ServiceAccount (TokenRequest API, like a projected token)."""
    token = kube.kubectl("create", "token", sa, "-n", ns, "--duration=4h").stdout.strip()
    admin = yaml.safe_load(Path(kube.kubeconfig).read_text())
    ctx_name = admin["current-context"]
    ctx = next(c["context"] for c in admin["contexts"] if c["name"] == ctx_name)
    cluster = next(c["cluster"] for c in admin["clusters"] if c["name"] == ctx["cluster"])
    if "certificate-authority" in cluster and "certificate-authority-data" not in cluster:
        cluster = {**cluster, "certificate-authority-data": base64.b64encode(Path(cluster.pop("certificate-authority")).read_bytes()).decode()}
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": sa, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "c", "user": sa, "namespace": ns}}],
    }))
    path.chmod(0o600)
    return path


class Env:
    """One restricted namespace with the chart installed (namespaced scope), claims, data, and the operator
    running on this machine as the chart's ServiceAccount."""

    def __init__(self, kube: Kube, ns: str, workdir: Path):
        self.kube, self.ns, self.workdir = kube, ns, workdir
        self.release: dict = {}
        self.sa = ""
        self.sa_kubeconfig: Path | None = None
        self.operator: OperatorProcess | None = None
        self.trainer_metrics_port = free_port()  # the fallback only: every training pod names its own port (below)
        # Every pod here is 127.0.0.1 and shares the host's ports (like hostNetwork pods on one node): each FineTuneJob's
        # trainer gets its own port in this range (the operator's trainer_metrics_port_range), so two jobs training at
        # once (a sweep's parallel trials) do not share one. Below the kernel's ephemeral ports (32768-60999), where
        # free_port() and client sockets land.
        self.trainer_metrics_port_range = os.environ.get("TUNELOOP_CLUSTER_TRAINER_PORT_RANGE", "21000-28999")
        self.operator_metrics_port = free_port()  # the operator's /metrics (the drift gauges), scraped by test_5's Prometheus
        self.prometheus_url = ""
        self.state: dict[str, Any] = {}  # what earlier tests of the chain leave for later ones

    def operator_env(self) -> dict[str, str]:
        # TUNELOOP_CLUSTER_OPERATOR_SRC=DIR runs the operator from another checkout's `operator/` folder (e.g. the
        # commit before a fix, to see a test fail before it)
        src = os.environ.get("TUNELOOP_CLUSTER_OPERATOR_SRC")
        # The admission policy (issue 25, findings 7-9) keeps its multi-tenant defaults here: the tier's FineTuneJobs
        # run the operator's trainer image (no spec.image), name no Secret, pass no denied `vllm serve` flag and no
        # toleration; a tenant-boundary test may rely on allowedImages = the trainer image, tokenSecretPrefix
        # `tuneloop-`, and the control-plane keys reserved.
        return {**({"PYTHONPATH": src} if src else {}),"TUNELOOP_TRAINER_METRICS_PORT": str(self.trainer_metrics_port),
                "TUNELOOP_TRAINER_METRICS_PORT_RANGE": self.trainer_metrics_port_range, "TUNELOOP_PROGRESS_INTERVAL": "3",
                "TUNELOOP_METRICS_PORT": str(self.operator_metrics_port),
                "TUNELOOP_PROMETHEUS_URL": self.prometheus_url or "http://127.0.0.1:9", "HF_HUB_OFFLINE": "1",
                # each test module starts its own Prometheus on a free port after the operator (a single-tenant
                # set-up): the Rollouts' prometheusAddress is allowed by the admin switch, not by a named provider
                "TUNELOOP_ALLOW_ANY_METRICS_ADDRESS": "true"}

    def start_operator(self) -> OperatorProcess:
        assert self.sa_kubeconfig is not None
        if self.operator is None:
            self.operator = OperatorProcess(self.sa_kubeconfig, self.workdir, args=["--namespace", self.ns], env=self.operator_env())
        self.operator.env = self.operator_env()
        self.operator.start()
        return self.operator

    def ensure_operator(self) -> OperatorProcess:
        """The operator running (started with the tiny inputs on the claims when a test runs on its own, e.g. with -k)."""
        if self.operator is None or self.operator.proc is None or self.operator.proc.poll() is not None:
            write_tiny_inputs(self.ns)
            self.start_operator()
            time.sleep(5)
        assert self.operator is not None
        return self.operator

    def operator_log(self) -> str:
        return self.operator.tail(400) if self.operator else ""

    def forbidden_lines(self) -> list[str]:
        """Lines of every operator run's log that show the API server refusing the ServiceAccount."""
        out = []
        for i in range(1, (self.operator.starts if self.operator else 0) + 1):
            p = self.workdir / f"operator-{i}.log"
            if p.exists():
                for line in p.read_text(errors="replace").splitlines():
                    text = _LOG_TIME.sub("", line)  # "…:45,403 INFO" is a time, not a status
                    # a whole-word 403: the settings line prints random free ports (trainer_metrics_port 40357 was one)
                    if _STATUS_403.search(text) or "forbidden" in text.lower():
                        out.append(line)
        return out


def create_env(kube: Kube, workdir: Path, *, install_crds: bool) -> Env:
    """A restricted namespace, the chart installed there (scope=namespaced; with the CRDs when `install_crds`),
    a kubeconfig for the chart's ServiceAccount and two pre-bound claims. The operator is started by the caller."""
    ns = restricted_namespace(kube)
    e = Env(kube, ns, workdir)
    try:
        if install_crds:
            adopt_crds_for_helm(kube, RELEASE, ns)
        e.release = helm_install(kube, ns, {"scope": "namespaced", "crds": {"enabled": install_crds}, "nodeSelector": NO_NODE})
        sas = [s["metadata"]["name"] for s in kube.list("serviceaccounts", ns) if s["metadata"]["name"] != "default"]
        assert len(sas) == 1, f"expected the chart's one ServiceAccount, found {sas}"
        e.sa = sas[0]
        e.sa_kubeconfig = sa_kubeconfig(kube, ns, e.sa, workdir / "sa-kubeconfig.yaml")
        for claim in ("datasets", "models"):
            make_claim(kube, ns, claim)
    except BaseException:
        destroy_env(kube, e)
        raise
    return e


def destroy_env(kube: Kube, e: Env) -> None:
    """Rollouts go while the operator still runs (it removes Kopf's finalizer on them), then the operator, then the
    namespace and its PersistentVolumes."""
    if e.operator is not None and e.operator.proc is not None and e.operator.proc.poll() is None:
        for ro in kube.list("rollouts", e.ns):
            kube.delete("rollouts", ro["metadata"]["name"], e.ns)
        deadline = time.monotonic() + 30
        while kube.list("rollouts", e.ns) and time.monotonic() < deadline:
            time.sleep(0.5)
    if e.operator is not None:
        e.operator.stop()
        if os.environ.get("TUNELOOP_CLUSTER_VERBOSE"):
            print(e.operator_log())
    delete_namespace(kube, e.ns)
    delete_claims(kube, e.ns)


@pytest.fixture(scope="session")
def env(kube: Kube, crds: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    e = create_env(kube, tmp_path_factory.mktemp("cluster-env"), install_crds=True)
    try:
        yield e
    finally:
        destroy_env(kube, e)


# The tiny random Llama of every scenario: 4 heads of 64 (vLLM's CPU attention needs head_dim 32/64/128, so the real
# engine can serve it); every test that makes "base/tiny" uses this width, whichever test of a namespace runs first.
TINY_HIDDEN = 256


def write_tiny_inputs(ns: str, records: int = 80) -> tuple[Path, Path]:
    """The tiny random Llama (tuneloop_trainer.testing) and chat data on the `datasets` claim."""
    from tuneloop_trainer.testing import chat_records, make_tiny_model, write_jsonl

    root = pvc_dir(ns, "datasets")
    model = make_tiny_model(root / "base" / "tiny", hidden=TINY_HIDDEN)
    data = write_jsonl(root / "support" / "train.jsonl", chat_records(records))
    return model, data


def tiny_finetunejob(name: str, ns: str, *, version: str = "v1", max_steps: int = 40, save_steps: int = 5,
                     annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    """A CPU FineTuneJob over the tiny model (a few minutes on two busy cores)."""
    body: dict[str, Any] = {
        "apiVersion": "tuneloop.dev/v1alpha1", "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": ns, **({"annotations": annotations} if annotations else {})},
        "spec": {
            "baseModel": {"pvc": {"claimName": "datasets", "path": "base/tiny"}},
            "dataset": {"train": {"pvc": {"claimName": "datasets", "path": "support/train.jsonl"}}, "format": "chat",
                        "split": {"validation": 0.1, "test": 0.1, "seed": 1}, "checks": {"minExamples": 4}},
            "method": {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
            "hyperparameters": {"maxSteps": max_steps, "batchSize": 4, "microBatchSize": 2, "learningRate": 5e-3, "maxSeqLength": 128,
                                "saveSteps": save_steps, "evalSteps": 10, "warmupRatio": 0.0, "scheduler": "constant", "loggingSteps": 1},
            "resources": {"nodes": 1, "gpusPerNode": 0, "cpu": "1", "memory": "2Gi", "shmSize": "256Mi"},
            "output": {"pvc": {"claimName": "models", "path": name}},
            "evaluation": {"metrics": ["perplexity", "rougeL"], "maxNewTokens": 8, "batchSize": 8, "forgetting": {"enabled": False},
                           "gates": [{"metric": "perplexity", "maxRegression": 1000.0}]},
            "registry": {"modelName": name, "version": version},
            "backoffLimit": 2,
        },
    }
    body["spec"].update(spec)
    return body


def phase(obj: dict | None) -> str | None:
    return ((obj or {}).get("status") or {}).get("phase")


def cond(obj: dict, type_: str) -> dict | None:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == type_), None)


def at(ts: str) -> dt.datetime:
    """An API server timestamp (RFC 3339, `...Z`) as an aware datetime."""
    return dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))


def pod_log(ns: str, pod: dict, container: str) -> str:
    """A pod's container log straight from process_kubelet.py's folder (no --log-port needed)."""
    uid = pod["metadata"]["uid"][:8]
    f = POD_ROOT / "pods" / f"{ns}_{pod['metadata']['name']}_{uid}" / f"{container}.log"
    return f.read_text(errors="replace") if f.exists() else ""


def terminated(pod: dict) -> dict | None:
    for s in (pod.get("status") or {}).get("containerStatuses") or []:
        t = (s.get("state") or {}).get("terminated")
        if t:
            return t
    return None


def termination_json(pod: dict) -> dict:
    t = terminated(pod) or {}
    try:
        return json.loads(t.get("message") or "{}")
    except ValueError:
        return {}


def jobs_of(kube: Kube, ns: str, ftj: str) -> list[dict]:
    return kube.list("jobs", ns, f"tuneloop.dev/finetunejob={ftj}")


def run_cmd(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)
