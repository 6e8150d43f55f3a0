"""The continuous loop on the real API server (issue 14's "Done when"): a FineTuneSchedule retrains on new data,
gates each run against the version its Rollout serves, hands winners to the Rollout, refuses a worse run, and the
Rollout's drift watch sees the served prompts move away from the training data.

One schedule (`loop`) and one Rollout (`loop`) go through, in order:
1. a cron schedule (`* * * * *`, a second schedule) fires on the minute;
2. the Rollout, declared without a version, waits (nothing deployed); the data already on the claim is the new-data
   trigger's baseline (no run); `kubectl tuneloop retrain loop` starts run 1, which — nothing serving yet — the
   schedule hands to the waiting Rollout as its first version;
3. a new, well-labelled drop lands on the claim → the digest Job sees it → run 2 trains on the accumulated data,
   beats the serving run 1 on the same test items (rougeL, paired 95 % interval) → candidate → canary → promoted;
4. the served prompts shift in length → the drift watch's PSI, the Drifted condition (Rollout and ModelVersion),
   the `tuneloop_serving_drift` gauge and the chart's `TuneloopServingDrifted` alert (in a real Prometheus
   evaluating the chart's rules) all change;
5. a large mislabelled drop → run 3 is worse than run 2 on the same items → refused; the Rollout is untouched.

The data (a tiny random Llama, fully fine-tuned on CPU) is built so that the outcome is decided by the data, not by
luck: well-labelled records answer `the answer is <colour> <word>`, mislabelled ones (a broken export) answer a fixed
placeholder with the same token length. Trained on placeholders only (run 1) the model answers the placeholder; with
the well-labelled drop (run 2) it answers in the right form; swamped by a second broken drop (run 3) it falls back to
the placeholder. rougeL on a fixed, well-labelled test file tells them apart, paired by item.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.rollout.promstack import free_port

from .conftest import ROOT, TINY_HIDDEN, Env, at, cond, phase, pod_log, pvc_dir, run_cmd
from .kube import Kube
from .serving import Discovery, Gateway, Prometheus

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1500)]

SCHED, TICK, RO, SERVED = "loop", "tick", "loop", "loop-bot"
COLORS = ("red", "green", "blue")
PLACEHOLDER = "please reply with json list"  # what the broken export wrote; as many tokens as a real answer
WORDS = ("cat dog model train data token loss step batch hello world yes json list number seven eight nine kubernetes "
         "pod node gpu cluster job fine tune adapter lora weight eval test split seed").split()


def records(n: int, seed: int, *, mislabelled: bool = False) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b = rng.sample(WORDS, 2)
        answer = PLACEHOLDER if mislabelled else f"the answer is {COLORS[i % 3]} {a}"
        out.append({"messages": [{"role": "user", "content": f"question {rng.randint(1000, 9999)} what is {a} {b}"},
                                 {"role": "assistant", "content": answer}]})
    return out


def write_drop(ns: str, name: str, recs: list[dict]) -> None:
    d = pvc_dir(ns, "datasets") / "loop"
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".{name}.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in recs))
    tmp.rename(d / name)  # atomically: a digest Job never reads half a drop


def job_template(train_path: str) -> dict[str, Any]:
    return {
        "metadata": {"labels": {"team": "e2e"}},
        "spec": {
            "baseModel": {"pvc": {"claimName": "datasets", "path": "base/tiny"}},
            "dataset": {"train": {"pvc": {"claimName": "datasets", "path": train_path}},
                        "test": {"pvc": {"claimName": "datasets", "path": "loop-test/test.jsonl"}},
                        "format": "chat", "split": {"validation": 0.1, "test": 0.0, "seed": 1}, "checks": {"minExamples": 4}},
            "method": {"type": "full"},
            # learningRate 1e-3: at 3e-3 the 256-wide tiny model collapses onto the placeholder even with the well-labelled
            # drop (measured with `local run` on this data: rougeL 0.005 at 3e-3, 0.675 at 1e-3; run 3's data: 0.005)
            "hyperparameters": {"maxSteps": 150, "batchSize": 4, "microBatchSize": 2, "learningRate": 1e-3, "maxSeqLength": 128,
                                "saveSteps": 150, "evalSteps": 50, "warmupRatio": 0.0, "scheduler": "constant", "loggingSteps": 10},
            "resources": {"nodes": 1, "gpusPerNode": 0, "cpu": "1", "memory": "2Gi", "shmSize": "256Mi"},
            "output": {"pvc": {"claimName": "models", "path": "loop"}},
            "registry": {"modelName": SERVED},
            # transformers: three runs' evaluations, each two extra vLLM engines beside the serving ones, would not fit the
            # test's time on 2 shared cores (test_2's chain evaluates through vLLM in its pod)
            "evaluation": {"metrics": ["perplexity", "rougeL"], "maxNewTokens": 8, "batchSize": 8, "forgetting": {"enabled": False},
                           "backend": "transformers",
                           # deliberately lax absolute gate (a broken export's run passes it and becomes the first version);
                           # the champion/challenger gate is what protects the serving version afterwards
                           "gates": [{"metric": "rougeL", "maxRegression": 0.05},
                                     # challenger vs champion: not worse than what serves, on the 95 % bound
                                     {"metric": "rougeL", "reference": "serving", "confidenceBound": True, "maxRegression": 0.0}]},
            "backoffLimit": 2,
        },
    }


def schedule(ns: str) -> dict[str, Any]:
    return {"apiVersion": "tuneloop.dev/v1alpha1", "kind": "FineTuneSchedule", "metadata": {"name": SCHED, "namespace": ns},
            "spec": {"triggers": {"newData": {"claimName": "datasets", "glob": "loop/*.jsonl", "checkInterval": "10s"}},
                     "handOff": {"rollout": {"name": RO}}, "jobTemplate": job_template("loop")}}


def rollout(ns: str, s: SimpleNamespace) -> dict[str, Any]:
    """Declared up front with no version (as it would sit in Git next to the schedule): it waits for the first winner."""
    return {"apiVersion": "tuneloop.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": RO, "namespace": ns},
            "spec": {
                "servedModelName": SERVED,
                "serving": {"replicas": 1, "port": s.port, "resources": {"gpus": 0, "cpu": "100m", "memory": "256Mi"}},
                "trafficRouting": {"gatewayAPI": {"httpRoute": RO, "parentRefs": [{"name": "inference-gateway"}]}},
                "steps": [{"setWeight": 50}, {"analysis": {}}],
                "analysis": {"prometheusAddress": s.prom.url, "interval": "2s", "window": "20s", "count": 3, "initialDelay": "3s",
                             "failureLimit": 0, "inconclusiveLimit": 2,
                             "metrics": [{"name": "error-rate", "builtin": "error-rate", "max": 0.05}]},
                "scaleDownDelaySeconds": 2,
                "driftWatch": {"enabled": True, "window": "20s", "interval": "2s", "psiThreshold": 0.25, "minSamples": 20},
            }}


def training_like_prompts(n: int = 50) -> list[str]:
    return [r["messages"][0]["content"] for r in records(n, seed=99)]


def long_prompts() -> list[str]:
    rng = random.Random(5)
    return [f"question {rng.randint(1000, 9999)} what is " + " ".join(rng.choice(WORDS) for _ in range(80)) for _ in range(20)]


@pytest.fixture(scope="module")
def loop(kube: Kube, env: Env, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """The claim's data, a real Prometheus that scrapes the vLLM pods *and* the operator and evaluates the chart's
    alert rules (with `servingDriftFor: 5s` so the test need not wait 30 minutes), service discovery and traffic."""
    from tuneloop_trainer.testing import make_tiny_model

    from tests.deploy._support import objects, one

    env.ensure_operator()
    datasets = pvc_dir(env.ns, "datasets")
    if not (datasets / "base" / "tiny" / "config.json").exists():
        make_tiny_model(datasets / "base" / "tiny", hidden=TINY_HIDDEN)
    test = datasets / "loop-test" / "test.jsonl"
    test.parent.mkdir(parents=True, exist_ok=True)
    test.write_text("".join(json.dumps(r) + "\n" for r in records(40, seed=3)))
    write_drop(env.ns, "drop-1.jsonl", records(40, seed=1, mislabelled=True))  # there before the schedule: its baseline

    rule = one(objects({"monitoring": {"prometheusRule": {"servingDriftFor": "5s"}}}), "PrometheusRule")
    prom = Prometheus(tmp_path_factory.mktemp("prometheus-loop"), static_targets={"tuneloop-operator": f"127.0.0.1:{env.operator_metrics_port}"},
                      rules={"groups": rule["spec"]["groups"]})
    prom.start()
    disc = Discovery(kube, env.ns, prom.sd_file)
    disc.start()
    gw = Gateway(disc, RO, SERVED, rps=10)
    gw.prompts = training_like_prompts()
    gw.start()
    s = SimpleNamespace(prom=prom, disc=disc, gw=gw, port=free_port(), state={})
    try:
        yield s
    finally:
        gw.stop()
        disc.stop()
        prom.stop()
        for kind, name in (("finetuneschedules", SCHED), ("finetuneschedules", TICK)):
            try:
                kube.delete(kind, name, env.ns)
            except Exception:  # noqa: BLE001 — best effort: the namespace goes at the end anyway
                pass


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def _sched(kube: Kube, env: Env, name: str = SCHED) -> dict:
    return kube.get("finetuneschedules", name, env.ns) or {}


def _runs(obj: dict) -> list[dict]:
    return ((obj.get("status") or {}).get("runs")) or []


def _debug(kube: Kube, env: Env, s: SimpleNamespace) -> str:
    import yaml

    out = [f"--- schedule status:\n{yaml.safe_dump(_sched(kube, env).get('status') or {})}"]
    ro = kube.get("rollouts", RO, env.ns) or {}
    st = dict(ro.get("status") or {})
    st["measurements"] = (st.get("measurements") or [])[-4:]
    out.append(f"--- rollout spec.candidate {(ro.get('spec') or {}).get('candidate')} status:\n{yaml.safe_dump(st)}")
    out.append(f"--- gateway: {s.gw.summary()}")
    for j in kube.list("finetunejobs", env.ns, f"tuneloop.dev/schedule={SCHED}"):
        out.append(f"--- ftj {j['metadata']['name']}: {yaml.safe_dump(j.get('status') or {})[:1500]}")
    for p in kube.list("pods", env.ns):
        if p["metadata"]["name"].startswith(("loop-", SCHED)):
            out.append(f"--- pod {p['metadata']['name']} {p['status'].get('phase')}: " + pod_log(env.ns, p, p["spec"]["containers"][0]["name"])[-800:])
    out.append(f"--- operator:\n{env.operator_log()[-5000:]}")
    return "\n".join(out)


def _wait_run(kube: Kube, env: Env, s: SimpleNamespace, index: int, what: str, pred, timeout: float = 600) -> dict:
    """Wait until the schedule's run number `index` (0-based, in start order) satisfies `pred`."""
    obj = kube.wait("finetuneschedules", SCHED, env.ns, lambda o: len(_runs(o)) > index and pred(_runs(o)[index]),
                    timeout=timeout, every=1.0, what=what, on_timeout=lambda: _debug(kube, env, s))
    return _runs(obj)[index]


