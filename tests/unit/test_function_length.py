"""Units that fit on a screen (issue 24): no function or method in operator/ over MAX_LINES lines unless it is
listed here with the reason it stays whole. A new long function fails this test: split it, or add it with a reason
(a listed one that got short again fails too, so the list stays true)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2] / "operator" / "tuneloop"
MAX_LINES = 60

# "path:qualified name" -> why it is one unit
ALLOWED = {
    "cli/local_cmd.py:run_local": "the local run's script, top to bottom (prepare, run each stage, print the summary): "
                                  "one linear story a user reads next to `kubectl tuneloop local --help`",
    "cli/local_schedule.py:_run": "the local schedule loop: one linear sequence of iterations printed as it goes",
    "cli/local_serve.py:run": "starts vLLM (or the stand-in) and waits for it: one linear sequence of subprocess steps",
    "operator/analysis/prometheus/promql.py:confine": "one pass of a tokenizer-driven state machine over a PromQL "
                                                      "query; its states share locals (parens, operand, edits) and split "
                                                      "into functions they would be threaded through every call",
    "operator/schedule/decide.py:judge": "the decision table of what became of a run (phase x verdict x serving "
                                         "comparison), read as one table; each row is a return",
}


def long_functions() -> dict[str, int]:
    found: dict[str, int] = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()

        def walk(node: ast.AST, prefix: str) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                    length = (child.end_lineno or child.lineno) - child.lineno + 1
                    if length > MAX_LINES:
                        found[f"{rel}:{prefix}{child.name}"] = length
                    walk(child, f"{prefix}{child.name}.")
                elif isinstance(child, ast.ClassDef):
                    walk(child, f"{prefix}{child.name}.")

        walk(ast.parse(path.read_text()), "")
    return found


def test_no_unlisted_function_is_over_the_limit():
    unlisted = {k: v for k, v in long_functions().items() if k not in ALLOWED}
    assert not unlisted, f"functions over {MAX_LINES} lines (split them, or list them with a reason): {unlisted}"


def test_every_listed_function_is_still_long():
    stale = sorted(set(ALLOWED) - set(long_functions()))
    assert not stale, f"listed but no longer over {MAX_LINES} lines (remove them from ALLOWED): {stale}"


def test_the_check_sees_a_long_function(tmp_path, monkeypatch):
    (tmp_path / "m.py").write_text("class K:\n    def f(self):\n" + "        x = 1\n" * MAX_LINES)
    monkeypatch.setattr(__import__(__name__, fromlist=["ROOT"]), "ROOT", tmp_path)
    assert long_functions() == {"m.py:K.f": MAX_LINES + 1}
