"""`kubectl tuneloop local run SWEEP.yaml` on the tiny random model: the trials one after another with the operator's
study and pruner (a trial that learns nothing is pruned on its live validation loss), resumable after Ctrl-C from the
journal without repeating or losing a trial, then the best trial's final run on the test split (its ModelVersion names
the sweep and trial) and the study report (table, intervals, importance and slice PNGs, what the winner changes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from tuneloop.api.sweep import FineTuneSweep
from tuneloop.cli import local_sweep
from tuneloop.cli.main import main as cli
from tuneloop.operator.sweep import study
from tuneloop_trainer.testing import chat_records, make_tiny_model, tiny_spec, write_jsonl

pytestmark = pytest.mark.unit

GOOD, BAD = 2e-2, 1e-12  # learning rates: one that learns, one that learns nothing


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny")


def sweep_doc(model: Path, data: Path, seed: int) -> dict:
    spec = tiny_spec(model, data, "unused", **{
        "dataset": {"split": {"validation": 0.2, "test": 0.2, "seed": 1}},
        "hyperparameters": {"maxSteps": 6, "evalSteps": 2, "saveSteps": 2, "learningRate": 1e-3},
        "evaluation": {"maxNewTokens": 4, "batchSize": 16, "metrics": ["perplexity"], "forgetting": {"enabled": False},
                       "gates": [{"metric": "perplexity", "maxRegression": 1000.0}]},
    })
    return {"apiVersion": "tuneloop.dev/v1alpha1", "kind": "FineTuneSweep", "metadata": {"name": "sw"},
            "spec": {"jobTemplate": {"spec": spec}, "objective": {"metric": "perplexity"}, "maxTrials": 3,
                     "searchSpace": [{"path": "hyperparameters.learningRate", "categorical": {"choices": [GOOD, 1e-2, BAD]}}],
                     "sampler": {"type": "grid", "seed": seed},
                     "pruner": {"type": "median", "warmupSteps": 2, "startupTrials": 1}}}


def seed_with_bad_last() -> int:
    """A grid seed whose order runs the useless learning rate last (after complete trials it is compared with)."""
    for seed in range(100):
        doc = {"apiVersion": "tuneloop.dev/v1alpha1", "kind": "FineTuneSweep", "metadata": {"name": "x"},
               "spec": sweep_doc(Path("/m"), Path("/d"), seed)["spec"]}
        order = [p["hyperparameters.learningRate"] for p in study.grid(FineTuneSweep.model_validate(doc).spec)]
        if order[0] == GOOD and order[-1] == BAD:
            return seed
    raise AssertionError("no seed")


def test_local_sweep_prunes_resumes_and_reports(tmp_path, tiny, capsys, monkeypatch):
    data = tmp_path / "train.jsonl"
    write_jsonl(data, chat_records(80))
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep_doc(tiny, data, seed_with_bad_last()), sort_keys=False))
    root = tmp_path / "runs"
    args = ["local", "run", str(path), "--workdir", str(root), "--no-progress"]

    # Ctrl-C during trial 1's training (at its first validation loss): the sweep stops, the journal keeps it Running
    real = local_sweep.Sweep._pruner

    def interrupting(self, t, pruned):
        hook = real(self, t, pruned)

        def call(event):
            if t.number == 1 and event.get("event") == "eval":
                raise KeyboardInterrupt
            hook(event)

        return call

    monkeypatch.setattr(local_sweep.Sweep, "_pruner", interrupting)
    assert cli(args) != 0
    journal = json.loads((root / "sweep.json").read_text())
    assert [(t["name"], t["state"]) for t in journal["trials"]] == [("sw-t000", "Complete"), ("sw-t001", "Running")]
    assert journal["trials"][0]["split"] == "validation"
    asked = [t["params"] for t in journal["trials"]]
    capsys.readouterr()

    # resumed: trial 1 continues with the same parameters, trial 2 (learns nothing) is pruned, the best is run on test
    monkeypatch.setattr(local_sweep.Sweep, "_pruner", real)
    assert cli(args) == 0
    out = capsys.readouterr().out
    journal = json.loads((root / "sweep.json").read_text())
    trials = journal["trials"]
    assert [t["params"] for t in trials[:2]] == asked and len(trials) == 3
    assert trials[2]["params"]["hyperparameters.learningRate"] == BAD
    assert trials[2]["state"] == "Pruned" and "above the median" in trials[2]["message"]
    assert not (root / "sw-t002" / "eval.json").exists()  # a pruned trial is not evaluated
    job0 = yaml.safe_load((root / "sw-t000" / "finetunejob.yaml").read_text())
    assert job0["spec"]["evaluation"]["split"] == "validation"
    best = yaml.safe_load((root / "best" / "finetunejob.yaml").read_text())
    assert best["spec"]["evaluation"]["split"] == "test"
    mv = yaml.safe_load((root / "best" / "report" / "modelversion.yaml").read_text())
    winner = min((t for t in trials if t["state"] == "Complete"), key=lambda t: t["value"])
    assert mv["spec"]["lineage"]["sweep"]["name"] == "sw" and mv["spec"]["lineage"]["sweep"]["trial"] == winner["name"]
    ev = json.loads((root / "best" / "eval.json").read_text())["record"]
    assert ev.get("split", "test") == "test"
    # the final run evaluates the winner's own weights (the ones its validation value was measured on): not retrained
    run = json.loads((root / "best" / "local-run.json").read_text())
    assert [h["trainedIn"] for h in run["history"] if "trainedIn" in h] == [str(root / winner["name"])]
    assert [s["stage"] for s in run["stages"]] == ["evaluate", "export", "report"]  # no prepare, no train
    for f in ("adapter_model.safetensors",):
        assert (root / "best" / "artifact" / f).read_bytes() == (root / winner["name"] / "artifact" / f).read_bytes()
    assert "reuses" in out and winner["name"] in out
    report = (root / "report.md").read_text()
    assert "| trial | state | hyperparameters.learningRate | perplexity | 95 % interval |" in report
    assert "Pruned" in report and f"## Best trial: {winner['name']}" in report
    assert "- `hyperparameters.learningRate`: 0.001 →" in report and "Final run on the **test split**" in report
    assert (root / "slice.png").stat().st_size > 0
    assert "best trial" in out

    # a third run changes nothing: every trial ended, the final run's stages are done
    assert cli(args) == 0
    assert len(json.loads((root / "sweep.json").read_text())["trials"]) == 3


def test_the_study_report_from_a_journal(tmp_path):
    """The report on its own (no training): importances and both figures once two trials completed; an unchanged
    parameter is said to be unchanged; a test-split value is listed but never the winner."""
    from tuneloop.api.sweep import SweepTrial

    doc = sweep_doc(Path("/m"), Path("/d"), 0)
    doc["spec"]["sampler"] = {"type": "tpe"}
    doc["spec"]["searchSpace"] = [{"path": "hyperparameters.learningRate", "float": {"low": 1e-4, "high": 1e-1, "log": True}},
                                  {"path": "method.lora.r", "categorical": {"choices": [4, 8]}}]
    sw = FineTuneSweep.model_validate(doc)
    trials = [SweepTrial(number=i, name=f"sw-t00{i}", params={"hyperparameters.learningRate": lr, "method.lora.r": r},
                         state="Complete", value=v, split=split)
              for i, (lr, r, v, split) in enumerate([(1e-3, 8, 50.0, "validation"), (1e-2, 4, 40.0, "validation"),
                                                     (3e-2, 8, 45.0, "validation"), (5e-2, 4, 10.0, "test")])]
    from tuneloop.operator.sweep import decide

    winner = decide.best(trials, "minimize")
    assert winner is not None and winner.name == "sw-t001"
    path = local_sweep.write_report(tmp_path, sw, trials, {"intervals": {"sw-t001": [38.0, 42.0]}}, winner, None)
    text = path.read_text()
    assert "## Best trial: sw-t001" in text and "(95 % interval [38, 42])" in text
    assert "- `hyperparameters.learningRate`: 0.001 → 0.01" in text and "- `method.lora.r`: 8 → 4" in text
    assert "| 3 | Complete | 0.05 | 4 | 10 |" in text  # listed with its value, not the winner
    assert "## Parameter importance" in text and "importance.png" in text
    assert (tmp_path / "importance.png").stat().st_size > 0 and (tmp_path / "slice.png").stat().st_size > 0