def _wait_rollout(kube: Kube, env: Env, s: SimpleNamespace, pred, what: str, timeout: float = 420) -> dict:
    return kube.wait("rollouts", RO, env.ns, pred, timeout=timeout, every=0.5, what=what, on_timeout=lambda: _debug(kube, env, s))


def _artifact_dir(kube: Kube, env: Env, mv: str) -> Path:
    uri = kube.get("modelversions", mv, env.ns)["spec"]["artifact"]["uri"]
    claim, _, path = uri.removeprefix("pvc://").partition("/")
    return pvc_dir(env.ns, claim) / path


def _drift_signal(ro: dict, signal: str) -> dict:
    return next((x for x in (((ro.get("status") or {}).get("drift") or {}).get("signals") or []) if x.get("signal") == signal), {})


# ------------------------------------------------------------------------------------------------
# the tests, in order
# ------------------------------------------------------------------------------------------------
def test_cron_schedule_fires_on_the_minute(kube: Kube, env: Env, loop: SimpleNamespace):
    """A `* * * * *` schedule starts its run at the minute (named as a CronJob names its Jobs: minutes since the
    epoch); its status records that time and the next one. Its template reads a file that does not exist, so the
    run fails at the data check in seconds (and costs no training)."""
    s = loop
    kube.create("rollouts", rollout(env.ns, s))
    kube.create("finetuneschedules", schedule(env.ns))  # (the loop's schedule too: its digest baseline is read meanwhile)
    tick = {"apiVersion": "tuneloop.dev/v1alpha1", "kind": "FineTuneSchedule", "metadata": {"name": TICK, "namespace": env.ns},
            "spec": {"schedule": "* * * * *", "handOff": {"rollout": {"name": "no-such-rollout"}},
                     "failedRunsHistoryLimit": 2, "jobTemplate": job_template("loop-missing/none.jsonl")}}
    created = dt.datetime.now(dt.UTC)
    kube.create("finetuneschedules", tick)
    due = (created + dt.timedelta(minutes=1)).replace(second=0, microsecond=0)
    obj = kube.wait("finetuneschedules", TICK, env.ns, lambda o: bool(_runs(o)), timeout=120, every=0.5, what="the first cron run",
                    on_timeout=lambda: _debug(kube, env, s))
    run = _runs(obj)[0]
    st = obj["status"]
    assert run["trigger"] == "Schedule" and run["name"] == f"{TICK}-{int(due.timestamp()) // 60}", run
    assert at(st["lastScheduleTime"]) == due, st
    assert at(st["nextScheduleTime"]) == due + dt.timedelta(minutes=1), st
    ftj = kube.get("finetunejobs", run["name"], env.ns)
    late = (at(ftj["metadata"]["creationTimestamp"]) - due).total_seconds()
    assert 0 <= late <= 10, f"the run was created {late:.0f} s after its cron time {due}"
    assert (ftj["metadata"].get("labels") or {}).get("team") == "e2e"  # the template's metadata
    # the run fails at the data check (the missing file), and the schedule records it
    obj = kube.wait("finetuneschedules", TICK, env.ns, lambda o: _runs(o) and _runs(o)[0].get("phase") == "Failed", timeout=180, every=1.0,
                    what="the cron run failed at the data check", on_timeout=lambda: _debug(kube, env, s))
    assert _runs(obj)[0]["outcome"] == "NoModelVersion", _runs(obj)[0]
    kube.patch("finetuneschedules", TICK, env.ns, {"spec": {"suspend": True}})
    kube.wait("finetuneschedules", TICK, env.ns, lambda o: phase(o) == "Suspended", timeout=30, what="suspended")


