"""Render structural CRDs from the pydantic models (pure: text out; `kubectl tuneloop crds`, i.e.
tuneloop.cli.crds_cmd, writes them to crds/, the chart and docs/api-reference.md).

Pydantic's JSON Schema is turned into a Kubernetes structural schema: `$ref`s inlined,
`anyOf [X, null]` → X + `nullable`, `const` → enum, JSON-Schema-2020 exclusive bounds → OpenAPI 3.0,
titles dropped, optional object fields defaulted to their children's defaults written out (the API
server validates a default without nested defaulting), and `x-kubernetes-validations` (CEL) carried from the models.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from . import KINDS
from .common import GROUP, VERSION

NAMES = {
    "FineTuneJob": {"plural": "finetunejobs", "singular": "finetunejob", "shortNames": ["ftj"]},
    "ModelVersion": {"plural": "modelversions", "singular": "modelversion", "shortNames": ["mv"]},
    "Rollout": {"plural": "rollouts", "singular": "rollout", "shortNames": ["tlro"]},
    "FineTuneSchedule": {"plural": "finetuneschedules", "singular": "finetuneschedule", "shortNames": ["ftsched"]},
    "FineTuneSweep": {"plural": "finetunesweeps", "singular": "finetunesweep", "shortNames": ["ftsweep"]},
}

AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
COLUMNS = {
    "FineTuneJob": [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Progress", "type": "string", "jsonPath": ".status.progress.percent"},
        {"name": "Base model", "type": "string", "jsonPath": ".status.baseModel"},
        {"name": "Loss", "type": "number", "jsonPath": ".status.progress.loss"},
        {"name": "Tokens/s/GPU", "type": "number", "jsonPath": ".status.progress.tokensPerSecondPerGpu"},
        {"name": "MFU", "type": "number", "jsonPath": ".status.progress.mfu"},
        AGE,
    ],
    "ModelVersion": [
        {"name": "Model", "type": "string", "jsonPath": ".spec.modelName"},
        {"name": "Version", "type": "string", "jsonPath": ".spec.version"},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Verdict", "type": "string", "jsonPath": ".spec.evaluation.verdict"},
        AGE,
    ],
    "Rollout": [
        {"name": "Mode", "type": "string", "jsonPath": ".spec.serving.mode"},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Stable", "type": "string", "jsonPath": ".status.stableModelVersion"},
        {"name": "Candidate", "type": "string", "jsonPath": ".status.candidateModelVersion"},
        {"name": "Weight", "type": "integer", "jsonPath": ".status.canaryWeight"},
        {"name": "Weights", "type": "string", "jsonPath": ".status.weights"},
        {"name": "Step", "type": "string", "jsonPath": ".status.step"},
        {"name": "Message", "type": "string", "jsonPath": ".status.message"},
        AGE,
    ],
    "FineTuneSchedule": [
        {"name": "Schedule", "type": "string", "jsonPath": ".spec.schedule"},
        {"name": "Timezone", "type": "string", "jsonPath": ".spec.timeZone"},
        {"name": "Suspend", "type": "boolean", "jsonPath": ".spec.suspend"},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Last run", "type": "date", "jsonPath": ".status.lastRunTime"},
        {"name": "Next", "type": "date", "jsonPath": ".status.nextScheduleTime"},
        {"name": "Serving", "type": "string", "jsonPath": ".status.servingModelVersion"},
        {"name": "Message", "type": "string", "jsonPath": ".status.message", "priority": 1},
        AGE,
    ],
    "FineTuneSweep": [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Done", "type": "integer", "jsonPath": ".status.trialsComplete"},
        {"name": "Running", "type": "integer", "jsonPath": ".status.trialsRunning"},
        {"name": "Pruned", "type": "integer", "jsonPath": ".status.trialsPruned"},
        {"name": "Failed", "type": "integer", "jsonPath": ".status.trialsFailed", "priority": 1},
        {"name": "Objective", "type": "string", "jsonPath": ".spec.objective.metric"},
        {"name": "Best", "type": "number", "jsonPath": ".status.bestValue"},
        {"name": "Best trial", "type": "string", "jsonPath": ".status.bestTrial"},
        {"name": "Message", "type": "string", "jsonPath": ".status.message", "priority": 1},
        AGE,
    ],
}

# Objects embedded as templates (a FineTuneJob spec inside a FineTuneSchedule): the embedded kind's transition
# rules (`oldSelf`: a FineTuneJob spec is immutable) would make the template immutable too, so they are dropped there.
TEMPLATES = {"FineTuneSchedule": [("jobTemplate", "spec")], "FineTuneSweep": [("jobTemplate", "spec")]}

_KEEP = {
    "type", "description", "default", "enum", "format", "pattern", "minimum", "maximum",
    "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength", "minItems", "maxItems",
    "x-kubernetes-validations", "x-kubernetes-preserve-unknown-fields", "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
}


class SchemaError(ValueError):
    pass


def _merge(target: dict[str, Any], siblings: dict[str, Any]) -> dict[str, Any]:
    """Siblings of a $ref override the target, except CEL rules, which add up."""
    merged = {**target, **siblings}
    rules = target.get("x-kubernetes-validations", []) + siblings.get("x-kubernetes-validations", [])
    if rules:
        merged["x-kubernetes-validations"] = rules
    return merged


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        return _resolve(_merge(target, {k: v for k, v in node.items() if k != "$ref"}), defs)
    if "allOf" in node and len(node["allOf"]) == 1:
        inner = _resolve(node["allOf"][0], defs)
        return _merge(inner, {k: v for k, v in node.items() if k != "allOf"})
    return node


def expanded_default(node: dict[str, Any]) -> dict[str, Any]:
    """The default of an optional object field, with every nested default written out.

    The API server validates a `default` against its own node's schema and CEL rules *without*
    applying nested defaults (apiextensions `schema/defaulting/validation.go`), so `default: {}` on
    an object whose rule reads a defaulted child (`self.type != 'qlora'`) is refused at CRD creation.
    Writing the nested defaults out admits exactly the same objects: defaulting `{}` and then its
    children gives the same value."""
    return {
        name: copy.deepcopy(sub["default"])
        for name, sub in node.get("properties", {}).items()
        if "default" in sub
    }


def structural(node: dict[str, Any], defs: dict[str, Any], path: str = "") -> dict[str, Any]:
    """Convert one pydantic JSON-schema node into a structural OpenAPI v3 node."""
    node = _resolve(node, defs)
    nullable = False
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        if len(options) != 1:
            raise SchemaError(f"{path or '<root>'}: unions other than X | None are not structural")
        nullable = len(options) < len(node["anyOf"])
        outer = {k: v for k, v in node.items() if k != "anyOf"}
        node = _merge(_resolve(options[0], defs), outer)
    if "const" in node:
        node = {**node, "enum": [node["const"]]}
    out: dict[str, Any] = {k: copy.deepcopy(v) for k, v in node.items() if k in _KEEP}
    if "enum" in out and "type" not in out:
        out["type"] = "integer" if all(isinstance(v, int) for v in out["enum"]) else "string"
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(out.get(bound), (int, float)) and not isinstance(out.get(bound), bool):
            out[plain] = out.pop(bound)
            out[bound] = True
    if out.get("default") is None:
        out.pop("default", None)
    preserve = out.get("x-kubernetes-preserve-unknown-fields")
    kind = out.get("type")
    if kind == "object" or "properties" in node:
        out["type"] = "object"
        if "properties" in node:
            required = set(node.get("required", []))
            props = {}
            for name, sub in node["properties"].items():
                conv = structural(sub, defs, f"{path}.{name}")
                if name not in required and conv.get("type") == "object" and not conv.get("nullable") and "default" not in conv and "properties" in conv:
                    conv["default"] = expanded_default(conv)
                props[name] = conv
            out["properties"] = props
            if required:
                out["required"] = sorted(required)
        elif not preserve:
            extra = node.get("additionalProperties")
            if not isinstance(extra, dict) or not extra:
                raise SchemaError(f"{path}: open map without a value type; mark it x-kubernetes-preserve-unknown-fields")
            out["additionalProperties"] = structural(extra, defs, f"{path}[*]")
    elif kind == "array":
        out["items"] = structural(node["items"], defs, f"{path}[]")
    elif kind is None and not preserve:
        raise SchemaError(f"{path}: untyped schema node {node}")
    if nullable:
        out["nullable"] = True
    return out


def drop_transition_rules(node: dict[str, Any]) -> None:
    """Remove every CEL rule that reads `oldSelf`, recursively (in place)."""
    rules = [r for r in node.get("x-kubernetes-validations", []) if "oldSelf" not in r["rule"]]
    if rules:
        node["x-kubernetes-validations"] = rules
    else:
        node.pop("x-kubernetes-validations", None)
    for sub in node.get("properties", {}).values():
        drop_transition_rules(sub)
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            drop_transition_rules(node[key])


def openapi_schema(kind: str) -> dict[str, Any]:
    model = KINDS[kind]
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.get("$defs", {})
    spec = structural(raw["properties"]["spec"], defs, ".spec")
    status = structural(raw["properties"]["status"], defs, ".status")
    status.pop("nullable", None)
    status.pop("default", None)
    for path in TEMPLATES.get(kind, []):
        node = spec
        for part in path:
            node = node["properties"][part]
        drop_transition_rules(node)
    return {
        "type": "object",
        "description": (model.__doc__ or "").strip().splitlines()[0],
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "APIVersion of this object: tuneloop.dev/v1alpha1."},
            "kind": {"type": "string", "description": f"Kind of this object: {kind}."},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }


def crd(kind: str) -> dict[str, Any]:
    names = NAMES[kind]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{names['plural']}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "tuneloop", "app.kubernetes.io/part-of": "tuneloop"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": kind, "listKind": f"{kind}List", **names, "categories": ["tuneloop"]},
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": COLUMNS[kind],
                    "schema": {"openAPIV3Schema": openapi_schema(kind)},
                }
            ],
        },
    }


HEADER = "# Generated by `make crds` (kubectl tuneloop crds) from operator/tuneloop/api; do not edit.\n"


def render_all() -> dict[str, str]:
    """File name → YAML text for every CRD."""
    return {
        f"{GROUP}_{NAMES[k]['plural']}.yaml": HEADER + yaml.safe_dump(crd(k), sort_keys=False, width=120)
        for k in KINDS
    }


def chart_copy(text: str) -> str:
    """The chart's copy: the same CRD gated by crds.enabled, kept on uninstall when crds.keep."""
    body = text.removeprefix(HEADER)
    # Descriptions may hold literal {{...}} (PromQL templates): make Helm print them verbatim.
    body = body.replace("{{", "\0").replace("}}", "\1").replace("\0", '{{ "{{" }}').replace("\1", '{{ "}}" }}')
    head, rest = body.split("metadata:\n", 1)
    keep = "  {{- if .Values.crds.keep }}\n  annotations:\n    helm.sh/resource-policy: keep\n  {{- end }}\n"
    return HEADER + "{{- if .Values.crds.enabled }}\n" + head + "metadata:\n" + keep + rest + "{{- end }}\n"
