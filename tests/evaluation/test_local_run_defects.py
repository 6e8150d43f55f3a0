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
    assert [s["stage"] for s in log["stages"]] == ["report"] and len(log["history"]) == 1  # evaluation reused too (issue 19)
    report = (wd / "report" / "report.md").read_text()
    assert "took 2 runs in this work directory" in report  # the cost counts every run

    # defect 3: the local run records where the artifact really is, and `report DIR` shows the local report
    mv = yaml.safe_load((wd / "report" / "modelversion.yaml").read_text())
    assert mv["spec"]["artifact"]["uri"] == f"{wd.resolve().as_uri()}/artifact"  # not pvc://models/tiny/artifact
    assert mv["spec"]["report"]["uri"] == f"{wd.resolve().as_uri()}/report/report.md"
    capsys.readouterr()
    assert cli(["report", str(wd)]) == 0
    assert capsys.readouterr().out == report
    assert cli(["report", str(tmp_path)]) == 1 and "does not exist" in capsys.readouterr().err

    assert cli(["local", "run", str(path), "--workdir", str(wd), "--no-progress", "--force"]) == 0
    assert "not retrained" not in capsys.readouterr().out
    assert json.loads((wd / "local-run.json").read_text())["history"] == []  # --force starts over


def test_1_a_changed_spec_retrains(tmp_path, tiny, capsys):
    path, wd = job(tmp_path, tiny), tmp_path / "wd"
    assert cli(["local", "run", str(path), "--workdir", str(wd), "--no-progress", "--to-stage", "train"]) == 0
    capsys.readouterr()
    assert cli(["local", "run", str(path), "--workdir", str(wd), "--no-progress", "--to-stage", "train", "--max-steps", "1"]) == 0
    assert "not retrained" not in capsys.readouterr().out