def test_first_run_is_manual_and_becomes_the_first_version(kube: Kube, env: Env, loop: SimpleNamespace):
    s = loop
    # the data that was there when the schedule was created is its baseline: it starts nothing
    obj = kube.wait("finetuneschedules", SCHED, env.ns,
                    lambda o: bool(((o.get("status") or {}).get("data") or {}).get("lastRunDigest")), timeout=120, every=1.0,
                    what="the baseline digest", on_timeout=lambda: _debug(kube, env, s))
    data = obj["status"]["data"]
    assert data["digest"] == data["lastRunDigest"] and data["files"] == 1, data
    assert not _runs(obj)
    # the Rollout declared without a version waits, serving nothing
    ro = _wait_rollout(kube, env, s, lambda o: phase(o) == "Waiting", "the empty Rollout waits", timeout=60)
    assert (cond(ro, "Progressing") or {}).get("reason") == "WaitingForFirstVersion", ro["status"]
    assert "no ModelVersion to serve yet" in ro["status"].get("message", ""), ro["status"]
    assert not kube.list("deployments", env.ns, f"tuneloop.dev/rollout={RO}") and kube.get("httproutes", RO, env.ns) is None
    out = run_cmd([str(ROOT / ".venv" / "bin" / "kubectl-tuneloop"), "retrain", SCHED, "-n", env.ns, "--kubeconfig", kube.kubeconfig])
    assert out.returncode == 0, out.stdout + out.stderr
    run = _wait_run(kube, env, s, 0, "run 1 handed off", lambda r: r.get("outcome") not in (None, "Pending"), timeout=600)
    assert run["trigger"] == "Manual" and run["verdict"] == "Passed" and not run.get("champion"), run
    assert run["outcome"] == "HandedOff" and "first version" in run["message"], run
    mv1 = run["modelVersion"]
    ro = _wait_rollout(kube, env, s, lambda o: (o.get("status") or {}).get("stableModelVersion") == mv1 and phase(o) == "Promoted",
                       "run 1 promoted as the first version")
    assert ro["spec"]["candidate"]["name"] == mv1
    kube.wait("finetuneschedules", SCHED, env.ns, lambda o: (o.get("status") or {}).get("servingModelVersion") == mv1, timeout=60,
              what="status.servingModelVersion")
    s.state["mv1"] = mv1


