"""Pure: which answers of an OpenAI-compatible response break the output contract, the enforcing request, the texts
the input checks read, the outcome of a check and the OpenAI-style error a refusal answers."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

COMPLETION_PATHS = ("/v1/chat/completions", "/v1/completions")
FORMAT_FIELDS = ("response_format", "structured_outputs", "guided_json", "guided_choice", "guided_regex", "guided_grammar")

# What a check does with a text it judges harmful or off-topic (the Rollout's serving.guard actions), and its outcomes.
OFF, FLAG, REFUSE = "off", "flag", "refuse"
PASS = "pass"
OUTCOMES = (PASS, FLAG, REFUSE)
REFUSAL_CODE = "content_filter"  # error.code of a refused request (Azure OpenAI's code for its content filter)


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


def content_text(content: Any) -> str:
    """A message's text: a string, or the text parts of OpenAI content parts (`[{"type": "text", "text": ...}, ...]`)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p["text"] for p in content if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str))
    return ""


def user_turns(messages: Any) -> list[str]:
    """The text of each user turn of a chat conversation that has any."""
    if not isinstance(messages, list):
        return []
    texts = [content_text(m.get("content")) for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    return [t for t in texts if t.strip()]


def user_text(messages: Any) -> str:
    """The user turns of a chat conversation, joined by newlines: what the topic rule reads, in training and serving alike."""
    return "\n".join(user_turns(messages))


def request_texts(request: dict[str, Any], path: str) -> list[str]:
    """The client's texts of a completion request: each user turn (chat), or the prompt(s) (completions; prompts given as
    token ids are not text and are not read). Empty: nothing to check."""
    if path == "/v1/chat/completions":
        return user_turns(request.get("messages"))
    prompt = request.get("prompt")
    texts = [prompt] if isinstance(prompt, str) else [p for p in prompt if isinstance(p, str)] if isinstance(prompt, list) else []
    return [t for t in texts if t.strip()]


def outcome(violates: bool, action: str) -> str:
    """A check's outcome: pass, or the action configured for what it caught (flag: counted and passed on; refuse)."""
    if action not in (OFF, FLAG, REFUSE):
        raise ValueError(f"unknown guard action {action!r}")
    return action if violates and action != OFF else PASS


def refusal(message: str, *, param: str | None = None) -> dict[str, Any]:
    """The body of a refused request (HTTP 400), in OpenAI's error shape, so that OpenAI clients raise their usual
    BadRequestError with this message."""
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": REFUSAL_CODE}}
