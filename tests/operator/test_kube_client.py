"""The operator's async client against the emulator: create-or-get, merge patch, status, list, delete, events."""

from __future__ import annotations

import pytest
from tuneloop.operator.kube import ApiError
from tuneloop.operator.kube import resources as r

pytestmark = pytest.mark.operator


def _cm(name: str, labels: dict | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default", "labels": labels or {}}, "data": {"a": "1"}}


async def test_create_is_idempotent_and_returns_the_existing_object(kube):
    first, created = await kube.client.create(r.CONFIGMAPS, "default", _cm("x"))
    assert created and first["metadata"]["uid"]
    again, created2 = await kube.client.create(r.CONFIGMAPS, "default", {**_cm("x"), "data": {"a": "2"}})
    assert not created2
    assert again["data"] == {"a": "1"} and again["metadata"]["uid"] == first["metadata"]["uid"]
    assert kube.count(r.CONFIGMAPS) == 1


async def test_merge_patch_status_list_delete_events(kube):
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j", "namespace": "default", "labels": {"app": "a"}}, "spec": {"x": 1, "y": 2}}
    await kube.client.create(r.JOBS, "default", job)
    out = await kube.client.patch(r.JOBS, "default", "j", {"spec": {"y": None}})
    assert out["spec"] == {"x": 1}
    out = await kube.client.patch(r.JOBS, "default", "j", {"status": {"active": 1}}, subresource="status")
    assert out["status"] == {"active": 1}
    assert [j["metadata"]["name"] for j in await kube.client.list(r.JOBS, "default", labels="app=a")] == ["j"]
    assert await kube.client.list(r.JOBS, "default", labels={"app": "b"}) == []
    assert await kube.client.get(r.JOBS, "default", "nope") is None
    await kube.client.event(job, type="Warning", reason="Testing", message="hello")
    events = await kube.client.events_for("default", "j", "Job")
    assert [(e["type"], e["reason"], e["message"]) for e in events] == [("Warning", "Testing", "hello")]
    assert await kube.client.delete(r.JOBS, "default", "j") is True
    assert await kube.client.delete(r.JOBS, "default", "j") is False


async def test_errors_carry_status(kube):
    with pytest.raises(ApiError) as info:
        await kube.client.patch(r.JOBS, "default", "missing", {"spec": {}})
    assert info.value.not_found and not info.value.retriable
