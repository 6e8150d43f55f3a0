"""The chart's PrometheusRule, checked and unit-tested with promtool (Debian package `prometheus`)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from ._support import objects, one

pytestmark = [
    pytest.mark.unit,
    pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed: apt-get install -y prometheus"),
]

TESTS = Path(__file__).resolve().parent / "alerts" / "tuneloop-alerts.test.yaml"


def _rules(values: dict | None = None) -> dict:
    rule = one(objects(values), "PrometheusRule")
    return {"groups": rule["spec"]["groups"]}


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def rules_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("rules")
    (d / "rules.yaml").write_text(yaml.safe_dump(_rules(), sort_keys=False))
    shutil.copy(TESTS, d / TESTS.name)
    return d


def test_promtool_check_rules(rules_dir):
    out = _promtool("check", "rules", "rules.yaml", cwd=rules_dir)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 10 rules found" in out.stdout


def test_promtool_check_rules_with_custom_values(tmp_path):
    values = {"monitoring": {"prometheusRule": {"trainingStalledMinutes": 5, "rolloutPausedFor": "2h30m",
                                                "reconcileErrorsPerMinute": 0.5, "operatorDownFor": "1m",
                                                "additionalLabels": {"team": "ml"}}}}
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(_rules(values), sort_keys=False))
    out = _promtool("check", "rules", "rules.yaml", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_unit_tests_pass(rules_dir):
    out = _promtool("test", "rules", TESTS.name, cwd=rules_dir)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_promtool_unit_tests_catch_a_broken_rule(tmp_path, rules_dir):
    """Mutation check: the tests fail when the stall window is ignored."""
    broken = (rules_dir / "rules.yaml").read_text().replace("== 0", "== 1")
    (tmp_path / "rules.yaml").write_text(broken)
    shutil.copy(TESTS, tmp_path / TESTS.name)
    out = _promtool("test", "rules", TESTS.name, cwd=tmp_path)
    assert out.returncode != 0 and "TuneloopTrainingStalled" in out.stdout + out.stderr


def test_every_alert_has_a_firing_and_a_quiet_case():
    alerts = {r["alert"] for g in _rules()["groups"] for r in g["rules"]}
    assert alerts == {"TuneloopFineTuneJobFailed", "TuneloopTrainingStalled", "TuneloopRolloutRolledBack",
                      "TuneloopAnalysisInconclusive", "TuneloopRolloutPausedTooLong", "TuneloopServingDrifted", "TuneloopServingDegraded", "TuneloopOperatorDown",
                      "TuneloopReconcileErrorsRising", "TuneloopSweepStalled"}
    fires, quiet = set(), set()
    for case in yaml.safe_load(TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check["exp_alerts"] else quiet).add(check["alertname"])
    assert fires == alerts and quiet == alerts


def test_every_alert_is_documented():
    for group in _rules()["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in {"info", "warning", "critical"}
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_dashboard_queries_are_valid_promql(tmp_path):
    """promtool parses every dashboard query (as recording rules, Grafana variables filled in)."""
    from .test_metric_names import dashboard_queries

    exprs = [e for e in dashboard_queries() if not e.startswith("label_values(")]
    filled = [e.replace("$__rate_interval", "5m").replace('"$namespace"', '".*"').replace('"$finetunejob"', '".*"')
              .replace('"$rollout"', '".*"') for e in exprs]
    assert not [e for e in filled if "$" in e]
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(filled)]}]}
    (tmp_path / "dashboard.yaml").write_text(yaml.safe_dump(rules))
    out = _promtool("check", "rules", "dashboard.yaml", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    broken = {"groups": [{"name": "d", "rules": [{"record": "d:x", "expr": "sum by (le (rate(x[5m]))"}]}]}
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(broken))
    assert _promtool("check", "rules", "broken.yaml", cwd=tmp_path).returncode != 0
