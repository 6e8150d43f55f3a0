"""Units that fit on a screen (issue 24): no function or method in operator/ or trainer-image/ is over MAX_LINES lines unless a
`# long: <reason>` comment sits right above it (above its decorators) saying why it stays whole. A new long
function fails this test: split it, or give the reason next to it; a `# long:` comment above a function that got
short again fails too, so the reasons stay true."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
ROOTS = [REPO / "operator" / "tuneloop", REPO / "trainer-image" / "tuneloop_trainer"]
MAX_LINES = 60
REASON = re.compile(r"^\s*# long: \S")


def functions(root: Path) -> dict[str, tuple[int, bool]]:
    """`path:qualified name` -> (lines, whether a `# long:` reason sits right above it)."""
    found: dict[str, tuple[int, bool]] = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        source = path.read_text().splitlines()

        def reason_above(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
            """The comment block right above the def (or its decorators) starts with `# long:`."""
            i = min([node.lineno, *(d.lineno for d in node.decorator_list)]) - 2
            while i >= 1 and source[i - 1].lstrip().startswith("#") and not REASON.match(source[i]):
                i -= 1
            return i >= 0 and bool(REASON.match(source[i]))

        def walk(node: ast.AST, prefix: str) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                    length = (child.end_lineno or child.lineno) - child.lineno + 1
                    found[f"{rel}:{prefix}{child.name}"] = (length, reason_above(child))
                    walk(child, f"{prefix}{child.name}.")
                elif isinstance(child, ast.ClassDef):
                    walk(child, f"{prefix}{child.name}.")

        walk(ast.parse("\n".join(source)), "")
    return found


def every_function() -> dict[str, tuple[int, bool]]:
    """Both programs' functions (and the shared layers'), named `package/path:qualified name`."""
    return {f"{root.name}/{k}": v for root in ROOTS for k, v in functions(root).items()}


def test_both_programs_are_read():
    found = every_function()
    assert any(k.startswith("tuneloop/operator/") for k in found) and any(k.startswith("tuneloop_trainer/stages/") for k in found)


def test_no_function_is_over_the_limit_without_a_reason():
    unexplained = {k: n for k, (n, why) in every_function().items() if n > MAX_LINES and not why}
    assert not unexplained, f"over {MAX_LINES} lines (split them, or put `# long: <reason>` right above): {unexplained}"


def test_every_reason_is_above_a_long_function():
    stale = sorted(k for k, (n, why) in every_function().items() if why and n <= MAX_LINES)
    assert not stale, f"`# long:` above a function of at most {MAX_LINES} lines (remove the comment): {stale}"


def test_the_check_sees_a_long_function_and_its_reason(tmp_path):
    body = "        x = 1\n" * MAX_LINES
    (tmp_path / "m.py").write_text(f"class K:\n    def f(self):\n{body}\n    # long: a reason\n    # on two lines\n    @staticmethod\n    def g():\n{body}")
    assert functions(tmp_path) == {"m.py:K.f": (MAX_LINES + 1, False), "m.py:K.g": (MAX_LINES + 1, True)}
