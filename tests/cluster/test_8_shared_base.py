"""sharedBase Rollouts on the real API server with real vLLM (its CPU build): one vLLM Deployment of the base serves
every version as a LoRA adapter loaded at runtime, traffic moves by model name on an InferenceModelRewrite, and each
adapter is judged from the endpoint picker's per-model series in a real Prometheus (inference_gateway.EndpointPicker
plays the Inference Extension's endpoint picker, which the harness does not have).

In order, on one Rollout and one pod:
1. the Inference Extension's CRDs are absent: the Rollout says what is missing (InferenceExtensionMissing); once they are
   installed, the first adapter is loaded and served;
2. a good adapter (answers concisely, like the stable) is loaded into the running pod without a restart, gets its weight
   only once the pod lists it, is promoted, and the old adapter is unloaded; no second Deployment, the same pod;
3. a bad adapter — it never stops talking: every answer runs to max_tokens, so on the real engine it is many times
   slower than the stable — is rolled back on its p95 latency (absolute: beside it the stable's own answers slow down
   on the shared engine, so a ratio understates it), its weight removed, then unloaded; still one Deployment and the
   same pod;
4. `kubectl get rollouts` shows the mode, the step and the weights.
The seconds from a weight change to the candidate's first answer, and from the candidate's name to its adapter being
listed by the pod, are printed and written to the test's folder (shared-base-measurements.json).

The adapters are built here (no training): rank-8 LoRA adapters of the tiny base. A "concise" one (v1, v2) writes into
the last layer's MLP a term that is the same direction whatever the context — the end-of-sequence token's output
embedding, scaled by a sum of squares of the input's projections (gate and up LoRA on eight neurons, SiLU(y)·y >= 0) — so
greedy decoding ends the answer at once; the "rambling" one (v3) is a zero adapter: the random base, which never
samples its end-of-sequence token in the 96 tokens each request allows.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.rollout.promstack import free_port

from .conftest import Env, at, cond, phase, pvc_dir, write_tiny_inputs
from .inference_gateway import IMR_CRD, IMR_CRD_NAME, POOL_CRD, POOL_CRD_NAME, EndpointPicker
from .kube import Kube
from .serving import Discovery, Prometheus, real_vllm, rollout_debug, wait_modelversion

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1800)]

RO = "shared"
SERVED = "support-bot"
POOL = "support-bot-pool"
V1, V2, V3 = (f"{SERVED}-shared-{v}" for v in ("v1", "v2", "v3"))
TERMINAL = ("Promoted", "RolledBack", "Aborted")
LATENCY_MAX = 0.45  # seconds: a concise adapter's p95 measured 0.03-0.34 s here; the rambling adapter's 96-token answers 1.5-2.2 s


def make_adapter(base: Path, out: Path, *, concise: bool, seed: int, rank: int = 8, gain: float = 4.0, scale: float = 10.0) -> Path:
    """A PEFT LoRA adapter of `base` (gate/up/down projections of every layer, rank `rank`, scaling 1). `concise`: the last
    layer's MLP adds scale·(Σ_k SiLU(gain·a_k·x)·gain·a_k·x)·e to the residual, e the end-of-sequence token's output
    embedding direction, a_k orthonormal: a non-negative sum of squares of 8 projections of the normed input, large for
    any context, so the final hidden state points along e and greedy decoding picks end-of-sequence. Otherwise every
    B matrix is zero: the base itself."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    if (out / "adapter_config.json").exists():
        return out
    model = AutoModelForCausalLM.from_pretrained(base, torch_dtype=torch.float32)
    cfg = LoraConfig(r=rank, lora_alpha=rank, target_modules=["gate_proj", "up_proj", "down_proj"], lora_dropout=0.0, bias="none",
                     task_type="CAUSAL_LM", init_lora_weights=True)
    peft_model = get_peft_model(model, cfg)
    if concise:
        hidden, inter = model.config.hidden_size, model.config.intermediate_size
        g = torch.Generator().manual_seed(seed)
        a = torch.linalg.qr(torch.randn(hidden, rank, generator=g))[0].T.contiguous()  # (rank, hidden), orthonormal rows
        e = model.get_output_embeddings().weight[model.config.eos_token_id].detach().clone()
        e = e / e.norm()
        mlp = peft_model.base_model.model.model.layers[model.config.num_hidden_layers - 1].mlp
        b_in = torch.zeros(inter, rank)
        b_in[torch.arange(rank), torch.arange(rank)] = gain  # neuron k <- gain · a_k·x, in both the gate and the up projection
        a_down = torch.zeros(rank, inter)
        a_down[0, :rank] = 1.0  # the sum of the eight neurons
        b_down = torch.zeros(hidden, rank)
        b_down[:, 0] = scale * e
        with torch.no_grad():
            for proj in (mlp.gate_proj, mlp.up_proj):
                proj.lora_A["default"].weight.copy_(a)
                proj.lora_B["default"].weight.copy_(b_in)
            mlp.down_proj.lora_A["default"].weight.copy_(a_down)
            mlp.down_proj.lora_B["default"].weight.copy_(b_down)
    peft_model.save_pretrained(out)
    return out


