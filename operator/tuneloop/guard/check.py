"""Pure: which answers of an OpenAI-compatible response break the output contract, and the enforcing request."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

COMPLETION_PATHS = ("/v1/chat/completions", "/v1/completions")
FORMAT_FIELDS = ("response_format", "structured_outputs", "guided_json", "guided_choice", "guided_regex", "guided_grammar")


def answers(response: dict[str, Any]) -> list[str]:
    """The text of every choice: chat (message.content) or completion (text)."""
    out = []
    for choice in response.get("choices") or []:
        if not isinstance(choice, dict):
            continue
        message = choice.get("message")
        text = message.get("content") if isinstance(message, dict) else choice.get("text")
        out.append(text if isinstance(text, str) else "")
    return out


def validator(schema: dict[str, Any]) -> Callable[[str], bool]:
    """answer → follows the contract: valid JSON that the schema accepts (leading/trailing whitespace ignored)."""
    import jsonschema

    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    v = cls(schema)

    def ok(text: str) -> bool:
        try:
            value = json.loads(text.strip())
        except ValueError:
            return False
        return bool(v.is_valid(value))

    return ok


def enforce(request: dict[str, Any], schema: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """(request, changed): the contract added as vLLM structured outputs, unless the client asked for a format itself
    or streams (streamed answers are passed through unchecked)."""
    if any(k in request for k in FORMAT_FIELDS):
        return request, False
    return {**request, "structured_outputs": {"json": schema}}, True
