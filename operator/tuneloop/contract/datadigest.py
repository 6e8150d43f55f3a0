"""The content digest of a dataset directory: what the FineTuneSchedule's new-data trigger compares.

The operator cannot read a PVC, so a short Job (the trainer image, the claim mounted read-only at /data, no GPU)
runs ``python -m tuneloop.contract.datadigest --root /data --glob PATTERN`` and writes
``{"digest": "sha256:…", "files": N, "bytes": B}`` to its termination message, which the operator reads from
the pod status (as it reads stage summaries). The same function runs anywhere (tests, local runs).

The digest covers the sorted relative paths, sizes and full contents of every regular file matching the glob,
so appending a record, adding a file, renaming or deleting one all change it; touching a file (mtime only) does not.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

CHUNK = 1 << 20


def digest(root: str | Path, pattern: str) -> dict[str, Any]:
    """{"digest", "files", "bytes"} of the files under `root` matching `pattern` (a pathlib glob)."""
    base = Path(root)
    paths = sorted(p for p in base.glob(pattern) if p.is_file())
    h = hashlib.sha256()
    total = 0
    for p in paths:
        rel = p.relative_to(base).as_posix()
        size = p.stat().st_size
        h.update(f"{rel}\0{size}\0".encode())
        with p.open("rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
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
    except OSError as exc:
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
