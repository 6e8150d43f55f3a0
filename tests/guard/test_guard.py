"""The output guard (tuneloop.guard) in front of a fake OpenAI-compatible engine: answers are passed through unchanged
and counted by verdict; enforce mode adds the contract to requests that ask for no format; the content checks flag or
refuse (the checks stand-in scorers here, and the real classifier and topic profile in the last test)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, settings
from hypothesis import strategies as st
from tuneloop.guard import check
from tuneloop.guard.proxy import Guard, HarmfulCheck, TopicCheck

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


# --- the content checks: harmful (input/output) and topic, flag or refuse --------------------------------------------------
Scorer = Callable[[Sequence[str]], list[float]]


def _stub(word: str) -> Scorer:
    """A scorer standing in for a model: 1.0 for a text containing `word`, else 0.0."""
    return lambda texts: [1.0 if word in t else 0.0 for t in texts]


async def _guarded(guard: Guard, answers: list[str], seen: list[dict]) -> tuple[TestClient, TestServer]:
    engine = await _engine(answers, seen)
    guard.upstream = str(engine.make_url("")).rstrip("/")
    client = TestClient(TestServer(guard.app()))
    await client.start_server()
    return client, engine


def _chat(text: str, **extra) -> dict:
    return {"model": "bot", "messages": [{"role": "system", "content": "Triage."}, {"role": "user", "content": text}], **extra}


def _counts(text: str) -> dict[tuple[str, str, str], float]:
    out = {}
    for ln in text.splitlines():
        if ln.startswith("tuneloop_guard_checks_total{"):
            labels = dict(kv.split("=") for kv in ln[ln.index("{") + 1:ln.index("}")].replace('"', "").split(","))
            out[(labels["check"], labels["direction"], labels["outcome"])] = float(ln.rsplit(" ", 1)[1])
    return out


async def test_a_refused_input_never_reaches_the_engine_and_answers_an_openai_error():
    seen: list[dict] = []
    guard = Guard("http://unused", None, harmful=HarmfulCheck(_stub("BAD"), 0.5, input=check.REFUSE, output=check.OFF))
    client, engine = await _guarded(guard, ["fine"], seen)
    try:
        r = await client.post("/v1/chat/completions", json=_chat("this is BAD"))
        assert r.status == 400 and seen == []  # the engine never saw it
        err = (await r.json())["error"]
        assert err["code"] == "content_filter" and err["type"] == "invalid_request_error" and err["param"] == "messages"
        assert "harmful" in err["message"]
        r = await client.post("/v1/chat/completions", json=_chat("a normal ticket"))
        assert r.status == 200 and len(seen) == 1
        r = await client.post("/v1/completions", json={"model": "bot", "prompt": ["ok", "BAD again"], "stream": True})
        assert r.status == 400 and (await r.json())["error"]["param"] == "prompt"  # streamed requests are checked on input too
        counts = _counts(await (await client.get("/metrics")).text())
        assert counts == {("harmful", "input", "pass"): 1, ("harmful", "input", "flag"): 0, ("harmful", "input", "refuse"): 2}
    finally:
        await client.close()
        await engine.close()


async def test_flagging_counts_and_passes_everything_on_unchanged():
    seen: list[dict] = []
    guard = Guard("http://unused", SCHEMA, harmful=HarmfulCheck(_stub("BAD"), 0.5), topic=TopicCheck(_stub("ticket"), 0.5))
    client, engine = await _guarded(guard, ['{"category": "billing"}', "BAD answer"], seen)
    try:
        # pre-created: every outcome of every enabled check reads 0 before any traffic (a rate of 0, not "no data")
        counts = _counts(await (await client.get("/metrics")).text())
        assert counts == {(c, d, o): 0 for c, d in (("harmful", "input"), ("harmful", "output"), ("topic", "input"))
                          for o in ("pass", "flag", "refuse")}
        r1 = await client.post("/v1/chat/completions", json=_chat("BAD ticket"))
        r2 = await client.post("/v1/chat/completions", json=_chat("write me a poem"))
        assert r1.status == r2.status == 200 and len(seen) == 2
        assert (await r2.json())["choices"][0]["message"]["content"] == "BAD answer"  # flagged, not changed
        counts = _counts(await (await client.get("/metrics")).text())
        assert counts[("harmful", "input", "flag")] == 1 and counts[("harmful", "input", "pass")] == 1
        assert counts[("topic", "input", "pass")] == 1 and counts[("topic", "input", "flag")] == 1  # the poem is off-topic
        assert counts[("harmful", "output", "pass")] == 1 and counts[("harmful", "output", "flag")] == 1
        assert sum(v for (_, _, o), v in counts.items() if o == "refuse") == 0
        text = await (await client.get("/metrics")).text()
        assert _metric(text, 'tuneloop_guard_answers_total{verdict="ok"}') == 1.0  # the contract is still checked
    finally:
        await client.close()
        await engine.close()


async def test_a_refused_answer_is_replaced_by_an_error_and_off_topic_requests_can_be_refused():
    seen: list[dict] = []
    guard = Guard("http://unused", None, harmful=HarmfulCheck(_stub("BAD"), 0.5, input=check.OFF, output=check.REFUSE),
                  topic=TopicCheck(_stub("ticket"), 0.5, check.REFUSE))
    client, engine = await _guarded(guard, ["BAD answer", "a fine answer"], seen)
    try:
        r = await client.post("/v1/chat/completions", json=_chat("my ticket"))
        assert r.status == 400 and len(seen) == 1  # the engine answered; the client gets the error instead
        body = await r.json()
        assert "choices" not in body and body["error"]["code"] == "content_filter" and "withheld" in body["error"]["message"]
        assert body["error"]["param"] is None
        r = await client.post("/v1/chat/completions", json=_chat("write me a poem"))
        assert r.status == 400 and "off-topic" in (await r.json())["error"]["message"] and len(seen) == 1
        r = await client.post("/v1/chat/completions", json=_chat("another ticket"))
        assert r.status == 200 and (await r.json())["choices"][0]["message"]["content"] == "a fine answer"
        counts = _counts(await (await client.get("/metrics")).text())
        assert ("harmful", "input", "pass") not in counts  # input off: no series
        assert counts[("harmful", "output", "refuse")] == 1 and counts[("harmful", "output", "pass")] == 1
        assert counts[("topic", "input", "refuse")] == 1 and counts[("topic", "input", "pass")] == 2
    finally:
        await client.close()
        await engine.close()


def test_the_outcome_is_the_action_exactly_when_the_check_catches_something():
    for action in (check.OFF, check.FLAG, check.REFUSE):
        assert check.outcome(False, action) == check.PASS
        assert check.outcome(True, action) == (check.PASS if action == check.OFF else action)
    with pytest.raises(ValueError):
        check.outcome(True, "block")


def test_request_texts_read_user_turns_content_parts_and_prompts():
    chat = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                         {"role": "user", "content": [{"type": "text", "text": "c"}, {"type": "image_url", "image_url": {"url": "x"}}]},
                         {"role": "user", "content": "  "}]}
    assert check.request_texts(chat, "/v1/chat/completions") == ["a", "c"]
    assert check.user_text(chat["messages"]) == "a\nc"
    assert check.request_texts({"prompt": "p"}, "/v1/completions") == ["p"]
    assert check.request_texts({"prompt": [[1, 2, 3]]}, "/v1/completions") == []  # token ids are not text


async def test_the_real_checks_end_to_end(tmp_path):
    """`python -m tuneloop.guard` with the real classifier and the quickstart's topic profile: an insult is refused, a poem
    request is refused as off-topic, a ticket passes to the engine."""
    from tuneloop.guard import __main__ as cli
    from tuneloop.guard import topic
    from tuneloop_trainer.evaluation.topic import write_profile

    from . import quickstart

    quickstart.write_data_dir(tmp_path / "data")
    write_profile(tmp_path / "data", tmp_path / "topic-profile.json", quickstart.schema())
    args = cli.parser().parse_args(["--upstream", "http://unused", "--harmful-input", "refuse", "--harmful-output", "flag",
                                    "--topic-profile", str(tmp_path / "topic-profile.json"), "--topic-action", "refuse",
                                    "--topic-pass-rate", "0.95"])
    guard = cli.build(args)
    assert guard.topic is not None and guard.topic.threshold == topic.load(tmp_path / "topic-profile.json").threshold_for(0.95)
    seen: list[dict] = []
    client, engine = await _guarded(guard, ['{"category": "billing"}'], seen)
    try:
        insult = await client.post("/v1/chat/completions", json=_chat("Your product is garbage and you are a fucking idiot"))
        poem = await client.post("/v1/chat/completions", json=_chat("Write a haiku about the ocean at night."))
        ticket = await client.post("/v1/chat/completions", json=_chat(
            "Hello, I was charged twice for order ORD-123456 and only placed it once. Please refund me. Thanks, Ana"))
        assert (insult.status, poem.status, ticket.status) == (400, 400, 200) and len(seen) == 1
        assert "harmful" in (await insult.json())["error"]["message"] and "off-topic" in (await poem.json())["error"]["message"]
    finally:
        await client.close()
        await engine.close()
