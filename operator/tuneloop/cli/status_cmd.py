"""`kubectl tuneloop status FINETUNEJOB`: phase, progress, data report, conditions, children, recent events."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from typing import Any

import yaml

from tuneloop.contract.text import strip_controls
from tuneloop.operator.kube import ApiError
from tuneloop.operator.kube import resources as r
from tuneloop.operator.kube.cliargs import add_cluster_arguments, connect


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="FineTuneJob name")
    add_cluster_arguments(p)
    p.add_argument("-o", "--output", choices=["text", "yaml", "json"], default="text", help="output format")
    p.add_argument("--events", type=int, default=10, help="how many recent events to show (default 10)")


def _bar(step: int, total: int, width: int = 30) -> str:
    done = int(width * step / total) if total else 0
    return "[" + "#" * done + "." * (width - done) + "]"


def _dur(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def scrub(value: Any) -> Any:
    """Every string in `value` without control characters and escape sequences, on one line: status messages and
    events carry text from pods (termination messages) that must not drive the terminal or fake lines."""
    if isinstance(value, str):
        return strip_controls(value)
    if isinstance(value, dict):
        return {scrub(k): scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return value


# status.progress fields shown after the bar, in this order: (key, how)
_PROGRESS_EXTRAS: tuple[tuple[str, Callable[[Any], str]], ...] = (
    ("epoch", lambda v: f"epoch {v:.2f}"),
    ("loss", lambda v: f"loss {v:.4f}"),
    ("evalLoss", lambda v: f"eval loss {v:.4f}"),
    ("tokensPerSecond", lambda v: f"{v:.0f} tokens/s"),
    ("tokensPerSecondPerGpu", lambda v: f"{v:.0f} tokens/s per GPU"),
    ("mfu", lambda v: f"MFU {100 * v:.1f}%"),
    ("etaSeconds", lambda v: f"ETA {_dur(v)}"),
)


def render(obj: dict[str, Any], events: list[dict[str, Any]]) -> str:
    """The human view (pure; tested). Text from the cluster is scrubbed of control characters first."""
    obj, events = scrub(obj), scrub(events)
    m, s = obj["metadata"], obj.get("status") or {}
    out = [f"FineTuneJob {m.get('namespace')}/{m['name']}", f"  Phase:       {s.get('phase', 'Pending')}"]
    if s.get("message"):
        out.append(f"  Message:     {s['message']}")
    if s.get("baseModel"):
        out.append(f"  Base model:  {s['baseModel']}")
    for key, label in (("startTime", "Started"), ("completionTime", "Finished")):
        if s.get(key):
            out.append(f"  {label + ':':<12} {s[key]}")
    p = s.get("progress") or {}
    if p.get("totalSteps"):
        line = f"  Progress:    {_bar(p.get('step', 0), p['totalSteps'])} {p.get('step', 0)}/{p['totalSteps']} steps"
        if p.get("percent"):
            line += f" ({p['percent']})"
        out.append(line)
        extras = [show(p[key]) for key, show in _PROGRESS_EXTRAS if p.get(key) is not None]
        if extras:
            out.append("               " + ", ".join(extras))
        if p.get("updatedAt"):
            out.append(f"               (as of {p['updatedAt']})")
    d = s.get("dataReport") or {}
    if d:
        out.append(f"  Data:        {d.get('accepted', '?')} accepted / {d.get('rejected', 0)} rejected of {d.get('total', '?')}"
                   f" → train {d.get('train', '?')}, validation {d.get('validation', '?')}, test {d.get('test', '?')}")
        if d.get("rejectedByReason"):
            out.append("               rejected: " + ", ".join(f"{k} {v}" for k, v in d["rejectedByReason"].items()))
    if s.get("metrics"):
        out.append("  Metrics:     " + ", ".join(f"{k} {v:.4g}" for k, v in s["metrics"].items()))
    if s.get("verdict"):
        out.append(f"  Verdict:     {s['verdict']}")
    children = s.get("children") or {}
    if children:
        out.append("  Children:    " + ", ".join(f"{k}={v}" for k, v in children.items()))
    conds = s.get("conditions") or []
    if conds:
        out.append("Conditions:")
        out.append(f"  {'TYPE':<14} {'STATUS':<8} {'REASON':<20} {'SINCE':<21} MESSAGE")
        for c in conds:
            out.append(f"  {c.get('type', ''):<14} {c.get('status', ''):<8} {c.get('reason', ''):<20} "
                       f"{c.get('lastTransitionTime', ''):<21} {c.get('message', '')}")
    if events:
        out.append("Events:")
        for e in events:
            when = e.get("lastTimestamp") or e.get("eventTime") or ""
            out.append(f"  {when:<21} {e.get('type', ''):<8} {e.get('reason', ''):<16} {e.get('message', '')}")
    return "\n".join(out)


async def _run(args: argparse.Namespace) -> int:
    client, ns = connect(args)
    try:
        obj = await client.get(r.FINETUNEJOBS, ns, args.name)
        if obj is None:
            print(f"FineTuneJob {ns}/{args.name} not found", file=sys.stderr)
            return 1
        events = (await client.events_for(ns, args.name, "FineTuneJob"))[-args.events:] if args.events else []
    except ApiError as exc:
        print(f"kubectl tuneloop status: {exc}", file=sys.stderr)
        return 1
    finally:
        await client.close()
    if args.output == "json":
        print(json.dumps({"object": obj, "events": events}, indent=2))
    elif args.output == "yaml":
        print(yaml.safe_dump({"object": obj, "events": events}, sort_keys=False))
    else:
        print(render(obj, events))
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_run(args))
    except RuntimeError as exc:  # no credentials
        print(f"kubectl tuneloop status: {exc}", file=sys.stderr)
        return 1
