"""output.exports on the real API server (issue 22's "Done when"): a FineTuneJob with exports registers one
ModelVersion per export that holds up against the tuned model, refuses the one that does not with the numbers, and a
Rollout serves the merged export with real vLLM (the CPU build, `make vllm`; the stand-in where it is not installed).

The refused export is a real one, not a planted file: the 8-bit block quantisation (gguf-q8_0) of a tiny random Llama
trained for a handful of steps. Its logits are nearly flat, so rounding the weights to 8 bits flips greedy choices
between near-tied tokens, and its answers to the test items are not the tuned model's (the same effect the local
tests measure: tests/evaluation/test_exports_local.py). The merged export is the same weights folded together in 32-bit
floats and answers exactly like its source.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from tests.rollout.promstack import free_port

from .conftest import Env, cond, phase, pod_log, pvc_dir, tiny_finetunejob, write_tiny_inputs
from .kube import Kube
from .serving import Discovery, Prometheus, _announced, real_vllm

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1800)]

JOB = "exp-bot"
RO = "exp"
SERVED = "exp-bot"


@pytest.fixture(scope="module")
def exported(kube: Kube, env: Env) -> Iterator[dict]:
    """The FineTuneJob with a merged and a gguf-q8_0 export, once it has ended."""
    write_tiny_inputs(env.ns)
    env.ensure_operator()
    body = tiny_finetunejob(JOB, env.ns, max_steps=4, save_steps=2)
    body["spec"]["output"]["exports"] = [{"format": "merged"}, {"format": "gguf-q8_0"}]
    body["spec"]["evaluation"]["backend"] = "transformers"
    kube.create("finetunejobs", body)
    yield kube.wait("finetunejobs", JOB, env.ns, lambda o: phase(o) in ("Succeeded", "Failed"), timeout=1200, every=2.0,
                    what="the FineTuneJob with exports ends", on_timeout=env.operator_log)


def test_each_export_that_holds_up_is_a_modelversion_and_the_refused_one_says_why(kube: Kube, env: Env, exported: dict):
    st = exported["status"]
    assert phase(exported) == "Succeeded", st
    source = st["children"]["modelVersion"]
    exported_cond = cond(exported, "Exported")
    assert exported_cond and exported_cond["status"] == "True" and exported_cond["reason"] == "ExportsRefused", exported_cond
    assert "1/2 exports held up" in exported_cond["message"], exported_cond
    assert "gguf-q8_0: refused: same greedy answer on" in exported_cond["message"], exported_cond
    assert "refused by the equivalence gate: gguf-q8_0" in st["message"], st["message"]

    names = st["children"]["exportModelVersions"]
    assert len(names) == 1, names
    mv = kube.get("modelversions", names[0], env.ns)
    spec = mv["spec"]
    assert spec["lineage"]["exportOf"] == {"modelVersion": source, "format": "merged"}, spec["lineage"]
    assert spec["artifact"]["format"] == "merged" and spec["artifact"]["uri"].endswith(f"{JOB}/exports/merged"), spec["artifact"]
    eq = spec["equivalence"]
    assert eq["passed"] and eq["agreement"] == 1.0 and eq["testItems"] >= 4, eq
    assert spec["artifact"]["sizeBytes"] > 0 and eq["tokensPerSecond"] > 0 and eq["sourceTokensPerSecond"] > 0, eq
    assert all(m["difference"] == 0 for m in eq["metrics"]), eq["metrics"]
    # its weights are on the claim where the URI says, loadable as a plain model directory
    merged = pvc_dir(env.ns, "models") / JOB / "exports" / "merged"
    assert (merged / "config.json").exists() and list(merged.glob("*.safetensors")), sorted(p.name for p in merged.iterdir())
    # no ModelVersion for the refused export, and its numbers are in the report the job published
    versions = {m["metadata"]["name"] for m in kube.list("modelversions", env.ns)}
    assert not any(n.endswith("q8-0") for n in versions), versions
    report = kube.get("configmaps", f"{source}-report", env.ns)["data"]["report.md"]
    assert "## Exports" in report and "❌ refused" in report and "✅ registered" in report


@pytest.fixture(scope="module")
def served(kube: Kube, env: Env, exported: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    names = ((exported.get("status") or {}).get("children") or {}).get("exportModelVersions") or []
    if not names:
        pytest.fail(f"no export was registered: {exported.get('status')}")
    prom = Prometheus(tmp_path_factory.mktemp("prometheus-exports"))
    prom.start()
    disc = Discovery(kube, env.ns, prom.sd_file)
    disc.start()
    try:
        yield SimpleNamespace(prom=prom, disc=disc, merged=names[0], port=free_port())
    finally:
        if kube.get("rollouts", RO, env.ns) is not None:
            kube.delete("rollouts", RO, env.ns)  # its engine's CPU slot back for whatever runs next
        disc.stop()
        prom.stop()


def _chat(port: int, content: str) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", method="POST",
                                 headers={"Content-Type": "application/json"},
                                 data=json.dumps({"model": SERVED, "messages": [{"role": "user", "content": content}],
                                                  "max_tokens": 8, "temperature": 0}).encode())
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def test_a_rollout_serves_the_merged_export(kube: Kube, env: Env, served: SimpleNamespace):
    s = served
    kube.create("rollouts", {
        "apiVersion": "tuneloop.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": RO, "namespace": env.ns},
        "spec": {"servedModelName": SERVED, "candidate": {"name": s.merged},
                 "serving": {"replicas": 1, "port": s.port, "resources": {"gpus": 0, "cpu": "100m", "memory": "256Mi"}},
                 "trafficRouting": {"gatewayAPI": {"httpRoute": RO, "parentRefs": [{"name": "inference-gateway"}]}},
                 "steps": [{"setWeight": 50}, {"analysis": {}}],
                 "analysis": {"prometheusAddress": s.prom.url, "metrics": [{"name": "error-rate", "builtin": "error-rate", "max": 0.05}]}},
    })
    kube.wait("rollouts", RO, env.ns, lambda o: phase(o) == "Promoted" and (o.get("status") or {}).get("stableModelVersion") == s.merged,
              timeout=420, every=1.0, what="the merged export promoted as the first version", on_timeout=env.operator_log)
    dep = kube.get("deployments", f"{RO}-stable", env.ns)
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["vllm", "serve"] and "--enable-lora" not in c["args"], c["args"]  # merged weights: no adapter
    pods = [p for p in kube.list("pods", env.ns, f"tuneloop.dev/rollout={RO},tuneloop.dev/role=stable")
            if p["status"].get("phase") == "Running"]
    assert pods, "no running stable pod"
    deadline = time.monotonic() + 420  # a real engine loads first (25-130 s on the two shared cores)
    while (info := _announced(pods[0])) is None:
        assert time.monotonic() < deadline, f"the pod never listed {SERVED} on /v1/models"
        time.sleep(2)
    answer = _chat(info["port"], "My order #123 has not arrived, what colour is it?")
    assert answer["model"] == SERVED and answer["choices"][0]["message"]["content"] is not None, answer
    first = pod_log(env.ns, pods[0], "vllm").splitlines()[:1]  # the wrapper's first line says which engine, and why
    if real_vllm() is not None:
        assert first and first[0].startswith("vllm: real vLLM"), first
    print(f"merged export {s.merged}: {first} answered {answer['choices'][0]['message']['content']!r}")
