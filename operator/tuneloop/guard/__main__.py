"""`python -m tuneloop.guard --upstream http://127.0.0.1:8000 --port 8001 --contract /etc/tuneloop-guard/contract.json [--enforce]`"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from aiohttp import web

from .proxy import Guard


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tuneloop.guard", description=__doc__)
    ap.add_argument("--upstream", required=True, help="the engine's base URL, e.g. http://127.0.0.1:8000")
    ap.add_argument("--host", default="0.0.0.0")
    ap.add_argument("--port", type=int, default=8001)
    ap.add_argument("--contract", help="a file with the JSON Schema every answer must follow (none: everything passes unchecked)")
    ap.add_argument("--contract-json", help="the JSON Schema itself (what the Rollout's Deployment passes)")
    ap.add_argument("--enforce", action="store_true", help="add the contract as vLLM structured outputs to requests without a format")
    args = ap.parse_args(argv)
    schema = json.loads(args.contract_json) if args.contract_json else json.loads(Path(args.contract).read_text()) if args.contract else None
    web.run_app(Guard(args.upstream, schema, enforce=args.enforce).app(), host=args.host, port=args.port, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
