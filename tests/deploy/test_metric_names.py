"""Every metric the dashboard and the alerts query exists: in the operator's registry, the trainer's,
or vLLM's exact list; and the labels they filter on are labels those series carry."""

from __future__ import annotations

import json
import re

import pytest

from ._support import ROOT, dashboard, objects, one

pytestmark = pytest.mark.unit

# vLLM (exact names; histograms expose _bucket/_count/_sum) and its prometheus-fastapi-instrumentator.
VLLM_HISTOGRAMS = {"vllm:time_to_first_token_seconds", "vllm:e2e_request_latency_seconds"}
VLLM_OTHERS = {"vllm:request_success_total", "vllm:num_requests_running", "vllm:num_requests_waiting",
               "vllm:generation_tokens_total", "vllm:prompt_tokens_total", "http_requests_total"}
PROMETHEUS_BUILTINS = {"up"}
# Target labels Prometheus adds to every scraped series (Prometheus Operator service/pod monitors),
# plus the vLLM PodMonitor's podTargetLabels (tuneloop.dev/* pod labels, sanitised).
TARGET_LABELS = {"namespace", "pod", "instance", "job", "container", "endpoint", "service", "__name__",
                 "tuneloop_dev_rollout", "tuneloop_dev_role", "tuneloop_dev_model_version"}

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset", "inf", "nan"}
IDENT = r"[a-zA-Z_:][a-zA-Z0-9_:]*"


def _exposed(families) -> dict[str, set[str]]:
    """Sample name → label names, from prometheus_client metric objects."""
    out: dict[str, set[str]] = {}
    for metric in families:
        name, kind, labels = metric._name, metric._type, set(metric._labelnames)
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"], "summary": ["_count", "_sum"]}.get(kind, [""])
        for s in suffixes:
            out[name + s] = labels | ({"le"} if s == "_bucket" else set())
    return out


