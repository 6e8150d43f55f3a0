"""FineTuneSweep input is refused with a clear message (issue 21's 'done when'): an empty or inverted range, a log range
through 0, an objective the evaluation does not compute, a field the template does not have, the test split as objective.
Each refusal is checked twice: by the models (validate, the operator, local run) and by the CRD's CEL rules (the API
server), where a rule can see it."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError
from tuneloop.api import crdgen
from tuneloop.api.cel_rules import apply_defaults, violations
from tuneloop.api.sweep import FineTuneSweep, get_path, has_field, set_path

pytestmark = pytest.mark.unit

SAMPLE = Path(__file__).resolve().parents[2] / "manifests" / "samples" / "sweep-quickstart.yaml"


def sample() -> dict:
    return yaml.safe_load(SAMPLE.read_text())


def refusals(doc: dict) -> tuple[str | None, set[str]]:
    schema = crdgen.crd("FineTuneSweep")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    cel = {m for _, m in violations(schema, apply_defaults(schema, doc))}
    try:
        FineTuneSweep.model_validate(doc)
        return None, cel
    except ValidationError as exc:
        return str(exc), cel


def with_param(param: dict) -> dict:
    doc = sample()
    doc["spec"]["searchSpace"][0] = param
    return doc


@pytest.mark.parametrize(("param", "words"), [
    ({"path": "hyperparameters.learningRate", "float": {"low": 1e-3, "high": 1e-3}}, "low must be below high"),
    ({"path": "hyperparameters.learningRate", "float": {"low": 1e-3, "high": 1e-4}}, "low must be below high"),
    ({"path": "method.lora.r", "int": {"low": 16, "high": 8}}, "low must be below high"),
    ({"path": "hyperparameters.weightDecay", "float": {"low": 0.0, "high": 0.1, "log": True}}, "a log range must lie above 0"),
    ({"path": "hyperparameters.learningRate", "float": {"low": -1e-4, "high": 1e-3, "log": True}}, "a log range must lie above 0"),
])
def test_bad_ranges_are_refused_by_both(param: dict, words: str) -> None:
    model, cel = refusals(with_param(param))
    assert model is not None and words in model
    assert any(words in m for m in cel)


def test_the_test_split_as_objective_is_refused_by_both() -> None:
    doc = sample()
    doc["spec"]["objective"]["split"] = "test"
    model, cel = refusals(doc)
    assert model is not None and "objective.split must be validation" in model
    assert any("objective.split must be validation" in m for m in cel)


def test_an_objective_the_evaluation_does_not_compute_is_refused_by_both() -> None:
    doc = sample()
    doc["spec"]["objective"]["metric"] = "bleu"
    doc["spec"]["jobTemplate"]["spec"]["evaluation"]["metrics"] = ["rougeL", "fieldAccuracy"]
    model, cel = refusals(doc)
    assert model is not None and "objective.metric must be one the evaluation computes" in model
    assert any("objective.metric must be one the evaluation computes" in m for m in cel)
    doc["spec"]["objective"]["metric"] = "accuracy"  # not a metric at all: the enum names the allowed ones
    model, _ = refusals(doc)
    assert model is not None and "rougeL" in model


def test_an_objective_the_evaluation_cannot_compute_without_its_input_is_refused_by_both() -> None:
    doc = sample()
    del doc["spec"]["jobTemplate"]["spec"]["evaluation"]["jsonSchema"]
    doc["spec"]["jobTemplate"]["spec"]["evaluation"]["gates"] = []
    model, cel = refusals(doc)  # fieldAccuracy is scored against the jsonSchema
    assert model is not None and "needs jobTemplate.spec.evaluation.jsonSchema" in model
    assert any("needs jobTemplate.spec.evaluation.jsonSchema" in m for m in cel)
    doc = sample()
    doc["spec"]["objective"]["metric"] = "forgettingAccuracy"
    doc["spec"]["jobTemplate"]["spec"]["evaluation"]["metrics"].append("forgettingAccuracy")
    doc["spec"]["jobTemplate"]["spec"]["evaluation"]["forgetting"]["enabled"] = False
    model, cel = refusals(doc)
    assert model is not None and "needs jobTemplate.spec.evaluation.forgetting.enabled" in model and cel


def test_a_field_the_template_does_not_have_is_refused() -> None:
    """CEL cannot see the template's field types; the models (validate, operator, local run) refuse it."""
    model, _ = refusals(with_param({"path": "hyperparameters.learningRat", "float": {"low": 1e-4, "high": 1e-3}}))
    assert model is not None and "the FineTuneJob template has no such field" in model
    model, _ = refusals(with_param({"path": "method.lora.rank", "int": {"low": 4, "high": 8}}))
    assert model is not None and "method.lora.rank: the FineTuneJob template has no such field" in model
    # only hyperparameters.* and method.lora.* (the CRD's pattern, the model's too)
    model, _ = refusals(with_param({"path": "dataset.split.seed", "int": {"low": 1, "high": 8}}))
    assert model is not None and "should match pattern" in model


