"""Issue 25, finding 1 (and 2's "only values reach status"): metrics endpoints are the admin's, and the HTTP client
neither follows a tenant elsewhere nor carries a provider's text unbounded into status.

Local HTTP servers play Prometheus, a redirect target and a metadata service; every test counts the requests
the server saw, so "refused" means no request was made."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from tuneloop.api.rollout import AnalysisMetric
from tuneloop.operator.analysis.prometheus import Endpoints, PrometheusClient, PrometheusError, PrometheusProvider
from tuneloop.operator.analysis.prometheus.client import query_url
from tuneloop.operator.analysis.provider import Pods
from tuneloop.operator.settings import OperatorSettings

pytestmark = pytest.mark.unit
OK = {"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [0, "0.5"]}]}}


class Server:
    """One local HTTP server: path -> handler; `hits` lists every path requested."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self.routes: dict[str, object] = {}
        self.srv: TestServer | None = None

    async def _dispatch(self, req: web.Request) -> web.StreamResponse:
        self.hits.append(req.path_qs)
        handler = self.routes.get(req.path)
        if handler is None:
            return web.Response(status=404, text="no such path")
        return await handler(req)  # type: ignore[operator]

    async def __aenter__(self) -> Server:
        self.srv = TestServer(self.app)
        await self.srv.start_server()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.srv is not None
        await self.srv.close()

    @property
    def url(self) -> str:
        assert self.srv is not None
        return str(self.srv.make_url("")).rstrip("/")


def json_response(body: object, status: int = 200):
    async def handler(req: web.Request) -> web.Response:
        return web.Response(status=status, text=json.dumps(body), content_type="application/json")
    return handler


async def test_a_trailing_hash_cannot_drop_the_query_path():
    async with Server() as s:
        s.routes["/latest/meta-data/iam/security-credentials/"] = lambda req: _text("ROLE-NAME")
        for addr in (f"{s.url}/latest/meta-data/iam/security-credentials/#", f"{s.url}/latest/meta-data/iam/security-credentials/?x="):
            with pytest.raises(PrometheusError, match="may not carry"):
                await PrometheusClient(addr).query("up")
        assert s.hits == []


async def _text(body: str, status: int = 200) -> web.Response:
    return web.Response(status=status, text=body)


async def test_redirects_are_not_followed():
    async with Server() as s:
        async def redirect(req: web.Request) -> web.Response:
            raise web.HTTPFound("/secret")
        s.routes["/api/v1/query"] = redirect
        s.routes["/secret"] = json_response(OK)
        with pytest.raises(PrometheusError, match="redirects are not followed"):
            await PrometheusClient(s.url).query("up")
        assert [h.split("?")[0] for h in s.hits] == ["/api/v1/query"]


async def test_an_answer_over_the_byte_cap_is_an_error_not_read_whole():
    async with Server() as s:
        async def big(req: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse()
            await resp.prepare(req)
            for _ in range(64):  # 4 MiB, chunked (no Content-Length)
                await resp.write(b"x" * (64 << 10))
            return resp
        s.routes["/api/v1/query"] = big
        with pytest.raises(PrometheusError, match="over 65536 bytes"):
            await PrometheusClient(s.url, max_bytes=65536).query("up")
        s.routes["/api/v1/query"] = lambda req: _text("y" * 200_000)  # with a Content-Length
        with pytest.raises(PrometheusError, match="is 200000 bytes"):
            await PrometheusClient(s.url, max_bytes=65536).query("up")


async def test_a_slow_answer_times_out():
    async with Server() as s:
        async def slow(req: web.Request) -> web.Response:
            await asyncio.sleep(5)
            return web.Response(text="{}")
        s.routes["/api/v1/query"] = slow
        with pytest.raises(PrometheusError, match="unreachable: .*Timeout"):
            await PrometheusClient(s.url, timeout=0.3).query("up")


@pytest.mark.parametrize("body,status", [
    ("<html>\x1b[31mROLE-NAME\x1b]0;owned\x07" + "A" * 200_000 + "</html>", 200),
    (json.dumps({"status": "error", "errorType": "bad_data\x1b[2J", "error": "\x9b31m" + "E" * 200_000}), 400),
])
async def test_provider_text_is_sanitised_and_bounded(body, status):
    async with Server() as s:
        s.routes["/api/v1/query"] = lambda req: _text(body, status)
        with pytest.raises(PrometheusError) as err:
            await PrometheusClient(s.url).query("up")
    msg = str(err.value)
    assert len(msg) < 400
    assert not any(ord(c) < 32 or 0x7f <= ord(c) <= 0x9f for c in msg), repr(msg)


@pytest.mark.parametrize("body", [[1], "x", None, {"status": "success", "data": [1]},
                                  {"status": "success", "data": {"resultType": "vector", "result": [{"value": []}]}},
                                  {"status": "success", "data": {"resultType": "scalar", "result": None}}])
async def test_a_body_that_is_not_a_prometheus_answer_is_an_error(body):
    async with Server() as s:
        s.routes["/api/v1/query"] = json_response(body)
        with pytest.raises(PrometheusError):
            await PrometheusClient(s.url).query("up")


async def test_a_multi_series_answer_names_no_foreign_labels():
    many = {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"namespace": "team-b", "secret_label": "TEAM-B-DATA"}, "value": [0, "1"]},
        {"metric": {"namespace": "team-c"}, "value": [0, "2"]}]}}
    async with Server() as s:
        s.routes["/api/v1/query"] = json_response(many)
        with pytest.raises(PrometheusError) as err:
            await PrometheusClient(s.url).query("up")
    assert "2 series" in str(err.value) and "team-b" not in str(err.value) and "TEAM-B-DATA" not in str(err.value)