def _model_version(kube: Kube, env: Env, name: str, version: str, rel: str) -> str:
    kube.create("modelversions", {"apiVersion": "tuneloop.dev/v1alpha1", "kind": "ModelVersion",
                                  "metadata": {"name": name, "namespace": env.ns},
                                  "spec": {"modelName": SERVED, "version": version,
                                           "baseModel": {"name": "tiny", "servingPath": "pvc://datasets/base/tiny"},
                                           "artifact": {"uri": f"pvc://models/{rel}", "format": "lora-adapter", "loraRank": 8},
                                           "evaluation": {"verdict": "Passed"}}})
    kube.patch("modelversions", name, env.ns, {"status": {"phase": "Ready"}}, sub="status")
    return name


@pytest.fixture(scope="module")
def shared(kube: Kube, env: Env, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    if real_vllm() is None:
        pytest.skip("needs the vLLM CPU build (make vllm): runtime LoRA loading is the real engine's")
    env.ensure_operator()
    base, _ = write_tiny_inputs(env.ns)
    for name, concise, seed in ((V1, True, 1), (V2, True, 2), (V3, False, 3)):
        rel = f"shared-adapters/{name}"
        make_adapter(base, pvc_dir(env.ns, "models") / rel, concise=concise, seed=seed)
        if kube.get("modelversions", name, env.ns) is None:
            _model_version(kube, env, name, name.rsplit("-", 1)[1], rel)
    work = tmp_path_factory.mktemp("shared-base")
    epp_port = free_port()
    prom = Prometheus(work, static_targets={"epp": f"127.0.0.1:{epp_port}"}, static_labels={"epp": {"namespace": env.ns}})
    prom.start()
    disc = Discovery(kube, env.ns, prom.sd_file)
    disc.start()
    epp = EndpointPicker(kube, disc, env.ns, rewrite=RO, pool=POOL, model=SERVED, rps=8, port=epp_port, max_tokens=96)
    epp.start()
    s = SimpleNamespace(prom=prom, disc=disc, epp=epp, port=free_port(), work=work, measured={}, pods={})
    try:
        yield s
    finally:
        s.measured["first_answers_s"] = dict(epp.first_latencies)
        (work / "shared-base-measurements.json").write_text(json.dumps(s.measured, indent=2))
        print(f"\nshared-base measurements: {json.dumps(s.measured)}")
        epp.stop()
        disc.stop()
        prom.stop()


def _rollout(s: SimpleNamespace, env: Env, candidate: str) -> dict:
    return {
        "apiVersion": "tuneloop.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": RO, "namespace": env.ns},
        "spec": {
            "servedModelName": SERVED,
            "candidate": {"name": candidate},
            "serving": {"mode": "sharedBase", "replicas": 1, "maxLoras": 2, "port": s.port,
                        "resources": {"gpus": 0, "cpu": "100m", "memory": "1Gi"}},
            "trafficRouting": {"inferenceModelRewrite": {"poolRef": {"name": POOL}}},
            "steps": [{"setWeight": 50}, {"analysis": {}}],
            "analysis": {"prometheusAddress": s.prom.url, "interval": "2s", "window": "20s", "count": 6, "initialDelay": "4s",
                         "failureLimit": 0, "inconclusiveLimit": 2,
                         "metrics": [{"name": "error-rate", "builtin": "error-rate", "max": 0.05},
                                     # absolute, not relative to the stable (both measured here on this tier): on one engine a
                                     # slow adapter slows the stable's answers too (the stable's p95 rose from 0.05 s to
                                     # 0.24 s beside a rambling candidate at 50 %, which then passed maxRelativeToStable
                                     # 2.5 at 0.58 s), and the picker's buckets are 2x apart at tens of milliseconds (0.025,
                                     # 0.05, 0.1, 0.2 s), so a good adapter's p95 read 0.15-0.25 s against the stable's 0.05 s
                                     # in some windows. failureLimit 2: a few slow answers in a 6-measurement step pass; a
                                     # rambling adapter fails every measurement
                                     {"name": "latency", "builtin": "e2e-latency-p95", "max": LATENCY_MAX, "failureLimit": 2}]},
            "scaleDownDelaySeconds": 2,
        },
    }