def test_a_value_the_template_field_refuses_is_named() -> None:
    model, _ = refusals(with_param({"path": "hyperparameters.learningRate", "float": {"low": 1e-4, "high": 2.0}}))
    assert model is not None and "does not accept 2.0" in model
    model, _ = refusals(with_param({"path": "method.lora.alpha", "categorical": {"choices": [8, "sixteen"]}}))
    assert model is not None and "does not accept 'sixteen'" in model


def test_grid_needs_enumerable_parameters_and_parallelism_fits() -> None:
    doc = sample()
    doc["spec"]["sampler"]["type"] = "grid"
    model, cel = refusals(doc)  # learningRate is a continuous float range
    assert model is not None and "sampler grid enumerates every parameter" in model and cel
    doc["spec"]["searchSpace"][0] = {"path": "hyperparameters.learningRate", "categorical": {"choices": [1e-4, 1e-3]}}
    assert refusals(doc) == (None, set())
    doc["spec"]["parallelism"] = 7
    model, cel = refusals(doc)
    assert model is not None and "parallelism must not exceed maxTrials" in model and cel


def test_the_sample_is_accepted_and_paths_resolve() -> None:
    assert refusals(sample()) == (None, set())
    assert has_field("hyperparameters.earlyStopping.patience") and has_field("method.lora.targetModules")
    assert not has_field("hyperparameters.nope") and not has_field("method.lora.r.x")
    body: dict = {}
    set_path(body, "hyperparameters.earlyStopping.patience", 5)
    assert body == {"hyperparameters": {"earlyStopping": {"patience": 5}}} and get_path(body, "hyperparameters.earlyStopping.patience") == 5
    assert get_path(copy.deepcopy(body), "method.lora.r") is None


def test_the_evaluate_stage_reads_the_split_it_is_told(tmp_path: Path) -> None:
    """evaluation.split: validation makes a trial score the validation split; test stays the default."""
    import json

    from tuneloop_trainer.errors import ConfigError
    from tuneloop_trainer.evaluation.inputs import load_test_split

    def write(name: str, answer: str) -> None:
        rec = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": answer}]}
        (tmp_path / f"{name}.jsonl").write_text(json.dumps(rec) + "\n")

    write("test", "from-test")
    write("validation", "from-validation")
    assert load_test_split(tmp_path, None)[0]["messages"][-1]["content"] == "from-test"
    assert load_test_split(tmp_path, None, "validation")[0]["messages"][-1]["content"] == "from-validation"
    (tmp_path / "validation.jsonl").unlink()
    with pytest.raises(ConfigError, match="no validation split"):
        load_test_split(tmp_path, None, "validation")


def test_validate_cluster_says_what_the_operator_refuses(capsys) -> None:
    """`kubectl tuneloop validate --cluster`: the sample's local paths make every trial's FineTuneJob fail in a cluster;
    the same search over PVC data passes."""
    from tuneloop.cli.main import main as cli

    assert cli(["validate", "--cluster", str(SAMPLE)]) == 1
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert "FineTuneSweep/sweep-quickstart: spec.jobTemplate.spec." in out and "the operator would set the sweep Failed" in out


def test_validate_cluster_accepts_a_cluster_template(tmp_path: Path) -> None:
    from tuneloop.cli.main import main as cli

    doc = sample()
    doc["spec"]["jobTemplate"] = {"spec": yaml.safe_load((SAMPLE.parent / "finetuneschedule.yaml").read_text())["spec"]["jobTemplate"]["spec"]}
    doc["spec"]["objective"] = {"metric": "exactMatch"}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert cli(["validate", "--cluster", str(path)]) == 0


def test_a_finetunejob_scored_on_validation_needs_validation_data() -> None:
    from tuneloop.api import FineTuneJobSpec

    spec = sample()["spec"]["jobTemplate"]["spec"]
    spec["evaluation"]["split"] = "validation"
    FineTuneJobSpec.model_validate(spec)
    spec["dataset"]["split"]["validation"] = 0.0
    with pytest.raises(ValidationError, match="evaluation.split is validation but there is no validation data"):
        FineTuneJobSpec.model_validate(spec)
