"""Every CEL rule and its pydantic twin agree (issue 24: the same rule written twice must not drift).

The API server judges an object by the CRD's `x-kubernetes-validations` (CEL, generated from the models); the
operator, `kubectl tuneloop validate` and the local runner judge it by the pydantic models. Hypothesis draws
objects around every rule's boundary — a valid sample with one rule's fields changed — and both must say the same:
CEL (cel-python, tuneloop.api.cel_rules) refuses exactly when the model refuses, and the model's error names the
CEL message. `test_every_rule_is_exercised` fails when a CRD gains a rule no mutator below reaches: add one.

Transition rules (`oldSelf`: immutability) have no pydantic twin — a model sees one object — and are left out.
The models may be stricter where no CEL rule exists (a schedule that never fires in any cron form, evaluation
without test data): the strategies draw within what both can judge, so such a model-only check is not a disagreement.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from tuneloop.api import KINDS, crdgen
from tuneloop.api.cel_rules import apply_defaults, violations
from tuneloop.api.schedule import NEVER_MESSAGE, TIME_ZONE_MESSAGE

pytestmark = pytest.mark.unit

SAMPLES = Path(__file__).resolve().parents[3] / "manifests" / "samples"
BASE = {
    "FineTuneJob": "finetunejob-llama-2x8-zero3.yaml",
    "Rollout": "rollout.yaml",
    "ModelVersion": "modelversion.yaml",
    "FineTuneSchedule": "finetuneschedule.yaml",
    "FineTuneSweep": "sweep-quickstart.yaml",
}
DELETE = object()
Edit = list[tuple[str, Any]]  # (dotted path, value or DELETE); a numeric segment indexes a list


def schema(kind: str) -> dict:
    return crdgen.crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def base(kind: str) -> dict:
    return yaml.safe_load((SAMPLES / BASE[kind]).read_text())


def put(obj: dict, edits: Edit) -> dict:
    obj = copy.deepcopy(obj)
    for dotted, value in edits:
        *parents, last = dotted.split(".")
        node: Any = obj
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
        if isinstance(node, list):
            node[int(last)] = value
        elif value is DELETE:
            node.pop(last, None)
        else:
            node[last] = value
    return obj


def judge(kind: str, obj: dict) -> tuple[set[str], str | None]:
    """(CEL messages, the model's error text or None)."""
    s = schema(kind)
    cel = {m for _, m in violations(s, apply_defaults(s, obj))}
    try:
        KINDS[kind].model_validate(obj)
        return cel, None
    except ValidationError as exc:
        return cel, str(exc)


# The rules whose model error is worded more precisely than the CEL message (documented in docs/schedule.md):
# the CEL message -> what the model's error says instead.
MODEL_WORDS = {NEVER_MESSAGE: "never fires: no date matches", TIME_ZONE_MESSAGE: "is not a known IANA time zone"}


def assert_agree(kind: str, edits: Edit) -> None:
    cel, model = judge(kind, put(base(kind), edits))
    cel = {m.split(" (rule error:")[0] for m in cel}  # a rule that errors refuses, as on the API server
    if cel:
        assert model is not None, f"{kind} {edits}: CEL refuses ({sorted(cel)}) but the model accepts"
        assert any(MODEL_WORDS.get(m, m) in model for m in cel), \
            f"{kind} {edits}: the model refuses for another reason: {model}\nCEL: {sorted(cel)}"
    else:
        assert model is None, f"{kind} {edits}: the model refuses but CEL accepts: {model}"


# --- strategies: one rule's fields, drawn around its boundary ------------------------------------------------------
def subset(options: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Any subset of a union's members (none, one, several)."""
    return st.sets(st.sampled_from(sorted(options))).map(lambda keys: {k: options[k] for k in keys})


seconds = st.sampled_from(["0s", "1ms", "500ms", "999ms", "1s", "2s", "4s", "5s", "6s", "1m", "1m30s", "1h"])
ints = st.integers(min_value=1, max_value=64)
fraction = st.sampled_from([0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95])  # each within the schema's [0, 1); test > 0 (below)

DATA_SOURCE = {"path": "train.jsonl", "pvc": {"claimName": "datasets", "path": "a.jsonl"}, "s3": {"uri": "s3://b/a.jsonl"}}
BASE_MODEL = {"huggingFace": {"id": "org/model"}, "pvc": {"claimName": "models", "path": "base"},
              "s3": {"uri": "s3://b/base"}, "path": "/models/base", "gguf": {"path": "/models/m.gguf"}}


def ftj_spec(p: str) -> dict[str, tuple[set[str], st.SearchStrategy[Edit]]]:
    """The FineTuneJob spec's rules, under prefix `p` (`spec` in a FineTuneJob, `spec.jobTemplate.spec` in a schedule)."""
    method = st.builds(lambda t, q: {"type": t, **({"quantization": {"bits": q}} if q else {})},
                       st.sampled_from(["full", "lora", "qlora"]), st.sampled_from([None, 4, 8]))
    return {
        "qlora-gpus": ({p}, st.tuples(method, st.integers(0, 2)).map(
            lambda t: [(f"{p}.method", t[0]), (f"{p}.resources.gpusPerNode", t[1])])),
        "method": ({f"{p}.method"}, method.map(lambda m: [(f"{p}.method", m)])),
        "baseModel": ({f"{p}.baseModel"}, subset(BASE_MODEL).map(lambda d: [(f"{p}.baseModel", d)])),
        "gguf": ({f"{p}.baseModel.gguf"}, subset({"path": "/models/m.gguf", "pythonPackage": "gguf==0.10.0"})
                 .map(lambda d: [(f"{p}.baseModel", {"gguf": d})])),
        "data-source": ({f"{p}.dataset.{f}" for f in ("train", "validation", "test")},
                        st.tuples(st.sampled_from(["train", "validation", "test"]), subset(DATA_SOURCE))
                        .map(lambda t: [(f"{p}.dataset.{t[0]}", t[1])])),
        "split": ({f"{p}.dataset.split"}, st.tuples(fraction, fraction).map(
            lambda t: [(f"{p}.dataset.split", {"validation": t[0], "test": t[1]})])),  # the sum is the rule
        "batch": ({f"{p}.hyperparameters"}, st.tuples(ints, ints).map(
            lambda t: [(f"{p}.hyperparameters.batchSize", t[0]), (f"{p}.hyperparameters.microBatchSize", t[1]),
                       (f"{p}.deepspeed", DELETE)])),
        "output": ({f"{p}.output"}, subset({"pvc": {"claimName": "models", "path": "out"}, "s3": {"uri": "s3://b/out"},
                                            "path": "/out"}).map(lambda d: [(f"{p}.output", d)])),
        "gate": ({f"{p}.evaluation.gates[]"}, subset({"minImprovement": 0.01, "maxRegression": 0.0, "minValue": 0.5}).map(
            lambda d: [(f"{p}.evaluation.gates", [{"metric": "exactMatch", **d}])])),
    }


def token_lengths(p: str) -> st.SearchStrategy[Edit]:
    counts = st.integers(0, 4).map(lambda n: list(range(n)))
    return st.tuples(st.integers(0, 3), counts, counts).map(
        lambda t: [(p, {"le": [2.0 ** i for i in range(t[0])], "prompt": t[1], "generation": t[2]})])


Q = "sum(increase(app_feedback_total{ {{selector}} }[{{window}}]))"
EXPERIMENT_METRICS = {"builtin": "contract-validity", "proportion": {"successes": Q, "trials": Q},
                      "mean": {"count": Q, "sum": Q, "sumOfSquares": Q}}
EXPERIMENT = {"split": 50, "duration": "1h", "metric": {"name": "m", "builtin": "contract-validity"}}
MIRROR = {"percent": 20, "duration": "1m", "metrics": ["error-rate"]}  # the sample's metric: a mirror step with something to judge
GATEWAY = {"gatewayAPI": {"httpRoute": "r", "parentRefs": [{"name": "gw"}]}}


MUTATORS: dict[str, dict[str, tuple[set[str], st.SearchStrategy[Edit]]]] = {
    "FineTuneJob": ftj_spec("spec"),
    "Rollout": {
        "promote-abort": ({"spec"}, st.tuples(st.booleans(), st.booleans()).map(
            lambda t: [("spec.promote", t[0]), ("spec.abort", t[1])])),
        "trafficRouting": ({"spec.trafficRouting"}, subset({
            "gatewayAPI": {"httpRoute": "r", "parentRefs": [{"name": "gw"}]}, "replicaWeighted": {"service": "svc"},
            "inferenceModelRewrite": {"poolRef": {"name": "pool"}}}).map(lambda d: [("spec.trafficRouting", d)])),
        # serving.mode sharedBase: its routing, maxLoras, no guard, only the built-ins the traffic layer splits by model
        "shared-base": ({"spec"}, st.tuples(
            st.sampled_from([None, "perVersion", "sharedBase"]), st.booleans(), st.sampled_from([None, 1, 2, 4]), st.booleans(),
            st.sampled_from(["error-rate", "e2e-latency-p95", "ttft-p95", "abort-rate", None])).map(
            lambda t: [("spec.serving.mode", DELETE if t[0] is None else t[0]),
                       ("spec.trafficRouting", {"inferenceModelRewrite": {"poolRef": {"name": "pool"}}} if t[1]
                        else {"gatewayAPI": {"httpRoute": "r", "parentRefs": [{"name": "gw"}]}}),
                       ("spec.serving.maxLoras", DELETE if t[2] is None else t[2]),
                       ("spec.serving.guard", {} if t[3] else DELETE),
                       ("spec.analysis.metrics", [{"name": "m", **({"builtin": t[4]} if t[4] else {"query": "sum(up)"}), "max": 1.0}])])),
        "step": ({"spec.steps[]"}, st.tuples(subset({"pause": {"duration": "1m"}, "analysis": {}, "setWeight": 0,
                                                     "experiment": EXPERIMENT, "mirror": MIRROR}),
                                             st.integers(0, 100)).map(
            lambda t: [("spec.steps", [{**t[0], **({"setWeight": t[1]} if "setWeight" in t[0] else {})}])])),
        "experiment-end": ({"spec.steps[].experiment"}, st.tuples(st.one_of(st.none(), seconds), st.sampled_from([None, 1, 500])).map(
            lambda t: [("spec.steps", [{"experiment": {k: v for k, v in (("split", 50), ("metric", EXPERIMENT["metric"]),
                                                                       ("duration", t[0]), ("minSamples", t[1])) if v is not None}}])])),
        "experiment-metric": ({"spec.steps[].experiment.metric"}, subset(EXPERIMENT_METRICS).map(
            lambda d: [("spec.steps", [{"experiment": {**EXPERIMENT, "metric": {"name": "m", **d}}}])])),
        # a mirror step needs serving.guard and gatewayAPI routing; its duration has a floor
        "mirror": ({"spec", "spec.steps[].mirror"}, st.tuples(st.booleans(), st.booleans(), seconds).map(
            lambda t: [("spec.serving.guard", {} if t[0] else DELETE),
                       ("spec.trafficRouting", GATEWAY if t[1] else {"replicaWeighted": {"service": "svc"}}),
                       ("spec.steps", [{"mirror": {**MIRROR, "duration": t[2]}}, {"setWeight": 10}])])),
        # a shadow-* built-in takes max or min, never maxRelativeToStable (a live metric beside it keeps the analysis steps valid)
        "shadow-metric": ({"spec.analysis.metrics[]"}, st.tuples(
            st.sampled_from(["shadow-agreement-rate", "shadow-latency-ratio", "error-rate"]),
            subset({"max": 1.0, "min": 0.0, "maxRelativeToStable": 1.2})).map(
            lambda t: [("spec.analysis.metrics", [{"name": "m", "builtin": t[0], **t[1]},
                                                  {"name": "error-rate", "builtin": "error-rate", "max": 0.01}])])),
        "analysis-floors": ({"spec.analysis"}, st.tuples(seconds, seconds, seconds).map(
            lambda t: [("spec.analysis.interval", t[0]), ("spec.analysis.window", t[1]),
                       ("spec.analysis.backgroundInterval", t[2])])),
        "analysis-provider": ({"spec.analysis"}, subset({"provider": "team-a", "prometheusAddress": "http://prom:9090"}).map(
            lambda d: [("spec.analysis.provider", d.get("provider", DELETE)),
                       ("spec.analysis.prometheusAddress", d.get("prometheusAddress", DELETE))])),
        "metric": ({"spec.analysis.metrics[]"}, st.tuples(
            subset({"builtin": "error-rate", "query": "sum(up{ {{selector}} })"}),
            subset({"max": 1.0, "min": 0.0, "maxRelativeToStable": 1.2})).map(
            lambda t: [("spec.analysis.metrics", [{"name": "m", **t[0], **t[1]}])])),
        "drift-floors": ({"spec.driftWatch"}, st.tuples(seconds, seconds).map(
            lambda t: [("spec.driftWatch", {"interval": t[0], "window": t[1]})])),
        "guard-harmful": ({"spec.serving.guard.harmful"}, st.tuples(*[st.sampled_from([None, "off", "flag", "refuse"])] * 2).map(
            lambda t: [("spec.serving.guard", {"harmful": {k: v for k, v in zip(("input", "output"), t) if v is not None}})])),
    },
    "ModelVersion": {
        "lora-rank": ({"spec"}, st.tuples(st.sampled_from(["lora-adapter", "merged"]), st.sampled_from([None, 8])).map(
            lambda t: [("spec.artifact.format", t[0]), ("spec.artifact.loraRank", DELETE if t[1] is None else t[1])])),
        "gguf-quantization": ({"spec"}, st.tuples(st.sampled_from(["gguf", "merged", "lora-adapter"]), st.sampled_from([None, "q8_0"]),
                                                  st.sampled_from([None, 8])).map(
            lambda t: [("spec.artifact.format", t[0]), ("spec.artifact.quantization", DELETE if t[1] is None else t[1]),
                       ("spec.artifact.loraRank", DELETE if t[2] is None else t[2])])),
        "token-lengths": ({"spec.lineage.tokenLengths"}, token_lengths("spec.lineage.tokenLengths")),
    },
    "FineTuneSchedule": {
        **ftj_spec("spec.jobTemplate.spec"),
        "needs-a-trigger": ({"spec"}, st.tuples(st.booleans(), st.booleans(), st.booleans()).map(
            lambda t: [("spec.schedule", "0 3 * * 1" if t[0] else DELETE),
                       ("spec.triggers.newData", {"claimName": "datasets", "glob": "a/*.jsonl"} if t[1] else DELETE),
                       ("spec.triggers.prometheus", [{"name": "d", "query": "up > 0"}] if t[2] else [])])),
        "template-version": ({"spec"}, st.sampled_from([None, "v1"]).map(
            lambda v: [("spec.jobTemplate.spec.registry.version", DELETE if v is None else v)])),
        "template-output": ({"spec"}, st.sampled_from(["pvc", "s3", "path"]).map(
            lambda k: [("spec.jobTemplate.spec.output",
                        {"pvc": {"pvc": {"claimName": "models"}}, "s3": {"s3": {"uri": "s3://b/o"}}, "path": {"path": "/o"}}[k])])),
        "template-text": ({"spec"}, st.tuples(st.sampled_from(["chat", "text"]),
                                              st.sampled_from([None, ["perplexity"], ["exactMatch"]]),
                                              st.sampled_from(["exactMatch", "perplexity"])).map(
            lambda t: [("spec.jobTemplate.spec.dataset.format", t[0]),
                       ("spec.jobTemplate.spec.evaluation.metrics", DELETE if t[1] is None else t[1]),
                       ("spec.jobTemplate.spec.evaluation.gates", [{"metric": t[2], "minImprovement": 0.0}])])),
        "template-eval": ({"spec"}, st.booleans().map(lambda b: [("spec.jobTemplate.spec.evaluation.enabled", b)])),
        "never-a-date": ({"spec.schedule"}, st.tuples(st.sampled_from(["28", "29", "30", "31", "030", "31,1"]),
                                                      st.sampled_from(["2", "02", "FEB", "feb", "4", "6", "9", "11", "1"]),
                                                      st.sampled_from(["*", "?", "1"])).map(
            lambda t: [("spec.schedule", f"0 3 {t[0]} {t[1]} {t[2]}")])),
        # not `utc`: cel-python's zone lookup ignores case where the API server's (Go's time.LoadLocation) does not
        "timeZone": ({"spec.timeZone"}, st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Mars/Olympus",
                                                         "Etc/GMT+5", "Europe/Atlantis"]).map(lambda z: [("spec.timeZone", z)])),
        "glob": ({"spec.triggers.newData.glob"}, st.sampled_from(["a/*.jsonl", "/abs/*.jsonl", "../up/*.jsonl", "a/../b",
                                                                  "a/..b/*.jsonl", "..a/x", "a/.."]).map(
            lambda g: [("spec.triggers.newData.glob", g)])),
        "prometheus-trigger": ({"spec.triggers.prometheus[]"}, st.tuples(
            seconds, subset({"provider": "team-a", "prometheusAddress": "http://prom:9090"})).map(
            lambda t: [("spec.triggers.prometheus", [{"name": "d", "query": "up > 0", "interval": t[0], **t[1]}])])),
    },
    "FineTuneSweep": {
        **ftj_spec("spec.jobTemplate.spec"),
        # weightDecay (>= 0) and seed (any int) take every value drawn here: the model's template check agrees
        "float-range": ({"spec.searchSpace[].float"}, st.tuples(
            st.sampled_from([0.0, 1e-5, 1e-3]), st.sampled_from([0.0, 1e-4, 1e-3]), st.booleans(), st.sampled_from([None, 1e-5])).map(
            lambda t: [("spec.searchSpace.0", {"path": "hyperparameters.weightDecay",
                                               "float": {"low": t[0], "high": t[1], "log": t[2], **({"step": t[3]} if t[3] else {})}})])),
        "int-range": ({"spec.searchSpace[].int"}, st.tuples(
            st.sampled_from([-2, 0, 1, 4]), st.sampled_from([0, 1, 8]), st.booleans(), st.sampled_from([1, 2])).map(
            lambda t: [("spec.searchSpace.0", {"path": "hyperparameters.seed",
                                               "int": {"low": t[0], "high": t[1], "log": t[2], "step": t[3]}})])),
        "one-parameter-kind": ({"spec.searchSpace[]"}, subset(
            {"float": {"low": 0.0, "high": 0.1}, "int": {"low": 0, "high": 1}, "categorical": {"choices": [0.0, 0.01]}}).map(
            lambda d: [("spec.searchSpace.0", {"path": "hyperparameters.weightDecay", **d})])),
        "objective-split": ({"spec.objective.split"}, st.sampled_from(["validation", "test"]).map(lambda v: [("spec.objective.split", v)])),
        "sweep-shape": ({"spec"}, st.tuples(
            st.integers(1, 4), st.integers(1, 4), st.sampled_from(["tpe", "grid"]), st.booleans(), st.booleans(), st.booleans(),
            st.sampled_from(["rougeL", "fieldAccuracy", "perplexity"]), st.sampled_from([None, ["rougeL"], ["perplexity", "bleu"]]),
            st.sampled_from([None, "v1"]), st.sampled_from([0.0, 0.1]), st.booleans()).map(
            lambda t: [("spec.parallelism", t[0]), ("spec.maxTrials", t[1]), ("spec.sampler", {"type": t[2]}),
                       ("spec.searchSpace", [{"path": "hyperparameters.weightDecay",
                                              "float": {"low": 0.0, "high": 0.1, **({"step": 0.05} if t[3] else {})}},
                                             *([{"path": "hyperparameters.weightDecay", "categorical": {"choices": [0.0]}}] if t[4] else [])]),
                       ("spec.jobTemplate.spec.evaluation.enabled", t[5]), ("spec.objective.metric", t[6]),
                       ("spec.jobTemplate.spec.evaluation.metrics", DELETE if t[7] is None else t[7]),
                       ("spec.jobTemplate.spec.registry.version", DELETE if t[8] is None else t[8]),
                       ("spec.jobTemplate.spec.dataset.split.validation", t[9]),
                       ("spec.jobTemplate.spec.dataset.validation", {"path": "v.jsonl"} if t[10] else DELETE)])),
        "objective-computed": ({"spec"}, st.tuples(
            st.sampled_from(["fieldAccuracy", "schemaCompliance", "forgettingAccuracy", "rougeL"]), st.booleans(), st.booleans()).map(
            lambda t: [("spec.objective.metric", t[0]),
                       ("spec.jobTemplate.spec.evaluation.metrics", ["rougeL", "fieldAccuracy", "schemaCompliance", "forgettingAccuracy"]),
                       ("spec.jobTemplate.spec.evaluation.jsonSchema", {"type": "object"} if t[1] else DELETE),
                       ("spec.jobTemplate.spec.evaluation.forgetting", {"enabled": t[2]}),
                       ("spec.jobTemplate.spec.evaluation.gates", [])])),
    },
}


