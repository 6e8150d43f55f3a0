"""Refused at admission (issue 20 "what to build" 4, items 3, 13, 10 and the S3 suspicion): what cannot work is refused
with a clear message by the API server's CEL rules where the rule is local, by the models (`kubectl tuneloop
validate`), and, where the API server cannot see it, by `kubectl tuneloop validate --cluster` and the operator
(Failed, InvalidSpec). Each test is named after the behaviour that was accepted before."""

from __future__ import annotations

import copy

import pytest
import yaml
from pydantic import ValidationError
from tuneloop.api import crdgen
from tuneloop.api.cel_rules import apply_defaults, violations
from tuneloop.api.schedule import FineTuneSchedule
from tuneloop.api.schema_check import check_document
from tuneloop.cli.main import main as cli
from tuneloop.operator.schedule import admission

from . import samples

pytestmark = pytest.mark.unit


def cel(doc: dict) -> list[tuple[str, str]]:
    s = crdgen.crd("FineTuneSchedule")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return violations(s, apply_defaults(s, copy.deepcopy(doc)), None)


def model_error(doc: dict) -> str:
    with pytest.raises(ValidationError) as exc:
        FineTuneSchedule.model_validate(doc)
    return str(exc.value)


def template(doc: dict) -> dict:
    return doc["spec"]["jobTemplate"]["spec"]


@pytest.mark.parametrize("cron", ["0 0 30 2 *", "0 0 31 4 *", "0 0 31 2,4,6,9,11 *"])
def test_a_cron_date_that_never_comes_is_refused(cron):
    """Before: it passed `kubectl tuneloop validate` and the API, then every tick raised CroniterBadDateError."""
    doc = samples.schedule(schedule=cron)
    assert "never fires: no date matches its day-of-month and month fields" in model_error(doc)
    assert "spec.schedule" in [p.path for p in check_document(doc, "s.yaml")]
    if "," not in cron:  # the plain forms are refused by the API server too (CEL); lists only by the models
        assert cel(doc) == [("spec.schedule", "schedule names a date that never comes (30 or 31 February, 31 April, June, "
                                              "September or November)")]


@pytest.mark.parametrize("cron", ["0 0 29 2 *", "0 0 30 2 1", "0 0 31 * *"])
def test_a_leap_day_or_a_date_or_weekday_cron_is_accepted(cron):
    doc = samples.schedule(schedule=cron)
    assert cel(doc) == [] and FineTuneSchedule.model_validate(doc)


@pytest.mark.parametrize("glob", ["../*", "support/../../etc/*", "/etc/passwd", ".."])
def test_a_digest_glob_that_escapes_the_claim_is_refused(glob):
    """Before: `../*` was accepted and the digest Job read outside the claim."""
    doc = samples.schedule(triggers={"newData": {"claimName": "datasets", "glob": glob}})
    assert [w for w, _ in cel(doc)] == ["spec.triggers.newData.glob"]
    assert "glob must stay inside the claim" in model_error(doc)


def test_a_glob_with_dots_inside_a_name_is_accepted():
    doc = samples.schedule(triggers={"newData": {"claimName": "datasets", "glob": "drops/v1..v2/**"}})
    assert cel(doc) == [] and FineTuneSchedule.model_validate(doc)


def test_s3_output_on_a_schedule_that_hands_off_to_a_rollout_is_refused():
    """Before: accepted, though the Rollout serves only pvc:// artifacts and the next run reads the champion's
    eval.json from the output claim: no run of it could ever be served."""
    doc = samples.schedule()
    template(doc)["output"] = {"s3": {"uri": "s3://models/support-bot"}}
    assert any("output must be pvc" in m for _, m in cel(doc))
    assert "serves only pvc:// artifacts" in model_error(doc)


def text_schedule(evaluation: dict) -> dict:
    doc = samples.schedule()
    template(doc)["dataset"]["format"] = "text"
    template(doc)["evaluation"] = evaluation
    return doc


@pytest.mark.parametrize("evaluation", [
    {"metrics": ["rougeL", "exactMatch"]},  # no perplexity: nothing a text item can be compared on
    {"metrics": ["perplexity"], "gates": [{"metric": "exactMatch", "reference": "serving", "maxRegression": 0}]},
])
def test_a_text_format_schedule_without_a_comparable_metric_is_refused(evaluation):
    """Before: accepted, and every comparison with the serving version was NotComparable: no second version was ever
    handed off."""
    doc = text_schedule(evaluation)
    assert any("format: text" in m for _, m in cel(doc))
    assert "compares runs with the serving version by perplexity" in model_error(doc)


@pytest.mark.parametrize("evaluation", [
    {}, {"metrics": ["perplexity"]},
    {"metrics": ["rougeL"], "gates": [{"metric": "perplexity", "reference": "serving", "maxRegression": 0.5}]},
])
def test_a_text_format_schedule_that_computes_perplexity_is_accepted(evaluation):
    doc = text_schedule(evaluation)
    assert cel(doc) == [] and FineTuneSchedule.model_validate(doc)


def test_a_template_every_run_of_which_the_operator_would_fail_is_refused_by_validate_cluster(tmp_path, capsys):
    """What the API server cannot see (here: the test split on another claim than the training data; the pods mount
    one): `validate --cluster` names it, and the operator's tick refuses the schedule with the same words."""
    doc = samples.schedule()
    template(doc)["dataset"]["test"] = {"pvc": {"claimName": "other", "path": "test.jsonl"}}
    where, why = admission.first_problem(doc)
    assert where == "spec.jobTemplate.spec.dataset.test.pvc.claimName"
    assert why.startswith("every run's FineTuneJob would fail: all dataset files must be on the same PVC")
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert cli(["validate", str(path)]) == 0  # the schema and CEL cannot see it
    assert cli(["validate", "--cluster", str(path)]) == 1
    err = capsys.readouterr().err
    assert "spec.jobTemplate.spec.dataset.test.pvc.claimName" in err and "the operator would set the schedule Failed" in err
    assert admission.first_problem(samples.schedule()) == ("", "")


def test_a_template_with_an_image_the_admin_does_not_allow_is_refused(tmp_path, capsys):
    """Issue 25, finding 7: the evaluation pod of every run writes the gate verdict, so a template naming an image the
    admin does not allow is refused (the operator: Failed, InvalidSpec; `validate --cluster`: the same words)."""
    from tuneloop.operator.settings import OperatorSettings

    doc = samples.schedule()
    template(doc)["image"] = "ghcr.io/mallory/evaluator:latest"
    where, why = admission.first_problem(doc, OperatorSettings())
    assert where == "spec.jobTemplate.spec.image" and "ghcr.io/mallory/evaluator:latest" in why
    assert OperatorSettings().trainer_image in why
    assert admission.first_problem(doc, OperatorSettings(allowed_images=["ghcr.io/mallory/*"])) == ("", "")
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert cli(["validate", str(path)]) == 0
    assert cli(["validate", "--cluster", str(path)]) == 1
    err = capsys.readouterr().err
    assert "spec.jobTemplate.spec.image" in err and "not allowed by the platform admin" in err