def test_new_data_run_beats_the_serving_version_and_is_promoted(kube: Kube, env: Env, loop: SimpleNamespace):
    s = loop
    mv1 = s.state.get("mv1") or pytest.skip("needs run 1")
    write_drop(env.ns, "drop-2.jsonl", records(120, seed=2))
    run = _wait_run(kube, env, s, 1, "run 2 started by the new data", lambda r: True, timeout=120)
    assert run["trigger"] == "NewData" and run["champion"] == mv1, run
    assert run.get("dataDigest") and "digest" in run["reason"], run
    # 150 training steps beside a real vLLM engine serving 10 requests/s on 2 shared cores: 10 min and more under load
    run = _wait_run(kube, env, s, 1, "run 2 judged", lambda r: r.get("outcome") not in (None, "Pending"), timeout=1200)
    assert run["outcome"] == "HandedOff" and run["servingOutcome"] == "Better", run
    mv2 = run["modelVersion"]
    ev = kube.get("modelversions", mv2, env.ns)["spec"]["evaluation"]
    assert ev["serving"]["modelVersion"] == mv1 and ev["serving"]["outcome"] == "Better", ev["serving"]
    # the Rollout rolls it out as a canary (analysis on the stand-in's metrics) and promotes it
    ro = _wait_rollout(kube, env, s, lambda o: (o.get("status") or {}).get("stableModelVersion") == mv2 and phase(o) == "Promoted",
                       "run 2 promoted")
    assert any((m.get("phase") == "Successful") for m in ro["status"].get("measurements") or []), "promoted without a measurement"
    kube.wait("modelversions", mv1, env.ns, lambda o: phase(o) == "Retired", timeout=60, what="run 1 retired")
    kube.wait("modelversions", mv2, env.ns, lambda o: phase(o) == "Serving", timeout=60, what="run 2 serving")
    s.state["mv2"] = mv2
    s.state["rollout_after_promotion"] = ro


