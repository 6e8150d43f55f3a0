"""operator/Dockerfile: small, non-root, and its COPY layout builds the package with the entry point.

No container engine runs on CI, so the build itself is checked by doing what the Dockerfile does:
copy exactly the files it COPYs and build a wheel from them."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest
from tuneloop.operator.settings import OperatorSettings

from ._support import ROOT

pytestmark = pytest.mark.unit

DOCKERFILE = ROOT / "operator" / "Dockerfile"
TEXT = DOCKERFILE.read_text()


def _copies() -> list[str]:
    """Sources of the build stage's COPY lines (repository-relative)."""
    out = []
    for line in TEXT.splitlines():
        m = re.match(r"^COPY (?!--from)(.+) (\S+)$", line)
        if m:
            out.extend(m.group(1).split())
    return list(dict.fromkeys(out))


def test_runs_as_non_root_numeric_user():
    users = re.findall(r"^USER (\S+)$", TEXT, re.M)
    assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0"


def test_base_images_are_slim_and_pinned():
    """Every stage starts from the pinned slim image, or from a stage above it (which did)."""
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", TEXT, re.M).group(1)
    assert "slim" in base and not base.endswith(":latest") and ":" in base
    earlier: list[str] = []
    for line in TEXT.splitlines():
        if line.startswith("FROM"):
            parts = line.split()
            assert parts[1] == "${PYTHON_IMAGE}" or parts[1] in earlier, line
            earlier += parts[3:4]


def _stages() -> dict[str, str]:
    """Each stage's instructions (comments dropped), by its name (the last, unnamed one: "operator")."""
    out: dict[str, str] = {}
    name = None
    for line in TEXT.splitlines():
        if line.startswith("FROM"):
            parts = line.split()
            name = parts[3] if len(parts) > 3 and parts[2].upper() == "AS" else "operator"
            out[name] = ""
        if name is not None and not line.lstrip().startswith("#"):
            out[name] += line + "\n"
    return out


def test_no_ml_libraries_in_the_operator_image():
    """The operator's stages install the base distribution only; the guard's content checks (scikit-learn and a shipped
    classifier, ~270 MB) go into the guard image (--target guard); the trainer's extra into neither."""
    stages = _stages()
    assert list(stages)[-1] == "operator" and "COPY --from=build " in stages["operator"] + " "
    assert "pip install . " in stages["build"] + " " and "[guard]" not in stages["build"]
    assert 'pip install ".[guard]"' in stages["build-guard"] and "COPY --from=build-guard " in stages["guard"] + " "
    instructions = "".join(stages.values())
    assert "[trainer" not in instructions and "torch" not in instructions
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["guard"]
    assert not any(d.split("=")[0].split(">")[0] in ("torch", "transformers") for d in extras)


def test_the_guard_image_is_the_default_guard_image():
    assert OperatorSettings().guard_image == f"ghcr.io/tuneloop/guard:{OperatorSettings().guard_image.rsplit(':', 1)[1]}"
    assert "--target guard -t " + OperatorSettings().guard_image in TEXT


def test_entrypoint_and_ports_match_the_project():
    entry = re.search(r'^ENTRYPOINT \["([^"]+)"\]$', TEXT, re.M).group(1)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts[entry] == "tuneloop.operator.main:main"
    s = OperatorSettings()
    assert re.search(r"^EXPOSE (.+)$", TEXT, re.M).group(1).split() == [str(s.metrics_port), str(s.health_port)]


def test_dockerignore_lets_the_copied_files_through():
    ignore = [line for line in (ROOT / "operator" / "Dockerfile.dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    for src in _copies():
        src = src.rstrip("*").rstrip("/")
        if not (ROOT / src).exists():
            continue  # optional (README.md* glob)
        sample = src + ("/__init__.py" if (ROOT / src).is_dir() else "")
        included = False
        for pattern in ignore:  # last match wins, as in .dockerignore
            negate = pattern.startswith("!")
            if fnmatch.fnmatch(sample, pattern.lstrip("!").replace("/**", "/*")) or fnmatch.fnmatch(sample, pattern.lstrip("!")):
                included = negate
        assert included, f"{sample} is excluded from the build context"


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_copied_files_build_the_operator_wheel(tmp_path):
    ctx = tmp_path / "ctx"
    for src in _copies():
        for path in ROOT.glob(src.rstrip("/")):
            target = ctx / path.relative_to(ROOT)
            if path.is_dir():
                shutil.copytree(path, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, target)
    if not (ctx / "README.md").exists():  # pyproject names a readme; the build needs one
        (ctx / "README.md").write_text("tuneloop\n")
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(ctx)],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("tuneloop-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry_points = next(z.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert "tuneloop/operator/main.py" in names and "tuneloop/api/crdgen.py" in names
    assert "tuneloop-operator = tuneloop.operator.main:main" in entry_points