def test_the_query_path_is_fixed_under_the_base_path():
    assert str(query_url("http://prom.monitoring:9090/prefix/")) == "http://prom.monitoring:9090/prefix/api/v1/query"
    for bad in ("file:///etc/passwd", "http://user:pw@prom/", "gopher://prom", "http:///nohost"):
        with pytest.raises(PrometheusError):
            query_url(bad)


# --- the allowlist ----------------------------------------------------------------------------------------------
def endpoints(default: str, **kw) -> Endpoints:
    return Endpoints({"default": default, "team-a": default + "/team-a"}, **kw)


async def test_an_address_the_admin_did_not_configure_is_never_requested():
    async with Server() as s:
        s.routes["/latest/meta-data/api/v1/query"] = json_response(OK)
        ep = endpoints("http://prom.invalid:9090")
        prov = ep.provider(f"{s.url}/latest/meta-data")
        metric = AnalysisMetric(name="m", builtin="error-rate", max=1)
        with pytest.raises(PrometheusError, match="not configured by the operator's administrator.*default, team-a"):
            await prov.measure(metric, Pods("team-a", "bot", role="canary"), "1m")
        with pytest.raises(PrometheusError, match="not configured"):
            await ep.client(s.url, "team-a").query("up")
        assert s.hits == []


async def test_providers_resolve_by_name_and_by_their_exact_address():
    async with Server() as s:
        s.routes["/api/v1/query"] = json_response(OK)
        s.routes["/team-a/api/v1/query"] = json_response(OK)
        ep = endpoints(s.url)
        assert ep.resolve("default") == s.url and ep.resolve("team-a") == s.url + "/team-a"
        assert ep.resolve(s.url + "/") == s.url + "/"  # the deprecated prometheusAddress: the admin's address still works
        metric = AnalysisMetric(name="m", builtin="error-rate", max=1)
        assert await ep.provider("team-a").measure(metric, Pods("team-a", "bot", role="canary"), "1m") == 0.5
        assert await ep.provider(s.url).measure(metric, Pods("team-a", "bot", role="canary"), "1m") == 0.5
        assert [h.split("?")[0] for h in s.hits] == ["/team-a/api/v1/query", "/api/v1/query"]


def test_any_address_only_when_the_admin_says_so():
    assert Endpoints({"default": "http://p"}, allow_any_address=True).resolve("http://elsewhere:9090") == "http://elsewhere:9090"
    with pytest.raises(PrometheusError):
        Endpoints({"default": "http://p"}, allow_any_address=True).resolve("file:///etc/passwd")


def test_settings_read_the_named_allowlist(monkeypatch):
    monkeypatch.setenv("TUNELOOP_METRICS_PROVIDERS", "team-a=http://prom-a:9090, team-b=https://prom-b")
    monkeypatch.setenv("TUNELOOP_PROMETHEUS_URL", "http://prom:9090")
    s = OperatorSettings()
    assert s.metrics_endpoints() == {"default": "http://prom:9090", "team-a": "http://prom-a:9090", "team-b": "https://prom-b"}
    assert Endpoints.from_settings(s).resolve("team-b") == "https://prom-b"
    for bad in ("default=http://x", "Team=http://x", "a=ftp://x", "novalue"):
        monkeypatch.setenv("TUNELOOP_METRICS_PROVIDERS", bad)
        with pytest.raises(ValueError):
            OperatorSettings()


# --- custom queries are confined ---------------------------------------------------------------------------------
class Recording:
    def __init__(self) -> None:
        self.sent: list[str] = []

    async def query(self, promql: str) -> float | None:
        self.sent.append(promql)
        return 1.0

    async def query_vector(self, promql: str):
        self.sent.append(promql)
        return []


async def test_a_custom_query_reaches_prometheus_confined_to_the_namespace():
    rec = Recording()
    prov = PrometheusProvider(rec)
    pods = Pods("team-a", "bot", role="canary")
    await prov.measure(AnalysisMetric(name="m", query='sum(rate(x{job="a"}[{{window}}])) or sum(y)', max=1), pods, "1m")
    assert rec.sent == ['sum(rate(x{job="a", namespace="team-a"}[1m])) or sum(y{namespace="team-a"})']
    with pytest.raises(PrometheusError, match="query refused.*namespace=~"):
        await prov.measure(AnalysisMetric(name="m", query='sum(x{namespace=~".*"})', max=1), pods, "1m")
    assert len(rec.sent) == 1  # the refused one was never sent


async def test_unconfined_custom_queries_only_when_the_admin_allows_them():
    rec = Recording()
    await PrometheusProvider(rec, confined=False).measure(AnalysisMetric(name="m", query="sum(up)", max=1), Pods("team-a", "bot", role="canary"), "1m")
    assert rec.sent == ["sum(up)"]
    assert Endpoints({"default": "http://p"}, allow_unconfined_queries=True).provider("default").confined is False
    assert Endpoints({"default": "http://p"}).provider("default").confined is True


async def test_the_schedule_client_confines_trigger_queries():
    ep = Endpoints({"default": "http://p"})
    client = ep.client("default", "team-a")
    rec = Recording()
    client.inner = rec  # type: ignore[attr-defined]
    await client.query("sum(up)")
    assert rec.sent == ['sum(up{namespace="team-a"})']