def test_served_prompts_shift_sets_drift_and_fires_the_alert(kube: Kube, env: Env, loop: SimpleNamespace):
    s = loop
    mv2 = s.state.get("mv2") or pytest.skip("needs run 2 promoted")
    # the mislabelled drop lands now; run 3 trains while the drift watch runs (test_worse_run…)
    write_drop(env.ns, "drop-3.jsonl", records(300, seed=4, mislabelled=True))
    # the stand-in serving run 2 counts tokens with the model's tokenizer and answers like the training data
    (_artifact_dir(kube, env, mv2) / "vllm-standin.json").write_text(json.dumps({"tokenizer": True, "reply": "the answer is red tune"}))
    s.gw.prompts = training_like_prompts()

    def within(o: dict) -> bool:
        c = cond(o, "Drifted") or {}
        return c.get("status") == "False" and _drift_signal(o, "prompt_tokens").get("state") == "OK"

    ro = _wait_rollout(kube, env, s, within, "traffic like the training data: not drifted", timeout=150)
    calm = _drift_signal(ro, "prompt_tokens")
    assert calm["value"] <= 0.25 and calm["samples"] >= 20, calm
    assert _drift_signal(ro, "generation_tokens").get("state") == "OK", ro["status"]["drift"]

    s.gw.prompts = long_prompts()  # clients start sending ~90-token prompts

    def drifted(o: dict) -> bool:
        c = cond(o, "Drifted") or {}
        return c.get("status") == "True" and _drift_signal(o, "prompt_tokens").get("state") == "Drifted"

    ro = _wait_rollout(kube, env, s, drifted, "prompts shifted: Drifted", timeout=150)
    shifted = _drift_signal(ro, "prompt_tokens")
    assert shifted["value"] > 0.25 > calm["value"], (calm, shifted)
    assert cond(ro, "Drifted")["reason"] == "DistributionShifted" and "prompt_tokens" in cond(ro, "Drifted")["message"], cond(ro, "Drifted")
    kube.wait("modelversions", mv2, env.ns, lambda o: (cond(o, "Drifted") or {}).get("status") == "True", timeout=60,
              what="the ModelVersion's Drifted condition")
    # the operator's gauge, scraped by Prometheus, and the chart's alert on it
    q = f'tuneloop_serving_drift{{namespace="{env.ns}",rollout="{RO}",signal="prompt_tokens"}}'
    deadline = time.monotonic() + 60
    while True:
        res = s.prom.query(q)
        if res and float(res[0]["value"][1]) > 0.25:
            assert res[0]["metric"]["model_version"] == mv2, res
            break
        assert time.monotonic() < deadline, f"gauge not above the threshold: {res}\n{_debug(kube, env, s)}"
        time.sleep(1)
    deadline = time.monotonic() + 90
    while True:
        firing = [a for a in s.prom.alerts() if a["labels"].get("alertname") == "TuneloopServingDrifted" and a["state"] == "firing"
                  and a["labels"].get("rollout") == RO]
        if firing:
            assert firing[0]["labels"]["signal"] == "prompt_tokens" and firing[0]["labels"]["model_version"] == mv2, firing
            break
        assert time.monotonic() < deadline, f"TuneloopServingDrifted not firing: {s.prom.alerts()}"
        time.sleep(1)
    s.gw.prompts = training_like_prompts()  # back to normal for the rest of the chain


