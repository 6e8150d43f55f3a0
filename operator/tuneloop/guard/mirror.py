"""Pure: the guard's mirror (shadow traffic) — its configuration, which requests are copied, and when two answers agree.

The operator sets a mirror on the guard of every stable pod during a Rollout's mirror step (`PUT /tuneloop/mirror`):
a share of the non-streamed completion requests the stable answers is sent again, after the client has its answer,
to the candidate (`target`: its role Service, the only targets the guard was started with: `--mirror-target`), and the
two answers are compared. The mirror ends by itself at `until`, so a mirror outlives no operator by long.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

AGREE, DISAGREE, ERROR = "agree", "disagree", "error"
RESULTS = (AGREE, DISAGREE, ERROR)
STABLE, CANDIDATE = "stable", "candidate"
_SPACE = re.compile(r"\s+")
_FIELDS = {"target", "model", "percent", "until", "candidate"}
MAX_NAME = 253


@dataclass(frozen=True)
class MirrorConfig:
    """What the operator asked: copy `percent` % of the requests to `target` (with `model` as the request's model when
    set: a shared base's adapter name), counted under `candidate` (its ModelVersion), until `until` (UTC)."""

    target: str
    percent: int
    until: dt.datetime
    candidate: str
    model: str | None = None

    def wire(self) -> dict[str, Any]:
        """The canonical JSON form (what GET answers, so that the operator can compare it with what it wants)."""
        out: dict[str, Any] = {"target": self.target, "percent": self.percent, "until": format_time(self.until), "candidate": self.candidate}
        if self.model is not None:
            out["model"] = self.model
        return out

    def active(self, now: dt.datetime) -> bool:
        return now < self.until


def format_time(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: Any) -> dt.datetime:
    if not isinstance(text, str):
        raise ValueError("until must be an RFC 3339 time, e.g. 2026-12-07T20:00:00Z")
    t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if t.tzinfo is None:
        raise ValueError("until needs a time zone (e.g. a trailing Z)")
    return t.astimezone(dt.UTC).replace(microsecond=0)


def parse(doc: Any, allowed: tuple[str, ...], now: dt.datetime) -> MirrorConfig:
    """A mirror configuration from a PUT body; ValueError saying what is wrong. Only a target the guard was started
    with is accepted: whoever reaches the guard's port cannot make it send live requests anywhere else."""
    if not isinstance(doc, dict):
        raise ValueError("the body must be a JSON object {target, percent, until, candidate[, model]}")
    extra = set(doc) - _FIELDS
    if extra:
        raise ValueError(f"unknown fields: {sorted(extra)}")
    target = doc.get("target")
    if not isinstance(target, str) or target.rstrip("/") not in {a.rstrip("/") for a in allowed}:
        raise ValueError(f"target {str(target)[:200]!r} is not one this guard may mirror to (--mirror-target): {list(allowed)}")
    percent = doc.get("percent")
    if not isinstance(percent, int) or isinstance(percent, bool) or not 1 <= percent <= 100:
        raise ValueError("percent must be an integer within 1..100")
    until = parse_time(doc.get("until"))
    if until <= now:
        raise ValueError(f"until {format_time(until)} is not in the future")
    candidate, model = doc.get("candidate"), doc.get("model")
    if not isinstance(candidate, str) or not candidate or len(candidate) > MAX_NAME:
        raise ValueError("candidate must be the candidate ModelVersion's name")
    if model is not None and (not isinstance(model, str) or not model or len(model) > MAX_NAME):
        raise ValueError("model must be a model name")
    return MirrorConfig(target=target.rstrip("/"), percent=percent, until=until, candidate=candidate, model=model)


def sampled(draw: float, percent: int) -> bool:
    """Whether a request is copied, for a uniform draw in [0, 1): `percent` % of the requests in the long run."""
    return draw * 100 < percent


def normalise(text: str) -> str:
    """An answer's text with every run of whitespace made one space and the ends trimmed."""
    return _SPACE.sub(" ", text).strip()


def _json(text: str) -> tuple[bool, Any]:
    try:
        return True, json.loads(text)
    except ValueError:
        return False, None


def same_answer(stable: str, candidate: str, *, structured: bool) -> bool:
    """Two answers agree when their texts are equal after whitespace normalisation or, for a model with an output
    contract (`structured`), when both are JSON and parse to equal values (key order and spacing do not matter; `true` and
    `1` differ, as do `1` and `1.0`)."""
    if normalise(stable) == normalise(candidate):
        return True
    if not structured:
        return False
    ok_s, a = _json(stable)
    ok_c, b = _json(candidate)
    return ok_s and ok_c and canonical(a) == canonical(b)


def canonical(value: Any) -> str:
    """A JSON value's canonical text (sorted keys, no spaces): equal values, equal texts; `true` is not `1`, as in JSON."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def compare(stable: list[str], candidate: list[str], *, structured: bool) -> str:
    """agree when both responses have the same number of choices and each pair agrees (`same_answer`); else disagree."""
    if len(stable) != len(candidate):
        return DISAGREE
    return AGREE if all(same_answer(s, c, structured=structured) for s, c in zip(stable, candidate, strict=True)) else DISAGREE


def mirrored_body(doc: dict[str, Any], model: str | None) -> dict[str, Any]:
    """The request sent to the candidate: the one the stable answered, with `model` when the mirror names one."""
    return {**doc, "model": model} if model is not None else dict(doc)


Clock = Callable[[], dt.datetime]
