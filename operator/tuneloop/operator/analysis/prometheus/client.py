"""A small Prometheus HTTP API client behind a Protocol (instant queries only)."""

from __future__ import annotations

import math
from typing import Protocol

import aiohttp

from ..provider import ProviderError


class PrometheusError(ProviderError):
    """The query could not be answered: unreachable, HTTP error, PromQL error, or an ambiguous result."""


class QueryClient(Protocol):
    """Instant PromQL queries (PrometheusClient; a scripted fake in tests)."""

    async def query(self, promql: str) -> float | None:
        """The single value of an instant query; None for an empty result; NaN passes through.

        Raises PrometheusError when there is no answer.
        """

    async def query_vector(self, promql: str) -> list[tuple[dict[str, str], float]]:
        """Every series of an instant vector query: (labels, value). Raises PrometheusError when there is no answer."""


def parse_result(body: dict) -> float | None:
    """Value of a Prometheus /api/v1/query answer (scalar or a one-series vector)."""
    if body.get("status") != "success":
        raise PrometheusError(f"{body.get('errorType', 'error')}: {body.get('error', 'unknown error')}")
    data = body.get("data") or {}
    rtype, result = data.get("resultType"), data.get("result")
    if rtype == "scalar":
        return _float(result[1])
    if rtype == "vector":
        if not result:
            return None
        if len(result) > 1:
            labels = [r.get("metric", {}) for r in result[:3]]
            raise PrometheusError(f"query returned {len(result)} series (e.g. {labels}); aggregate it to one value with sum/max")
        return _float(result[0]["value"][1])
    raise PrometheusError(f"unsupported result type {rtype!r}; use an instant vector or scalar query")


def parse_vector(body: dict) -> list[tuple[dict[str, str], float]]:
    """The series of a Prometheus /api/v1/query answer (an instant vector)."""
    if body.get("status") != "success":
        raise PrometheusError(f"{body.get('errorType', 'error')}: {body.get('error', 'unknown error')}")
    data = body.get("data") or {}
    if data.get("resultType") != "vector":
        raise PrometheusError(f"unsupported result type {data.get('resultType')!r}; expected an instant vector")
    return [(dict(r.get("metric") or {}), _float(r["value"][1])) for r in data.get("result") or []]


def _float(raw: str) -> float:
    try:
        return float(raw)
    except (TypeError, ValueError) as exc:
        raise PrometheusError(f"not a number: {raw!r}") from exc


class PrometheusClient:
    """GET {base}/api/v1/query; one aiohttp session per event loop."""

    def __init__(self, base_url: str, timeout: float = 5.0, headers: dict[str, str] | None = None):
        self.base_url = base_url.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.headers = headers or {}

    async def query(self, promql: str) -> float | None:
        return parse_result(await self._get(promql))

    async def query_vector(self, promql: str) -> list[tuple[dict[str, str], float]]:
        return parse_vector(await self._get(promql))

    async def _get(self, promql: str) -> dict:
        try:
            async with (
                aiohttp.ClientSession(timeout=self.timeout, headers=self.headers) as session,
                session.get(f"{self.base_url}/api/v1/query", params={"query": promql}) as resp,
            ):
                try:
                    body = await resp.json(content_type=None)
                except ValueError:
                    text = (await resp.text())[:200]
                    raise PrometheusError(f"HTTP {resp.status} from {self.base_url}: {text}") from None
                if resp.status >= 400 and body.get("status") != "error":
                    raise PrometheusError(f"HTTP {resp.status} from {self.base_url}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise PrometheusError(f"Prometheus at {self.base_url} unreachable: {exc.__class__.__name__}: {exc}") from exc
        return body


def is_nodata(value: float | None) -> bool:
    return value is None or math.isnan(value)
