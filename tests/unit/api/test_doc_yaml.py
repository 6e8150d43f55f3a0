"""Every YAML document in docs/continuous-improvement.md is valid: tuneloop kinds through the CRD schema, the CEL rules
and the models (as `kubectl tuneloop validate` checks them); the PrometheusRule excerpt is the shipped rule."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from tuneloop.api import KINDS
from tuneloop.api.schema_check import check_document

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
PAGE = ROOT / "docs" / "continuous-improvement.md"
SHIPPED_RULES = ROOT / "manifests" / "monitoring" / "monitoring.yaml"


def yaml_blocks(path: Path) -> list[str]:
    return re.findall(r"^```yaml\n(.*?)^```", path.read_text(), flags=re.S | re.M)


def documents() -> list[dict]:
    return [d for block in yaml_blocks(PAGE) for d in yaml.safe_load_all(block) if d is not None]


def shipped_alerts() -> dict[str, dict]:
    out = {}
    for doc in yaml.safe_load_all(SHIPPED_RULES.read_text()):
        if doc and doc.get("kind") == "PrometheusRule":
            for group in doc["spec"]["groups"]:
                out.update({r["alert"]: {**r, "group": group["name"]} for r in group["rules"] if "alert" in r})
    return out


def test_the_page_shows_the_whole_loop():
    kinds = [d["kind"] for d in documents()]
    assert kinds.count("FineTuneSchedule") == 2 and "Rollout" in kinds and "PrometheusRule" in kinds
    assert len(yaml_blocks(PAGE)) == len(kinds)  # one document per block, none skipped


@pytest.mark.parametrize("doc", [d for d in documents() if d["kind"] in KINDS], ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_each_tuneloop_document_validates(doc):
    assert [str(p) for p in check_document(doc, PAGE.name)] == []
    KINDS[doc["kind"]].model_validate(doc)


def test_the_schedule_feeds_the_rollout_on_the_page_and_watches_its_gauge():
    docs = documents()
    schedule = next(d for d in docs if d["kind"] == "FineTuneSchedule")
    rollout = next(d for d in docs if d["kind"] == "Rollout")
    assert schedule["spec"]["handOff"]["rollout"]["name"] == rollout["metadata"]["name"]
    assert schedule["metadata"]["namespace"] == rollout["metadata"]["namespace"]
    query = schedule["spec"]["triggers"]["prometheus"][0]["query"]
    assert "tuneloop_serving_drift" in query and f'rollout="{rollout["metadata"]["name"]}"' in query
    assert "driftWatch" in rollout["spec"]


def test_the_alert_excerpt_is_the_shipped_rule():
    shipped = shipped_alerts()
    rule_doc = next(d for d in documents() if d["kind"] == "PrometheusRule")
    shown = [(g["name"], r) for g in rule_doc["spec"]["groups"] for r in g["rules"]]
    assert {r["alert"] for _, r in shown} == {"TuneloopServingDrifted", "TuneloopServingDegraded"}
    for group, rule in shown:
        real = shipped[rule["alert"]]
        assert group == real["group"]
        assert " ".join(rule["expr"].split()) == " ".join(real["expr"].split())
        assert rule["for"] == real["for"] and rule["labels"] == real["labels"]
