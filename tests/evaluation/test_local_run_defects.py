"""Issue 12's local-run defects, each with a test that failed before the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from tuneloop.cli.main import main as cli
from tuneloop_trainer.testing import chat_records, make_tiny_model, tiny_spec, write_jsonl

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny")


def job(tmp: Path, model: Path, **overrides) -> Path:
    write_jsonl(tmp / "data" / "train.jsonl", chat_records(48))
    spec = tiny_spec(model, "data/train.jsonl", "out", **{
        "hyperparameters": {"maxSteps": 2},
        "evaluation": {"maxNewTokens": 4, "batchSize": 8, "metrics": ["exactMatch"], "forgetting": {"enabled": False}},
        **overrides,
    })
    spec["output"] = {"pvc": {"claimName": "models", "path": "tiny"}}
    path = tmp / "job.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "tuneloop.dev/v1alpha1", "kind": "FineTuneJob",
                                    "metadata": {"name": "tiny-job", "namespace": "ml"}, "spec": spec}))
    return path


def _mv_name(wd: Path) -> str:
    return yaml.safe_load((wd / "report" / "modelversion.yaml").read_text())["metadata"]["name"]


def test_1_a_completed_run_is_not_retrained_same_weights_same_modelversion(tmp_path, tiny, capsys):
    path, wd = job(tmp_path, tiny), tmp_path / "wd"
    assert cli(["local", "run", str(path), "--workdir", str(wd), "--no-progress"]) == 0
    first_train = (wd / "result-train.json").read_text()
    first_name = _mv_name(wd)
    capsys.readouterr()

    assert cli(["local", "run", str(path), "--workdir", str(wd), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "not retrained" in out and "--force" in out
    assert (wd / "result-train.json").read_text() == first_train  # training did not run again
    assert _mv_name(wd) == first_name  # same weights → same ModelVersion id
    log = json.loads((wd / "local-run.json").read_text())
    assert [s["stage"] for s in log["stages"]] == ["evaluate", "report"] and len(log["history"]) == 1
    report = (wd / "report" / "report.md").read_text()
    assert "took 2 runs in this work directory" in report  # the cost counts every run

    assert cli(["local", "run", str(path), "--workdir", str(wd), "--no-progress", "--force"]) == 0
    assert "not retrained" not in capsys.readouterr().out
    assert json.loads((wd / "local-run.json").read_text())["history"] == []  # --force starts over


def test_1_a_changed_spec_retrains(tmp_path, tiny, capsys):
    path, wd = job(tmp_path, tiny), tmp_path / "wd"
    assert cli(["local", "run", str(path), "--workdir", str(wd), "--no-progress", "--to-stage", "train"]) == 0
    capsys.readouterr()
    assert cli(["local", "run", str(path), "--workdir", str(wd), "--no-progress", "--to-stage", "train", "--max-steps", "1"]) == 0
    assert "not retrained" not in capsys.readouterr().out
