"""`kubectl tuneloop crds [--out DIR] [--chart DIR]` (`make crds`, `python -m tuneloop.cli.crds_cmd`):
writes what the API models render — crds/*.yaml, the Helm chart's copy and docs/api-reference.md.

tuneloop.api.crdgen and tuneloop.api.docgen only render text; this command knows the repository
layout and writes the files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tuneloop.api import crdgen, docgen

ROOT = Path(__file__).resolve().parents[3]
CRD_DIR = ROOT / "crds"
CHART_CRD_DIR = ROOT / "charts" / "tuneloop" / "templates" / "crds"
DOC = ROOT / "docs" / "api-reference.md"


def write(out: Path, chart: Path | None) -> list[Path]:
    """crds/*.yaml into `out` (and the chart's gated copies into `chart`); the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in crdgen.render_all().items():
        (out / name).write_text(text)
        written.append(out / name)
        if chart is not None:
            chart.mkdir(parents=True, exist_ok=True)
            (chart / name).write_text(crdgen.chart_copy(text))
            written.append(chart / name)
    return written


def write_docs(path: Path = DOC) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(docgen.render())
    return path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=CRD_DIR, help="directory for the CRDs (default: crds/)")
    p.add_argument("--chart", type=Path, default=None,
                   help="also write the Helm chart's copy here (default: the chart's templates/crds when the chart exists)")


def run(args: argparse.Namespace) -> int:
    chart = args.chart or (CHART_CRD_DIR if CHART_CRD_DIR.parent.parent.exists() else None)
    for path in write(args.out, chart):
        print(path)
    if args.out == CRD_DIR:  # the repository's own copy: the API reference goes with it
        print(write_docs())
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="kubectl tuneloop crds", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
