"""No tuneloop object waits on the operator to be deleted (issue 10): Kopf puts a finalizer on every
object that has a daemon, so a Rollout or FineTuneSchedule — and its namespace — stayed Terminating
forever once the operator was stopped. The operator releases its daemons from that finalizer; a
deletion wakes the loop, which finds its object gone and exits."""

from __future__ import annotations

import asyncio
from pathlib import Path

import kopf
import pytest
import yaml
from tuneloop.operator.kube import resources as r
from tuneloop.operator.main import import_handlers, release_daemon_finalizers

from .scenario import NS

pytestmark = [pytest.mark.operator, pytest.mark.timeout(120)]

SAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "samples"


def _rollout(**meta: object) -> dict:
    doc = yaml.safe_load((SAMPLES / "rollout.yaml").read_text())
    doc["metadata"] = {"name": "support-triage", "namespace": NS, **meta}
    return doc


def test_no_registered_handler_asks_for_a_finalizer() -> None:
    import_handlers()
    registry = kopf.get_default_registry()
    daemons = [h for h in registry._spawning._handlers]
    assert {h.id for h in daemons} >= {"rollout-loop", "schedule-loop", "sweep-loop"}
    assert [h.id for h in daemons if h.requires_finalizer] == []
    assert [h.id for h in registry._changing._handlers if h.requires_finalizer] == []


def test_release_turns_kopfs_daemon_finalizer_off() -> None:
    """Kopf marks every daemon as needing a finalizer; the release is what changes that."""
    registry = kopf.OperatorRegistry()

    @kopf.daemon("tuneloop.dev", "v1alpha1", "rollouts", id="probe", registry=registry)
    async def probe(**_: object) -> None:  # pragma: no cover - never spawned
        return None

    assert [h.requires_finalizer for h in registry._spawning._handlers] == [True]
    assert release_daemon_finalizers(registry) == 1
    assert [h.requires_finalizer for h in registry._spawning._handlers] == [False]
    assert release_daemon_finalizers(registry) == 0


def test_kopf_is_the_pinned_version_with_the_private_registry() -> None:
    """release_daemon_finalizers edits Kopf's private `_spawning._handlers` (no public API does it): Kopf is pinned
    exactly, and this fails when the installed Kopf is not the pin, or the private names or the handler's
    `requires_finalizer` field moved — re-check release_daemon_finalizers before changing the pin."""
    import dataclasses
    import re
    from importlib.metadata import version

    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    pins = re.findall(r'^\s*"kopf([^"]*)",', pyproject, re.M)  # the dependency line
    assert len(pins) == 1 and pins[0].startswith("=="), f"Kopf must be pinned exactly (==), found {pins}"
    assert version("kopf") == pins[0][2:], f"installed Kopf {version('kopf')} is not the pinned {pins[0]}"
    registry = kopf.OperatorRegistry()
    spawning = getattr(registry, "_spawning", None)
    assert spawning is not None and isinstance(getattr(spawning, "_handlers", None), list), "Kopf's private registry moved"

    @kopf.daemon("tuneloop.dev", "v1alpha1", "rollouts", id="probe", registry=registry)
    async def probe(**_: object) -> None:  # pragma: no cover - never spawned
        return None

    (handler,) = spawning._handlers
    assert dataclasses.is_dataclass(handler) and "requires_finalizer" in {f.name for f in dataclasses.fields(handler)}


async def test_rollout_gets_no_finalizer_and_deletion_needs_no_operator(kube, operator_proc) -> None:
    await kube.apply(_rollout())
    # The loop ran (it writes a status), and no finalizer came with it.
    obj = await kube.wait_for(r.ROLLOUTS, NS, "support-triage", lambda o: bool(o.get("status")))
    await operator_proc.wait_log("support-triage")
    obj = await kube.get(r.ROLLOUTS, NS, "support-triage")
    assert not obj["metadata"].get("finalizers")

    operator_proc.stop()  # deleting must not need the operator
    assert await kube.client.delete(r.ROLLOUTS, NS, "support-triage")
    assert await kube.get(r.ROLLOUTS, NS, "support-triage") is None


async def test_a_rollout_finalizer_left_by_an_older_operator_is_removed(kube, operator_proc) -> None:
    await kube.apply(_rollout(finalizers=["tuneloop.dev/finalizer"]))
    await kube.wait_for(r.ROLLOUTS, NS, "support-triage", lambda o: not o["metadata"].get("finalizers"))


async def test_deleted_rollout_wakes_its_loop_at_once(kube, operator_proc) -> None:
    """The deletion event wakes the loop (no waiting out the analysis interval or a long pause): it reads
    its Rollout once more, finds it gone and exits."""
    await kube.apply(_rollout())
    await kube.wait_for(r.ROLLOUTS, NS, "support-triage", lambda o: bool(o.get("status")))
    await asyncio.sleep(1.0)  # the first tick's writes are done; the loop now sleeps for its interval
    kube.emulator.recorded = []
    assert await kube.client.delete(r.ROLLOUTS, NS, "support-triage")
    deadline = asyncio.get_running_loop().time() + 10.0
    while asyncio.get_running_loop().time() < deadline:
        reads = [(m, p) for m, p, params, auth in kube.emulator.recorded or []
                 if auth and m == "GET" and p.endswith("/rollouts/support-triage")]
        if reads:
            break
        await asyncio.sleep(0.1)
    assert reads, kube.emulator.recorded
    assert await kube.get(r.ROLLOUTS, NS, "support-triage") is None
