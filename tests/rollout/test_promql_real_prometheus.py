"""Issue 25, finding 2, against a real Prometheus (Debian package `prometheus`): every query `confine` writes is
PromQL that Prometheus accepts, and it reads nothing of another namespace.

Two Prometheus servers scrape static series: one sees namespaces team-a and team-b, the other team-a only. A
confined query must answer the same on both — any series of team-b that leaked in (a value, a count, a label
set) would make the answers differ. team-b's values are 1000× team-a's, so a leak cannot hide in a sum."""

from __future__ import annotations

import threading
import time
import urllib.error
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from tuneloop.operator.analysis.prometheus.promql import confine

from ..unit.operator.test_promql_confine import _expr
from .promstack import PrometheusServer, prometheus_binary

pytestmark = [
    pytest.mark.operator,
    pytest.mark.timeout(120),
    pytest.mark.skipif(prometheus_binary() is None, reason="needs the prometheus binary: apt-get install -y prometheus"),
]

NS = "team-a"


def exposition(namespaces: dict[str, float]) -> bytes:
    out = []
    for ns, scale in namespaces.items():
        for job in ("a", "b"):
            for le in ("0.5", "1", "+Inf"):
                out.append(f'vllm:e2e_request_latency_seconds_bucket{{namespace="{ns}",job="{job}",le="{le}",handler="/v1/completions"}} {scale * 3}')
            out.append(f'http_requests_total{{namespace="{ns}",job="{job}",status="5xx",handler="a"}} {scale * 7}')
            out.append(f'sum{{namespace="{ns}",job="{job}"}} {scale * 2}')
            out.append(f'offset{{namespace="{ns}",job="{job}"}} {scale * 5}')
            out.append(f'by{{namespace="{ns}",job="{job}",le="1"}} {scale}')
            out.append(f'x{{namespace="{ns}",job="{job}"}} {scale}')
            out.append(f'y{{namespace="{ns}",job="{job}"}} {scale * 11}')
    return ("\n".join(out) + "\n").encode()


class Exporter:
    def __init__(self, body: bytes):
        outer = body

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                self.wfile.write(outer)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def prometheus(tmp: Path, exporter: Exporter) -> PrometheusServer:
    prom = PrometheusServer(tmp, [])
    prom.config_path.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "static", "honor_labels": True, "scrape_interval": "1s", "scrape_timeout": "1s",
                            "static_configs": [{"targets": [f"127.0.0.1:{exporter.port}"]}],
                            # the two servers scrape different ports: drop the one label that says so
                            "metric_relabel_configs": [{"action": "labeldrop", "regex": "instance"}]}],
    }))
    prom.start()
    return prom


@pytest.fixture(scope="module")
def proms(tmp_path_factory: pytest.TempPathFactory):
    both, only_a = Exporter(exposition({NS: 1.0, "team-b": 1000.0})), Exporter(exposition({NS: 1.0}))
    p_all, p_a = prometheus(tmp_path_factory.mktemp("all"), both), prometheus(tmp_path_factory.mktemp("a"), only_a)
    try:
        # enough history on both that windows and subqueries (steps of 10 s) hold at least two samples on each: a
        # server that started a second later must not answer `rate(x[1m:10s])` differently for want of data
        for p in (p_all, p_a):
            p.wait_scraped(1)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            counts = [p.query('count_over_time(x{namespace="team-a",job="a"}[1m])')["data"]["result"] for p in (p_all, p_a)]
            if all(c and float(c[0]["value"][1]) >= 25 for c in counts):
                break
            time.sleep(0.5)
        yield p_all, p_a
    finally:
        for p in (p_all, p_a):
            p.stop()
        both.close()
        only_a.close()


def valid(prom: PrometheusServer, q: str) -> bool:
    """Prometheus accepts `q` (the generator writes a few queries Prometheus refuses: a name set twice, …)."""
    try:
        prom.query(q)
    except urllib.error.HTTPError:
        return False
    return True


def answer(prom: PrometheusServer, q: str) -> tuple[str, object]:
    body = prom.query(q)
    assert body["status"] == "success", (q, body)
    data = body["data"]
    if data["resultType"] == "vector":
        return "vector", sorted((tuple(sorted(s["metric"].items())), s["value"][1]) for s in data["result"])
    return data["resultType"], data["result"][1]


QUERIES = [
    "x", '{__name__=~".+"}', 'sum(rate(x{job="a"}[5m])) or sum(y)', "x unless y", "max_over_time(x[5m:1m])",
    'label_replace(x, "dst", "}{", "job", "(.*)")', "x offset 1s", "sum by (le) (rate(vllm:e2e_request_latency_seconds_bucket[1m]))",
    "histogram_quantile(0.95, sum(rate(vllm:e2e_request_latency_seconds_bucket[5m])) by (le))",
    "x * on(job) group_left() y", "x > bool 1", "offset", "sum", "count(x)", "count by (namespace) (x)", "topk(3, y)",
    'count_values("v", y)', "absent(nonexistent)", "sum(x) + sum(y)", "max(by)", "-x", 'sum({__name__=~"x|y"}) by (__name__)',
]


@pytest.mark.parametrize("query", QUERIES)
def test_a_confined_query_reads_only_its_namespace(proms, query):
    p_all, p_a = proms
    confined = confine(query, NS)
    assert answer(p_all, confined) == answer(p_a, confined), confined


@pytest.mark.parametrize("query", ["sum(x)", "count(y)", '{__name__=~".+", job="a"}', "offset"])
def test_the_oracle_sees_a_leak(proms, query):
    """Unconfined, the same queries answer differently on the two servers: the comparison above can catch a leak."""
    p_all, p_a = proms
    assert answer(p_all, query) != answer(p_a, query)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(pair=_expr())
def test_generated_confined_queries_are_valid_promql_and_read_only_their_namespace(proms, pair):
    p_all, p_a = proms
    assume(valid(p_a, pair[0]))
    confined = confine(pair[0], NS)
    assert valid(p_all, confined), confined  # what Prometheus accepted, confined, it still accepts
    assert answer(p_all, confined) == answer(p_a, confined), confined
