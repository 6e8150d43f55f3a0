"""A small Prometheus HTTP API client behind the neutral QueryClient protocol (instant queries only).

Hardened for a provider address that a tenant influences and an answer that a tenant's series shape
(issue 25): the query path is fixed (an address with a query string, a fragment or credentials is refused, so
`http://x/#` cannot drop `/api/v1/query`), redirects are not followed, the answer is read up to `max_bytes`
(a longer one is an error) within `timeout` seconds, and any text of the answer that reaches an error message
is stripped of control characters and bounded (`tuneloop.contract.text.clean`). A multi-series answer is reported
by its count, never by its label sets.
"""

from __future__ import annotations

import json
import math
from typing import Any

import aiohttp
from yarl import URL

from tuneloop.contract.text import clean

from ..provider import ProviderError

QUERY_PATH = "/api/v1/query"
MAX_ERROR_TEXT = 200  # characters of a provider's error text kept in a message
DEFAULT_MAX_BYTES = 1 << 20


class PrometheusError(ProviderError):
    """The query could not be answered: unreachable, HTTP error, PromQL error, or an ambiguous result."""


def query_url(base_url: str) -> URL:
    """`base_url` + /api/v1/query. Refuses what could move the request elsewhere: a scheme other than http(s),
    credentials, a query string or a fragment (`http://host/#` would otherwise drop the fixed path)."""
    try:
        url = URL(base_url)
    except (ValueError, TypeError) as exc:
        raise PrometheusError(f"invalid metrics address {clean(base_url, 100)!r}") from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise PrometheusError(f"metrics address {clean(base_url, 100)!r} is not an http(s) URL with a host")
    if url.user or url.password or url.query_string or url.raw_fragment or "#" in base_url or "?" in base_url:
        raise PrometheusError(f"metrics address {clean(base_url, 100)!r} may not carry credentials, a query or a fragment")
    return url.with_path(url.path.rstrip("/") + QUERY_PATH)


def _failure(body: dict) -> PrometheusError:
    return PrometheusError(f"{clean(body.get('errorType', 'error'), 40)}: {clean(body.get('error', 'unknown error'), MAX_ERROR_TEXT)}")


def _data(body: Any) -> dict:
    if not isinstance(body, dict):
        raise PrometheusError(f"not a Prometheus answer (a JSON {type(body).__name__})")
    if body.get("status") != "success":
        raise _failure(body)
    data = body.get("data")
    if not isinstance(data, dict):
        raise PrometheusError("not a Prometheus answer (no data object)")
    return data


def parse_result(body: Any) -> float | None:
    """Value of a Prometheus /api/v1/query answer (scalar or a one-series vector)."""
    data = _data(body)
    rtype, result = data.get("resultType"), data.get("result")
    try:
        if rtype == "scalar":
            return _float(result[1])  # type: ignore[index]
        if rtype == "vector":
            if not result:
                return None
            if len(result) > 1:
                raise PrometheusError(f"query returned {len(result)} series; aggregate it to one value with sum/max")
            return _float(result[0]["value"][1])
    except (KeyError, IndexError, TypeError) as exc:
        raise PrometheusError(f"malformed {clean(rtype, 20)} answer") from exc
    raise PrometheusError(f"unsupported result type {clean(rtype, 40)!r}; use an instant vector or scalar query")


def parse_vector(body: Any) -> list[tuple[dict[str, str], float]]:
    """The series of a Prometheus /api/v1/query answer (an instant vector). The labels are for the caller's own use
    (a histogram's `le`); they never go into a message."""
    data = _data(body)
    if data.get("resultType") != "vector":
        raise PrometheusError(f"unsupported result type {clean(data.get('resultType'), 40)!r}; expected an instant vector")
    try:
        return [({str(k): str(v) for k, v in (r.get("metric") or {}).items()}, _float(r["value"][1])) for r in data.get("result") or []]
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise PrometheusError("malformed vector answer") from exc


def _float(raw: Any) -> float:
    try:
        return float(raw)
    except (TypeError, ValueError) as exc:
        raise PrometheusError(f"not a number: {clean(repr(raw), 40)}") from exc


class PrometheusClient:
    """GET {base}/api/v1/query; one aiohttp session per query. No redirects; `max_bytes` and `timeout` bound each answer."""

    def __init__(self, base_url: str, timeout: float = 5.0, headers: dict[str, str] | None = None, max_bytes: int = DEFAULT_MAX_BYTES):
        self.base_url = base_url.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=timeout, sock_read=timeout)
        self.headers = headers or {}
        self.max_bytes = max_bytes
        self.where = clean(self.base_url, 100)

    async def query(self, promql: str) -> float | None:
        return parse_result(await self._get(promql))

    async def query_vector(self, promql: str) -> list[tuple[dict[str, str], float]]:
        return parse_vector(await self._get(promql))

    async def _get(self, promql: str) -> Any:
        url = query_url(self.base_url)
        try:
            async with (
                aiohttp.ClientSession(timeout=self.timeout, headers=self.headers) as session,
                session.get(url, params={"query": promql}, allow_redirects=False) as resp,
            ):
                if 300 <= resp.status < 400:
                    raise PrometheusError(f"HTTP {resp.status} from {self.where}: redirects are not followed")
                raw = await self._read(resp)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise PrometheusError(f"Prometheus at {self.where} unreachable: {exc.__class__.__name__}: {clean(exc, MAX_ERROR_TEXT)}") from exc
        try:
            body = json.loads(raw)
        except ValueError:
            raise PrometheusError(f"HTTP {resp.status} from {self.where}: not JSON: {clean(raw.decode('utf-8', 'replace'), MAX_ERROR_TEXT)}") from None
        if resp.status >= 400 and not (isinstance(body, dict) and body.get("status") == "error"):
            raise PrometheusError(f"HTTP {resp.status} from {self.where}")
        return body

    async def _read(self, resp: aiohttp.ClientResponse) -> bytes:
        if resp.content_length is not None and resp.content_length > self.max_bytes:
            raise PrometheusError(f"answer from {self.where} is {resp.content_length} bytes; the limit is {self.max_bytes}")
        out = bytearray()
        async for chunk in resp.content.iter_chunked(64 << 10):
            out += chunk
            if len(out) > self.max_bytes:
                raise PrometheusError(f"answer from {self.where} is over {self.max_bytes} bytes; not read further")
        return bytes(out)


def is_nodata(value: float | None) -> bool:
    return value is None or math.isnan(value)
