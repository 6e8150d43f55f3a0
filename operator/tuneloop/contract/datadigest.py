"""The content digest of a dataset directory: what the FineTuneSchedule's new-data trigger compares.

The operator cannot read a PVC, so a short Job (the trainer image, the claim mounted read-only at /data, no GPU)
runs ``python -m tuneloop.contract.datadigest --root /data --glob PATTERN`` and writes
``{"digest": "sha256:…", "files": N, "bytes": B}`` to its termination message, which the operator reads from
the pod status (as it reads stage summaries). The same function runs anywhere (tests, local runs).

The digest covers the sorted relative paths, sizes and full contents of every regular file matching the glob,
so appending a record, adding a file, renaming or deleting one all change it; touching a file (mtime only) does not.

What a pattern matches (the same on every Python): a matched regular file counts; a matched directory counts with
every regular file under it (so `**`, `data` and `data/` mean "everything there"). The pattern is relative to the root
and stays inside it: an absolute pattern or a `..` segment is refused, and a match that resolves outside the root
(a symbolic link out of the claim) makes the check fail instead of reading it. A file that changes while it is read
(still being written) is read again; if it keeps changing, the check fails rather than record a torn digest.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHUNK = 1 << 20
ESCAPES = re.compile(r"(^/)|(^|/)[.][.](/|$)")  # the API's rule (api.schedule.GLOB_ESCAPES)
READS = 3  # tries to read a file that changes while it is read


class DigestError(ValueError):
    """The files cannot be digested as asked (a pattern or a link outside the root, a file that keeps changing)."""


def matches(root: str | Path, pattern: str) -> list[Path]:
    """The regular files the pattern selects under `root`, sorted by relative path: matched files, and every file
    under a matched directory. Refuses patterns and links that leave the root."""
    if not pattern or ESCAPES.search(pattern):
        raise DigestError(f"glob {pattern!r} leaves the data root (absolute, or a '..' segment)")
    base = Path(root)
    real = base.resolve()
    parts = [x for x in pattern.split("/") if x not in ("", ".")]  # `.`, `./x`, `x/` (pathlib 3.11 fails on some)
    try:
        hits = list(base.glob("/".join(parts))) if parts else [base]
    except (ValueError, IndexError, NotImplementedError) as exc:
        raise DigestError(f"glob {pattern!r} is not a pattern pathlib can use: {exc or type(exc).__name__}") from None
    found: dict[str, Path] = {}
    for p in hits:
        for f in ([p] if not p.is_dir() else sorted(x for x in p.rglob("*") if not x.is_dir())):
            if not f.is_file():
                continue
            if not f.resolve().is_relative_to(real):
                raise DigestError(f"{f.relative_to(base).as_posix()} resolves to {f.resolve()}, outside the data root")
            found[f.relative_to(base).as_posix()] = f
    return [found[k] for k in sorted(found)]


def _stamp(p: Path) -> tuple[int, int, int]:
    st = p.stat()
    return st.st_size, st.st_mtime_ns, st.st_ino


def _add(h: Any, rel: str, p: Path, sleep: Callable[[float], None]) -> tuple[Any, int]:
    """`h` extended by one file (its relative path, size and contents), read until it did not change while read."""
    for attempt in range(READS):
        before = _stamp(p)
        hh = h.copy()
        hh.update(f"{rel}\0{before[0]}\0".encode())
        n = 0
        with p.open("rb") as f:
            while chunk := f.read(CHUNK):
                hh.update(chunk)
                n += len(chunk)
        if _stamp(p) == before and n == before[0]:
            return hh, n
        if attempt < READS - 1:
            sleep(0.5 * (attempt + 1))
    raise DigestError(f"{rel} changed while it was read, {READS} times (still being written?); the next check reads it again")


def digest(root: str | Path, pattern: str, *, sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """{"digest", "files", "bytes"} of the files under `root` that `pattern` selects (`matches`)."""
    base = Path(root)
    paths = matches(base, pattern)
    h = hashlib.sha256()
    total = 0
    for p in paths:
        h, size = _add(h, p.relative_to(base).as_posix(), p, sleep)
        total += size
    return {"digest": f"sha256:{h.hexdigest()}", "files": len(paths), "bytes": total}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tuneloop.contract.datadigest", description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True)
    ap.add_argument("--glob", required=True)
    ap.add_argument("--termination-log", default="/dev/termination-log")
    args = ap.parse_args(argv)
    try:
        out = digest(args.root, args.glob)
        code = 0
    except (OSError, DigestError) as exc:
        out, code = {"error": f"{type(exc).__name__}: {exc}"}, 1
    text = json.dumps(out)
    print(text)
    try:
        Path(args.termination_log).write_text(text)
    except OSError:
        pass
    return code


if __name__ == "__main__":
    sys.exit(main())
