"""The output guard's mirror API on one stable pod (I/O; a Rollout's mirror step): read, set and clear its mirror.

The guard (tuneloop.guard) serves GET/PUT/DELETE /tuneloop/mirror on its own port; the operator talks to each stable
pod directly (http://POD_IP:serving.guard.port), not through the Service: every stable pod must hold the mirror. The
guard accepts only the target it was started with (`--mirror-target`: the candidate's role Service), so whoever reaches
its port can switch mirroring on or off, never send the requests elsewhere; the NetworkPolicy admits the operator and
the Rollout's own pods to that port. Answers are bounded and cleaned before they reach a status message or a log.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

import aiohttp

from tuneloop.contract.text import clean

from .vllm_api import error_message

PATH = "/tuneloop/mirror"
TIMEOUT = 5.0
MAX_BYTES = 64 * 1024


class GuardApi(Protocol):
    """What the reconciler needs from a stable pod's guard (a fake in tests)."""

    async def mirror(self, base_url: str) -> dict[str, Any] | None:
        """The mirror the guard holds ({} none); None when it does not answer."""

    async def set_mirror(self, base_url: str, want: dict[str, Any]) -> str | None:
        """Set the mirror; None on success, else why not."""

    async def clear_mirror(self, base_url: str) -> str | None:
        """End the mirror; None on success, else why not."""


class HttpGuardApi:
    """GuardApi over HTTP (aiohttp): a session per call (one or two calls per stable pod and tick; nothing to close)."""

    async def _call(self, method: str, url: str, body: dict[str, Any] | None) -> tuple[int, str]:
        async with aiohttp.ClientSession() as sess, sess.request(method, url, json=body, allow_redirects=False,
                                                                 timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as resp:
            raw = await resp.content.read(MAX_BYTES + 1)
            return resp.status, raw[:MAX_BYTES].decode(errors="replace")

    async def mirror(self, base_url: str) -> dict[str, Any] | None:
        try:
            status, text = await self._call("GET", base_url + PATH, None)
            doc = json.loads(text) if status == 200 else None
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None

    async def set_mirror(self, base_url: str, want: dict[str, Any]) -> str | None:
        return await self._write("PUT", base_url, want)

    async def clear_mirror(self, base_url: str) -> str | None:
        return await self._write("DELETE", base_url, None)

    async def _write(self, method: str, base_url: str, body: dict[str, Any] | None) -> str | None:
        try:
            status, text = await self._call(method, base_url + PATH, body)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"no answer from {base_url}: {clean(str(exc) or type(exc).__name__, 200)}"
        return None if status == 200 else f"HTTP {status}: {error_message(text)}"
