"""The layers of docs/ARCHITECTURE.md, enforced: import-linter's contracts in pyproject.toml
([tool.importlinter]; `make lint` runs them too), plus what an import graph cannot see (api/ writes
no files and does not know the repository layout).

The second test shows the contracts bite: the same check over a copy of the tree with one forbidden
import added fails, naming the broken contract.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
PACKAGES = {"tuneloop": ROOT / "operator" / "tuneloop", "tuneloop_trainer": ROOT / "trainer-image" / "tuneloop_trainer"}


def lint_imports(cwd: Path, pythonpath: list[Path] | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(str(p) for p in pythonpath)
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--config", str(cwd / "pyproject.toml")], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory) -> Path:
    """operator/ and trainer-image/ sources and pyproject.toml, copied (no caches)."""
    dst = tmp_path_factory.mktemp("tree")
    for name, src in PACKAGES.items():
        shutil.copytree(src, dst / src.parent.name / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", dst / "pyproject.toml")
    return dst


def test_layer_contracts_hold():
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


FORBIDDEN = [
    # (file in the copy, import added, the contract that must break)
    ("operator/tuneloop/api/modelversion.py", "import tuneloop.operator.settings", "api (the models) imports nothing"),
    ("operator/tuneloop/contract/layout.py", "import tuneloop_trainer.errors", "the contract imports only the API models"),
    ("operator/tuneloop/cli/local_cmd.py", "from tuneloop_trainer import local_runner", "the operator and the CLI never import the trainer"),
    ("operator/tuneloop/operator/builders/jobs.py", "import kopf", "builders and the rollout analysis are pure"),
    ("operator/tuneloop/operator/builders/config.py", "import aiohttp", "builders and the rollout analysis are pure"),
    ("operator/tuneloop/operator/rollout/verdicts.py", "from tuneloop.operator.kube import KubeClient", "builders and the rollout analysis are pure"),
    ("operator/tuneloop/operator/analysis/provider.py", "import aiohttp", "builders and the rollout analysis are pure"),
    ("operator/tuneloop/operator/rollout/drift.py", "from tuneloop.operator.analysis.prometheus import queries", "the rollout core is provider-neutral"),
    ("operator/tuneloop/operator/rollout/reconcile.py", "from tuneloop.operator.analysis import prometheus", "the rollout core is provider-neutral"),
    ("operator/tuneloop/operator/schedule/reconcile.py", "from tuneloop.operator.analysis.prometheus import PrometheusClient",
     "the rollout core is provider-neutral"),
    ("trainer-image/tuneloop_trainer/stages/report.py", "from tuneloop.operator.builders import registration", "the trainer never imports the operator"),
    ("trainer-image/tuneloop_trainer/evaluation/gates.py", "from tuneloop_trainer.stages import evaluate", "inside the trainer, the concern packages"),
]


@pytest.mark.parametrize(("path", "line", "contract"), FORBIDDEN, ids=[f[0].rsplit("/", 1)[-1] + ":" + f[1].split()[1] for f in FORBIDDEN])
def test_a_forbidden_import_breaks_a_contract(tree_copy, path, line, contract):
    target = tree_copy / path
    original = target.read_text()
    copy_path = [tree_copy / "operator", tree_copy / "trainer-image"]
    try:
        target.write_text(original + f"\n{line}  # added by test_layers\n")
        done = lint_imports(tree_copy, copy_path)
    finally:
        target.write_text(original)
    assert done.returncode != 0, f"{line!r} in {path} passed the layer check:\n{done.stdout}"
    broken = [ln for ln in done.stdout.splitlines() if "BROKEN" in ln or contract in ln]
    assert any(contract in ln for ln in broken), done.stdout
    clean = lint_imports(tree_copy, copy_path)  # and the copy itself (what the check read) is fine without it
    assert clean.returncode == 0, clean.stdout


# --- what the import graph does not show -------------------------------------------------------------
API = ROOT / "operator" / "tuneloop" / "api"
WRITES = {"write_text", "write_bytes", "mkdir", "unlink", "rmtree"}


def _file_effects(path: Path) -> list[str]:
    """Calls that write files, and `__file__` (knowing where the repository is), in one module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in WRITES:
            found.append(f"{path.name}:{node.lineno}: .{node.func.attr}()")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "open":
            mode = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "mode"), None)
            if not (isinstance(mode, ast.Constant) and set(str(mode.value)) <= {"r", "b", "t"}):
                found.append(f"{path.name}:{node.lineno}: open() for writing")
        if isinstance(node, ast.Name) and node.id == "__file__":
            found.append(f"{path.name}:{node.lineno}: __file__")
    return found


def test_api_writes_no_files_and_knows_no_repository_layout():
    """The CRD/doc generators write from the CLI (`kubectl tuneloop crds`, tuneloop.cli.crds_cmd)."""
    problems = [p for f in sorted(API.glob("*.py")) for p in _file_effects(f)]
    assert problems == []


def test_the_file_check_finds_a_writer(tmp_path):
    mod = tmp_path / "gen.py"
    mod.write_text("from pathlib import Path\nROOT = Path(__file__).parent\n(ROOT / 'x').write_text('y')\nopen('z', 'w')\n")
    assert sorted(p.split(": ", 1)[1] for p in _file_effects(mod)) == [".write_text()", "__file__", "open() for writing"]


def _dynamic_trainer_imports(path: Path) -> list[str]:
    """importlib.import_module("tuneloop_trainer…") / __import__(…): imports import-linter cannot see."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        if name in {"import_module", "__import__"} and node.args[0].value.startswith("tuneloop_trainer"):
            found.append(f"{path.name}:{node.lineno}: {name}({node.args[0].value!r})")
    return found


def test_the_operator_does_not_import_the_trainer_dynamically_either(tmp_path):
    sources = [p for sub in ("operator", "cli") for p in sorted((PACKAGES["tuneloop"] / sub).rglob("*.py"))]
    assert [f for p in sources for f in _dynamic_trainer_imports(p)] == []
    probe = tmp_path / "probe.py"  # what builders/config.py did before the contract: the check finds it
    probe.write_text("import importlib\nfn = importlib.import_module('tuneloop_trainer.training.dsconfig').deepspeed_config\n")
    assert _dynamic_trainer_imports(probe) == ["probe.py:2: import_module('tuneloop_trainer.training.dsconfig')"]
