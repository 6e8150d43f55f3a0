"""The prometheusAddress deprecation (issue 24): the old field is still accepted (models and CRD schema), converted in
one place (`provider_ref`; nothing else in the operator or the CLI reads it), and warned about (the DeprecatedFields
condition and one Warning event per change; `kubectl tuneloop validate` prints a warning). The drift reason
`PrometheusError` is no longer written (`ProviderError`)."""

from __future__ import annotations

import argparse
import datetime as dt
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from tuneloop.api import deprecations
from tuneloop.api.conditions import DEPRECATED_REASONS, DriftReason, find_condition
from tuneloop.api.rollout import AnalysisSpec, Rollout
from tuneloop.api.schedule import FineTuneSchedule, PrometheusTrigger
from tuneloop.api.schema_check import check_document
from tuneloop.cli import validate_cmd

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[3]
T0 = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
ADDRESS = "http://prometheus.monitoring:9090"


def _rollout(**analysis: object) -> dict:
    doc = yaml.safe_load((REPO / "manifests" / "samples" / "rollout.yaml").read_text())
    doc["spec"].setdefault("analysis", {}).update(analysis)
    return doc


def _schedule(*triggers: dict) -> dict:
    doc = yaml.safe_load((REPO / "manifests" / "samples" / "finetuneschedule.yaml").read_text())
    doc["spec"]["triggers"] = {"prometheus": list(triggers)}
    return doc


# --- accepted ---------------------------------------------------------------------------------------
def test_the_crd_schema_and_the_models_still_accept_the_old_field():
    ro = _rollout(prometheusAddress=ADDRESS)
    assert check_document(ro) == []
    assert Rollout.model_validate(ro).spec.analysis.prometheus_address == ADDRESS
    sched = _schedule({"name": "drift", "query": "up", "prometheusAddress": ADDRESS})
    assert check_document(sched) == []
    assert FineTuneSchedule.model_validate(sched).spec.triggers.prometheus[0].prometheus_address == ADDRESS
    both = _rollout(prometheusAddress=ADDRESS, provider="team-a")
    assert any("not both" in p.message for p in check_document(both))  # the CEL rule and its twin still hold


# --- converted --------------------------------------------------------------------------------------
@given(provider=st.one_of(st.none(), st.sampled_from(["default", "team-a"])), address=st.one_of(st.none(), st.just(ADDRESS)))
def test_provider_ref_is_the_provider_else_the_converted_address(provider, address):
    if provider is not None and address is not None:
        return  # refused by the models (above)
    want = provider if provider is not None else address
    assert AnalysisSpec(provider=provider, prometheus_address=address).provider_ref == want
    assert PrometheusTrigger(name="t", query="up", provider=provider, prometheus_address=address).provider_ref == want


def test_only_the_conversion_reads_the_old_field():
    readers = []
    for root in (REPO / "operator" / "tuneloop" / "operator", REPO / "operator" / "tuneloop" / "cli"):
        for path in root.rglob("*.py"):
            if re.search(r"\bprometheus_address\b", path.read_text()):
                readers.append(str(path.relative_to(REPO)))
    assert readers == [], f"read provider_ref instead: {readers}"


# --- warned -----------------------------------------------------------------------------------------
def test_deprecated_fields_names_each_use_with_its_replacement_and_the_removal():
    assert deprecations.deprecated_fields("Rollout", _rollout()["spec"]) == []
    [use] = deprecations.deprecated_fields("Rollout", _rollout(prometheusAddress=ADDRESS)["spec"])
    assert use.path == "spec.analysis.prometheusAddress" and "spec.analysis.provider" in use.message()
    assert "tuneloop.dev/v1beta1" in use.message()
    sched = _schedule({"name": "a", "query": "up", "provider": "default"}, {"name": "b", "query": "up", "prometheusAddress": ADDRESS})
    assert [u.path for u in deprecations.deprecated_fields("FineTuneSchedule", sched["spec"])] == [
        "spec.triggers.prometheus[1].prometheusAddress"]
    assert deprecations.deprecated_fields("FineTuneJob", {"analysis": {"prometheusAddress": ADDRESS}}) == []
    assert deprecations.deprecated_fields("Rollout", None) == []


def test_note_sets_the_condition_and_asks_for_one_event_per_change():
    uses = deprecations.deprecated_fields("Rollout", _rollout(prometheusAddress=ADDRESS)["spec"])
    conds: list = []
    assert deprecations.note(conds, [], now=T0, generation=1) is None and conds == []  # never used: no condition
    first = deprecations.note(conds, uses, now=T0, generation=1)
    assert first is not None and "spec.analysis.prometheusAddress" in first
    cond = find_condition(conds, "DeprecatedFields")
    assert (cond.status, cond.reason, cond.message) == ("True", "DeprecatedField", first)
    assert deprecations.note(conds, uses, now=T0 + dt.timedelta(seconds=30), generation=1) is None  # no event per tick
    assert deprecations.note(conds, [], now=T0 + dt.timedelta(minutes=1), generation=2) is None
    cond = find_condition(conds, "DeprecatedFields")
    assert (cond.status, cond.reason) == ("False", "NoDeprecatedFields")
    assert deprecations.note(conds, uses, now=T0 + dt.timedelta(minutes=2), generation=3) == first  # set again: a new event


def test_validate_prints_a_warning_and_still_passes(tmp_path, capsys):
    path = tmp_path / "rollout.yaml"
    path.write_text(yaml.safe_dump(_rollout(prometheusAddress=ADDRESS)))
    assert validate_cmd.run(argparse.Namespace(files=[path], cluster=False)) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "spec.analysis.prometheusAddress is deprecated" in err and "spec.analysis.provider" in err
    path.write_text(yaml.safe_dump(_rollout(provider="default")))
    assert validate_cmd.run(argparse.Namespace(files=[path], cluster=False)) == 0
    assert "deprecated" not in capsys.readouterr().err


# --- the drift reason -------------------------------------------------------------------------------
def test_the_provider_error_reason_is_provider_neutral_and_the_old_one_documented():
    assert DriftReason.PROVIDER_ERROR.value == "ProviderError"
    assert DEPRECATED_REASONS == {"PrometheusError": "ProviderError"}
    assert "PrometheusError" not in {r.value for r in DriftReason}
    reference = (REPO / "docs" / "api-reference.md").read_text()
    deprecated = reference[reference.index("## Deprecations"):]
    assert "`PrometheusError`" in deprecated and "`ProviderError`" in deprecated and "prometheusAddress" in deprecated
    # no alert, dashboard or doc (outside the deprecation notes) matches the old reason
    for root in ("charts", "manifests"):
        for path in (REPO / root).rglob("*"):
            if path.is_file() and path.suffix in (".yaml", ".yml", ".json", ".tpl", ".md"):
                assert "PrometheusError" not in path.read_text(), path

