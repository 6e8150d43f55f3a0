"""One version: tuneloop.__version__ = chart version/appVersion = every tuneloop image tag we ship."""

from __future__ import annotations

import re
import tomllib

import pytest
import tuneloop
import yaml
from tuneloop.operator.settings import OperatorSettings

from ._support import ROOT, container, kustomize, objects, one

pytestmark = pytest.mark.unit

VERSION = tuneloop.__version__
IMAGE = re.compile(r"ghcr\.io/tuneloop/([a-z0-9-]+):([\w.-]+)")


def test_python_chart_and_package_versions_agree():
    meta = yaml.safe_load((ROOT / "charts" / "tuneloop" / "Chart.yaml").read_text())
    assert meta["version"] == meta["appVersion"] == VERSION
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"] == VERSION


def test_rendered_images_carry_the_version():
    deployment = one(objects(None), "Deployment")
    assert container(deployment)["image"] == f"ghcr.io/tuneloop/operator:{VERSION}"
    env = {e["name"]: e.get("value") for e in container(deployment)["env"]}
    assert env["TUNELOOP_TRAINER_IMAGE"] == f"ghcr.io/tuneloop/trainer:{VERSION}"
    assert OperatorSettings().trainer_image == f"ghcr.io/tuneloop/trainer:{VERSION}"


@pytest.mark.parametrize("overlay", ["manifests/overlays/namespaced", "manifests/overlays/cluster-wide"])
def test_kustomize_images_carry_the_version(overlay):
    assert container(one(kustomize(overlay), "Deployment"))["image"] == f"ghcr.io/tuneloop/operator:{VERSION}"


def test_every_tuneloop_image_reference_carries_the_version():
    """Samples, chart, manifests, Dockerfile and docs: any ghcr.io/tuneloop/<image>:<tag> uses the version."""
    paths = [*ROOT.glob("manifests/**/*.yaml"), *ROOT.glob("charts/**/*.yaml"), ROOT / "operator" / "Dockerfile",
             *ROOT.glob("docs/install.md")]
    seen, wrong = 0, []
    for path in paths:
        for image, tag in IMAGE.findall(path.read_text()):
            seen += 1
            if tag != VERSION:
                wrong.append(f"{path.relative_to(ROOT)}: ghcr.io/tuneloop/{image}:{tag}")
    assert seen >= 5 and wrong == []
    kust = yaml.safe_load((ROOT / "manifests" / "base" / "kustomization.yaml").read_text())
    assert {i["name"]: i["newTag"] for i in kust["images"]} == {"ghcr.io/tuneloop/operator": VERSION}


def test_dockerfile_version_label():
    text = (ROOT / "operator" / "Dockerfile").read_text()
    assert re.search(r"^ARG VERSION=(\S+)$", text, re.M).group(1) == VERSION
