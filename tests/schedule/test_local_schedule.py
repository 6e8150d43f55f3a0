"""`kubectl tuneloop local run SCHEDULE.yaml`: one iteration of a FineTuneSchedule's loop on this machine, on the tiny
random model. Iteration 1 has no champion and wins on its own gates; iteration 2 (deliberately useless: learning rate
~0, one step) is compared with iteration 1 as the champion, loses, and the terminal, the report and the ledger say so;
a rerun on the same spec and data is not retrained; bad input is refused with every problem at once."""

from __future__ import annotations

import copy
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


SERVING_GATE = {"metric": "perplexity", "reference": "serving", "confidenceBound": True, "maxRegression": 0.0}


def schedule_doc(model: Path, **hyper) -> dict:
    spec = tiny_spec(model, "unused", "unused", **{
        "dataset": {"split": {"validation": 0.1, "test": 0.25, "seed": 1}},
        "hyperparameters": {"maxSteps": 16, "learningRate": 1e-2, **hyper},
        "evaluation": {"maxNewTokens": 4, "batchSize": 16, "metrics": ["perplexity"], "forgetting": {"enabled": False},
                       "gates": [{"metric": "perplexity", "maxRegression": 1000.0}, SERVING_GATE]},
    })
    spec["dataset"]["train"] = {"pvc": {"claimName": "datasets", "path": "support"}}  # the claim, read under --data-dir
    spec["output"] = {"pvc": {"claimName": "models", "path": "bot"}}
    return {"apiVersion": "tuneloop.dev/v1alpha1", "kind": "FineTuneSchedule", "metadata": {"name": "bot", "namespace": "ml"},
            "spec": {"schedule": "0 3 * * 1", "timeZone": "Europe/Berlin",
                     "triggers": {"newData": {"claimName": "datasets", "glob": "support/**/*.jsonl"}},
                     "handOff": {"rollout": {"name": "bot"}}, "jobTemplate": {"spec": spec}}}


def write(tmp: Path, doc: dict, name: str = "schedule.yaml") -> Path:
    path = tmp / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_two_iterations_the_second_loses_to_the_first_as_champion(tmp_path, tiny, capsys, monkeypatch):
    data = tmp_path / "claim"
    write_jsonl(data / "support" / "tickets.jsonl", chat_records(64))
    monkeypatch.setenv("TUNELOOP_DATA_DIR", str(data))  # restored after the test (--data-dir sets it for the run)
    root = tmp_path / "runs"
    base = ["local", "run", "--workdir", str(root), "--data-dir", str(data), "--no-progress"]

    # iteration 1: no champion, the serving gate is dropped, its own gates pass → it wins
    first = write(tmp_path, schedule_doc(tiny))
    assert cli([*base[:2], str(first), *base[2:]]) == 0
    out = capsys.readouterr().out
    assert "iteration 001" in out and "champion: none (first iteration)" in out
    assert "iteration 001 (bot-" in out and "wins: outcome HandedOff" in out
    it1 = root / "001"
    job1 = yaml.safe_load((it1 / "finetunejob.yaml").read_text())
    assert job1["metadata"]["name"] == "bot-001" and job1["spec"]["registry"]["modelName"] == "bot"
    assert "serving" not in job1["spec"]["evaluation"]
    assert [g.get("reference", "base") for g in job1["spec"]["evaluation"]["gates"]] == ["base"]
    ledger = json.loads((root / "schedule.json").read_text())["iterations"]
    assert ledger[0]["outcome"] == "HandedOff" and ledger[0]["verdict"] == "Passed" and ledger[0]["champion"] is None
    assert ledger[0]["data"]["digest"].startswith("sha256:") and ledger[0]["data"]["files"] == 1
    mv1 = ledger[0]["modelVersion"]
    assert "There is no champion yet" in (it1 / "report" / "report.md").read_text()

    # iteration 2: deliberately useless (lr ~0, one step) on the same data, against iteration 1 as the champion
    worse = write(tmp_path, schedule_doc(tiny, maxSteps=1, learningRate=1e-12), "worse.yaml")
    assert cli([*base[:2], str(worse), *base[2:]]) == 0
    out = capsys.readouterr().out
    assert f"champion: iteration 001 ({mv1}) (the latest iteration that won)" in out
    assert "Data unchanged since iteration 001" in out
    assert "does not replace the champion: outcome Rejected, verdict Failed, serving outcome Worse" in out
    assert f"the champion stays iteration 001 ({mv1})" in out
    assert "serving (champion)" in out  # the metrics table has the champion's column
    it2 = root / "002"
    job2 = yaml.safe_load((it2 / "finetunejob.yaml").read_text())
    assert job2["spec"]["evaluation"]["serving"] == {"modelVersion": mv1, "evalJson": str(it1 / "eval.json")}
    rec = json.loads((it2 / "eval.json").read_text())["record"]
    assert rec["serving"]["modelVersion"] == mv1 and rec["serving"]["outcome"] == "Worse" and rec["serving"]["metric"] == "perplexity"
    serving_gate = next(g for g in rec["gates"] if g["reference"] == "serving")
    assert not serving_gate["passed"] and "serving" in serving_gate["reason"]
    report = (it2 / "report" / "report.md").read_text()
    assert f"It lost to {mv1}, the version it would replace" in report  # which won, and why (the paired difference)
    assert "perplexity: tuned" in report and "→ Worse" in report
    assert f"It challenges the champion, iteration 001 ({mv1})" in report
    assert f"lose at most 0.0 against the serving version (the champion `{mv1}`) at the 95 % bound" in report
    ledger = json.loads((root / "schedule.json").read_text())["iterations"]
    assert [e["outcome"] for e in ledger] == ["HandedOff", "Rejected"]
    assert ledger[1]["champion"]["iteration"] == "001" and ledger[1]["servingOutcome"] == "Worse"
    assert ledger[1]["data"]["digest"] == ledger[0]["data"]["digest"]
    assert "does not replace the champion" in ledger[1]["message"]

    # the same spec and data again: not retrained, the recorded outcome is repeated
    assert cli([*base[:2], str(worse), *base[2:]]) == 0
    out = capsys.readouterr().out
    assert "iteration 002 of bot already ran on this spec and data" in out and "--force starts a new iteration" in out
    assert len(json.loads((root / "schedule.json").read_text())["iterations"]) == 2

    # new data: a new iteration is due, and it says what changed (stopped after prepare to stay fast)
    write_jsonl(data / "support" / "more.jsonl", chat_records(8, seed=9))
    assert cli([*base[:2], str(worse), *base[2:], "--to-stage", "prepare"]) == 0
    out = capsys.readouterr().out
    assert "iteration 003" in out and "New data since iteration 002" in out and "(1 → 2 file(s)" in out
    assert "stopped before its report: rerun the same command to finish it" in out
    ledger = json.loads((root / "schedule.json").read_text())["iterations"]
    assert len(ledger) == 3 and "outcome" not in ledger[2] and ledger[2]["champion"]["iteration"] == "001"

    # the same command finishes the unfinished iteration (still against 001: 002 lost)
    assert cli([*base[:2], str(worse), *base[2:]]) == 0
    out = capsys.readouterr().out
    assert "resuming 003" in out and f"the champion stays iteration 001 ({mv1})" in out
    ledger = json.loads((root / "schedule.json").read_text())["iterations"]
    assert len(ledger) == 3 and ledger[2]["outcome"] == "Rejected" and ledger[2]["data"]["files"] == 2

    # --force: a new iteration although nothing changed
    assert cli([*base[:2], str(worse), *base[2:], "--force", "--to-stage", "prepare"]) == 0
    out = capsys.readouterr().out
    assert "iteration 004" in out and "--force: a new iteration on the same spec and data" in out
    assert "Data unchanged since iteration 003" in out


