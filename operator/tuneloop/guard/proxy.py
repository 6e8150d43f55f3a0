"""The guard's HTTP server: every request is passed to the upstream engine unchanged (enforce mode: a completion
request without a format of its own gets the contract as structured outputs); a non-streamed completion's answers are
checked and counted. GET /metrics is the guard's own (the engine's stay on the engine's port)."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from . import check

HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding"}


class Guard:
    def __init__(self, upstream: str, schema: dict[str, Any] | None, *, enforce: bool = False):
        self.upstream = upstream.rstrip("/")
        self.schema = schema
        self.ok = check.validator(schema) if schema is not None else None
        self.enforce = enforce and schema is not None
        self.registry = CollectorRegistry()
        self.answers = Counter("tuneloop_guard_answers", "Answers checked against the output contract, by verdict (ok, violation).",
                               ["verdict"], registry=self.registry)
        self.unchecked = Counter("tuneloop_guard_unchecked_responses", "Responses passed through unchecked (streamed, not JSON, errors).",
                                 registry=self.registry)
        self.enforced = Counter("tuneloop_guard_enforced_requests", "Requests the guard added the contract to (enforce mode).",
                                registry=self.registry)
        for verdict in ("ok", "violation"):
            self.answers.labels(verdict)  # both series exist from the start: a rate of 0 is a rate, not "no data"
        self.session: aiohttp.ClientSession | None = None

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

    async def forward(self, request: web.Request) -> web.StreamResponse:
        if self.session is None:
            self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))
        body = await request.read()
        completion = request.method == "POST" and request.path in check.COMPLETION_PATHS
        doc: Any = None
        if completion and self.schema is not None:
            try:
                doc = json.loads(body)
            except ValueError:
                doc = None
            if isinstance(doc, dict) and self.enforce and not doc.get("stream"):
                doc, changed = check.enforce(doc, self.schema)
                if changed:
                    body = json.dumps(doc).encode()
                    self.enforced.inc()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        async with self.session.request(request.method, self.upstream + request.rel_url.path_qs, data=body, headers=headers) as up:
            if isinstance(doc, dict) and not doc.get("stream") and self.ok is not None and up.status == 200:
                data = await up.read()
                self._count(data)
                return web.Response(status=up.status, body=data, headers={k: v for k, v in up.headers.items() if k.lower() not in HOP_HEADERS})
            if completion:
                self.unchecked.inc()
            out = web.StreamResponse(status=up.status, headers={k: v for k, v in up.headers.items() if k.lower() not in HOP_HEADERS})
            await out.prepare(request)
            async for chunk in up.content.iter_any():
                await out.write(chunk)
            await out.write_eof()
            return out

    def _count(self, data: bytes) -> None:
        assert self.ok is not None
        try:
            texts = check.answers(json.loads(data))
        except ValueError:
            self.unchecked.inc()
            return
        for text in texts:
            self.answers.labels("ok" if self.ok(text) else "violation").inc()
