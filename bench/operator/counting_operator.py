"""`tuneloop-operator` with every HTTP request it makes counted (its own client and Kopf's).

    BENCH_COUNTS=/tmp/counts.json python bench/operator/counting_operator.py --namespace NS

aiohttp's tracing hooks are added to every ClientSession the process creates; the counts
(method + resource, watches separately) are written to $BENCH_COUNTS twice a second. Used by the
real-API-server mode of bench.py; the operator itself is unchanged.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
COUNTS: Counter[str] = Counter()
_RESOURCE = re.compile(r"^/(?:api|apis/[^/]+)/[^/]+/(?:namespaces/[^/]+/)?([a-z]+)(?:/[^/]+)?(/status|/log)?")


def _key(method: str, url: aiohttp.client.URL) -> str:
    m = _RESOURCE.match(url.path)
    res = (m.group(1) + (m.group(2) or "")) if m else url.path
    if method == "GET" and url.query.get("watch") in ("true", "1"):
        return f"WATCH {res}"
    return f"{method} {res}"


async def _on_start(session, ctx, params) -> None:
    COUNTS[_key(params.method, params.url)] += 1


_orig_init = aiohttp.ClientSession.__init__


def _init(self, *args, **kwargs):
    tc = aiohttp.TraceConfig()
    tc.on_request_start.append(_on_start)
    kwargs["trace_configs"] = [*(kwargs.get("trace_configs") or []), tc]
    _orig_init(self, *args, **kwargs)


def _dump(path: str) -> None:
    while True:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(dict(COUNTS), f)
        os.replace(tmp, path)
        time.sleep(0.5)


def main() -> int:
    aiohttp.ClientSession.__init__ = _init
    path = os.environ.get("BENCH_COUNTS")
    if path:
        threading.Thread(target=_dump, args=(path,), daemon=True).start()
    from tuneloop.operator.main import main as operator_main

    profile = os.environ.get("BENCH_PROFILE")  # a file: cProfile the whole run (pstats format)
    if not profile:
        return operator_main(sys.argv[1:])
    import cProfile

    prof = cProfile.Profile()
    try:
        return prof.runcall(operator_main, sys.argv[1:])
    finally:
        prof.dump_stats(profile)


if __name__ == "__main__":
    sys.exit(main())