def _debug(kube: Kube, env: Env, s: SimpleNamespace) -> str:
    return rollout_debug(kube, env, RO, lambda: [f"--- epp: {s.epp.summary()}",
                                                 f"--- rewrite: {json.dumps((kube.get('inferencemodelrewrites', RO, env.ns) or {}).get('spec'))}"],
                         pod_log_tail=1500)


def _wait(kube: Kube, env: Env, s: SimpleNamespace, pred, what: str, timeout: float = 240) -> dict:
    return kube.wait("rollouts", RO, env.ns, pred, timeout=timeout, every=0.25, what=what, on_timeout=lambda: _debug(kube, env, s))


def _pods(kube: Kube, env: Env) -> list[dict]:
    return [p for p in kube.list("pods", env.ns, f"tuneloop.dev/rollout={RO}") if not p["metadata"].get("deletionTimestamp")]


def _listed(s: SimpleNamespace) -> set[str]:
    """The adapters the shared pod's /v1/models lists (its announced port)."""
    with s.disc.lock:
        pods = list(s.disc.pods)
    names: set[str] = set()
    for p in pods:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{p['_port']}/v1/models", timeout=3) as resp:
                names |= {m["id"] for m in json.loads(resp.read())["data"] if m.get("parent")}
        except OSError:
            pass
    return names


def _wait_listed(kube: Kube, env: Env, s: SimpleNamespace, pred, what: str, timeout: float = 120) -> float:
    start = time.monotonic()
    while not pred(_listed(s)):
        assert time.monotonic() - start < timeout, f"the pod's /v1/models never {what}: {_listed(s)}\n{_debug(kube, env, s)}"
        time.sleep(0.1)
    return time.monotonic() - start


def _targets(kube: Kube, env: Env) -> list[dict]:
    return kube.get("inferencemodelrewrites", RO, env.ns)["spec"]["rules"][0]["targets"]


def _deployments(kube: Kube, env: Env) -> list[str]:
    return sorted(d["metadata"]["name"] for d in kube.list("deployments", env.ns, f"tuneloop.dev/rollout={RO}"))


def _served_after_weight(s: SimpleNamespace, ro: dict, target: str, timeout: float = 60) -> float:
    """Seconds from the Rollout's weight change (status.weightChangedAt) to the candidate's first answer (200) — the
    picker seeing the new weights (it polls every 0.25 s; a real one watches), a request drawn for the candidate (8 per
    second, 50 %), and that answer; the first part is recorded as `<target>_routed_after_weight_change_s`."""
    changed = at(ro["status"]["weightChangedAt"]).timestamp()
    deadline = time.monotonic() + timeout
    while target not in s.epp.first_ok:
        assert time.monotonic() < deadline, f"{target} never answered: {s.epp.summary()}"
        time.sleep(0.05)
    s.measured[f"{target.rsplit('-', 1)[1]}_routed_after_weight_change_s"] = round(s.epp.first_routed[target] - changed, 3)
    return s.epp.first_ok[target] - changed


