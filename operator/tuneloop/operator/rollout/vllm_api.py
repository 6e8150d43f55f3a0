"""vLLM's runtime LoRA API on one serving pod (I/O; sharedBase Rollouts): list, load and unload adapters.

The shared Deployment runs with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, which adds POST /v1/load_lora_adapter
({"lora_name", "lora_path"}) and POST /v1/unload_lora_adapter ({"lora_name"}) to vLLM's OpenAI server; GET /v1/models
lists each loaded adapter as a model with `parent` (its base). The operator talks to each pod directly
(http://POD_IP:serving.port), not through a Service: every pod must hold the adapter. Answers are bounded and any
text that reaches a status message is cleaned (a pod is not trusted to keep its errors short).
"""

from __future__ import annotations

import json
from typing import Protocol

import aiohttp

from tuneloop.contract.text import clean

LIST_TIMEOUT = 5.0
LOAD_TIMEOUT = 300.0  # reading a large adapter from a network volume can take a while; the tick awaits it (no sleep)
MAX_BYTES = 1 << 20


class AdapterApi(Protocol):
    """What the reconciler needs from a pod's vLLM (a fake in tests)."""

    async def adapters(self, base_url: str) -> frozenset[str] | None:
        """The adapters GET /v1/models lists (entries with a parent); None when the pod does not answer."""

    async def load(self, base_url: str, name: str, path: str) -> str | None:
        """Load `path` as adapter `name`; None on success (or when it is already loaded), else why not."""

    async def unload(self, base_url: str, name: str) -> str | None:
        """Unload adapter `name`; None on success (or when it is not loaded), else why not."""


class HttpAdapterApi:
    """AdapterApi over HTTP (aiohttp): a session per call (a few calls per pod and tick; nothing to close)."""

    async def _call(self, method: str, url: str, body: dict | None, timeout: float) -> tuple[int, str]:
        async with aiohttp.ClientSession() as sess, sess.request(method, url, json=body, allow_redirects=False,
                                                                 timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            raw = await resp.content.read(MAX_BYTES + 1)
            return resp.status, raw[:MAX_BYTES].decode(errors="replace")

    async def adapters(self, base_url: str) -> frozenset[str] | None:
        try:
            status, text = await self._call("GET", f"{base_url}/v1/models", None, LIST_TIMEOUT)
            if status != 200:
                return None
            return served_adapters(json.loads(text))
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None

    async def load(self, base_url: str, name: str, path: str) -> str | None:
        try:
            status, text = await self._call("POST", f"{base_url}/v1/load_lora_adapter", {"lora_name": name, "lora_path": path}, LOAD_TIMEOUT)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"no answer from {base_url}: {clean(str(exc) or type(exc).__name__, 200)}"
        if status == 200 or (status == 400 and "already been loaded" in text):
            return None
        return f"HTTP {status}: {error_message(text)}"

    async def unload(self, base_url: str, name: str) -> str | None:
        try:
            status, text = await self._call("POST", f"{base_url}/v1/unload_lora_adapter", {"lora_name": name}, LIST_TIMEOUT)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"no answer from {base_url}: {clean(str(exc) or type(exc).__name__, 200)}"
        if status in (200, 404):  # 404: it is not loaded (an engine that restarted lost it)
            return None
        return f"HTTP {status}: {error_message(text)}"


def served_adapters(doc: object) -> frozenset[str] | None:
    """The adapter names of a /v1/models answer: the entries that have a parent (vLLM's base models have none)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        return None
    return frozenset(str(m["id"]) for m in doc["data"] if isinstance(m, dict) and m.get("parent") and "id" in m)


def error_message(text: str) -> str:
    """vLLM's error text ({"error": {"message": ...}} or {"message": ...}), cleaned and bounded."""
    try:
        doc = json.loads(text)
        if isinstance(doc, dict):
            err = doc.get("error")
            msg = err.get("message") if isinstance(err, dict) else doc.get("message") or doc.get("detail")
            if msg:
                return clean(str(msg), 300)
    except ValueError:
        pass
    return clean(text, 300)
