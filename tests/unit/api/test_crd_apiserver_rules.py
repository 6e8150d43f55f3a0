"""The CRDs pass the checks kube-apiserver runs at CRD creation (see apiserver_crd_rules), in every
copy that users install: crds/, the Helm chart's and the kustomize base's."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from tuneloop.api import KINDS, crdgen
from tuneloop.api.cel_rules import apply_defaults, violations

from .apiserver_crd_rules import all_problems, default_problems

pytestmark = pytest.mark.unit


def _schema(doc: dict) -> dict:
    return doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_generated_crd_passes_apiserver_rules(kind: str) -> None:
    assert all_problems(_schema(crdgen.crd(kind)), kind) == []


def _installed_copies(repo_root: Path) -> list[Path]:
    files = sorted((repo_root / "crds").glob("*.yaml"))
    files += sorted((repo_root / "charts" / "tuneloop" / "templates" / "crds").glob("*.yaml"))
    files += [p for p in sorted((repo_root / "manifests").rglob("*.yaml")) if "CustomResourceDefinition" in p.read_text()]
    return files


def _crd_docs(path: Path) -> list[dict]:
    text = path.read_text()
    # The chart's copy is a template: drop the Helm gating lines, keep the CRD body.
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("{{")]
    docs = [d for d in yaml.safe_load_all("\n".join(lines)) if isinstance(d, dict)]
    return [d for d in docs if d.get("kind") == "CustomResourceDefinition"]


def test_every_installed_copy_passes_apiserver_rules(repo_root: Path) -> None:
    copies = _installed_copies(repo_root)
    assert len(copies) >= 6, copies  # crds/ and the chart's copy at least, three kinds each
    problems = []
    for path in copies:
        for doc in _crd_docs(path):
            problems += [f"{path.relative_to(repo_root)}: {p}" for p in all_problems(_schema(doc), doc["spec"]["names"]["kind"])]
    assert problems == []


def test_check_refuses_a_default_that_needs_nested_defaulting() -> None:
    """The old crdgen output (`default: {}` on an object whose CEL rule reads a defaulted child) is
    exactly what the API server refused; the check must see it."""
    node = {
        "type": "object",
        "properties": {"type": {"type": "string", "default": "lora", "enum": ["lora", "qlora", "full"]}},
        "x-kubernetes-validations": [{"rule": "self.type != 'qlora'", "message": "no qlora"}],
    }
    root = {"type": "object", "properties": {"method": {**node, "default": {}}}}
    problems = default_problems(root, "X")
    assert any("X.method.default" in p and "CEL" in p for p in problems), problems
    # …whereas the emulator, which defaults first, accepts it: why no test saw the bug before.
    assert violations(root, apply_defaults(root, {})) == []


def test_check_refuses_old_crdgen_finetunejob() -> None:
    """Rebuild today's FineTuneJob schema with the old `default: {}` rule and check it is refused with
    the very fields the API server named (method, hyperparameters, dataset.split)."""
    schema = copy.deepcopy(_schema(crdgen.crd("FineTuneJob")))

    def old_defaults(node: dict) -> None:
        for sub in node.get("properties", {}).values():
            if isinstance(sub.get("default"), dict) and sub.get("type") == "object":
                sub["default"] = {}
            old_defaults(sub)

    old_defaults(schema)
    problems = "\n".join(default_problems(schema, "FineTuneJob"))
    for field in (".spec.method.default", ".spec.hyperparameters.default", ".spec.dataset.split.default"):
        assert f"FineTuneJob{field}" in problems, problems


def test_check_refuses_unknown_fields_type_errors_and_list_transition_rules() -> None:
    root = {
        "type": "object",
        "properties": {
            "a": {"type": "object", "properties": {"x": {"type": "integer"}}, "default": {"y": 1}},
            "b": {"type": "integer", "default": "3"},
            "c": {"type": "string", "enum": ["p", "q"], "default": "r"},
            "d": {
                "type": "array",
                "items": {"type": "object", "properties": {"z": {"type": "string"}},
                          "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "immutable"}]},
            },
        },
    }
    text = "\n".join(all_problems(root, "X"))
    assert "X.a.y: unknown field in default" in text
    assert "X.b.default: '3' is not of type integer" in text
    assert "X.c.default" in text and "'r' is not one of" in text
    assert "X.d[]: transition rule" in text
