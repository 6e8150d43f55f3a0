"""Samples validate through the models and the CRD schema; invalid files are refused with field paths."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tuneloop.api import KINDS
from tuneloop.api.schema_check import check_document, check_files
from tuneloop.cli.main import main as cli

pytestmark = pytest.mark.unit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
SAMPLES = sorted((ROOT / "manifests" / "samples").glob("*.yaml"))
INVALID = sorted((HERE / "invalid").glob("*.yaml"))


def expectation(path: Path) -> tuple[str, str]:
    m = re.match(r"# expect: (\S+) \| (.+)", path.read_text().splitlines()[0])
    assert m, f"{path.name} lacks its '# expect: PATH | MESSAGE' line"
    return m.group(1), m.group(2)


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_sample_is_valid(path: Path) -> None:
    docs = list(yaml.safe_load_all(path.read_text()))
    assert docs
    for doc in docs:
        assert check_document(doc, path.name) == []
        KINDS[doc["kind"]].model_validate(doc)


def test_samples_cover_every_kind() -> None:
    kinds = {doc["kind"] for p in SAMPLES for doc in yaml.safe_load_all(p.read_text())}
    assert kinds == set(KINDS)


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_file_is_refused_naming_the_field(path: Path) -> None:
    field, message = expectation(path)
    count, problems = check_files([path])
    assert count == 1 and problems
    assert any(p.path == field and message in p.message for p in problems), [str(p) for p in problems]


def test_models_round_trip_to_the_same_wire_form() -> None:
    for path in SAMPLES:
        for doc in yaml.safe_load_all(path.read_text()):
            model = KINDS[doc["kind"]].model_validate(doc)
            again = KINDS[doc["kind"]].model_validate(model.wire())
            assert again == model


def test_cli_validate_samples(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["validate", *map(str, SAMPLES)]) == 0
    assert capsys.readouterr().out.startswith("valid")


def test_cli_validate_reports_every_problem_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    multi = tmp_path / "multi.yaml"
    multi.write_text("\n---\n".join(p.read_text() for p in INVALID[:3]) + "\n---\n" + SAMPLES[0].read_text())
    assert cli(["validate", str(multi)]) == 1
    err = capsys.readouterr().err
    for path in INVALID[:3]:
        field, _ = expectation(path)
        assert f": {field}: " in err
    assert f"in {4 if SAMPLES else 3} document(s)" in err


def test_cli_validate_unreadable_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["validate", str(tmp_path / "missing.yaml")]) == 1
    assert "cannot read" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_discovers_the_plugin() -> None:
    bindir = Path(sys.executable).parent
    assert (bindir / "kubectl-tuneloop").exists(), "install the package so the kubectl-tuneloop script exists"
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "HOME": str(ROOT)}
    out = subprocess.run(["kubectl", "tuneloop", "validate", str(SAMPLES[0])], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("valid")
