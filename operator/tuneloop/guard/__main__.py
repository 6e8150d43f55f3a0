"""`python -m tuneloop.guard --upstream http://127.0.0.1:8000 --port 8001 [--contract FILE | --contract-json SCHEMA] [--enforce]
[--harmful-input flag|refuse --harmful-output flag|refuse --harmful-threshold 0.9] [--topic-profile FILE --topic-action flag|refuse
--topic-pass-rate 0.99] [--mirror-target URL ...]`"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from aiohttp import web

from . import check
from .proxy import Guard, HarmfulCheck, MirrorLimits, TopicCheck

ACTIONS = (check.OFF, check.FLAG, check.REFUSE)


def _share(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m tuneloop.guard", description=__doc__)
    ap.add_argument("--upstream", required=True, help="the engine's base URL, e.g. http://127.0.0.1:8000")
    ap.add_argument("--host", default="0.0.0.0")
    ap.add_argument("--port", type=int, default=8001)
    ap.add_argument("--contract", help="a file with the JSON Schema every answer must follow (none: everything passes unchecked)")
    ap.add_argument("--contract-json", help="the JSON Schema itself (what the Rollout's Deployment passes)")
    ap.add_argument("--enforce", action="store_true", help="add the contract as vLLM structured outputs to requests without a format")
    ap.add_argument("--harmful-input", choices=ACTIONS, default=check.OFF, help="harmful content in the request's user turns")
    ap.add_argument("--harmful-output", choices=ACTIONS, default=check.OFF, help="harmful content in the answers")
    ap.add_argument("--harmful-threshold", type=_share, default=0.9, help="classifier probability at or above which a text is harmful")
    ap.add_argument("--topic-profile", help="the served model's topic profile (DIR/topic-profile.json of its FineTuneJob)")
    ap.add_argument("--topic-action", choices=(check.FLAG, check.REFUSE), default=check.FLAG, help="what happens to an off-topic request")
    ap.add_argument("--topic-pass-rate", type=_share, default=None,
                    help="share of the profile's in-topic calibration prompts that pass (picks the threshold; default: the profile's own)")
    ap.add_argument("--mirror-target", action="append", default=[],
                    help="a base URL the operator may mirror requests to (PUT /tuneloop/mirror); repeatable; none: no mirroring")
    ap.add_argument("--mirror-queue", type=int, default=64, help="mirrored requests waiting at most (more are dropped and counted)")
    ap.add_argument("--mirror-concurrency", type=int, default=4, help="mirrored requests in flight at most")
    ap.add_argument("--mirror-timeout", type=float, default=120.0, help="seconds a mirrored request may take (then it is an error)")
    return ap


def build(args: argparse.Namespace) -> Guard:
    """The Guard the arguments describe; the classifier and the profile are loaded here, before the port opens (the
    sidecar's readiness is its port)."""
    schema = json.loads(args.contract_json) if args.contract_json else json.loads(Path(args.contract).read_text()) if args.contract else None
    harmful = None
    if args.harmful_input != check.OFF or args.harmful_output != check.OFF:
        from . import harmful as harmful_model

        harmful = HarmfulCheck(harmful_model.load(), args.harmful_threshold, args.harmful_input, args.harmful_output)
    topic = None
    if args.topic_profile:
        from . import topic as topic_model

        profile = topic_model.load(args.topic_profile)
        threshold = profile.threshold_for(args.topic_pass_rate) if args.topic_pass_rate is not None else profile.threshold
        topic = TopicCheck(profile.scores, threshold, args.topic_action)
        print(f"tuneloop guard: topic profile {args.topic_profile} ({profile.doc.get('trainPrompts')} training prompts), "
              f"threshold {threshold:.4f}", file=sys.stderr, flush=True)
    limits = MirrorLimits(queue=max(1, args.mirror_queue), concurrency=max(1, args.mirror_concurrency), timeout=args.mirror_timeout)
    return Guard(args.upstream, schema, enforce=args.enforce, harmful=harmful, topic=topic, mirror_targets=tuple(args.mirror_target),
                 limits=limits)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    web.run_app(build(args).app(), host=args.host, port=args.port, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