def rule_paths(kind: str) -> set[str]:
    """Paths of the nodes with a non-transition rule (`[]` for a list's items)."""
    out: set[str] = set()

    def walk(node: dict, path: str) -> None:
        if any("oldSelf" not in r["rule"] for r in node.get("x-kubernetes-validations", [])):
            out.add(path)
        for k, sub in node.get("properties", {}).items():
            walk(sub, f"{path}.{k}" if path else k)
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}[]")

    walk(schema(kind), "")
    return out - {"status.dataReport.tokenLengths"}  # status: written by the operator through the same model (below)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_rule_is_exercised(kind: str) -> None:
    covered = set().union(*(paths for paths, _ in MUTATORS[kind].values()))
    assert rule_paths(kind) <= covered, f"{kind}: CEL rules no mutator reaches: {sorted(rule_paths(kind) - covered)}"


CASES = [(kind, name) for kind in sorted(MUTATORS) for name in sorted(MUTATORS[kind])]


@pytest.mark.parametrize(("kind", "name"), CASES)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_cel_and_the_model_agree(kind: str, name: str, data: st.DataObject) -> None:
    assert_agree(kind, data.draw(MUTATORS[kind][name][1], label=name))


@settings(max_examples=40, deadline=None)
@given(edits=token_lengths("status.dataReport.tokenLengths"))
def test_status_token_lengths_agree(edits: Edit) -> None:
    assert_agree("FineTuneJob", edits)


def test_the_boundaries_are_drawn():
    """The strategies reach both sides of the rules (a mutator that only ever draws valid objects checks nothing)."""
    assert judge("Rollout", put(base("Rollout"), [("spec.analysis.interval", "999ms")]))[0] == {"interval must be at least 1s"}
    assert judge("Rollout", put(base("Rollout"), [("spec.analysis.interval", "1s")]))[0] == set()
    cel, model = judge("FineTuneSchedule", put(base("FineTuneSchedule"), [("spec.schedule", "0 3 30 2 *")]))
    assert cel and model is not None
