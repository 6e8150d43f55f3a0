"""A new evaluation metric is one registry entry (tuneloop.api.evaluation.METRICS) plus its scorer:
scoring, the record's rows, gates' direction, the report's label/format/change, the chart, the
comparison sentence and the ROI headline all read the entry. Shown with two test-only metrics."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from tuneloop.api.evaluation import METRICS, Gate, MetricInfo, metric_info
from tuneloop_trainer.evaluation import metrics as eval_metrics
from tuneloop_trainer.evaluation.gates import check_gate, comparisons
from tuneloop_trainer.report import analysis as report_analysis
from tuneloop_trainer.report import charts as report_charts
from tuneloop_trainer.stages import evaluate, report

pytestmark = pytest.mark.unit


def score_short_answers(task: eval_metrics.Task) -> float | None:
    """Share of answers of at most 12 characters (test-only)."""
    return eval_metrics.mean(1.0 if len(p) <= 12 else 0.0 for p in task.predictions)


def score_answer_chars(task: eval_metrics.Task) -> float | None:
    """Mean answer length in characters (test-only; lower is better)."""
    return eval_metrics.mean(float(len(p)) for p in task.predictions)


SHORT = MetricInfo("shortAnswers", "Short answers", fraction=True, selectable=False, scorer=f"{__name__}:score_short_answers",
                   chart=0, comparison=0, headline=0)
CHARS = MetricInfo("answerChars", "Answer length", lower_is_better=True, unit="chars", decimals=0, selectable=False,
                   scorer=f"{__name__}:score_answer_chars", chart=102, chart_label="answer length (chars)")


@pytest.fixture
def test_metrics(monkeypatch):
    for info in (SHORT, CHARS):
        monkeypatch.setitem(METRICS, info.name, info)


PREDS_BASE = ["a long rambling answer", "another long rambling one", "ok"]
PREDS_TUNED = ["short", "tiny", "ok"]
REFS = ["short", "tiny", "ok"]


def test_a_registered_metric_is_scored_and_becomes_a_row(test_metrics):
    base = eval_metrics.score_task(PREDS_BASE, REFS)
    tuned = eval_metrics.score_task(PREDS_TUNED, REFS)
    assert base["shortAnswers"] == pytest.approx(1 / 3) and tuned["shortAnswers"] == 1.0
    assert tuned["answerChars"] == pytest.approx(11 / 3)
    assert evaluate.extra_rows()[-2:] == ["shortAnswers", "answerChars"]
    rows = {r.name: r for r in comparisons(base, tuned, ["exactMatch", *evaluate.extra_rows()])}
    assert rows["shortAnswers"].delta == pytest.approx(2 / 3) and rows["answerChars"].delta < 0


def test_gates_read_the_direction_from_the_registry(test_metrics):
    rows = {r.name: r for r in comparisons({"answerChars": 20.0}, {"answerChars": 5.0}, ["answerChars"])}
    gate = Gate.model_construct(metric="answerChars", min_improvement=10.0, max_regression=None, min_value=8.0)
    result = check_gate(gate, rows["answerChars"])
    assert result.passed, result.reason  # 5 ≤ 8 and 15 shorter: lower is better
    assert "lower is better" in result.reason


def test_the_report_labels_formats_and_draws_it(test_metrics, tmp_path):
    assert report_analysis.label("shortAnswers") == "Short answers"
    assert report_analysis.fmt("shortAnswers", 0.5) == "50.0%"
    assert report_analysis.fmt_change("shortAnswers", 0.25, 0.5) == "+25.0 pp (better)"
    assert report_analysis.fmt("answerChars", 12.4) == "12 chars"
    assert report_analysis.fmt_change("answerChars", 20.0, 5.0).endswith("(better)")
    fractions, panels = report_charts.chart_metrics()
    assert fractions[0] == "shortAnswers" and ("answerChars", "answer length (chars)") in panels
    rows = [{"name": "shortAnswers", "base": 0.25, "tuned": 0.5, "delta": 0.25},
            {"name": "answerChars", "base": 20.0, "tuned": 5.0, "delta": -15.0}]
    assert report_charts.metrics_plot(rows, tmp_path / "m.png", "t") and (tmp_path / "m.png").stat().st_size > 0
    assert report.comparison_text({}, {"metrics": rows}).startswith(
        "Short answers: 25.0% → 50.0% (+25.0 pp (no interval: significance unknown)).")  # never 'better' without an interval
    ctx = SimpleNamespace(spec=SimpleNamespace(resources=SimpleNamespace(gpus_per_node=0)))
    run = SimpleNamespace(stage_seconds=lambda s: 10.0, lineage={"world_size": 1})
    roi = next(line for line in report.conclusions(ctx, run, {"verdict": "Passed", "metrics": rows}) if "ROI" in line)
    assert "Short answers moved 25.0% → 50.0%" in roi


def test_unknown_names_are_neutral_and_the_builtin_table_is_complete():
    assert metric_info("nope").label == "nope" and not metric_info("nope").lower_is_better
    scored = eval_metrics.scorers()
    assert {"perplexity", "rougeL", "bleu", "exactMatch", "jsonValid", "schemaCompliance", "fieldAccuracy", "allFieldsExact"} <= set(scored)
    for info in METRICS.values():
        assert info.label and (info.chart is None or info.fraction or info.chart_label)
