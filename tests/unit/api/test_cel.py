"""Every CEL rule in the CRDs parses and holds/fails where it should (cel-python)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from tuneloop.api import KINDS, crdgen
from tuneloop.api.cel_rules import apply_defaults, program, violations
from tuneloop.api.mirror import MIRROR_GUARD_MESSAGE, MIRROR_ROUTING_MESSAGE, SHADOW_RELATIVE_MESSAGE

pytestmark = pytest.mark.unit

SAMPLES = Path(__file__).resolve().parents[3] / "manifests" / "samples"


def schema(kind: str) -> dict:
    return crdgen.crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def sample(name: str) -> dict:
    return yaml.safe_load((SAMPLES / name).read_text())


def all_rules(node: dict) -> list[str]:
    rules = [r["rule"] for r in node.get("x-kubernetes-validations", [])]
    for sub in node.get("properties", {}).values():
        rules += all_rules(sub)
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            rules += all_rules(node[key])
    return rules


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_rule_compiles(kind: str) -> None:
    rules = all_rules(schema(kind))
    assert rules, f"{kind} has no CEL rules"
    for rule in rules:
        program(rule)


def check(kind: str, obj: dict, old: dict | None = None) -> list[tuple[str, str]]:
    s = schema(kind)
    return violations(s, apply_defaults(s, obj), apply_defaults(s, old) if old else None)


def test_samples_pass_every_rule() -> None:
    for path in sorted(SAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert check(doc["kind"], doc) == [], path.name


def ftj() -> dict:
    return sample("finetunejob-llama-2x8-zero3.yaml")


def mutate(obj: dict, dotted: str, value) -> dict:
    obj = copy.deepcopy(obj)
    *parents, last = dotted.split(".")
    node = obj
    for p in parents:
        node = node.setdefault(p, {})
    if value is _DELETE:
        node.pop(last, None)
    else:
        node[last] = value
    return obj


_DELETE = object()

FTJ_CASES = [
    ("spec.resources.nodes", 0, None),  # schema minimum, not CEL: no CEL violation expected
    ("spec.dataset.split", {"validation": 0.5, "test": 0.5}, "split.validation + split.test must be below 1"),
    ("spec.dataset.split", {"validation": 0, "test": 1}, "split.validation + split.test must be below 1"),
    ("spec.method", {"type": "qlora"}, "method qlora requires quantization.bits 4"),
    ("spec.method", {"type": "qlora", "quantization": {"bits": 8}}, "method qlora requires quantization.bits 4"),
    ("spec.method", {"type": "lora", "quantization": {"bits": 4}}, "quantization is only used with method qlora"),
    ("spec.hyperparameters.microBatchSize", 5, "batchSize must be a multiple of microBatchSize"),
    ("spec.baseModel.path", "/models/x", "exactly one of huggingFace, pvc, s3, path, gguf must be set for baseModel"),
    ("spec.output", {}, "exactly one of pvc, s3, path must be set for output"),
    ("spec.dataset.train", {"path": "a.jsonl", "s3": {"uri": "s3://b/k"}}, "exactly one of path, pvc, s3 must be set for a data source"),
    ("spec.evaluation.gates", [{"metric": "bleu"}], "a gate needs minImprovement, maxRegression or minValue"),
]


@pytest.mark.parametrize("dotted,value,message", FTJ_CASES)
def test_finetunejob_rules(dotted: str, value, message: str | None) -> None:
    found = [m for _, m in check("FineTuneJob", mutate(ftj(), dotted, value))]
    if message is None:
        assert found == []
    else:
        assert message in found


def test_qlora_needs_gpus() -> None:
    obj = mutate(ftj(), "spec.method", {"type": "qlora", "quantization": {"bits": 4}})
    assert check("FineTuneJob", obj) == []
    obj = mutate(obj, "spec.resources.gpusPerNode", 0)
    assert ("spec", "method qlora needs resources.gpusPerNode ≥ 1") in check("FineTuneJob", obj)


def test_spec_is_immutable_except_suspend() -> None:
    old = ftj()
    assert check("FineTuneJob", mutate(old, "spec.suspend", True), old) == []
    msg = "spec is immutable except suspend; create a new FineTuneJob instead"
    assert ("spec.hyperparameters", msg) in check("FineTuneJob", mutate(old, "spec.hyperparameters.learningRate", 1e-4), old)
    assert ("spec.baseModel", msg) in check("FineTuneJob", mutate(old, "spec.baseModel.huggingFace.revision", "main"), old)
    assert ("spec", msg) in check("FineTuneJob", mutate(old, "spec.image", "x:1"), old)  # optional field added
    assert ("spec", msg) in check("FineTuneJob", mutate(old, "spec.deepspeed", _DELETE), old)  # optional field removed
    assert msg not in [m for _, m in check("FineTuneJob", mutate(old, "spec.hyperparameters.learningRate", 1e-4))]  # create


ROLLOUT_CASES = [
    ("spec.steps", [{"setWeight": 10, "pause": {}}], "exactly one of setWeight, pause, analysis, experiment, mirror must be set for a step"),
    ("spec.steps", [{}], "exactly one of setWeight, pause, analysis, experiment, mirror must be set for a step"),
    ("spec.steps", [{"setWeight": 101}], "setWeight must be within 0..100"),
    ("spec.steps", [{"setWeight": -1}], "setWeight must be within 0..100"),
    ("spec.trafficRouting", {}, "exactly one of gatewayAPI, replicaWeighted, inferenceModelRewrite must be set for trafficRouting"),
    ("spec.analysis.metrics", [{"name": "x", "query": "up", "builtin": "error-rate", "max": 1}], "exactly one of builtin, query must be set for an analysis metric"),
    ("spec.analysis.metrics", [{"name": "x", "query": "up"}], "an analysis metric needs max, min or maxRelativeToStable"),
    ("spec.promote", True, None),
    ("spec.steps", [{"experiment": {"split": 50, "metric": {"name": "m", "builtin": "contract-validity"}}}],
     "an experiment needs duration or minSamples"),
    ("spec.steps", [{"experiment": {"split": 50, "duration": "500ms", "metric": {"name": "m", "builtin": "contract-validity"}}}],
     "experiment duration must be at least 1s"),
    ("spec.steps", [{"experiment": {"split": 50, "minSamples": 10, "metric": {"name": "m"}}}],
     "exactly one of builtin, proportion, mean must be set for an experiment metric"),
    ("spec.steps", [{"experiment": {"split": 50, "minSamples": 10, "metric": {"name": "m", "mean": {"count": "a", "sum": "b", "sumOfSquares": "c"}}}}],
     None),
    # a mirror step: the sample has no serving.guard
    ("spec.steps", [{"mirror": {"percent": 20, "duration": "5m"}}], MIRROR_GUARD_MESSAGE),
    ("spec.steps", [{"mirror": {"percent": 20, "duration": "500ms"}}], "mirror duration must be at least 1s"),
    ("spec.steps", [{"mirror": {"percent": 20, "duration": "5m"}, "setWeight": 10}],
     "exactly one of setWeight, pause, analysis, experiment, mirror must be set for a step"),
    ("spec.analysis.metrics", [{"name": "x", "builtin": "shadow-latency-ratio", "maxRelativeToStable": 1.2}], SHADOW_RELATIVE_MESSAGE),
    ("spec.analysis.metrics", [{"name": "x", "builtin": "shadow-latency-ratio", "max": 1.5}], None),
]


def test_a_mirror_step_needs_the_guard_and_gateway_routing() -> None:
    obj = mutate(mutate(sample("rollout.yaml"), "spec.steps", [{"mirror": {"percent": 20, "duration": "5m"}}]), "spec.serving.guard", {})
    assert check("Rollout", obj) == []
    replicas = mutate(obj, "spec.trafficRouting", {"replicaWeighted": {"service": "s"}})
    assert ("spec", MIRROR_ROUTING_MESSAGE) in check("Rollout", replicas)


@pytest.mark.parametrize("dotted,value,message", ROLLOUT_CASES)
def test_rollout_rules(dotted: str, value, message: str | None) -> None:
    found = [m for _, m in check("Rollout", mutate(sample("rollout.yaml"), dotted, value))]
    assert (message in found) if message else found == []


def test_rollout_without_a_version_is_valid_but_not_both_controls() -> None:
    """A Rollout declared before its first version (neither stable nor candidate) is accepted by the CRD and by the
    model: it waits for a FineTuneSchedule (or a person) to set spec.candidate."""
    from tuneloop.api.rollout import Rollout

    obj = mutate(mutate(sample("rollout.yaml"), "spec.stable", _DELETE), "spec.candidate", _DELETE)
    assert check("Rollout", obj) == []
    ro = Rollout.model_validate(obj)
    assert ro.spec.stable is None and ro.spec.candidate is None
    obj = mutate(mutate(sample("rollout.yaml"), "spec.promote", True), "spec.abort", True)
    assert ("spec", "promote and abort cannot both be set") in check("Rollout", obj)


def test_modelversion_is_immutable_and_lora_needs_rank() -> None:
    old = sample("modelversion.yaml")
    assert check("ModelVersion", old, old) == []
    changed = mutate(old, "spec.artifact.uri", "pvc://models/other")
    assert ("spec", "a ModelVersion is an immutable registry record; register a new version instead") in check("ModelVersion", changed, old)
    no_rank = mutate(old, "spec.artifact.loraRank", _DELETE)
    assert ("spec", "a lora-adapter artifact needs artifact.loraRank (vLLM's --max-lora-rank)") in check("ModelVersion", no_rank)
