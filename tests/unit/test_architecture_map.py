"""docs/ARCHITECTURE.md's newcomer's map stays true: every file and test it names exists (issue 24, item 6)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
BASES = [ROOT, ROOT / "operator" / "tuneloop", ROOT / "operator" / "tuneloop" / "operator"]


def map_section() -> str:
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    start = text.index("### A newcomer's map (the operator)")
    end = text.find("\n#", start + 10)
    return text[start:] if end < 0 else text[start:end]


def test_every_file_and_test_the_map_names_exists():
    named = re.findall(r"`([\w./-]+\.(?:py|toml))(?:::(\w+))?`", map_section())
    assert len(named) > 15
    missing = []
    for path, test in named:
        found = next((b / path for b in BASES if (b / path).is_file()), None)
        if found is None:
            missing.append(path)
        elif test and not re.search(rf"def {test}\b", found.read_text()):
            missing.append(f"{path}::{test}")
    assert missing == []
