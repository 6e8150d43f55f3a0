"""Text that came from outside tuneloop (a metrics provider's error, a pod's termination message or log), made
safe to put into status, events and a terminal (pure).

`clean` drops control characters — C0 (tab and newline become a space), DEL, C1 (CSI 0x9b included) and the
bidirectional overrides — so no escape sequence reaches a terminal, and bounds the length.
"""

from __future__ import annotations

import re

# C0 except \t\n\r (handled below), DEL, C1, and Unicode bidi embedding/override/isolate controls.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
# 7-bit CSI, OSC (to BEL or ST), other 2-byte escapes, and the 8-bit CSI/OSC forms
_ESCAPE = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)?|[@-Z\\-_])|\x9b[0-?]*[ -/]*[@-~]|\x9d[^\x07\x9c]*[\x07\x9c]?")


def strip_controls(text: str, *, keep_newlines: bool = False) -> str:
    """`text` without terminal escape sequences and control characters (newlines kept when asked)."""
    text = _ESCAPE.sub("", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", " ")
    if not keep_newlines:
        text = text.replace("\n", " ")
    return _CONTROL.sub("", text)


def clean(text: object, limit: int = 200) -> str:
    """One line of at most `limit` characters: controls stripped, runs of spaces collapsed, '…' when cut."""
    out = re.sub(r" {2,}", " ", strip_controls(str(text))).strip()
    return out if len(out) <= limit else out[: max(0, limit - 1)] + "…"
