"""`kubectl tuneloop status` and `report` against the emulator (objects seeded directly, no operator)."""

from __future__ import annotations

import asyncio

import pytest
from tuneloop.cli.main import main
from tuneloop.cli.status_cmd import render
from tuneloop.operator.kube import resources as r

from .scenario import NS, ftj

pytestmark = pytest.mark.operator

STATUS = {
    "phase": "Training", "message": "training on 1 node(s)", "baseModel": "HuggingFaceTB/SmolLM2-135M-Instruct@main",
    "startTime": "2026-11-22T03:00:00Z",
    "progress": {"step": 30, "totalSteps": 120, "epoch": 0.5, "loss": 1.2345, "tokensPerSecond": 2500.0, "etaSeconds": 3700, "percent": "25%"},
    "dataReport": {"total": 100, "accepted": 98, "rejected": 2, "train": 80, "validation": 9, "test": 9, "rejectedByReason": {"duplicate": 2}},
    "conditions": [{"type": "DataValidated", "status": "True", "reason": "Validated", "message": "98 records accepted",
                    "lastTransitionTime": "2026-11-22T02:59:00Z"}],
}


async def _cli(*argv: str) -> int:
    return await asyncio.to_thread(main, list(argv))


async def test_status_shows_phase_progress_conditions_events(kube, capsys):
    await kube.apply(ftj())
    await kube.client.patch(r.FINETUNEJOBS, NS, "support-bot", {"status": STATUS}, subresource="status")
    obj = await kube.get(r.FINETUNEJOBS, NS, "support-bot")
    await kube.client.event(obj, type="Normal", reason="Training", message="training on 1 node(s)")
    assert await _cli("status", "support-bot", "--kubeconfig", str(kube.kubeconfig)) == 0
    out = capsys.readouterr().out
    assert "Phase:       Training" in out
    assert "30/120 steps (25%)" in out and "loss 1.2345" in out and "ETA 1h01m" in out
    assert "98 accepted / 2 rejected of 100" in out and "duplicate 2" in out
    assert "DataValidated  True" in out
    assert "Normal   Training" in out


async def test_status_missing_job(kube, capsys):
    assert await _cli("status", "nope", "--kubeconfig", str(kube.kubeconfig)) == 1
    assert "FineTuneJob default/nope not found" in capsys.readouterr().err


async def test_report_prints_markdown_by_modelversion_or_job(kube, capsys):
    await kube.apply(ftj())
    mv = {"apiVersion": "tuneloop.dev/v1alpha1", "kind": "ModelVersion", "metadata": {"name": "support-bot-v1", "namespace": NS},
          "spec": {"modelName": "support-bot", "version": "v1", "baseModel": {"name": "m"},
                   "artifact": {"uri": "pvc://models/a", "format": "lora-adapter"},
                   "report": {"configMap": "support-bot-v1-report", "uri": "pvc://models/a/report.md"}}}
    await kube.apply(mv)
    await kube.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "support-bot-v1-report", "namespace": NS},
                      "data": {"report.md": "# support-bot v1\n\nrougeL +0.27\n"}})
    assert await _cli("report", "support-bot-v1", "--kubeconfig", str(kube.kubeconfig)) == 0
    assert capsys.readouterr().out == "# support-bot v1\n\nrougeL +0.27\n"
    await kube.client.patch(r.FINETUNEJOBS, NS, "support-bot", {"status": {"children": {"modelVersion": "support-bot-v1"}}}, subresource="status")
    assert await _cli("report", "support-bot", "--kubeconfig", str(kube.kubeconfig)) == 0
    assert "rougeL +0.27" in capsys.readouterr().out


async def test_report_explains_what_is_missing(kube, capsys):
    await kube.apply(ftj())
    assert await _cli("report", "support-bot", "--kubeconfig", str(kube.kubeconfig)) == 1
    assert "has not registered a ModelVersion yet" in capsys.readouterr().err
    assert await _cli("report", "ghost", "--kubeconfig", str(kube.kubeconfig)) == 1
    assert "ModelVersion default/ghost not found" in capsys.readouterr().err


def test_render_terminal_job():
    obj = {"metadata": {"name": "x", "namespace": "n"}, "status": {"phase": "Succeeded", "metrics": {"rougeL": 0.48}, "verdict": "Passed",
                                                                   "children": {"modelVersion": "x-v1"}}}
    text = render(obj, [])
    assert "Verdict:     Passed" in text and "rougeL 0.48" in text and "modelVersion=x-v1" in text