def _not_found(s: SimpleNamespace) -> dict[str, int]:
    """Requests the pod answered 404 (`The model ... does not exist`): sent for an adapter it did not hold."""
    return {k: n for k, n in s.epp.summary().items() if k.endswith(":404")}


def test_without_the_inference_extension_the_rollout_says_what_is_missing_then_serves(kube: Kube, env: Env, shared: SimpleNamespace):
    s = shared
    if kube.get("customresourcedefinitions", IMR_CRD_NAME) is not None:  # left by an earlier run: the API must be missing here
        kube.delete("customresourcedefinitions", IMR_CRD_NAME)
        kube.wait_gone("customresourcedefinitions", IMR_CRD_NAME, None, timeout=60)
    kube.create("rollouts", _rollout(s, env, V1))
    ro = _wait(kube, env, s, lambda o: (cond(o, "Progressing") or {}).get("reason") == "InferenceExtensionMissing", "InferenceExtensionMissing", 60)
    assert phase(ro) == "Degraded" and "InferenceModelRewrite (inference.networking.x-k8s.io/v1alpha2)" in ro["status"]["message"], ro["status"]
    installed = time.monotonic()
    kube.apply([IMR_CRD, POOL_CRD])
    for name in (IMR_CRD_NAME, POOL_CRD_NAME):
        kube.wait("customresourcedefinitions", name, None, lambda o: any(c["type"] == "Established" and c["status"] == "True"
                                                                         for c in o.get("status", {}).get("conditions", [])), timeout=60)
    kube.apply({"apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool", "metadata": {"name": POOL, "namespace": env.ns},
                "spec": {"selector": {"matchLabels": {"tuneloop.dev/rollout": RO}}, "targetPorts": [{"number": s.port}],
                         "endpointPickerRef": {"name": "tuneloop-tests-epp", "port": {"number": 9002}}}})
    # real vLLM: the base starts (30-60 s measured on the loaded 2 cores), then the operator loads the first adapter
    ro = _wait(kube, env, s, lambda o: phase(o) == "Promoted" and o["status"].get("stableModelVersion") == V1, "first adapter served", 420)
    assert _targets(kube, env) == [{"modelRewrite": V1}]
    wait_modelversion(kube, env, V1, "Serving")
    deadline = time.monotonic() + 60
    while s.epp.ok(V1) == 0:
        assert time.monotonic() < deadline, f"no answer from {V1}: {s.epp.summary()}\n{_debug(kube, env, s)}"
        time.sleep(0.1)
    s.measured["v1_first_answer_after_crds_installed_s"] = round(time.monotonic() - installed, 1)  # pod start + base load + adapter
    assert _deployments(kube, env) == [f"{RO}-shared"]
    s.pods = {p["metadata"]["name"]: p["metadata"]["uid"] for p in _pods(kube, env)}
    assert len(s.pods) == 1, s.pods
    # the pod became ready (its probe) only once the operator had loaded the adapter: no request met a pod without it
    assert not _not_found(s), s.epp.summary()


