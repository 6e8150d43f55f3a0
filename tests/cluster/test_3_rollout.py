"""Rollouts on the real API server: the ModelVersion the chain trained is served by real vLLM (its CPU build,
`make vllm`) where it is installed — tests/support/bin/vllm, run as pods by process_kubelet.py, runs the stand-in
only for a version whose artifact carries a fault knob (vllm-standin.json), or when vLLM is not installed — scraped
by a real Prometheus, with chat-completion traffic split along the HTTPRoute the operator writes (serving.Gateway).
The terminal summary says how many pods ran which engine and why.

One Rollout goes through the whole life of a serving slot, in order:
first version → healthy canary promoted (operator SIGKILLed mid-analysis) → bad canary (50 % HTTP 500)
rolled back → candidate removed (the stale spec.stable must not come back) → a silent canary (no
answers, no /metrics) rolled back by the progress deadline → a failing canary rolled back during a
long pause (background analysis).
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.rollout.promstack import free_port

from .conftest import Env, at, cond, phase, pvc_dir
from .kube import Kube
from .serving import Discovery, Gateway, Prometheus, real_vllm, rollout_debug, wait_modelversion

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]

RO = "bot"
TERMINAL = ("Promoted", "RolledBack", "Aborted")
SERVED = "support-bot"


@pytest.fixture(scope="module")
def serving(kube: Kube, env: Env, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    if not env.state.get("modelversion"):
        pytest.skip("needs the ModelVersion trained by test_2_finetunejob")
    env.ensure_operator()
    prom = Prometheus(tmp_path_factory.mktemp("prometheus"))
    prom.start()
    disc = Discovery(kube, env.ns, prom.sd_file)
    disc.start()
    gw = Gateway(disc, RO, SERVED, rps=10)
    gw.start()
    try:
        yield SimpleNamespace(prom=prom, disc=disc, gw=gw, port=free_port())
    finally:
        gw.stop()
        disc.stop()
        prom.stop()
        if env.state.get("rollout_debug"):
            print(env.state["rollout_debug"])


def _debug(kube: Kube, env: Env, s: SimpleNamespace) -> str:
    return rollout_debug(kube, env, RO, lambda: [f"--- gateway: {s.gw.summary()}", f"--- targets: {s.prom.sd_file.read_text()}"],
                         pod_log_tail=600)


def _clone_modelversion(kube: Kube, env: Env, version: str, knobs: dict | None = None, merged_model: Path | None = None) -> str:
    """Another registered version of the trained model: its artifact copied to its own folder (so a knob file
    there changes only its pods), the same evaluation record. `merged_model`: register that model directory as
    the version's merged weights instead."""
    src = kube.get("modelversions", env.state["modelversion"], env.ns)
    name = f"{SERVED}-{version}"
    dst = pvc_dir(env.ns, "models") / f"serve-{version}" / "artifact"
    shutil.copytree(merged_model or env.state["artifact_dir"], dst, dirs_exist_ok=True)
    if knobs:
        (dst / "vllm-standin.json").write_text(json.dumps(knobs))
    spec = copy.deepcopy(src["spec"])
    spec["version"] = version
    spec["artifact"]["uri"] = f"pvc://models/serve-{version}/artifact"
    if merged_model is not None:
        spec["artifact"] = {"uri": spec["artifact"]["uri"], "format": "merged"}
    kube.create("modelversions", {"apiVersion": "tuneloop.dev/v1alpha1", "kind": "ModelVersion",
                                  "metadata": {"name": name, "namespace": env.ns, "labels": src["metadata"].get("labels") or {}},
                                  "spec": spec})
    status = {k: v for k, v in (src.get("status") or {}).items() if k not in ("conditions",)}
    status["phase"] = "Ready"
    kube.patch("modelversions", name, env.ns, {"status": status}, sub="status")
    return name


def _rollout(env: Env, s: SimpleNamespace, candidate: str, **spec: object) -> dict:
    body = {
        "apiVersion": "tuneloop.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": RO, "namespace": env.ns},
        "spec": {
            "servedModelName": SERVED,
            "candidate": {"name": candidate},
            "serving": {"replicas": 1, "port": s.port, "resources": {"gpus": 0, "cpu": "100m", "memory": "256Mi"}},
            "trafficRouting": {"gatewayAPI": {"httpRoute": RO, "parentRefs": [{"name": "inference-gateway"}]}},
            "steps": [{"setWeight": 50}, {"analysis": {}}],
            "analysis": {"prometheusAddress": s.prom.url, "interval": "2s", "window": "20s", "count": 4, "initialDelay": "3s",
                         "failureLimit": 0, "inconclusiveLimit": 2,
                         "metrics": [{"name": "error-rate", "builtin": "error-rate", "max": 0.05},
                                     {"name": "ttft", "builtin": "ttft-p95", "max": 2.0}]},
            "scaleDownDelaySeconds": 2,
        },
    }
    body["spec"].update(spec)
    return body


