"""The CRDs are generated from the models, structural, and do not drift."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from tuneloop.api import KINDS, crdgen
from tuneloop.cli import crds_cmd

pytestmark = pytest.mark.unit

# The only deliberately open maps.
OPEN_MAPS = {
    ("FineTuneJob", ".spec.properties.deepspeed.properties.overrides"),
    ("FineTuneJob", ".spec.properties.evaluation.properties.jsonSchema"),
    # the same two fields of the FineTuneJob spec a FineTuneSchedule embeds as its jobTemplate
    ("FineTuneSchedule", ".spec.properties.jobTemplate.properties.spec.properties.deepspeed.properties.overrides"),
    ("FineTuneSchedule", ".spec.properties.jobTemplate.properties.spec.properties.evaluation.properties.jsonSchema"),
    # and a FineTuneSweep's jobTemplate; a categorical search parameter's choices (any value the template's field takes,
    # no type: structural schemas allow that under x-kubernetes-preserve-unknown-fields) and each trial's params
    ("FineTuneSweep", ".spec.properties.jobTemplate.properties.spec.properties.deepspeed.properties.overrides"),
    ("FineTuneSweep", ".spec.properties.jobTemplate.properties.spec.properties.evaluation.properties.jsonSchema"),
    ("FineTuneSweep", ".spec.properties.searchSpace.items.properties.categorical.properties.choices.items"),
    ("FineTuneSweep", ".status.properties.trials.items.properties.params"),
    # the same schema, carried onto the ModelVersion as its served output contract (issue 22)
    ("ModelVersion", ".spec.properties.outputContract.properties.jsonSchema"),
}


def test_crds_match_models(tmp_path: Path, repo_root: Path) -> None:
    crds_cmd.write(tmp_path, None)
    for name, text in crdgen.render_all().items():
        committed = repo_root / "crds" / name
        assert committed.exists(), f"crds/{name} missing: run `make crds`"
        assert committed.read_text() == (tmp_path / name).read_text(), f"crds/{name} drifted from the models: run `make crds`"
    assert sorted(p.name for p in (repo_root / "crds").glob("*.yaml")) == sorted(crdgen.render_all())


def test_chart_copy_matches_when_chart_exists(repo_root: Path) -> None:
    chart_dir = repo_root / "charts" / "tuneloop" / "templates" / "crds"
    if not (repo_root / "charts" / "tuneloop").exists():
        pytest.skip("no chart in this tree")
    for name, text in crdgen.render_all().items():
        assert (chart_dir / name).read_text() == crdgen.chart_copy(text), f"chart CRD {name} drifted: run `make crds`"


def _walk(node: dict, kind: str, path: str, problems: list[str]) -> None:
    for bad in ("$ref", "anyOf", "oneOf", "allOf", "not", "$defs", "definitions", "title"):
        if bad in node:
            problems.append(f"{kind}{path}: has {bad}")
    if node.get("x-kubernetes-preserve-unknown-fields"):
        if (kind, path) not in OPEN_MAPS:
            problems.append(f"{kind}{path}: unexpected x-kubernetes-preserve-unknown-fields")
        return
    if "type" not in node:
        problems.append(f"{kind}{path}: no type")
        return
    if node["type"] == "object":
        if "properties" not in node and not isinstance(node.get("additionalProperties"), dict) and path != ".metadata":
            problems.append(f"{kind}{path}: object with neither properties nor typed additionalProperties")
        for name, sub in node.get("properties", {}).items():
            _walk(sub, kind, f"{path}.properties.{name}" if path else f".{name}", problems)
        if isinstance(node.get("additionalProperties"), dict):
            _walk(node["additionalProperties"], kind, f"{path}.additionalProperties", problems)
    elif node["type"] == "array":
        if "items" not in node:
            problems.append(f"{kind}{path}: array without items")
        else:
            _walk(node["items"], kind, f"{path}.items", problems)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_schema_is_structural(kind: str) -> None:
    schema = crdgen.crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    problems: list[str] = []
    for name, sub in schema["properties"].items():
        _walk(sub, kind, f".{name}", problems)
    assert problems == []
    found = set()

    def collect(node: dict, path: str) -> None:
        if node.get("x-kubernetes-preserve-unknown-fields"):
            found.add((kind, path))
        for name, sub in node.get("properties", {}).items():
            collect(sub, f"{path}.properties.{name}" if path else f".{name}")
        if isinstance(node.get("items"), dict):
            collect(node["items"], f"{path}.items")

    for name, sub in schema["properties"].items():
        collect(sub, f".{name}")
    assert found == {m for m in OPEN_MAPS if m[0] == kind}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_field_is_described(kind: str) -> None:
    schema = crdgen.crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    missing = []

    def walk(node: dict, path: str) -> None:
        for name, sub in node.get("properties", {}).items():
            if not sub.get("description"):
                missing.append(f"{path}.{name}")
            walk(sub, f"{path}.{name}")
        if "items" in node:
            walk(node["items"], f"{path}[]")

    walk(schema["properties"]["spec"], "spec")
    walk(schema["properties"]["status"], "status")
    assert missing == [], "fields without kubectl-explain text"


def test_crd_metadata(repo_root: Path) -> None:
    docs = {d["spec"]["names"]["kind"]: d for d in (yaml.safe_load(p.read_text()) for p in (repo_root / "crds").glob("*.yaml"))}
    assert set(docs) == {"FineTuneJob", "ModelVersion", "Rollout", "FineTuneSchedule", "FineTuneSweep"}
    cols = {k: [c["name"] for c in d["spec"]["versions"][0]["additionalPrinterColumns"]] for k, d in docs.items()}
    assert cols["FineTuneJob"] == ["Phase", "Progress", "Base model", "Loss", "Tokens/s/GPU", "MFU", "Age"]
    assert cols["ModelVersion"] == ["Model", "Version", "Phase", "Verdict", "Age"]
    assert cols["Rollout"] == ["Mode", "Phase", "Stable", "Candidate", "Weight", "Weights", "Step", "Message", "Age"]
    assert cols["FineTuneSchedule"] == ["Schedule", "Timezone", "Suspend", "Phase", "Last run", "Next", "Serving", "Message", "Age"]
    assert cols["FineTuneSweep"] == ["Phase", "Done", "Running", "Pruned", "Failed", "Objective", "Best", "Best trial", "Message", "Age"]
    for d in docs.values():
        v = d["spec"]["versions"][0]
        assert v["subresources"] == {"status": {}}
        assert d["spec"]["names"]["categories"] == ["tuneloop"]
        assert d["spec"]["names"]["shortNames"]
        assert d["spec"]["group"] == "tuneloop.dev" and v["name"] == "v1alpha1"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_crd_is_a_valid_kubernetes_object(kind: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    kubernetes_validate.validate(crdgen.crd(kind), "1.34", strict=True)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_printer_columns_point_at_schema_fields(kind: str) -> None:
    version = crdgen.crd(kind)["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    for column in version["additionalPrinterColumns"]:
        if column["jsonPath"] == ".metadata.creationTimestamp":
            continue
        node = schema
        for part in column["jsonPath"].strip(".").split("."):
            assert part in node.get("properties", {}), f"{kind} column {column['name']}: {column['jsonPath']} not in schema"
            node = node["properties"][part]
        expected = {"string": "string", "number": "number", "integer": "integer", "date": "string", "boolean": "boolean"}[column["type"]]
        assert node["type"] == expected, column


def test_api_reference_matches_models(repo_root: Path) -> None:
    from tuneloop.api import docgen

    doc = repo_root / "docs" / "api-reference.md"
    assert doc.exists() and doc.read_text() == docgen.render(), "docs/api-reference.md drifted: run `make crds`"