def test_a_good_adapter_is_loaded_without_a_restart_promoted_and_the_old_one_unloaded(kube: Kube, env: Env, shared: SimpleNamespace):
    s = shared
    assert s.pods, "needs the first version served (the previous test)"
    deadline = time.monotonic() + 60
    while s.epp.ok(V1) < 40:  # the engine warm (its first batches after start are slow), as a serving pod is
        assert time.monotonic() < deadline, s.epp.summary()
        time.sleep(0.2)
    start = time.monotonic()
    kube.patch("rollouts", RO, env.ns, {"spec": {"candidate": {"name": V2}}})
    s.measured["v2_listed_after_candidate_set_s"] = round(_wait_listed(kube, env, s, lambda n: V2 in n, f"listed {V2}") + 0.0, 2)
    ro = _wait(kube, env, s, lambda o: (o.get("status") or {}).get("candidateModelVersion") == V2 and o["status"].get("canaryWeight") == 50,
               f"{V2} at 50 %", 120)
    s.measured["v2_weight_after_candidate_set_s"] = round(time.monotonic() - start, 2)
    assert {t["modelRewrite"]: t.get("weight") for t in _targets(kube, env)} == {V1: 50, V2: 50}
    s.measured["v2_served_after_weight_change_s"] = round(_served_after_weight(s, ro, V2), 3)
    ro = _wait(kube, env, s, lambda o: phase(o) in TERMINAL and o["status"].get("candidateModelVersion") == V2, f"{V2} judged", 300)
    assert phase(ro) == "Promoted" and ro["status"]["stableModelVersion"] == V2, ro["status"]
    assert any(m.get("phase") == "Successful" and m.get("metric") == "latency" for m in ro["status"].get("measurements") or [])
    assert _targets(kube, env) == [{"modelRewrite": V2}]
    wait_modelversion(kube, env, V2, "Serving")
    wait_modelversion(kube, env, V1, "Retired")
    s.measured["v1_unloaded_after_promotion_s"] = round(_wait_listed(kube, env, s, lambda n: V1 not in n and V2 in n, f"dropped {V1}", 60), 2)
    assert _deployments(kube, env) == [f"{RO}-shared"]  # no second Deployment, ever
    assert {p["metadata"]["name"]: p["metadata"]["uid"] for p in _pods(kube, env)} == s.pods  # the same pod: no restart
    assert not _not_found(s), s.epp.summary()  # v2 had weight only once the pod listed it; v1 was unloaded after its traffic left
    s.measured["v2_answers"] = s.epp.ok(V2)


def test_a_slower_adapter_is_rolled_back_then_unloaded(kube: Kube, env: Env, shared: SimpleNamespace):
    s = shared
    assert s.pods, "needs the first version served"
    kube.patch("rollouts", RO, env.ns, {"spec": {"candidate": {"name": V3}}})
    ro = _wait(kube, env, s, lambda o: (o.get("status") or {}).get("candidateModelVersion") == V3 and (o["status"].get("canaryWeight") or 0) > 0,
               f"{V3} gets traffic", 120)
    s.measured["v3_served_after_weight_change_s"] = round(_served_after_weight(s, ro, V3), 3)
    ro = _wait(kube, env, s, lambda o: phase(o) in TERMINAL and o["status"].get("candidateModelVersion") == V3, f"{V3} judged", 300)
    assert phase(ro) == "RolledBack", ro["status"]
    rb = cond(ro, "RolledBack")
    assert rb and "latency" in rb.get("message", ""), ro["status"].get("conditions")
    failed = [m for m in ro["status"].get("measurements") or [] if m.get("phase") == "Failed" and m.get("metric") == "latency"]
    assert failed and failed[-1]["value"] > LATENCY_MAX, failed
    s.measured["v3_latency_p95_s"], s.measured["stable_latency_p95_s"] = failed[-1]["value"], failed[-1].get("stableValue")
    assert ro["status"]["stableModelVersion"] == V2 and ro["status"]["canaryWeight"] == 0
    assert _targets(kube, env) == [{"modelRewrite": V2}]
    wait_modelversion(kube, env, V3, "RolledBack")
    wait_modelversion(kube, env, V2, "Serving")
    s.measured["v3_unloaded_after_rollback_s"] = round(_wait_listed(kube, env, s, lambda n: V3 not in n and V2 in n, f"dropped {V3}", 60), 2)
    assert _deployments(kube, env) == [f"{RO}-shared"]
    assert {p["metadata"]["name"]: p["metadata"]["uid"] for p in _pods(kube, env)} == s.pods
    assert not _not_found(s), s.epp.summary()
    s.measured["epp_summary"] = s.epp.summary()


def test_kubectl_get_shows_mode_step_and_weights(kube: Kube, env: Env, shared: SimpleNamespace):
    table = kube.kubectl("get", "rollouts", RO, "-n", env.ns).stdout.splitlines()
    header, row = table[0].split(), table[1].split()
    for col in ("MODE", "WEIGHTS", "STEP", "PHASE"):
        assert col in header, table
    assert row[header.index("MODE")] == "sharedBase" and row[header.index("WEIGHTS")] == f"{V2}=100", table
    assert not env.forbidden_lines(), "\n".join(env.forbidden_lines())
