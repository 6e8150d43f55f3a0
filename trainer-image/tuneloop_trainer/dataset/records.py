"""Record formats → one normalized form, with the schema/role/empty rules. Pure, no tokenizer.

Normalized: `{"messages": [{"role", "content"}, ...]}` for chat, prompt-completion and instruction
(converted to a user turn and an assistant turn), `{"text": ...}` for format text.
`normalize(value, fmt)` returns the record or raises `Rejected(rule, reason)`.
"""

from __future__ import annotations

import re
from typing import Any

ROLES = ("system", "user", "assistant")


class Rejected(Exception):
    def __init__(self, rule: str, reason: str):
        super().__init__(reason)
        self.rule = rule
        self.reason = reason


def _text(value: Any, where: str, *, required: bool = True) -> str:
    if value is None:
        if required:
            raise Rejected("schema", f"missing {where}")
        return ""
    if not isinstance(value, str):
        raise Rejected("schema", f"{where} must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise Rejected("empty", f"{where} is empty or whitespace")
    return value


def _check_keys(value: Any, required: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Rejected("schema", f"record must be a JSON object, got {type(value).__name__}")
    missing = [k for k in required if k not in value]
    if missing:
        raise Rejected("schema", f"missing field(s) {', '.join(missing)} (have: {', '.join(sorted(value)) or 'none'})")
    return value


def normalize_chat(value: Any) -> dict[str, Any]:
    rec = _check_keys(value, ("messages",))
    msgs = rec["messages"]
    if not isinstance(msgs, list) or not msgs:
        raise Rejected("schema", "messages must be a non-empty list")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise Rejected("schema", f"messages[{i}] must be an object with role and content")
        role = m.get("role")
        if role not in ROLES:
            raise Rejected("role", f"messages[{i}].role is {role!r}; expected one of system, user, assistant")
        content = _text(m.get("content"), f"messages[{i}].content ({role})")
        out.append({"role": role, "content": content})
    check_turns(out)
    return {"messages": out}


def check_turns(msgs: list[dict[str, str]]) -> None:
    """system optional and first; then user/assistant alternating from user; ends with assistant."""
    roles = [m["role"] for m in msgs]
    start = 1 if roles[0] == "system" else 0
    if "system" in roles[start:]:
        raise Rejected("role", f"system message at messages[{roles.index('system', start)}]; only the first message may be system")
    turns = roles[start:]
    if not turns:
        raise Rejected("role", "no user/assistant turns after the system message")
    for j, role in enumerate(turns):
        expected = "user" if j % 2 == 0 else "assistant"
        if role != expected:
            raise Rejected("role", f"messages[{start + j}] is {role}, expected {expected} (turns must alternate, starting with user)")
    if turns[-1] != "assistant":
        raise Rejected("role", "conversation must end with an assistant message")


def normalize_prompt_completion(value: Any) -> dict[str, Any]:
    rec = _check_keys(value, ("prompt", "completion"))
    prompt = _text(rec["prompt"], "prompt")
    completion = _text(rec["completion"], "completion")
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]}


def normalize_instruction(value: Any) -> dict[str, Any]:
    rec = _check_keys(value, ("instruction", "output"))
    instruction = _text(rec["instruction"], "instruction")
    extra = _text(rec.get("input"), "input", required=False)
    output = _text(rec["output"], "output")
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": output}]}


def normalize_text(value: Any) -> dict[str, Any]:
    rec = _check_keys(value, ("text",))
    return {"text": _text(rec["text"], "text")}


NORMALIZERS = {
    "chat": normalize_chat,
    "prompt-completion": normalize_prompt_completion,
    "instruction": normalize_instruction,
    "text": normalize_text,
}


def normalize(value: Any, fmt: str) -> dict[str, Any]:
    return NORMALIZERS[fmt](value)


_WS = re.compile(r"\s+")


def _norm(s: str) -> str:
    return _WS.sub(" ", s.strip().lower())


def dedupe_key(rec: dict[str, Any], mode: str) -> str:
    """The identity of a record for duplicate detection: exact text, or lower-cased with collapsed whitespace."""
    parts = [rec["text"]] if "text" in rec else [f"{m['role']}\x1f{m['content']}" for m in rec["messages"]]
    if mode == "normalized":
        parts = [_norm(p) for p in parts]
    return "\x1e".join(parts)


def prompt_key(rec: dict[str, Any]) -> str:
    """What must not appear in two splits: everything before the last assistant turn (text: the text), normalized."""
    if "text" in rec:
        return _norm(rec["text"])
    msgs = rec["messages"][:-1]
    return "\x1e".join(f"{m['role']}\x1f{_norm(m['content'])}" for m in msgs)
