"""The output guard (tuneloop.guard) in front of a fake OpenAI-compatible engine: answers are passed through unchanged
and counted by verdict; enforce mode adds the contract to requests that ask for no format."""

from __future__ import annotations

import json

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, settings
from hypothesis import strategies as st
from tuneloop.guard import check
from tuneloop.guard.proxy import Guard

pytestmark = pytest.mark.unit

SCHEMA = {"type": "object", "required": ["category"], "properties": {"category": {"enum": ["billing", "shipping"]}},
          "additionalProperties": False}


async def _engine(answers: list[str], seen: list[dict]) -> TestServer:
    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append(body)
        return web.json_response({"choices": [{"index": 0, "message": {"role": "assistant", "content": answers.pop(0)}}]})

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "bot"}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    server = TestServer(app)
    await server.start_server()
    return server


def _metric(text: str, name: str) -> float:
    line = next(ln for ln in text.splitlines() if ln.startswith(name + " ") or ln.startswith(name + "{") and ln.split(" ")[0] == name)
    return float(line.rsplit(" ", 1)[1])


async def test_answers_are_passed_through_and_counted_by_verdict():
    seen: list[dict] = []
    engine = await _engine(['{"category": "billing"}', "sure, it is billing", '{"category": "refund"}'], seen)
    client = TestClient(TestServer(Guard(str(engine.make_url("")), SCHEMA).app()))
    await client.start_server()
    try:
        bodies = []
        for _ in range(3):
            r = await client.post("/v1/chat/completions", json={"model": "bot", "messages": [{"role": "user", "content": "hi"}]})
            assert r.status == 200
            bodies.append((await r.json())["choices"][0]["message"]["content"])
        assert bodies == ['{"category": "billing"}', "sure, it is billing", '{"category": "refund"}']  # unchanged
        assert all("structured_outputs" not in b for b in seen)  # observe mode: requests untouched
        assert (await (await client.get("/v1/models")).json()) == {"data": [{"id": "bot"}]}  # everything else passes through
        text = await (await client.get("/metrics")).text()
        assert _metric(text, 'tuneloop_guard_answers_total{verdict="ok"}') == 1.0
        assert _metric(text, 'tuneloop_guard_answers_total{verdict="violation"}') == 2.0
    finally:
        await client.close()
        await engine.close()


async def test_enforce_mode_adds_the_contract_only_where_the_client_asked_for_no_format():
    seen: list[dict] = []
    engine = await _engine(['{"category": "billing"}', '{"category": "shipping"}'], seen)
    client = TestClient(TestServer(Guard(str(engine.make_url("")), SCHEMA, enforce=True).app()))
    await client.start_server()
    try:
        await client.post("/v1/chat/completions", json={"model": "bot", "messages": []})
        own = {"type": "json_object"}
        await client.post("/v1/chat/completions", json={"model": "bot", "messages": [], "response_format": own})
        assert seen[0]["structured_outputs"] == {"json": SCHEMA}
        assert seen[1]["response_format"] == own and "structured_outputs" not in seen[1]
        text = await (await client.get("/metrics")).text()
        assert _metric(text, "tuneloop_guard_enforced_requests_total") == 1.0
        assert _metric(text, 'tuneloop_guard_answers_total{verdict="ok"}') == 2.0
    finally:
        await client.close()
        await engine.close()


@settings(max_examples=200, deadline=None)
@given(value=st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                          lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8),
       pad=st.sampled_from(["", " ", "\n"]))
def test_the_verdict_is_exactly_json_that_the_schema_accepts(value, pad):
    import jsonschema

    ok = check.validator(SCHEMA)
    assert ok(pad + json.dumps(value) + pad) == jsonschema.Draft202012Validator(SCHEMA).is_valid(value)
    assert not ok(json.dumps(value)[:-1] + "(")  # a broken document never passes
