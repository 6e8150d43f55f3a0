"""Settings, scope resolution, Kopf configuration, RBAC manifests, metrics helpers."""

from __future__ import annotations

import argparse
from pathlib import Path

import kopf
import pytest
from prometheus_client import generate_latest
from tuneloop.operator import lifecycle, rbac
from tuneloop.operator import telemetry as metrics
from tuneloop.operator.kube import parse_selector
from tuneloop.operator.kube import resources as r
from tuneloop.operator.main import build_parser, resolve_scope
from tuneloop.operator.settings import OperatorSettings

pytestmark = pytest.mark.unit


def test_settings_from_env(monkeypatch):
    monkeypatch.setenv("TUNELOOP_TRAINER_IMAGE", "reg/trainer:1")
    monkeypatch.setenv("TUNELOOP_NAMESPACES", "a, b,")
    monkeypatch.setenv("TUNELOOP_METRICS_PORT", "9999")
    s = OperatorSettings()
    assert (s.trainer_image, s.namespaces, s.metrics_port) == ("reg/trainer:1", ["a", "b"], 9999)


def test_settings_reject_bad_port(monkeypatch):
    monkeypatch.setenv("TUNELOOP_METRICS_PORT", "70000")
    with pytest.raises(ValueError):
        OperatorSettings()


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["-A"], {}, (True, [])),
        (["-n", "x", "-n", "y"], {"cluster_wide": True}, (False, ["x", "y"])),
        ([], {"cluster_wide": True}, (True, [])),
        ([], {"namespaces": ["team"]}, (False, ["team"])),
    ],
)
def test_scope(argv, env, expected):
    assert resolve_scope(build_parser().parse_args(argv), OperatorSettings(**env)) == expected


def test_scope_defaults_to_own_namespace_or_explains(monkeypatch):
    monkeypatch.setenv("POD_NAMESPACE", "tuneloop-system")
    assert resolve_scope(argparse.Namespace(all_namespaces=False, namespace=[]), OperatorSettings()) == (False, ["tuneloop-system"])
    monkeypatch.delenv("POD_NAMESPACE")
    monkeypatch.setattr("tuneloop.operator.main.SA_NAMESPACE", Path(r.__file__ + ".missing"))
    with pytest.raises(SystemExit, match="--all-namespaces"):
        resolve_scope(argparse.Namespace(all_namespaces=False, namespace=[]), OperatorSettings())


def test_kopf_bookkeeping_in_annotations():
    settings = kopf.OperatorSettings()
    lifecycle.configure(settings)
    assert isinstance(settings.persistence.progress_storage, kopf.AnnotationsProgressStorage)
    assert isinstance(settings.persistence.diffbase_storage, kopf.AnnotationsDiffBaseStorage)
    assert settings.persistence.progress_storage.prefix == "tuneloop.dev"


def test_rbac_manifests_are_current(repo_root):
    for name, text in rbac.files().items():
        assert (repo_root / "manifests" / "rbac" / name).read_text() == text, f"run python -m tuneloop.operator.rbac ({name})"


def test_rbac_has_no_secret_access_and_covers_children():
    granted = {(g, res): set(v) for g, ress, v, _ in rbac.RULES for res in ress}
    assert not any(res == "secrets" for _, res in granted)
    for res in (r.JOBS, r.CONFIGMAPS, r.SERVICES, r.DEPLOYMENTS, r.HTTPROUTES, r.NETWORKPOLICIES):
        assert {"create", "get"} <= granted[(res.group, res.plural)]  # verbs trimmed to the calls (tests/deploy/test_rbac.py)
    assert {"create"} <= granted[(r.MODELVERSIONS.group, "modelversions")]
    assert {"patch"} <= granted[("tuneloop.dev", "finetunejobs/status")]
    assert {"get"} <= granted[("", "pods/log")]


def test_resource_paths():
    assert r.JOBS.path("ns", "j", "status") == "/apis/batch/v1/namespaces/ns/jobs/j/status"
    assert r.PODS.path("ns") == "/api/v1/namespaces/ns/pods"
    assert r.FINETUNEJOBS.path(None) == "/apis/tuneloop.dev/v1alpha1/finetunejobs"
    assert r.for_object({"apiVersion": "batch/v1", "kind": "Job"}) is r.JOBS


def test_selector_parsing():
    assert parse_selector("a=b, c==d") == {"a": "b", "c": "d"}
    with pytest.raises(ValueError):
        parse_selector("a!=b")


def test_phase_metrics_kube_state_style():
    metrics.set_phase("ns", "job1", "Training")
    metrics.set_phase("ns", "job2", "Training")
    metrics.set_phase("ns", "job1", "Succeeded")
    text = generate_latest(metrics.REGISTRY).decode()
    assert 'tuneloop_finetunejob_phase{name="job1",namespace="ns",phase="Succeeded"} 1.0' in text
    assert 'tuneloop_finetunejob_phase{name="job1",namespace="ns",phase="Training"} 0.0' in text
    assert 'tuneloop_finetunejobs{phase="Training"} 1.0' in text
    metrics.forget("ns", "job1")
    metrics.forget("ns", "job2")
    text = generate_latest(metrics.REGISTRY).decode()
    assert 'name="job1"' not in text and 'tuneloop_finetunejobs{phase="Training"} 0.0' in text


def test_reconcile_timer_counts_errors():
    before = metrics.RECONCILE_ERRORS.labels("test")._value.get()
    with pytest.raises(RuntimeError), metrics.reconcile_timer("test"):
        raise RuntimeError("x")
    assert metrics.RECONCILE_ERRORS.labels("test")._value.get() == before + 1


def test_only_the_settings_read_the_operators_environment():
    """One settings object (issue 24): no module of tuneloop.operator but settings.py reads the environment for a
    TUNELOOP_* variable or the operator namespace (POD_NAMESPACE is OperatorSettings.operator_namespace)."""
    import re

    root = Path(__file__).resolve().parents[3] / "operator" / "tuneloop" / "operator"
    reads = re.compile(r"(os\.environ|getenv)\W[^\n]*(TUNELOOP_|POD_NAMESPACE)")
    found = [f"{p.relative_to(root)}:{n}" for p in sorted(root.rglob("*.py")) if p.name != "settings.py"
             for n, line in enumerate(p.read_text().splitlines(), 1) if reads.search(line)]
    assert found == []