@pytest.fixture(scope="module")
def known() -> dict[str, set[str] | None]:
    """Every queryable series name → its own label names (None: not checked, e.g. vLLM's)."""
    import tuneloop.operator.rollout.telemetry  # noqa: F401  registers the rollout metrics on REGISTRY
    from tuneloop.operator.sweep import telemetry as _sweep  # noqa: F401  and the sweep metrics
    from tuneloop.operator.telemetry import REGISTRY
    from tuneloop_trainer.training.metrics import TrainerMetrics

    operator = _exposed(REGISTRY._collector_to_names)
    trainer_metrics = TrainerMetrics(job="j", namespace="n")
    trainer = _exposed(trainer_metrics.registry._collector_to_names)
    names: dict[str, set[str] | None] = {**operator, **trainer}
    for h in VLLM_HISTOGRAMS:
        names.update({h + s: None for s in ("_bucket", "_count", "_sum")})
    names.update({n: None for n in VLLM_OTHERS | PROMETHEUS_BUILTINS})
    return names


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, label names matched) for every vector selector in a PromQL expression."""
    expr = re.sub(r"label_values\((.*),\s*" + IDENT + r"\s*\)", r"\1", expr)  # Grafana variable query
    found: list[tuple[str, set[str]]] = []
    strings: list[str] = []

    def mask(m: re.Match) -> str:  # string literals may hold { } [ ] ( ): set them aside first
        strings.append(m.group(0)[1:-1])
        return f'"{len(strings) - 1}"'

    expr = re.sub(r'"(?:[^"\\]|\\.)*"', mask, expr)

    def matchers(body: str) -> set[str]:
        return set(re.findall(r"(" + IDENT + r")\s*(?:=~|!~|!=|=)", body))

    def selector(m: re.Match) -> str:
        name, body = m.group(1), m.group(2)
        labels = matchers(body)
        if not name:
            meta = re.search(r'__name__\s*=~?\s*"([0-9]+)"', body)
            assert meta, f"selector without a metric name: {m.group(0)}"
            found.extend((n, labels - {"__name__"}) for n in strings[int(meta.group(1))].split("|"))
        else:
            found.append((name, labels))
        return " "

    rest = re.sub(r"(" + IDENT + r")?\s*\{([^}]*)\}", selector, expr)
    rest = re.sub(r"\[[^\]]*\]", " ", rest)  # ranges
    rest = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", rest)
    rest = re.sub(r'"(?:[^"\\]|\\.)*"', " ", rest)
    rest = re.sub(r"\boffset\s+\w+", " ", rest)
    for m in re.finditer(r"(?<![\w:.$])(" + IDENT + r")(\s*\()?", rest):
        if m.group(2) or m.group(1).lower() in KEYWORDS:
            continue
        found.append((m.group(1), set()))
    return found


def dashboard_queries() -> list[str]:
    board = json.loads((ROOT / "charts" / "tuneloop" / "files" / "dashboards" / "tuneloop.json").read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in board["templating"]["list"] if v["type"] == "query"]
    return exprs


def alert_queries() -> list[str]:
    rule = one(objects(None), "PrometheusRule")
    return [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]


def test_selector_extraction():
    sels = selectors('histogram_quantile(0.95, sum by (le, role) (rate(vllm:e2e_request_latency_seconds_bucket{a="x{y}", b=~"1|2"}[$__rate_interval])))'
                     ' / on (namespace) (time() - foo offset 30m) > bool 3 and bar')
    assert sels == [("vllm:e2e_request_latency_seconds_bucket", {"a", "b"}), ("foo", set()), ("bar", set())]
    assert selectors('label_values({__name__=~"a|b", namespace="x"}, name)') == [("a", {"namespace"}), ("b", {"namespace"})]


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_every_queried_metric_exists(known, source):
    exprs = dashboard_queries() if source == "dashboard" else alert_queries()
    assert len(exprs) > 5
    missing, bad_labels = set(), []
    for expr in exprs:
        for name, labels in selectors(expr):
            if name not in known:
                missing.add(name)
            elif known[name] is not None and labels - known[name] - TARGET_LABELS:
                bad_labels.append(f"{name}: {sorted(labels - known[name] - TARGET_LABELS)}")
    assert not missing, f"{source} queries metrics nobody exports: {sorted(missing)}"
    assert not bad_labels, f"{source} filters on labels these metrics do not have: {bad_labels}"


def test_dashboard_covers_the_issue():
    """Training progress, jobs by phase, canary weight + analysis, vLLM stable vs canary, operator health."""
    text = "\n".join(dashboard_queries())
    for needle in ("tuneloop_finetunejob_loss", "tuneloop_finetunejob_tokens_per_second", "tuneloop_finetunejob_eta_seconds",
                   "tuneloop_finetunejobs", "tuneloop_rollout_canary_weight", "tuneloop_analysis_measurement_value",
                   "vllm:time_to_first_token_seconds_bucket", "vllm:e2e_request_latency_seconds_bucket", 'status="5xx"',
                   "tuneloop_reconcile_duration_seconds_bucket", "tuneloop_reconcile_errors_total"):
        assert needle in text, needle
    serving = [e for e in dashboard_queries() if "vllm:" in e or "http_requests_total" in e]
    assert serving and all("sum by (tuneloop_dev_role)" in e or "le, tuneloop_dev_role" in e for e in serving)


def test_dashboard_json_is_the_builder_output():
    board = json.loads((ROOT / "charts" / "tuneloop" / "files" / "dashboards" / "tuneloop.json").read_text())
    assert board == dashboard.dashboard()
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for p in board["panels"]:
        assert p["type"] == "row" or p["targets"], p["title"]


def test_the_check_catches_unknown_names_and_labels(known):
    assert ("tuneloop_finetunejob_losss", set()) in selectors("tuneloop_finetunejob_losss")
    assert "tuneloop_finetunejob_losss" not in known
    ((name, labels),) = selectors('tuneloop_rollout_canary_weight{name="x"}')
    assert labels - known[name] - TARGET_LABELS == {"name"}


def test_dashboard_panels_do_not_overlap():
    taken: dict[tuple[int, int], str] = {}
    for p in dashboard.dashboard()["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in taken, f"{p['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = p["title"]