def test_an_invalid_template_is_refused_with_every_problem_at_once(tmp_path, tiny, capsys):
    doc = schedule_doc(tiny)
    spec = doc["spec"]["jobTemplate"]["spec"]
    spec["hyperparameters"]["learningRat"] = 1e-3
    spec["registry"] = {"version": "v1"}
    spec["dataset"]["split"]["test"] = 2.0
    doc["spec"]["timeZone"] = "Europe/Atlantis"
    path = write(tmp_path, doc)
    assert cli(["local", "run", str(path), "--workdir", str(tmp_path / "runs"), "--no-progress"]) == 42
    err = capsys.readouterr().err
    assert "problem(s) in" in err
    for where in ("spec.jobTemplate.spec.hyperparameters.learningRat", "spec.jobTemplate.spec.dataset.split.test", "spec.timeZone"):
        assert where in err, where
    assert "did you mean `learningRate`?" in err
    assert not (tmp_path / "runs").exists()


def test_missing_local_data_and_a_bad_champion_are_named(tmp_path, tiny, capsys):
    path = write(tmp_path, schedule_doc(tiny))
    assert cli(["local", "run", str(path), "--workdir", str(tmp_path / "runs"), "--data-dir", str(tmp_path / "nowhere")]) == 42
    err = capsys.readouterr().err
    assert "spec.jobTemplate.spec.dataset.train.pvc: claim datasets path support is read from" in err and "--data-dir DIR" in err

    write_jsonl(tmp_path / "claim" / "support" / "t.jsonl", chat_records(16))
    assert cli(["local", "run", str(path), "--workdir", str(tmp_path / "runs"), "--data-dir", str(tmp_path / "claim"),
                "--champion", str(tmp_path)]) == 42
    err = capsys.readouterr().err
    assert "eval.json" in err and "a champion is the work directory of an earlier local run" in err


def test_champion_is_for_schedules(tmp_path, tiny, capsys):
    job = copy.deepcopy(schedule_doc(tiny)["spec"]["jobTemplate"]["spec"])
    path = write(tmp_path, {"apiVersion": "tuneloop.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "j"}, "spec": job})
    assert cli(["local", "run", str(path), "--champion", str(tmp_path)]) == 2
    assert "--champion is for a FineTuneSchedule" in capsys.readouterr().err


def test_a_data_link_out_of_the_data_directory_is_named_not_a_traceback(tmp_path, tiny, capsys):
    """The digest refuses to read outside its root (issue 20 item 13); the local loop says so and starts nothing."""
    import os

    path = write(tmp_path, schedule_doc(tiny))
    write_jsonl(tmp_path / "claim" / "support" / "t.jsonl", chat_records(16))
    (tmp_path / "secret.jsonl").write_text("{}\n")
    os.symlink(tmp_path / "secret.jsonl", tmp_path / "claim" / "support" / "x.jsonl")
    assert cli(["local", "run", str(path), "--workdir", str(tmp_path / "runs"), "--data-dir", str(tmp_path / "claim")]) == 42
    err = capsys.readouterr().err
    assert "cannot read the data's digest" in err and "outside the data root" in err
    assert not (tmp_path / "runs").exists()
