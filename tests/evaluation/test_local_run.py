"""`kubectl tuneloop local run` end to end on a tiny random model: every artifact, a valid ModelVersion."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from tuneloop.cli.main import main as cli
from tuneloop_trainer.testing import chat_records, make_tiny_model, tiny_spec, write_jsonl

pytestmark = pytest.mark.unit

SECTIONS = [
    "## Experiment Overview", "## Objective", "## Dataset Information", "## Training Parameters", "## Training Process",
    "## Evaluation", "### Quantitative Metrics", "### Qualitative Evaluation", "### Comparison Analysis", "## Observations",
    "## Conclusions", "## Next Steps", "## Resources",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny")


def manifest(tmp: Path, model: Path, **overrides) -> Path:
    write_jsonl(tmp / "data" / "train.jsonl", chat_records(48, system=True))
    forgetting = write_jsonl(tmp / "forget.jsonl", [
        {"prompt": "what is the answer", "answers": ["answer"]},
        {"prompt": "say yes", "answers": ["yes"]},
        {"prompt": "say red", "answers": ["red"]},
    ])
    spec = tiny_spec(model, "data/train.jsonl", "out", **{
        "evaluation": {
            "maxNewTokens": 8, "batchSize": 8,
            "metrics": ["perplexity", "rougeL", "bleu", "exactMatch", "jsonValid"],
            "gates": [{"metric": "perplexity", "maxRegression": 1000.0}],
            "forgetting": {"path": str(forgetting), "maxRegression": 1.0},
            "samplePrompts": ["question 99 what is cat dog"],
        },
        "registry": {"modelName": "tiny-triage"},
        **overrides,
    })
    spec.pop("output")
    spec["output"] = {"pvc": {"claimName": "models", "path": "tiny"}}
    doc = {"apiVersion": "tuneloop.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "tiny-job", "namespace": "ml"}, "spec": spec}
    path = tmp / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_local_run_produces_every_artifact(tmp_path, tiny, capsys):
    job = manifest(tmp_path, tiny)
    wd = tmp_path / "wd"
    assert cli(["local", "run", str(job), "--workdir", str(wd), "--no-progress"]) == 0
    out = capsys.readouterr().out
    for stage in ("prepare", "train", "evaluate", "report"):
        assert (wd / f"result-{stage}.json").exists()
        assert json.loads((wd / f"result-{stage}.json").read_text())["outcome"] == "Succeeded"
        assert re.search(rf"{stage}\s+.*Succeeded", out)
    assert "verdict Passed" in out
    for f in ("data/train.jsonl", "data/test.jsonl", "data/data_report.json", "lineage.json", "progress.jsonl", "eval.json",
              "report/report.md", "report/loss.png", "report/metrics.png", "report/modelversion.yaml", "local-run.json"):
        assert (wd / f).exists(), f
    for png in ("loss.png", "metrics.png"):
        data = (wd / "report" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000

    ev = json.loads((wd / "eval.json").read_text())
    assert ev["record"]["verdict"] == "Passed"
    names = [m["name"] for m in ev["record"]["metrics"]]
    assert {"perplexity", "rougeL", "bleu", "exactMatch", "jsonValid", "forgettingAccuracy", "tokensPerSecond"} <= set(names)
    assert ev["settings"]["forgettingItems"] == 3
    assert len(ev["examples"]) == ev["record"]["testExamples"] > 0
    assert ev["samplePrompts"][0]["base"] is not None and ev["samplePrompts"][0]["tuned"] is not None

    report = (wd / "report" / "report.md").read_text()
    positions = [report.index(s) for s in SECTIONS]
    assert positions == sorted(positions)
    assert not re.search(r"\[(date|value|time|Metric \d|Prompt \d|Step \d|model name[^\]]*)\]", report)
    assert "![training and validation loss](loss.png)" in report
    assert "| Perplexity on references (`perplexity`) |" in report

    mv_path = wd / "report" / "modelversion.yaml"
    mv = yaml.safe_load(mv_path.read_text())
    assert mv["kind"] == "ModelVersion" and mv["metadata"]["namespace"] == "ml"
    assert mv["spec"]["modelName"] == "tiny-triage"
    assert mv["spec"]["artifact"] == {"uri": f"{wd.resolve().as_uri()}/artifact", "format": "lora-adapter", "loraRank": 8}  # where it really is
    assert mv["spec"]["evaluation"]["verdict"] == "Passed"
    assert mv["spec"]["lineage"]["datasetSha256"] == json.loads((wd / "data/data_report.json").read_text())["dataset_sha256"]
    assert mv["spec"]["report"]["uri"] == f"{wd.resolve().as_uri()}/report/report.md"
    assert cli(["validate", str(mv_path)]) == 0
    # the evaluate stage built the output guard's topic profile from the training prompts (issue 22): the file, its record
    # on the ModelVersion, the report's section
    assert (wd / "topic-profile.json").exists() and ev["topicProfile"]["built"]
    assert mv["spec"]["topicProfile"] == {"uri": f"{wd.resolve().as_uri()}/topic-profile.json"}
    assert mv["spec"]["evaluation"]["topicProfile"]["trainPrompts"] == ev["topicProfile"]["trainPrompts"] > 10
    assert "### Topic profile (the serving guard's topic rule)" in report


def test_failing_gate_gives_failed_verdict_but_run_succeeds(tmp_path, tiny, capsys):
    job = manifest(tmp_path, tiny)
    doc = yaml.safe_load(job.read_text())
    doc["spec"]["evaluation"]["gates"] = [{"metric": "exactMatch", "minValue": 0.99}]
    job.write_text(yaml.safe_dump(doc))
    wd = tmp_path / "wd"
    assert cli(["local", "run", str(job), "--workdir", str(wd), "--no-progress", "--max-steps", "1", "--no-baseline"]) == 0
    ev = json.loads((wd / "eval.json").read_text())
    assert ev["record"]["verdict"] == "Failed"
    gate = ev["record"]["gates"][0]
    assert gate["metric"] == "exactMatch" and not gate["passed"] and "required 0.990" in gate["reason"]
    assert json.loads((wd / "lineage.json").read_text())["steps"] == 1
    assert "Failed" in (wd / "report" / "report.md").read_text()
    assert yaml.safe_load((wd / "report/modelversion.yaml").read_text())["spec"]["evaluation"]["verdict"] == "Failed"


def test_stage_failure_exits_non_zero_with_the_cause(tmp_path, tiny, capsys):
    job = manifest(tmp_path, tiny)
    (tmp_path / "data" / "train.jsonl").write_text("")  # (a missing file is now refused before any stage runs)
    wd = tmp_path / "wd"
    code = cli(["local", "run", str(job), "--workdir", str(wd), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 42
    assert "stage prepare failed" in captured.err and "train.jsonl" in captured.err
    assert re.search(r"train\s+.*Skipped", captured.out)
    assert json.loads((wd / "result-prepare.json").read_text())["outcome"] == "Failed"
    assert not (wd / "result-train.json").exists()


def test_from_stage_needs_earlier_outputs(tmp_path, tiny, capsys):
    job = manifest(tmp_path, tiny)
    assert cli(["local", "run", str(job), "--workdir", str(tmp_path / "empty"), "--from-stage", "evaluate"]) == 42
    assert "run the train stage first" in capsys.readouterr().err


def test_default_workdir_is_runs_job_name(tmp_path, tiny, monkeypatch):
    from tuneloop.api import FineTuneJobSpec
    from tuneloop_trainer.local_runner import default_workdir, select_stages

    job = manifest(tmp_path, tiny)
    spec = FineTuneJobSpec.model_validate(yaml.safe_load(job.read_text())["spec"])
    assert default_workdir("tiny-job", spec, tmp_path) == Path("runs/tiny-job")
    spec.output.pvc, spec.output.path = None, "out/here"
    assert default_workdir("tiny-job", spec, tmp_path) == tmp_path / "out/here"
    assert select_stages("train", "evaluate") == ["train", "evaluate"]
    with pytest.raises(ValueError):
        select_stages("report", "train")
