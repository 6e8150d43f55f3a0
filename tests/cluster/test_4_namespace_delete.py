"""Namespaces deleted while the operator is stopped must go away (issue 10 defect 1: a finalizer on every
unfinished FineTuneJob made them hang forever). Each case gets its own namespace, chart install and operator."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Env, create_env, destroy_env, phase, tiny_finetunejob, write_tiny_inputs
from .kube import Kube

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

GONE_WITHIN_S = 60


@pytest.fixture
def other_env(kube: Kube, crds: None, tmp_path: Path) -> Iterator[Env]:
    e = create_env(kube, tmp_path, install_crds=False)
    try:
        yield e
    finally:
        if kube.get("namespaces", e.ns) is not None:  # the test failed before its namespace went: unblock it
            for plural in ("finetunejobs", "rollouts"):
                for obj in kube.list(plural, e.ns):
                    if obj["metadata"].get("finalizers"):
                        kube.patch(plural, obj["metadata"]["name"], e.ns, {"metadata": {"finalizers": None}})
        destroy_env(kube, e)


def _delete_namespace_with_operator_stopped(kube: Kube, e: Env) -> None:
    assert e.operator is not None
    e.operator.kill()  # SIGKILL: nothing gets a chance to clean up
    kube.delete("namespaces", e.ns)
    start = time.monotonic()
    while kube.get("namespaces", e.ns) is not None:
        if time.monotonic() - start > GONE_WITHIN_S:
            ns = kube.get("namespaces", e.ns)
            msgs = [c.get("message") for c in (ns.get("status") or {}).get("conditions") or [] if c.get("status") == "True"]
            left = {p: [(o["metadata"]["name"], o["metadata"].get("finalizers")) for o in kube.list(p, e.ns)] for p in ("finetunejobs", "rollouts")}
            raise AssertionError(f"namespace {e.ns} still Terminating after {GONE_WITHIN_S}s with the operator stopped: {msgs}; left: {left}")
        time.sleep(1)


def test_namespace_with_an_unfinished_finetunejob_goes_while_the_operator_is_stopped(kube: Kube, other_env: Env):
    e = other_env
    write_tiny_inputs(e.ns)
    e.start_operator()
    kube.create("finetunejobs", tiny_finetunejob("unfinished", e.ns, max_steps=400))
    kube.wait("jobs", "unfinished-data", e.ns, timeout=120, on_timeout=e.operator_log)
    obj = kube.wait("finetunejobs", "unfinished", e.ns, lambda o: phase(o) in ("ValidatingData", "Training"), timeout=120,
                    on_timeout=e.operator_log)
    time.sleep(5)  # a few operator passes (a progress timer would have put Kopf's finalizer on by now)
    obj = kube.get("finetunejobs", "unfinished", e.ns)
    assert not obj["metadata"].get("finalizers"), f"finalizers on an unfinished FineTuneJob: {obj['metadata']['finalizers']}"
    _delete_namespace_with_operator_stopped(kube, e)


def test_namespace_with_a_rollout_goes_while_the_operator_is_stopped(kube: Kube, other_env: Env):
    """The same for a Rollout: Kopf would put its finalizer on each Rollout (for the rollout-loop daemon), so
    with the operator uninstalled or down the namespace could not be deleted; the operator releases it."""
    e = other_env
    e.start_operator()
    kube.create("rollouts", {"apiVersion": "tuneloop.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": "bot", "namespace": e.ns},
                             "spec": {"servedModelName": "bot", "candidate": {"name": "bot-v1"},
                                      "serving": {"replicas": 1, "resources": {"gpus": 0, "cpu": "100m", "memory": "256Mi"}},
                                      "trafficRouting": {"gatewayAPI": {"httpRoute": "bot", "parentRefs": [{"name": "gw"}]}}}})
    kube.wait("rollouts", "bot", e.ns, lambda o: bool(o.get("status")), timeout=60, on_timeout=e.operator_log)
    _delete_namespace_with_operator_stopped(kube, e)