def _wait_rollout(kube: Kube, env: Env, s: SimpleNamespace, pred, what: str, timeout: float = 180) -> dict:
    return kube.wait("rollouts", RO, env.ns, pred, timeout=timeout, every=0.5, what=what, on_timeout=lambda: _debug(kube, env, s))


def _route_weights(kube: Kube, ns: str) -> dict[str, int]:
    route = kube.get("httproutes", RO, ns)
    return {ref["name"]: ref.get("weight", 1) for ref in route["spec"]["rules"][0]["backendRefs"]}


def _stable_pods_serve(kube: Kube, ns: str) -> set[str]:
    return {p["metadata"]["labels"].get("tuneloop.dev/model-version") for p in kube.list("pods", ns, f"tuneloop.dev/rollout={RO},tuneloop.dev/role=stable")
            if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")}


def test_first_version_is_served_and_scraped(kube: Kube, env: Env, serving: SimpleNamespace):
    s = serving
    v1 = env.state["modelversion"]
    kube.create("rollouts", _rollout(env, s, v1))
    ro = _wait_rollout(kube, env, s, lambda o: phase(o) == "Promoted" and (o.get("status") or {}).get("stableModelVersion") == v1,
                       "first version promoted")
    assert (ro["status"].get("canaryWeight") or 0) == 0
    kube.wait("modelversions", v1, env.ns, lambda o: phase(o) == "Serving", timeout=30)
    # the stand-in pod answers through the "gateway", and Prometheus has vLLM's own series with the pod labels
    deadline = time.monotonic() + 90
    q = f'sum(vllm:request_success_total{{namespace="{env.ns}",tuneloop_dev_rollout="{RO}",tuneloop_dev_role="stable"}})'
    while not s.prom.query(q):
        assert time.monotonic() < deadline, f"no vLLM series scraped\n{_debug(kube, env, s)}"
        time.sleep(1)
    assert any(status == 200 for (_, status) in s.gw.counts), s.gw.summary()
    dep = kube.get("deployments", f"{RO}-stable", env.ns)
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["vllm", "serve"] and "--enable-lora" in c["args"]


def test_healthy_canary_is_promoted_across_an_operator_kill(kube: Kube, env: Env, serving: SimpleNamespace):
    s = serving
    v1 = env.state["modelversion"]
    v2 = _clone_modelversion(kube, env, "v2")
    kube.patch("rollouts", RO, env.ns, {"spec": {"stable": {"name": v1}, "candidate": {"name": v2}}})
    _wait_rollout(kube, env, s, lambda o: (o.get("status") or {}).get("canaryWeight") == 50 and phase(o) == "Progressing", "canary at 50 %",
                  420)  # the real LoRA canary's engine must load first: 97 s seen, and over 160 s in vLLM's model inspection under load
    time.sleep(4)  # mid-analysis
    env.operator.kill()
    time.sleep(3)
    env.start_operator()
    # real vLLM: the canary's engine starts beside the stable's on 2 shared cores (40-180 s measured under load)
    ro = _wait_rollout(kube, env, s, lambda o: phase(o) == "Promoted" and o["status"].get("stableModelVersion") == v2, "v2 promoted", 420)
    measured = [m for m in ro["status"].get("measurements") or [] if m.get("phase") == "Successful"]
    assert measured, ro["status"]
    wait_modelversion(kube, env, v2, "Serving")
    wait_modelversion(kube, env, v1, "Retired")
    assert _route_weights(kube, env.ns) == {f"{RO}-stable": 100, f"{RO}-canary": 0}
    kube.wait("deployments", f"{RO}-canary", env.ns, lambda d: d["spec"]["replicas"] == 0, timeout=60, what="canary scaled to 0")
    deadline = time.monotonic() + 90
    while _stable_pods_serve(kube, env.ns) != {v2}:
        assert time.monotonic() < deadline, f"stable pods serve {_stable_pods_serve(kube, env.ns)}\n{_debug(kube, env, s)}"
        time.sleep(1)
    canary_ok = s.gw.counts[(f"{RO}-canary", 200)]
    assert canary_ok > 0, s.gw.summary()


def test_bad_canary_is_rolled_back(kube: Kube, env: Env, serving: SimpleNamespace):
    """Stand-in: HTTP 500 answers on demand (error_rate knob) are a fault the real engine cannot be made to show."""
    s = serving
    v2 = f"{SERVED}-v2"
    v3 = _clone_modelversion(kube, env, "v3", knobs={"error_rate": 0.5})
    before = s.gw.counts[(f"{RO}-canary", 500)]
    # spec.stable still names v1 (stale after the promotion), as docs/rollout.md allows
    kube.patch("rollouts", RO, env.ns, {"spec": {"candidate": {"name": v3}}})
    ro = _wait_rollout(kube, env, s, lambda o: (o.get("status") or {}).get("candidateModelVersion") == v3 and o["status"].get("canaryWeight") == 50,
                       "v3 at 50 %", 120)
    env.state["v3_weight_changed_at"] = at(ro["status"]["weightChangedAt"])
    ro = _wait_rollout(kube, env, s, lambda o: phase(o) == "RolledBack", "v3 rolled back", 240)
    rb = cond(ro, "RolledBack")
    assert rb and "error-rate" in rb.get("message", ""), ro["status"].get("conditions")
    assert ro["status"].get("canaryWeight") == 0 and ro["status"].get("stableModelVersion") == v2
    assert _route_weights(kube, env.ns)[f"{RO}-canary"] == 0
    wait_modelversion(kube, env, v3, "RolledBack")
    wait_modelversion(kube, env, v2, "Serving")
    assert s.gw.counts[(f"{RO}-canary", 500)] > before, s.gw.summary()
    # weight 0 within one analysis interval (+ a scrape) of the first failing measurement
    fails = [m for m in ro["status"].get("measurements") or [] if m.get("phase") == "Failed"]
    assert fails, ro["status"].get("measurements")
    gap = (at(rb["lastTransitionTime"]) - min(at(m["at"]) for m in fails)).total_seconds()
    assert gap <= 3.0, f"weight 0 came {gap:.1f} s after the first failed measurement"
    assert _stable_pods_serve(kube, env.ns) == {v2}
    # defect 6: no measurement before initialDelay (3 s) after the weight change; the canary is scaled down
    # scaleDownDelaySeconds (2 s) after its traffic left, not in the same tick
    changed = env.state["v3_weight_changed_at"]
    ats = [at(m["at"]) for m in ro["status"].get("measurements") or [] if m.get("at") and at(m["at"]) >= changed]
    assert ats and min(ats) - changed >= dt.timedelta(seconds=2.8), (changed, sorted(ats)[:3])
    rolled = at(rb["lastTransitionTime"])
    scale_down_at = ro["status"].get("canaryScaleDownAt")
    assert scale_down_at and (at(scale_down_at) - rolled).total_seconds() >= 1.5, ro["status"]
    kube.wait("deployments", f"{RO}-canary", env.ns, lambda d: d["spec"]["replicas"] == 0, timeout=60, what="canary scaled to 0")


def test_removing_the_candidate_keeps_the_promoted_stable(kube: Kube, env: Env, serving: SimpleNamespace):
    """Issue 10 defects 2, 3 and 12 on the real server: with spec.stable left stale (v1), removing spec.candidate must
    not put v1 back; setting the same candidate again must start a new rollout; `kubectl get` shows step and message."""
    v1, v2 = env.state["modelversion"], f"{SERVED}-v2"
    kube.patch("rollouts", RO, env.ns, {"spec": {"candidate": None}})
    time.sleep(6)
    ro = kube.get("rollouts", RO, env.ns)
    assert ro["status"].get("stableModelVersion") == v2, ro["status"]
    wait_modelversion(kube, env, v2, "Serving")
    wait_modelversion(kube, env, v1, "Retired")
    assert _stable_pods_serve(kube, env.ns) == {v2}
    assert _route_weights(kube, env.ns)[f"{RO}-stable"] == 100
    # defect 12: `kubectl get rollouts` (server-side printing of the CRD's columns) has STEP and MESSAGE
    table = kube.kubectl("get", "rollouts", "-n", env.ns).stdout
    assert "STEP" in table.splitlines()[0] and "MESSAGE" in table.splitlines()[0], table
    # defect 3: setting the same (bad) candidate again starts a new rollout instead of staying Aborted
    v3 = f"{SERVED}-v3"
    kube.patch("rollouts", RO, env.ns, {"spec": {"candidate": {"name": v3}}})
    ro = _wait_rollout(kube, env, serving, lambda o: phase(o) in ("Progressing", "Aborted") and o["status"].get("candidateModelVersion") == v3,
                       "the retried candidate starts again", 90)
    assert phase(ro) != "Aborted", ro["status"]
    ro = _wait_rollout(kube, env, serving, lambda o: phase(o) == "RolledBack", "the retried bad candidate rolled back again", 120)
    assert ro["status"].get("stableModelVersion") == v2


def test_silent_canary_is_rolled_back_by_the_progress_deadline(kube: Kube, env: Env, serving: SimpleNamespace):
    """Issue 10 defect 4: a canary that answers nothing (no completions, no /metrics) gives no data; it must not sit
    Paused with traffic on it forever. Stand-in: a live process that never answers (silent knob)."""
    s = serving
    v4 = _clone_modelversion(kube, env, "v4", knobs={"silent": True})
    kube.patch("rollouts", RO, env.ns, {"spec": {"candidate": {"name": v4}, "progressDeadlineSeconds": 20}})
    _wait_rollout(kube, env, s, lambda o: (o.get("status") or {}).get("candidateModelVersion") == v4 and phase(o) in ("Progressing", "Paused"),
                  "the new candidate starts (not left Aborted)", 60)
    ro = _wait_rollout(kube, env, s, lambda o: phase(o) == "RolledBack", "silent canary rolled back", 180)
    assert "ProgressDeadlineExceeded" in json.dumps(ro["status"].get("conditions")), ro["status"].get("conditions")
    assert ro["status"].get("canaryWeight") == 0 and ro["status"].get("stableModelVersion") == f"{SERVED}-v2"


def test_failing_canary_is_rolled_back_during_a_pause(kube: Kube, env: Env, serving: SimpleNamespace):
    """Issue 10 defect 5: a long pause must not leave a failing canary in front of users (background analysis).
    Stand-in: HTTP 500 answers on demand (error_rate knob)."""
    s = serving
    v5 = _clone_modelversion(kube, env, "v5", knobs={"error_rate": 0.5})
    stable = kube.get("rollouts", RO, env.ns)["status"].get("stableModelVersion")
    kube.patch("rollouts", RO, env.ns, {"spec": {"candidate": {"name": v5}, "progressDeadlineSeconds": 600,
                                                 "steps": [{"setWeight": 50}, {"pause": {"duration": "5m"}}, {"analysis": {}}]}})
    ro = _wait_rollout(kube, env, s, lambda o: (o.get("status") or {}).get("candidateModelVersion") == v5 and (o["status"].get("canaryWeight") or 0) > 0,
                       "v5 gets traffic", 90)
    start = at(ro["status"]["weightChangedAt"]) if ro["status"].get("weightChangedAt") else dt.datetime.now(dt.UTC)
    ro = _wait_rollout(kube, env, s, lambda o: phase(o) == "RolledBack", "rolled back during the pause", 120)
    rolled = at(cond(ro, "RolledBack")["lastTransitionTime"])
    assert (rolled - start).total_seconds() < 60, f"{(rolled - start).total_seconds():.0f} s of a 5 min pause with a failing canary"
    assert ro["status"].get("stableModelVersion") == stable
    assert not env.forbidden_lines(), "\n".join(env.forbidden_lines())


def test_manual_promote_with_the_cli(kube: Kube, env: Env, serving: SimpleNamespace):
    """`kubectl tuneloop promote` against the real API server ends an indefinite pause."""
    s = serving
    v6 = _clone_modelversion(kube, env, "v6")
    kube.patch("rollouts", RO, env.ns, {"spec": {"candidate": {"name": v6}, "steps": [{"setWeight": 50}, {"pause": {}}, {"analysis": {}}]}})
    _wait_rollout(kube, env, s, lambda o: (o.get("status") or {}).get("candidateModelVersion") == v6 and phase(o) == "Paused", "paused for a human", 420)  # real vLLM: the canary loads first
    cli = Path(sys.executable).parent / "kubectl-tuneloop"
    out = subprocess.run([str(cli), "promote", RO, "-n", env.ns, "--kubeconfig", kube.kubeconfig, "--wait", "--timeout", "60"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    _wait_rollout(kube, env, s, lambda o: phase(o) == "Promoted" and o["status"].get("stableModelVersion") == v6, "v6 promoted by hand", 60)
    wait_modelversion(kube, env, v6, "Serving")


def test_slower_canary_is_rolled_back_for_its_real_latency(kube: Kube, env: Env, serving: SimpleNamespace, tmp_path: Path):
    """Real vLLM only (skipped without the CPU build: the stand-in's latency is a knob, not a model): a candidate that is
    honestly slower — merged weights of a model 32x deeper and 2x wider than the stable's (~150M parameters against
    ~1M: a 16-token answer costs it hundreds of milliseconds more, not the few tens a 16-layer model cost, which the
    HTTP and scheduling overhead of a loaded machine could hide), served by the same engine under the same traffic —
    fails the analysis relative to stable (p95 end-to-end latency > 1.5x stable's) and is rolled back. Late in this
    file (only the Prometheus outage, which sets its own steps and compares with whatever serves, follows): should it
    be promoted wrongly, no other scenario starts from its state."""
    if real_vllm() is None:
        pytest.skip("needs the vLLM CPU build (make vllm): only the real engine's latency follows the model's size")
    from tuneloop_trainer.testing import make_tiny_model

    s = serving
    v2 = f"{SERVED}-v2"
    big = make_tiny_model(tmp_path / "big", layers=64, hidden=512)  # head_dim 128, ~150x the stable's work per token
    v8 = _clone_modelversion(kube, env, "v8", merged_model=big)
    analysis = copy.deepcopy(kube.get("rollouts", RO, env.ns)["spec"]["analysis"])
    analysis["metrics"] = [{"name": "error-rate", "builtin": "error-rate", "max": 0.5},
                           {"name": "e2e-p95", "builtin": "e2e-latency-p95", "maxRelativeToStable": 1.5}]
    stable = kube.get("rollouts", RO, env.ns)["status"]["stableModelVersion"]
    timeout = s.gw.timeout
    s.gw.timeout = 15.0  # the gateway waits for the slow answers (measured ~1 s each, more under load) instead of cutting them off
    kube.patch("rollouts", RO, env.ns, {"spec": {"candidate": {"name": v8}, "analysis": analysis,
                                                "steps": [{"setWeight": 50}, {"analysis": {}}]}})
    try:
        ro = _wait_rollout(kube, env, s, lambda o: (o.get("status") or {}).get("candidateModelVersion") == v8 and phase(o) in TERMINAL,
                           "the slower canary judged", 600)  # a 64-layer engine: 3-7 min to load under load
        assert phase(ro) == "RolledBack", ro["status"]
        rb = cond(ro, "RolledBack")
        assert "e2e-p95" in rb.get("message", ""), ro["status"].get("conditions")
        failed = [m for m in ro["status"].get("measurements") or [] if m.get("phase") == "Failed" and m.get("metric") == "e2e-p95"]
        assert failed and failed[-1]["value"] > 1.5 * failed[-1]["stableValue"], failed
        assert ro["status"].get("stableModelVersion") == stable and _route_weights(kube, env.ns)[f"{RO}-canary"] == 0
        wait_modelversion(kube, env, v8, "RolledBack")
    finally:  # put the analysis and the gateway back, whatever happened
        s.gw.timeout = timeout
        kube.patch("rollouts", RO, env.ns, {"spec": {"analysis": _rollout(env, s, v2)["spec"]["analysis"]}})


def test_prometheus_outage_never_promotes(kube: Kube, env: Env, serving: SimpleNamespace):
    """Prometheus unreachable: measurements are Errors, which never count toward success; past consecutiveErrorLimit
    the canary is rolled back (AnalysisError). Runs last: it stops the module's Prometheus."""
    s = serving
    stable = kube.get("rollouts", RO, env.ns)["status"].get("stableModelVersion")
    v7 = _clone_modelversion(kube, env, "v7")
    s.prom.stop()
    kube.patch("rollouts", RO, env.ns, {"spec": {"candidate": {"name": v7}, "steps": [{"setWeight": 50}, {"analysis": {}}]}})
    ro = _wait_rollout(kube, env, s, lambda o: (o.get("status") or {}).get("candidateModelVersion") == v7 and phase(o) in TERMINAL,
                       "the analysis ends without Prometheus", 600)  # real vLLM: its LoRA canary loaded in 392 s once under load
    assert phase(ro) == "RolledBack", ro["status"]
    assert any(m.get("phase") == "Error" for m in ro["status"].get("measurements") or []), ro["status"].get("measurements")
    assert ro["status"].get("stableModelVersion") == stable