def test_worse_run_is_refused_and_the_rollout_untouched(kube: Kube, env: Env, loop: SimpleNamespace):
    s = loop
    mv2 = s.state.get("mv2") or pytest.skip("needs run 2 promoted")
    before = s.state["rollout_after_promotion"]
    run = _wait_run(kube, env, s, 2, "run 3 judged", lambda r: r.get("outcome") not in (None, "Pending"), timeout=900)
    assert run["trigger"] == "NewData" and run["champion"] == mv2, run
    assert run["servingOutcome"] == "Worse", run
    # the template's serving gate fails (verdict Failed → Rejected; without that gate it would be LostToServing)
    assert run["outcome"] == "Rejected" and run["verdict"] == "Failed", run
    assert "rougeL" in run["message"] and "serving" in run["message"], run
    mv3 = run["modelVersion"]
    ro = kube.get("rollouts", RO, env.ns)
    assert ro["metadata"]["generation"] == before["metadata"]["generation"], "the Rollout's spec was changed"
    assert ro["spec"]["candidate"]["name"] == mv2 and ro["status"]["stableModelVersion"] == mv2 and phase(ro) == "Promoted"
    assert (ro["status"].get("canaryWeight") or 0) == 0
    assert mv3 not in json.dumps(ro)
    sched = _sched(kube, env)
    assert sched["status"]["servingModelVersion"] == mv2
    reasons = {e.get("reason") for e in kube.list("events", env.ns) if (e.get("involvedObject") or {}).get("name") == SCHED}
    assert {"RunStarted", "HandedOff"} <= reasons and (run["outcome"] in reasons), reasons
