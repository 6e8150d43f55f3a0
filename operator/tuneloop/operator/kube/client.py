"""A small async Kubernetes API client (aiohttp) with the verbs the operator needs.

    client = KubeClient(auth.discover())
    obj, created = await client.create(JOBS, "ns", manifest)   # 409 -> the existing object
    await client.patch(FINETUNEJOBS, "ns", "name", {"status": {...}}, subresource="status")

Merge patches (RFC 7386: ``None`` deletes a key). Label selectors are sent to the server and also
applied client-side, so results are the same against API emulators that ignore them.
"""

from __future__ import annotations

import asyncio
import builtins
import datetime as dt
import json
from typing import Any, Literal, overload

import aiohttp

from .auth import Connection
from .resources import EVENTS, Resource

MERGE_PATCH = "application/merge-patch+json"


class ApiError(Exception):
    """A non-2xx answer from the API server."""

    def __init__(self, status: int, reason: str, message: str, body: Any = None):
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.body = body

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def retriable(self) -> bool:
        return self.status in (409, 429) or self.status >= 500


def parse_selector(selector: str | dict[str, str] | None) -> dict[str, str]:
    """Equality-based label selectors only: "a=b,c=d" or a dict."""
    if not selector:
        return {}
    if isinstance(selector, dict):
        return dict(selector)
    out = {}
    for term in selector.split(","):
        key, sep, value = term.strip().partition("=")
        if not sep or key.endswith("!"):
            raise ValueError(f"only equality label selectors are supported: {term!r}")
        out[key.strip()] = value.lstrip("=").strip()
    return out


def matches(obj: dict, selector: dict[str, str]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in selector.items())


class KubeClient:
    """One aiohttp session per client; create it inside the event loop that uses it."""

    def __init__(self, conn: Connection, timeout: float = 30.0, max_connections: int = 64):
        self.conn = conn
        # No total timeout: waiting for a free pooled connection is not a server timeout.
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=10.0, sock_read=timeout)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def _sess(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            connector = aiohttp.TCPConnector(ssl=self.conn.ssl if self.conn.ssl is not None else True, limit=self._max_connections)
            self._session = aiohttp.ClientSession(
                base_url=None, headers=self.conn.headers, timeout=self._timeout, connector=connector
            )
            self._loop = loop
        return self._session

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    async def request(
        self, method: str, path: str, *, body: Any = None, params: dict | None = None,
        content_type: str = "application/json", raw: bool = False,
    ) -> Any:
        sess = await self._sess()
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type, "Accept": "application/json"} if data is not None else {"Accept": "application/json"}
        async with sess.request(method, self.conn.server + path, data=data, params=params, headers=headers) as resp:
            text = await resp.text()
            if resp.status >= 300:
                try:
                    doc = json.loads(text)
                except ValueError:
                    doc = {"message": text}
                raise ApiError(resp.status, doc.get("reason") or resp.reason or "", doc.get("message") or text, doc)
            if raw:
                return text
            return json.loads(text) if text else None

    # --- verbs -------------------------------------------------------------------------------
    async def get(self, res: Resource, namespace: str | None, name: str, *, subresource: str | None = None) -> dict | None:
        """The object, or None when it does not exist."""
        try:
            return await self.request("GET", res.path(namespace, name, subresource))
        except ApiError as exc:
            if exc.not_found:
                return None
            raise

    async def list(self, res: Resource, namespace: str | None = None, *, labels: str | dict[str, str] | None = None) -> list[dict]:
        sel = parse_selector(labels)
        params = {"labelSelector": ",".join(f"{k}={v}" for k, v in sel.items())} if sel else None
        doc = await self.request("GET", res.path(namespace), params=params)
        items = (doc or {}).get("items") or []
        for item in items:  # list items carry no apiVersion/kind on real servers
            item.setdefault("apiVersion", res.api_version)
            item.setdefault("kind", res.kind)
        return [i for i in items if matches(i, sel)]

    @overload
    async def create(self, res: Resource, namespace: str | None, body: dict, *,
                     read_existing: Literal[True] = True) -> tuple[dict, bool]: ...
    @overload
    async def create(self, res: Resource, namespace: str | None, body: dict, *, read_existing: bool) -> tuple[dict | None, bool]: ...

    async def create(self, res: Resource, namespace: str | None, body: dict, *, read_existing: bool = True) -> tuple[dict | None, bool]:
        """Create; if it already exists (409) return the existing object (one GET), or None with
        `read_existing=False` (the caller only needs it to exist). -> (object, created)."""
        try:
            return await self.request("POST", res.path(namespace), body=body), True
        except ApiError as exc:
            if not exc.conflict:
                raise
        if not read_existing:
            return None, False
        name = body["metadata"]["name"]
        existing = await self.get(res, namespace, name)
        if existing is None:  # deleted between the two calls: let the caller retry
            raise ApiError(409, "Conflict", f"{res.kind} {namespace}/{name} exists but cannot be read")
        return existing, False

    async def patch(self, res: Resource, namespace: str | None, name: str, patch: dict, *, subresource: str | None = None) -> dict:
        """JSON merge patch (the status subresource with subresource="status")."""
        return await self.request("PATCH", res.path(namespace, name, subresource), body=patch, content_type=MERGE_PATCH)

    async def delete(self, res: Resource, namespace: str | None, name: str, *, propagation: str = "Background") -> bool:
        """Delete with cascading; False when it was already gone."""
        try:
            await self.request("DELETE", res.path(namespace, name), body={"propagationPolicy": propagation})
            return True
        except ApiError as exc:
            if exc.not_found:
                return False
            raise

    async def pod_log(self, namespace: str, name: str, *, container: str | None = None, tail_lines: int | None = None,
                      limit_bytes: int | None = None) -> str:
        """A container's log; `limit_bytes` (the API's limitBytes) caps what the server sends, after `tail_lines`."""
        params: dict[str, str] = {}
        if container:
            params["container"] = container
        if tail_lines:
            params["tailLines"] = str(tail_lines)
        if limit_bytes:
            params["limitBytes"] = str(limit_bytes)
        return await self.request("GET", f"/api/v1/namespaces/{namespace}/pods/{name}/log", params=params or None, raw=True)

    async def event(self, obj: dict, *, type: str, reason: str, message: str, component: str = "tuneloop-operator") -> dict:
        """Record a core/v1 Event about `obj` (Normal or Warning)."""
        meta = obj.get("metadata") or {}
        namespace = meta.get("namespace") or self.conn.default_namespace or "default"
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta.get('name', 'object')}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "name": meta.get("name"),
                "namespace": namespace, "uid": meta.get("uid"),
            },
            "reason": reason, "message": message[:1024], "type": type,
            "source": {"component": component}, "reportingComponent": component,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        return await self.request("POST", EVENTS.path(namespace), body=body)

    async def events_for(self, namespace: str, name: str, kind: str | None = None) -> builtins.list[dict[str, Any]]:
        """Events about one object, oldest first (filtered client-side)."""
        items = await self.list(EVENTS, namespace)
        out = [e for e in items if (e.get("involvedObject") or {}).get("name") == name
               and (kind is None or (e.get("involvedObject") or {}).get("kind") == kind)]
        return sorted(out, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
