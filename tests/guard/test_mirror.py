"""The guard's mirror (a Rollout's shadow step) against fake OpenAI-compatible engines: the client gets the stable's
answer unchanged and without waiting for the candidate; the copies go to the candidate afterwards and are compared and
counted (agree, disagree, error; the candidate's contract verdicts; both latencies); a full queue drops copies and counts
them; a mirror ends at its `until` by itself; only the target the guard was started with is accepted. Hypothesis
properties of the pure agreement rule and sampling (tuneloop.guard.mirror)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections.abc import Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, settings
from hypothesis import strategies as st
from tuneloop.guard import mirror
from tuneloop.guard.proxy import MIRROR_HEADER, MIRROR_PATH, Guard, MirrorLimits

pytestmark = pytest.mark.unit

SCHEMA = {"type": "object", "required": ["category"], "properties": {"category": {"enum": ["billing", "shipping"]}},
          "additionalProperties": False}
NOW = dt.datetime(2026, 12, 7, 20, 0, tzinfo=dt.UTC)


class Engine:
    """A fake engine: answers `answer(n)` to its n-th chat request (0-based) after `delay` seconds (or once `gate` is
    set), or HTTP `status`; records every request body and whether it was a mirrored copy."""

    def __init__(self, answer: Callable[[int], str], delay: float = 0.0, status: int = 200, gate: asyncio.Event | None = None):
        self.answer, self.delay, self.status, self.gate = answer, delay, status, gate
        self.seen: list[dict] = []
        self.copies: list[bool] = []
        self.server: TestServer | None = None

    async def chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        n = len(self.seen)
        self.seen.append(body)
        self.copies.append(bool(request.headers.get(MIRROR_HEADER)))
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(self.delay)
        if self.status != 200:
            return web.json_response({"error": {"message": "boom"}}, status=self.status)
        return web.json_response({"choices": [{"index": 0, "message": {"role": "assistant", "content": self.answer(n)}}]})

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        self.server = TestServer(app)
        await self.server.start_server()
        return str(self.server.make_url("")).rstrip("/")

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()


def _chat(text: str, **extra) -> dict:
    return {"model": "bot", "messages": [{"role": "user", "content": text}], **extra}


def _series(text: str, name: str, **labels: str) -> float:
    """The value of one series of the Prometheus text (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        key, value = line.rsplit(" ", 1)
        if key.split("{")[0] != name:
            continue
        got = ",".join(sorted(key.split("{", 1)[1].rstrip("}").split(","))) if "{" in key else ""
        if got == want:
            return float(value)
    return 0.0


async def _start(guard: Guard) -> TestClient:
    client = TestClient(TestServer(guard.app()))
    await client.start_server()
    return client


def _config(target: str, **extra) -> dict:
    return {"target": target, "percent": 100, "until": "2026-12-07T21:00:00Z", "candidate": "bot-v2", **extra}


async def _wait_for(client: TestClient, name: str, total: float, timeout: float = 10.0, **labels: str) -> str:
    """The metrics text once the sum of `name` over the results reaches `total` (the workers run after the answers)."""
    deadline = time.monotonic() + timeout
    while True:
        text = await (await client.get("/metrics")).text()
        got = sum(_series(text, name, candidate="bot-v2", result=r) for r in mirror.RESULTS)
        if got >= total or time.monotonic() > deadline:
            return text
        await asyncio.sleep(0.02)


async def test_the_client_gets_the_stable_answer_at_once_and_the_copies_are_compared_afterwards():
    stable_answers = ['{"category": "billing"}', '{"category": "shipping"}', "billing", '{"category":"billing"}']
    cand_answers = ['{ "category":  "billing" }', '{"category": "billing"}', "  billing\n", "not json"]
    stable, cand = Engine(lambda n: stable_answers[n]), Engine(lambda n: cand_answers[n], delay=0.6)
    s_url, c_url = await stable.start(), await cand.start()
    guard = Guard(s_url, SCHEMA, mirror_targets=(c_url,), clock=lambda: NOW)
    client = await _start(guard)
    try:
        put = await client.put(MIRROR_PATH, json=_config(c_url))
        assert put.status == 200 and await put.json() == _config(c_url)
        assert await (await client.get(MIRROR_PATH)).json() == _config(c_url)  # read back exactly
        for i, text in enumerate(["a", "b", "c", "d"]):
            started = time.monotonic()
            r = await client.post("/v1/chat/completions", json=_chat(text))
            took = time.monotonic() - started
            assert r.status == 200
            assert (await r.json())["choices"][0]["message"]["content"] == stable_answers[i]  # untouched
            assert took < 0.4, f"the live answer waited for the candidate ({took:.2f} s; the candidate takes 0.6 s)"
        text = await _wait_for(client, "tuneloop_shadow_comparisons_total", 4)
        # JSON equal after parsing; another category; the same text but for whitespace (no JSON needed); a broken answer
        assert _series(text, "tuneloop_shadow_comparisons_total", candidate="bot-v2", result="agree") == 2
        assert _series(text, "tuneloop_shadow_comparisons_total", candidate="bot-v2", result="disagree") == 2
        assert _series(text, "tuneloop_shadow_comparisons_total", candidate="bot-v2", result="error") == 0
        assert _series(text, "tuneloop_shadow_answers_total", candidate="bot-v2", verdict="ok") == 2
        assert _series(text, "tuneloop_shadow_answers_total", candidate="bot-v2", verdict="violation") == 2
        for side in ("stable", "candidate"):
            assert _series(text, "tuneloop_shadow_latency_seconds_count", candidate="bot-v2", side=side) == 4
        assert _series(text, "tuneloop_shadow_latency_seconds_sum", candidate="bot-v2", side="candidate") >= 4 * 0.6
        assert _series(text, "tuneloop_shadow_latency_seconds_sum", candidate="bot-v2", side="stable") < 4 * 0.3
        same = sorted(json.dumps(b, sort_keys=True) for b in cand.seen) == sorted(json.dumps(b, sort_keys=True) for b in stable.seen)
        assert same and all(cand.copies) and not any(stable.copies)  # the same requests, marked as copies
        assert _series(text, "tuneloop_guard_answers_total", verdict="ok") == 3  # the live answers are still checked
        assert _series(text, "tuneloop_guard_answers_total", verdict="violation") == 1
    finally:
        await client.close()
        await stable.close()
        await cand.close()


async def test_a_full_queue_drops_copies_and_counts_them_without_holding_the_live_answers():
    gate = asyncio.Event()
    stable, cand = Engine(lambda n: "same"), Engine(lambda n: "same", gate=gate)
    s_url, c_url = await stable.start(), await cand.start()
    guard = Guard(s_url, None, mirror_targets=(c_url,), clock=lambda: NOW, limits=MirrorLimits(queue=1, concurrency=1, timeout=10))
    client = await _start(guard)
    try:
        assert (await client.put(MIRROR_PATH, json=_config(c_url))).status == 200
        assert (await client.post("/v1/chat/completions", json=_chat("first"))).status == 200
        for _ in range(200):  # the one worker has taken the first copy (the candidate holds it until the gate opens)
            if cand.seen:
                break
            await asyncio.sleep(0.01)
        assert len(cand.seen) == 1
        for text in ("queued", "dropped 1", "dropped 2"):
            started = time.monotonic()
            r = await client.post("/v1/chat/completions", json=_chat(text))
            assert r.status == 200 and (await r.json())["choices"][0]["message"]["content"] == "same"
            assert time.monotonic() - started < 0.5
        metrics = await (await client.get("/metrics")).text()
        assert _series(metrics, "tuneloop_shadow_dropped_total", candidate="bot-v2") == 2
        gate.set()
        metrics = await _wait_for(client, "tuneloop_shadow_comparisons_total", 2)
        assert _series(metrics, "tuneloop_shadow_comparisons_total", candidate="bot-v2", result="agree") == 2
        assert [b["messages"][0]["content"] for b in cand.seen] == ["first", "queued"]
    finally:
        gate.set()
        await client.close()
        await stable.close()
        await cand.close()


async def test_errors_streams_and_the_share():
    draws = iter([0.1, 0.7, 0.3, 0.9, 0.0, 0.0])  # at 50 %: copied, not, copied, not; then the stream and the error case
    stable, cand = Engine(lambda n: "x"), Engine(lambda n: "x", status=500)
    s_url, c_url = await stable.start(), await cand.start()
    guard = Guard(s_url, None, mirror_targets=(c_url, "http://127.0.0.1:9"), clock=lambda: NOW, draw=lambda: next(draws))
    client = await _start(guard)
    try:
        assert (await client.put(MIRROR_PATH, json=_config(c_url, percent=50))).status == 200
        for text in ("a", "b", "c", "d"):
            assert (await client.post("/v1/chat/completions", json=_chat(text))).status == 200
        text = await _wait_for(client, "tuneloop_shadow_comparisons_total", 2)
        assert _series(text, "tuneloop_shadow_comparisons_total", candidate="bot-v2", result="error") == 2  # HTTP 500: no answer
        assert [b["messages"][0]["content"] for b in cand.seen] == ["a", "c"]
        assert _series(text, "tuneloop_shadow_latency_seconds_count", candidate="bot-v2", side="stable") == 0  # pairs only
        await client.post("/v1/chat/completions", json=_chat("streamed", stream=True))  # a stream is never copied
        assert (await client.put(MIRROR_PATH, json=_config("http://127.0.0.1:9"))).status == 200  # nothing listens there
        assert (await client.post("/v1/chat/completions", json=_chat("unreachable"))).status == 200
        text = await _wait_for(client, "tuneloop_shadow_comparisons_total", 3)
        assert _series(text, "tuneloop_shadow_comparisons_total", candidate="bot-v2", result="error") == 3
        assert len(cand.seen) == 2
    finally:
        await client.close()
        await stable.close()
        await cand.close()


async def test_the_mirror_ends_at_its_until_without_the_operator_and_only_allowed_targets_are_taken():
    now = [NOW]
    stable, cand = Engine(lambda n: "x"), Engine(lambda n: "x")
    s_url, c_url = await stable.start(), await cand.start()
    guard = Guard(s_url, None, mirror_targets=(c_url,), clock=lambda: now[0])
    client = await _start(guard)
    try:
        refused = {
            "elsewhere": _config("http://attacker.example:80"),
            "percent 0": _config(c_url, percent=0),
            "percent 101": _config(c_url, percent=101),
            "past": _config(c_url, until="2026-12-07T19:59:00Z"),
            "no zone": _config(c_url, until="2026-12-07T21:00:00"),
            "unknown field": _config(c_url, extra=1),
            "no candidate": {k: v for k, v in _config(c_url).items() if k != "candidate"},
        }
        for why, body in refused.items():
            r = await client.put(MIRROR_PATH, json=body)
            assert r.status == 400, why
            assert (await r.json())["error"]
        assert (await client.put(MIRROR_PATH, data=b"{not json")).status == 400
        assert await (await client.get(MIRROR_PATH)).json() == {}
        assert (await client.put(MIRROR_PATH, json=_config(c_url, until="2026-12-07T20:01:00Z"))).status == 200
        await client.post("/v1/chat/completions", json=_chat("during"))
        now[0] = NOW + dt.timedelta(seconds=61)  # past `until`: the operator never said stop
        await client.post("/v1/chat/completions", json=_chat("after"))
        assert await (await client.get(MIRROR_PATH)).json() == {}
        await _wait_for(client, "tuneloop_shadow_comparisons_total", 1)
        assert [b["messages"][0]["content"] for b in cand.seen] == ["during"]
        assert (await client.put(MIRROR_PATH, json=_config(c_url))).status == 200
        assert (await client.delete(MIRROR_PATH)).status == 200
        assert await (await client.get(MIRROR_PATH)).json() == {}
        await client.post("/v1/chat/completions", json=_chat("deleted"))
        await asyncio.sleep(0.1)
        assert len(cand.seen) == 1
    finally:
        await client.close()
        await stable.close()
        await cand.close()


async def test_no_mirror_target_means_no_mirroring():
    guard = Guard("http://127.0.0.1:9", None, clock=lambda: NOW)
    client = await _start(guard)
    try:
        r = await client.put(MIRROR_PATH, json=_config("http://127.0.0.1:9"))
        assert r.status == 400 and "--mirror-target" in (await r.json())["error"]
    finally:
        await client.close()


# --- the pure rules -------------------------------------------------------------------------------------------------
space = st.sampled_from([" ", "  ", "\n", "\t", " \n "])
words = st.lists(st.text(alphabet="abcxyz{}\":,0123", min_size=1, max_size=6), min_size=0, max_size=6)


@settings(max_examples=60, deadline=None)
@given(ws=words, gaps=st.lists(space, min_size=8, max_size=8), lead=space, trail=space, structured=st.booleans())
def test_whitespace_never_changes_agreement(ws, gaps, lead, trail, structured):
    text = " ".join(ws)
    spaced = lead + "".join(w + gaps[i % len(gaps)] for i, w in enumerate(ws)) + trail
    assert mirror.same_answer(text, spaced, structured=structured)
    assert mirror.normalise(mirror.normalise(spaced)) == mirror.normalise(spaced)


@settings(max_examples=60, deadline=None)
@given(a=st.text(max_size=12), b=st.text(max_size=12), structured=st.booleans())
def test_agreement_is_reflexive_and_symmetric_and_plain_text_is_exact(a, b, structured):
    assert mirror.same_answer(a, a, structured=structured)
    assert mirror.same_answer(a, b, structured=structured) == mirror.same_answer(b, a, structured=structured)
    if not structured:
        assert mirror.same_answer(a, b, structured=False) == (mirror.normalise(a) == mirror.normalise(b))


json_values = st.recursive(st.none() | st.booleans() | st.integers(-5, 5) | st.text(alphabet="abc ", max_size=4),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(alphabet="abc", max_size=3), inner, max_size=3),
                           max_leaves=8)