def test_2_evaluation_without_a_test_split_fails_in_validate_and_before_training(tmp_path, tiny, capsys):
    path, wd = job(tmp_path, tiny, dataset={"split": {"validation": 0.1, "test": 0.0}}), tmp_path / "wd"
    assert cli(["validate", str(path)]) != 0
    first = capsys.readouterr()
    assert "no test data" in first.out + first.err
    code = cli(["local", "run", str(path), "--workdir", str(wd), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 42 and "no test data" in captured.err
    assert not (wd / "artifact").exists() and not (wd / "result-train.json").exists()  # nothing trained
    from tuneloop.api import FineTuneJobSpec

    doc = yaml.safe_load(path.read_text())["spec"]
    doc["evaluation"]["enabled"] = False
    FineTuneJobSpec.model_validate(doc)  # without evaluation a zero test split is fine
    doc["evaluation"]["enabled"] = True
    doc["dataset"]["test"] = {"path": "data/train.jsonl"}
    FineTuneJobSpec.model_validate(doc)  # a separate test file is test data


def test_4_every_spec_problem_at_once_in_the_specs_words_with_did_you_mean(tmp_path, tiny, capsys):
    path = job(tmp_path, tiny)
    doc = yaml.safe_load(path.read_text())
    hp = doc["spec"]["hyperparameters"]
    hp["lerningRate"] = hp.pop("learningRate")
    doc["spec"]["methd"] = doc["spec"].pop("method")
    doc["spec"]["dataset"]["train"]["path"] = "data/trian.jsonl"
    path.write_text(yaml.safe_dump(doc))

    assert cli(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert "spec.hyperparameters.lerningRate: unknown field `lerningRate`; did you mean `learningRate`?" in err
    assert "spec.methd: unknown field `methd`; did you mean `method`?" in err
    assert "spec.dataset.train.path: data/trian.jsonl does not exist" in err and "did you mean `data/trian.jsonl`" not in err
    assert "did you mean `data/train.jsonl`?" in err
    assert "Extra inputs are not permitted" not in err and "Value error" not in err and "spec.:" not in err

    assert cli(["local", "run", str(path), "--workdir", str(tmp_path / "wd"), "--no-progress"]) == 42
    err = capsys.readouterr().err
    assert "2 problems" in err and "lerningRate" in err and "methd" in err  # both at once, not one per run
    assert "Extra inputs are not permitted" not in err


def test_4_local_run_reports_every_missing_local_path_at_once(tmp_path, tiny, capsys):
    path = job(tmp_path, tiny)
    doc = yaml.safe_load(path.read_text())
    doc["spec"]["dataset"]["train"]["path"] = "data/trian.jsonl"
    doc["spec"]["dataset"]["test"] = {"path": "nowhere/test.jsonl"}
    path.write_text(yaml.safe_dump(doc))
    assert cli(["local", "run", str(path), "--workdir", str(tmp_path / "wd"), "--no-progress"]) == 42
    err = capsys.readouterr().err
    assert "2 local path problem(s)" in err and "spec.dataset.train.path" in err and "spec.dataset.test.path" in err


def test_7_prepare_names_the_real_json_column_and_exact_duplicates(tmp_path, tiny, capsys):
    path, wd = job(tmp_path, tiny, dataset={"checks": {"dedupe": "normalized", "maxRejectedFraction": 0.5}}), tmp_path / "wd"
    data = tmp_path / "data" / "train.jsonl"
    lines = data.read_text().splitlines()
    lines.append(lines[0])  # an exact duplicate
    lines.append(lines[1].replace("question", "QUESTION"))  # a normalized (case) duplicate
    lines.append(lines[2][:-5])  # truncated inside a string: the line ends inside it
    lines.append(lines[3][:-2])  # truncated after a value: the error is at the end of the line
    data.write_text("\n".join(lines) + "\n")
    assert cli(["local", "run", str(path), "--workdir", str(wd), "--no-progress", "--to-stage", "prepare"]) == 0
    report = json.loads((wd / "data" / "data_report.json").read_text())
    reasons = json.dumps(report)
    assert "exact duplicate of" in reasons and "normalized duplicate (same text up to case and whitespace) of" in reasons
    assert "at the end of the line" in reasons and "the line ends inside a string" in reasons
    assert "at column 1\"" not in reasons


def test_4_an_empty_train_file_is_named_and_test_records_are_counted_apart(tmp_path, tiny, capsys):
    path, wd = job(tmp_path, tiny, dataset={"test": {"path": "data/test.jsonl"}, "split": {"test": 0.0}}), tmp_path / "wd"
    write_jsonl(tmp_path / "data" / "test.jsonl", chat_records(6, seed=9))
    (tmp_path / "data" / "train.jsonl").write_text("")
    assert cli(["local", "run", str(path), "--workdir", str(wd), "--no-progress"]) == 42
    err = " ".join(capsys.readouterr().err.split())
    assert "the train data holds no records" in err and "train.jsonl" in err and "(empty file)" in err
    counts = json.loads((wd / "data" / "data_report.json").read_text())["counts"]
    assert counts["read_by_source"] == {"train": 0, "test": 6}
    assert "records read 6 (train 0, test 6)" in (wd / "data" / "data_report.txt").read_text()


def test_5_loss_is_the_last_steps_and_duplicated_rows_count_once(tmp_path):
    from tuneloop.cli.local_progress import stage_headline
    from tuneloop_trainer.report.analysis import curve_facts
    from tuneloop_trainer.report.inputs import read_progress

    rows = [{"step": s, "loss": 1.0 - s / 50, "eval_loss": None} for s in range(1, 41)]
    rows.append({"step": 40, "loss": 0.2, "eval_loss": 0.3})  # step 40's evaluation row repeats it
    rows.append({"step": 40, "loss": 0.2, "eval_loss": 0.3})  # and again after a resume
    progress = tmp_path / "progress.jsonl"
    progress.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    read = read_progress(progress)
    assert [r["step"] for r in read] == list(range(1, 41))  # one row per step
    facts = curve_facts(read)
    assert facts["last_loss"] == pytest.approx(0.2) and facts["last_step"] == 40
    line = stage_headline("train", {"outcome": "Succeeded", "steps": 40, "train_loss": 0.2635, "final_loss": 0.165, "eval_loss": 0.3})
    assert "last-step train loss 0.1650" in line and "0.2635" not in line


def test_6_noise_deepspeed_warning_metrics_address_and_one_eta():
    import subprocess
    import sys

    from tuneloop.cli.local_progress import StageDisplay
    from tuneloop_trainer.training.metrics import listen_address

    code = ("from tuneloop.cli.local_cmd import _quiet_libraries; _quiet_libraries()\n"
            "from deepspeed.accelerator import get_accelerator; get_accelerator()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**__import__("os").environ, "DS_ACCELERATOR": "cpu"},
                          timeout=300)
    assert done.returncode == 0 and "Setting accelerator" not in done.stderr + done.stdout

    assert listen_address({}) == "127.0.0.1"  # a local run does not open the metrics port to the network
    assert listen_address({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}) == "0.0.0.0"
    assert listen_address({"TUNELOOP_METRICS_ADDR": "::"}) == "::"

    info = StageDisplay._train_info({"loss": 0.5, "eta_seconds": 82.0, "tokens_per_second": 100.0})
    assert "eta" not in info  # the bar's ETA column is the only ETA


def test_6_a_loaded_machine_is_said_in_the_report():
    from types import SimpleNamespace

    from tuneloop_trainer.report.analysis import challenges

    run = SimpleNamespace(data_report={}, results={}, lineage={}, missing=[],
                          local_run={"stages": [{"stage": "train", "loadAverage": 999.0}]})
    assert any("The machine was loaded: load average up to 999.0" in c for c in challenges(run, {}, {}))
    run.local_run = {"stages": [{"stage": "train", "loadAverage": 0.1}]}
    assert not any("loaded" in c for c in challenges(run, {}, {}))


def test_make_quickstart_passes_args_through():
    import shutil
    import subprocess

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(["make", "-n", "-C", str(root), "quickstart", "ARGS=--threads 1 --force"], capture_output=True, text=True,
                         timeout=60).stdout
    assert "local run manifests/samples/quickstart.yaml --threads 1 --force" in out
