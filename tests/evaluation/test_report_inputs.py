"""Report inputs: progress parsing, validation points, label distribution."""

from __future__ import annotations

import json

import pytest
from tuneloop_trainer.report.analysis import curve_facts, fmt, fmt_change
from tuneloop_trainer.report.inputs import label_distribution, read_progress, validation_points

pytestmark = pytest.mark.unit


def test_validation_points_once_per_evaluation():
    rows = [{"step": 1, "loss": 1.0, "eval_loss": None}, {"step": 2, "loss": 0.9, "eval_loss": 0.8},
            {"step": 3, "loss": 0.7, "eval_loss": 0.8}, {"step": 4, "loss": 0.6, "eval_loss": 0.5}, {"step": 5, "loss": 0.6, "eval_loss": 0.5}]
    assert validation_points(rows) == [(2, 0.8), (4, 0.5)]
    facts = curve_facts(rows)
    assert facts["val_points"] == 2 and facts["val_best_step"] == 4 and not facts["val_rising"]


def test_rising_validation_loss_is_flagged():
    rows = [{"step": s, "loss": 1.0 / s, "eval_loss": v} for s, v in [(1, 0.9), (2, 0.5), (3, 0.6), (4, 0.7)]]
    facts = curve_facts(rows)
    assert facts["val_rising"] and facts["val_best_step"] == 2


def test_read_progress_skips_a_cut_line(tmp_path):
    p = tmp_path / "progress.jsonl"
    p.write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n" + '{"step": 2, "lo')
    assert read_progress(p) == [{"step": 1, "loss": 1.0}]
    assert read_progress(tmp_path / "missing.jsonl") == []


def test_label_distribution_of_json_answers():
    answers = [json.dumps({"c": "a", "id": f"X{i}", "n": None if i % 2 else "p"}) for i in range(20)]
    dist = label_distribution(answers)
    assert dist["c"] == {"a": 20}
    assert dist["id"] == {"distinct values": 20}
    assert dist["n"] == {"p": 10, "null": 10}
    assert label_distribution(["plain text", "more text"]) == {}


def test_formatting_knows_directions():
    assert fmt("jsonValid", 0.5) == "50.0%"
    assert fmt_change("jsonValid", 0.0, 1.0) == "+100.0 pp (better)"
    assert fmt_change("perplexity", 2.0, 1.0).endswith("(better)")
    assert fmt_change("forgettingAccuracy", 0.6, 0.5) == "-10.0 pp (worse)"
    assert fmt("perplexity", None) == "n/a"