@settings(max_examples=60, deadline=None)
@given(value=json_values, other=json_values, indent=st.sampled_from([None, 1, 2]), sort=st.booleans())
def test_with_a_contract_json_answers_agree_exactly_when_their_values_are_equal(value, other, indent, sort):
    a, b = json.dumps(value), json.dumps(value, indent=indent, sort_keys=sort)
    assert mirror.same_answer(a, b, structured=True)  # key order and spacing do not matter
    equal = mirror.canonical(value) == mirror.canonical(other) or mirror.normalise(a) == mirror.normalise(json.dumps(other))
    assert mirror.same_answer(a, json.dumps(other), structured=True) == equal
    assert not mirror.same_answer("true", "1", structured=True)  # JSON's true is not 1 (Python's True == 1 is)
    assert mirror.compare([a, a], [b], structured=True) == mirror.DISAGREE  # another number of choices


@settings(max_examples=60, deadline=None)
@given(percent=st.integers(1, 100), lower=st.integers(1, 100))
def test_sampling_copies_exactly_the_share_and_more_percent_never_copies_less(percent, lower):
    draws = [(k + 0.5) / 1000 for k in range(1000)]  # uniform, none on a boundary
    assert sum(mirror.sampled(u, percent) for u in draws) == percent * 10
    low = min(percent, lower)
    assert all(mirror.sampled(u, percent) for u in draws if mirror.sampled(u, low))


@settings(max_examples=40, deadline=None)
@given(percent=st.integers(1, 100), minutes=st.integers(1, 10_000), model=st.one_of(st.none(), st.just("adapter-v2")))
def test_a_configuration_reads_back_as_written(percent, minutes, model):
    cfg = mirror.MirrorConfig(target="http://r-canary.ns.svc:8000", percent=percent, until=NOW + dt.timedelta(minutes=minutes),
                              candidate="v2", model=model)
    assert mirror.parse(cfg.wire(), ("http://r-canary.ns.svc:8000/",), NOW) == cfg
    assert mirror.parse(json.loads(json.dumps(cfg.wire())), (cfg.target,), NOW).wire() == cfg.wire()
