"""The guard's HTTP server: every request is passed to the upstream engine unchanged (enforce mode: a completion
request without a format of its own gets the contract as structured outputs); a non-streamed completion's answers are
checked and counted. GET /metrics is the guard's own (the engine's stay on the engine's port).

Input checks (a completion request's user turns or prompt, before the engine sees it): harmful content and the topic
rule; a check that refuses answers HTTP 400 in OpenAI's error shape (code `content_filter`) and the engine is never
called. Output checks (each answer of a non-streamed completion): the contract, and harmful content; a refusing check
replaces the engine's response with the same kind of error. A flagging check only counts. Every check's outcome is
counted in `tuneloop_guard_checks_total{check, direction, outcome}` (per request on input, per answer on output).

Mirror (a Rollout's shadow step; `mirror` is the pure part): the operator sets a mirror with `PUT /tuneloop/mirror`
(`GET` reads it back, `DELETE` ends it; it also ends by itself at its `until`). For a sampled share of the non-streamed
completion requests the stable answers with HTTP 200, the client gets the stable's answer unchanged and at once; the
request is then queued (bounded: a full queue drops the copy and counts it, the live path never waits) and a few workers
send it to the candidate and count `tuneloop_shadow_comparisons_total{candidate, result}` (agree, disagree, error),
`tuneloop_shadow_answers_total{candidate, verdict}` (the candidate's answers against the output contract),
`tuneloop_shadow_latency_seconds{candidate, side}` (stable and candidate, on the same requests) and
`tuneloop_shadow_dropped_total{candidate}`."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from . import check, mirror
from .harmful import Scorer

HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding"}
HARMFUL, TOPIC = "harmful", "topic"
INPUT, OUTPUT = "input", "output"
MIRROR_PATH = "/tuneloop/mirror"
MIRROR_HEADER = "x-tuneloop-mirror"  # on the copies the guard sends: a copy is never mirrored again
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0)
MAX_ANSWER_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class ShadowJob:
    """One mirrored request: what the stable answered (its texts, in `stable_seconds`) and what to send the candidate."""

    config: mirror.MirrorConfig
    path: str
    doc: dict[str, Any]
    stable: list[str]
    stable_seconds: float


@dataclass(frozen=True)
class MirrorLimits:
    """How much shadow work a guard takes on: queued copies (more are dropped), concurrent calls, a call's timeout."""

    queue: int = 64
    concurrency: int = 4
    timeout: float = 120.0


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
                 harmful: HarmfulCheck | None = None, topic: TopicCheck | None = None, mirror_targets: tuple[str, ...] = (),
                 limits: MirrorLimits | None = None, clock: mirror.Clock | None = None, draw: Callable[[], float] = random.random):
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
        self._init_mirror(mirror_targets, limits or MirrorLimits(), clock, draw)

    def _init_mirror(self, targets: tuple[str, ...], limits: MirrorLimits, clock: mirror.Clock | None, draw: Callable[[], float]) -> None:
        self.mirror_targets = targets
        self.limits = limits
        self.clock: mirror.Clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self.draw = draw
        self.mirror: mirror.MirrorConfig | None = None
        self.queue: asyncio.Queue[ShadowJob] = asyncio.Queue(maxsize=limits.queue)
        self.workers: list[asyncio.Task[None]] = []
        self.comparisons = Counter("tuneloop_shadow_comparisons", "Mirrored requests by result: the candidate's answer agrees with "
                                   "the stable's, disagrees, or there was none (error).", ["candidate", "result"], registry=self.registry)
        self.shadow_answers = Counter("tuneloop_shadow_answers", "The candidate's answers to mirrored requests against the output "
                                      "contract, by verdict (ok, violation).", ["candidate", "verdict"], registry=self.registry)
        self.shadow_latency = Histogram("tuneloop_shadow_latency_seconds", "Seconds to the whole answer of a mirrored request, by side "
                                        "(stable: the live answer; candidate: its copy).", ["candidate", "side"],
                                        buckets=LATENCY_BUCKETS, registry=self.registry)
        self.shadow_dropped = Counter("tuneloop_shadow_dropped", "Mirrored requests dropped because the shadow queue was full.",
                                      ["candidate"], registry=self.registry)

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
        app.router.add_get(MIRROR_PATH, self.mirror_get)
        app.router.add_put(MIRROR_PATH, self.mirror_put)
        app.router.add_delete(MIRROR_PATH, self.mirror_delete)
        app.router.add_route("*", "/{tail:.*}", self.forward)
        app.on_cleanup.append(self._close)
        return app

    async def _close(self, _: web.Application) -> None:
        for task in self.workers:
            task.cancel()
        await asyncio.gather(*self.workers, return_exceptions=True)
        if self.session is not None:
            await self.session.close()

    # --- the mirror ----------------------------------------------------------------------------------------------
    def current_mirror(self) -> mirror.MirrorConfig | None:
        """The mirror in force; one past its `until` is dropped here (it ends even if the operator never says so)."""
        if self.mirror is not None and not self.mirror.active(self.clock()):
            print(f"tuneloop guard: mirror to {self.mirror.target} expired at {mirror.format_time(self.mirror.until)}",
                  file=sys.stderr, flush=True)
            self.mirror = None
        return self.mirror

    async def mirror_get(self, _: web.Request) -> web.Response:
        cfg = self.current_mirror()
        return web.json_response(cfg.wire() if cfg is not None else {})

    async def mirror_put(self, request: web.Request) -> web.Response:
        try:
            cfg = mirror.parse(json.loads(await request.read()), self.mirror_targets, self.clock())
        except ValueError as exc:
            return web.json_response({"error": str(exc)[:500]}, status=400)
        if cfg != self.mirror:
            print(f"tuneloop guard: mirroring {cfg.percent}% to {cfg.target} ({cfg.candidate}) until {mirror.format_time(cfg.until)}",
                  file=sys.stderr, flush=True)
        self.mirror = cfg
        for result in mirror.RESULTS:  # every series exists from the start: no comparison yet reads 0, not "no data"
            self.comparisons.labels(cfg.candidate, result)
        for verdict in ("ok", "violation") if self.ok is not None else ():
            self.shadow_answers.labels(cfg.candidate, verdict)
        self.shadow_dropped.labels(cfg.candidate)
        return web.json_response(cfg.wire())

    async def mirror_delete(self, _: web.Request) -> web.Response:
        if self.mirror is not None:
            print(f"tuneloop guard: mirror to {self.mirror.target} ended", file=sys.stderr, flush=True)
        self.mirror = None
        return web.json_response({})

    def shadow_for(self, request: web.Request, doc: Any) -> mirror.MirrorConfig | None:
        """The mirror this request is copied under: a non-streamed completion, not itself a copy, drawn into the share."""
        cfg = self.current_mirror()
        if cfg is None or not isinstance(doc, dict) or doc.get("stream") or request.headers.get(MIRROR_HEADER):
            return None
        return cfg if mirror.sampled(self.draw(), cfg.percent) else None

    def enqueue(self, job: ShadowJob) -> None:
        """Queue a copy for the workers; a full queue drops it (counted): the live answer never waits for shadow work."""
        if not self.workers:
            self.workers = [asyncio.create_task(self._worker()) for _ in range(max(1, self.limits.concurrency))]
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            self.shadow_dropped.labels(job.config.candidate).inc()

    async def _worker(self) -> None:
        while True:
            job = await self.queue.get()
            try:
                await self.shadow(job)
            except Exception as exc:  # noqa: BLE001 -- a worker never dies: the failure is the comparison's error
                print(f"tuneloop guard: mirrored request failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
                self.comparisons.labels(job.config.candidate, mirror.ERROR).inc()
            finally:
                self.queue.task_done()

    async def shadow(self, job: ShadowJob) -> None:
        """Send one copy to the candidate and count the comparison, its contract verdicts and both latencies."""
        cfg = job.config
        assert self.session is not None
        started = time.monotonic()
        texts: list[str] | None = None
        try:
            async with self.session.post(cfg.target + job.path, json=mirror.mirrored_body(job.doc, cfg.model), headers={MIRROR_HEADER: "1"},
                                         timeout=aiohttp.ClientTimeout(total=self.limits.timeout)) as resp:
                data = await resp.read()
                if resp.status == 200 and len(data) <= MAX_ANSWER_BYTES:
                    doc = json.loads(data)
                    texts = check.answers(doc) if isinstance(doc, dict) and isinstance(doc.get("choices"), list) else None
        except (aiohttp.ClientError, TimeoutError, ValueError):
            texts = None
        seconds = time.monotonic() - started
        if texts is None:
            self.comparisons.labels(cfg.candidate, mirror.ERROR).inc()
            return
        self.shadow_latency.labels(cfg.candidate, mirror.STABLE).observe(job.stable_seconds)
        self.shadow_latency.labels(cfg.candidate, mirror.CANDIDATE).observe(seconds)
        if self.ok is not None:
            for text in texts:
                self.shadow_answers.labels(cfg.candidate, "ok" if self.ok(text) else "violation").inc()
        self.comparisons.labels(cfg.candidate, mirror.compare(job.stable, texts, structured=self.ok is not None)).inc()

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

    def answer_texts(self, data: bytes) -> list[str] | None:
        """The answers of an engine's response body; None (counted as unchecked when answers are checked) if it has none."""
        try:
            answer_doc = json.loads(data)
        except ValueError:
            answer_doc = None
        texts = check.answers(answer_doc) if isinstance(answer_doc, dict) else None
        if texts is None and self._reads_answers():
            self.unchecked.inc()
        return texts

    def _reads_answers(self) -> bool:
        return self.ok is not None or (self.harmful is not None and self.harmful.output != check.OFF)

    async def forward(self, request: web.Request) -> web.StreamResponse:
        if self.session is None:
            self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))
        body = await request.read()
        completion = request.method == "POST" and request.path in check.COMPLETION_PATHS
        doc: Any = None
        if completion and (self.schema is not None or self.enabled() or self.current_mirror() is not None):
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
        shadow = self.shadow_for(request, doc) if completion else None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        started = time.monotonic()
        async with self.session.request(request.method, self.upstream + request.rel_url.path_qs, data=body, headers=headers) as up:
            out_headers = {k: v for k, v in up.headers.items() if k.lower() not in HOP_HEADERS}
            if isinstance(doc, dict) and not doc.get("stream") and (self._reads_answers() or shadow) and up.status == 200:
                data = await up.read()
                texts = self.answer_texts(data)
                if texts is not None:
                    refused = self.check_output(texts)
                    if refused is not None:
                        return web.json_response(check.refusal(refused), status=400)
                    if shadow is not None:  # queued, not awaited: the client's answer goes out now
                        self.enqueue(ShadowJob(shadow, request.path, doc, texts, time.monotonic() - started))
                if not self._reads_answers():  # read for the mirror only: as unchecked as before
                    self.unchecked.inc()
                return web.Response(status=up.status, body=data, headers=out_headers)
            if completion:
                self.unchecked.inc()
            out = web.StreamResponse(status=up.status, headers=out_headers)
            await out.prepare(request)
            async for chunk in up.content.iter_any():
                await out.write(chunk)
            await out.write_eof()
            return out
