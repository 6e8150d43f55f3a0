"""Durations as the API writes them ('30s', '5m', '1h30m'): the one parser every layer uses.

The form is Go's time.ParseDuration's subset that CEL's duration() also reads, so a value the API server
accepted parses here the same way (the schedule, the rollout, the drift watch and the models' floors)."""

from __future__ import annotations

import re

DURATION = r"^([0-9]+(ms|s|m|h))+$"
_PART = re.compile(r"([0-9]+)(ms|s|m|h)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """'1m30s' -> 90.0 seconds (ValueError for anything not in the DURATION form)."""
    parts = _PART.findall(text or "")
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"invalid duration {text!r}; use e.g. 30s, 5m, 1h30m")
    return sum(int(n) * _UNIT[u] for n, u in parts)


def format_duration(seconds: float) -> str:
    """90.0 -> '1m30s'; whole seconds (at least 1s), the form PromQL range selectors accept."""
    total = max(1, int(seconds))
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    return "".join(f"{n}{u}" for n, u in ((h, "h"), (m, "m"), (s, "s")) if n) or "1s"
