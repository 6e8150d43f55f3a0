"""The guard's HTTP server: every request is passed to the upstream engine unchanged (enforce mode: a completion
request without a format of its own gets the contract as structured outputs); a non-streamed completion's answers are
checked and counted. GET /metrics is the guard's own (the engine's stay on the engine's port).

Input checks (a completion request's user turns or prompt, before the engine sees it): harmful content and the topic
rule; a check that refuses answers HTTP 400 in OpenAI's error shape (code `content_filter`) and the engine is never
called. Output checks (each answer of a non-streamed completion): the contract, and harmful content; a refusing check
replaces the engine's response with the same kind of error. A flagging check only counts. Every check's outcome is
counted in `tuneloop_guard_checks_total{check, direction, outcome}` (per request on input, per answer on output)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from . import check
from .harmful import Scorer

HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding"}
HARMFUL, TOPIC = "harmful", "topic"
INPUT, OUTPUT = "input", "output"


@dataclass(frozen=True)
class HarmfulCheck:
    """Harmful content (`harmful.load()`'s classifier): a text scoring at or above `threshold` is harmful."""

    score: Scorer
    threshold: float
    input: str = check.FLAG  # off | flag | refuse
    output: str = check.FLAG


@dataclass(frozen=True)
class TopicCheck:
    """The topic rule (`topic.Profile.scores`): a request scoring below `threshold` is off-topic."""

    score: Scorer
    threshold: float
    action: str = check.FLAG  # flag | refuse


class Guard:
    def __init__(self, upstream: str, schema: dict[str, Any] | None, *, enforce: bool = False,
                 harmful: HarmfulCheck | None = None, topic: TopicCheck | None = None):
        self.upstream = upstream.rstrip("/")
        self.schema = schema
        self.ok = check.validator(schema) if schema is not None else None
        self.enforce = enforce and schema is not None
        self.harmful = harmful
        self.topic = topic
        self.registry = CollectorRegistry()
        self.answers = Counter("tuneloop_guard_answers", "Answers checked against the output contract, by verdict (ok, violation).",
                               ["verdict"], registry=self.registry)
        self.unchecked = Counter("tuneloop_guard_unchecked_responses", "Responses passed through unchecked (streamed, not JSON, errors).",
                                 registry=self.registry)
        self.enforced = Counter("tuneloop_guard_enforced_requests", "Requests the guard added the contract to (enforce mode).",
                                registry=self.registry)
        self.checks = Counter("tuneloop_guard_checks", "Harmful-content and topic checks by check (harmful, topic), direction "
                              "(input: per request, output: per answer) and outcome (pass, flag, refuse).",
                              ["check", "direction", "outcome"], registry=self.registry)
        for verdict in ("ok", "violation"):
            self.answers.labels(verdict)  # both series exist from the start: a rate of 0 is a rate, not "no data"
        for name, direction in self.enabled():
            for out in check.OUTCOMES:
                self.checks.labels(name, direction, out)
        self.session: aiohttp.ClientSession | None = None

    def enabled(self) -> list[tuple[str, str]]:
        """(check, direction) of every check that runs."""
        out = []
        if self.harmful is not None:
            out += [(HARMFUL, d) for d, action in ((INPUT, self.harmful.input), (OUTPUT, self.harmful.output)) if action != check.OFF]
        if self.topic is not None:
            out.append((TOPIC, INPUT))
        return out

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_route("*", "/{tail:.*}", self.forward)
        app.on_cleanup.append(self._close)
        return app

    async def _close(self, _: web.Application) -> None:
        if self.session is not None:
            await self.session.close()

    async def metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    def _count(self, name: str, direction: str, out: str) -> str:
        self.checks.labels(name, direction, out).inc()
        return out

    def check_input(self, doc: dict[str, Any], path: str) -> str | None:
        """Run the input checks on a completion request (each counted); the refusal message, or None to pass it on."""
        texts = check.request_texts(doc, path)
        if not texts:
            return None
        why = []
        if self.harmful is not None and self.harmful.input != check.OFF:
            score = max(self.harmful.score(texts))
            if self._count(HARMFUL, INPUT, check.outcome(score >= self.harmful.threshold, self.harmful.input)) == check.REFUSE:
                why.append(f"the request looks harmful (score {score:.2f} ≥ {self.harmful.threshold:g})")
        if self.topic is not None:
            score = self.topic.score(["\n".join(texts)])[0]
            if self._count(TOPIC, INPUT, check.outcome(score < self.topic.threshold, self.topic.action)) == check.REFUSE:
                why.append(f"the request is off-topic for this model (similarity {score:.2f} < {self.topic.threshold:.2f})")
        return "Refused by the guard: " + "; ".join(why) + "." if why else None

    def check_output(self, texts: list[str]) -> str | None:
        """Run the output checks on a response's answers (each answer counted); the refusal message, or None."""
        for text in texts:
            if self.ok is not None:
                self.answers.labels("ok" if self.ok(text) else "violation").inc()
        if self.harmful is None or self.harmful.output == check.OFF or not texts:
            return None
        refused = []
        for score in self.harmful.score(texts):
            if self._count(HARMFUL, OUTPUT, check.outcome(score >= self.harmful.threshold, self.harmful.output)) == check.REFUSE:
                refused.append(score)
        if not refused:
            return None
        return f"Refused by the guard: the model's answer looks harmful (score {max(refused):.2f} ≥ {self.harmful.threshold:g}) and was withheld."

    def _reads_answers(self) -> bool:
        return self.ok is not None or (self.harmful is not None and self.harmful.output != check.OFF)

    async def forward(self, request: web.Request) -> web.StreamResponse:
        if self.session is None:
            self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))
        body = await request.read()
        completion = request.method == "POST" and request.path in check.COMPLETION_PATHS
        doc: Any = None
        if completion and (self.schema is not None or self.enabled()):
            try:
                doc = json.loads(body)
            except ValueError:
                doc = None
        if isinstance(doc, dict):
            refused = self.check_input(doc, request.path)
            if refused is not None:  # the engine never sees it
                param = "messages" if request.path == "/v1/chat/completions" else "prompt"
                return web.json_response(check.refusal(refused, param=param), status=400)
            if self.enforce and self.schema is not None and not doc.get("stream"):
                doc, changed = check.enforce(doc, self.schema)
                if changed:
                    body = json.dumps(doc).encode()
                    self.enforced.inc()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        async with self.session.request(request.method, self.upstream + request.rel_url.path_qs, data=body, headers=headers) as up:
            out_headers = {k: v for k, v in up.headers.items() if k.lower() not in HOP_HEADERS}
            if isinstance(doc, dict) and not doc.get("stream") and self._reads_answers() and up.status == 200:
                data = await up.read()
                try:
                    answer_doc = json.loads(data)
                except ValueError:
                    answer_doc = None
                texts = check.answers(answer_doc) if isinstance(answer_doc, dict) else None
                if texts is None:
                    self.unchecked.inc()
                if texts is not None:
                    refused = self.check_output(texts)
                    if refused is not None:
                        return web.json_response(check.refusal(refused), status=400)
                return web.Response(status=up.status, body=data, headers=out_headers)
            if completion:
                self.unchecked.inc()
            out = web.StreamResponse(status=up.status, headers=out_headers)
            await out.prepare(request)
            async for chunk in up.content.iter_any():
                await out.write(chunk)
            await out.write_eof()
            return out
