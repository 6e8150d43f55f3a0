"""The reconciler against an in-memory fake client: what kmock cannot emulate (generation,
patch-only-when-changed, suspend toggling) and the HTTP details of the client (label selectors,
merge patches without resourceVersion, the create/409/get race)."""

from __future__ import annotations

import copy
import json

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from tuneloop.operator.finetunejob.reconcile import Reconciler
from tuneloop.operator.kube import ApiError, Connection, KubeClient
from tuneloop.operator.kube import resources as r
from tuneloop.operator.settings import OperatorSettings

pytestmark = pytest.mark.unit


class FakeClient:
    """Just enough of KubeClient, recording every write (`writes`) and every API request (`requests`)."""

    def __init__(self):
        self.objects: dict[tuple[str, str, str], dict] = {}
        self.writes: list[tuple[str, str, str, dict]] = []
        self.requests: list[tuple[str, str, str]] = []

    async def get(self, res, ns, name, **_):
        self.requests.append(("GET", res.plural, name))
        obj = self.objects.get((res.plural, ns, name))
        return copy.deepcopy(obj) if obj else None

    async def create(self, res, ns, body, read_existing=True):
        key = (res.plural, ns, body["metadata"]["name"])
        self.requests.append(("POST", res.plural, body["metadata"]["name"]))
        if key in self.objects:
            return (await self.get(res, ns, key[2]) if read_existing else None), False
        self.objects[key] = copy.deepcopy(body)
        self.writes.append(("create", res.plural, body["metadata"]["name"], body))
        return copy.deepcopy(body), True

    async def patch(self, res, ns, name, patch, subresource=None):
        self.requests.append(("PATCH", res.plural, name))
        obj = self.objects[(res.plural, ns, name)]
        for k, v in patch.items():
            if isinstance(v, dict) and isinstance(obj.get(k), dict):
                obj[k] = {**obj[k], **{kk: vv for kk, vv in v.items()}}
                obj[k] = {kk: vv for kk, vv in obj[k].items() if vv is not None}
            else:
                obj[k] = v
        self.writes.append(("patch", res.plural, name, patch))
        return copy.deepcopy(obj)

    async def list(self, res, ns=None, labels=None):
        self.requests.append(("LIST", res.plural, ""))
        return []

    async def event(self, obj, **kw):
        self.requests.append(("POST", "events", obj["metadata"]["name"]))
        self.writes.append(("event", "events", obj["metadata"]["name"], kw))

    def jobs(self, ns: str = "ns") -> dict[str, dict]:
        """The child Jobs as the operator's Kopf index shows them."""
        return {name: copy.deepcopy(o) for (plural, n, name), o in self.objects.items() if plural == "jobs" and n == ns}

    async def pod_log(self, *a, **kw):
        return ""


def _ftj(generation: int = 1, suspend: bool = False) -> dict:
    return {"apiVersion": "tuneloop.dev/v1alpha1", "kind": "FineTuneJob",
            "metadata": {"name": "x", "namespace": "ns", "uid": "u-1", "generation": generation, "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"baseModel": {"huggingFace": {"id": "m"}}, "dataset": {"train": {"pvc": {"claimName": "d", "path": "t.jsonl"}}},
                     "output": {"pvc": {"claimName": "o"}}, "suspend": suspend}}


async def _pass(client: FakeClient, body: dict, *, indexed: bool = True, progress: dict | None = None):
    """One pass as the handlers run it: the FineTuneJob and its Jobs from the (up-to-date) index."""
    client.objects[("finetunejobs", "ns", "x")] = {**copy.deepcopy(body), "status": client.objects.get(("finetunejobs", "ns", "x"), {}).get("status", {})}
    fresh = copy.deepcopy(client.objects[("finetunejobs", "ns", "x")])
    return await Reconciler(client, OperatorSettings()).run(fresh, jobs=client.jobs() if indexed else None, progress=progress)


async def test_first_pass_creates_config_data_job_and_status():
    c = FakeClient()
    out = await _pass(c, _ftj(generation=3))
    assert out.phase == "ValidatingData"
    created = [(w[1], w[2]) for w in c.writes if w[0] == "create"]
    assert created == [("configmaps", "x-config"), ("jobs", "x-data")]  # the Service comes with the training Job
    status = c.objects[("finetunejobs", "ns", "x")]["status"]
    assert status["observedGeneration"] == 3
    assert all(cd["observedGeneration"] == 3 for cd in status["conditions"])
    # the first phase gets no Event: the status says it (phase, DataValidated=Unknown/Validating, children.dataJob)
    assert [w for w in c.writes if w[0] == "event"] == []
    assert status["phase"] == "ValidatingData" and status["children"]["dataJob"] == "x-data"
    assert {(cd["type"], cd["status"], cd["reason"]) for cd in status["conditions"]} >= {("DataValidated", "Unknown", "Validating")}


async def test_creation_to_data_job_takes_at_most_six_requests():
    """Issue 10: create first (409 = exists), no GETs of what the index shows, one status patch, no Event."""
    c = FakeClient()
    out = await _pass(c, _ftj())
    assert out.phase == "ValidatingData" and out.written is not None
    assert c.requests == [("POST", "configmaps", "x-config"), ("POST", "jobs", "x-data"), ("PATCH", "finetunejobs", "x")]
    assert len(c.requests) <= 6


async def test_a_job_created_suspended_gets_no_event_until_it_is_resumed():
    c = FakeClient()
    out = await _pass(c, _ftj(suspend=True))
    assert out.phase == "Suspended" and [w for w in c.writes if w[0] == "event"] == []
    c.objects[("jobs", "ns", "x-data")]["spec"]["suspend"] = True
    out = await _pass(c, _ftj(suspend=False))
    assert out.phase == "ValidatingData"
    assert [(w[3]["type"], w[3]["reason"]) for w in c.writes if w[0] == "event"] == [("Normal", "ValidatingData")]


async def test_a_spec_that_cannot_run_still_gets_its_warning_event_at_creation():
    c = FakeClient()
    body = _ftj()
    body["spec"]["dataset"] = {"train": {"path": "/local/train.jsonl"}}
    out = await _pass(c, body)
    assert out.phase == "Failed" and out.invalid
    assert [(w[3]["type"], w[3]["reason"]) for w in c.writes if w[0] == "event"] == [("Warning", "Failed")]


async def test_a_job_the_index_does_not_show_yet_is_created_and_read_once():
    c = FakeClient()
    await _pass(c, _ftj())
    c.objects[("finetunejobs", "ns", "x")]["status"] = {}  # as if our status write had not been seen
    c.requests.clear()
    await Reconciler(c, OperatorSettings()).run(copy.deepcopy(c.objects[("finetunejobs", "ns", "x")]), jobs={})
    # the existing ConfigMap is read once to check that this job owns it (issue 25), then the Job is read once
    assert c.requests[:4] == [("POST", "configmaps", "x-config"), ("GET", "configmaps", "x-config"), ("POST", "jobs", "x-data"),
                              ("GET", "jobs", "x-data")]
    assert [w for w in c.writes if w[0] == "create" and w[1] == "jobs"] == [c.writes[1]]  # still one Job


async def test_second_pass_without_change_makes_no_request():
    c = FakeClient()
    await _pass(c, _ftj())
    before, requests = len(c.writes), len(c.requests)
    await _pass(c, _ftj())
    assert c.writes[before:] == [] and c.requests[requests:] == []


async def test_config_map_is_not_rebuilt_once_the_data_job_exists(monkeypatch):
    from tuneloop.operator import builders

    c = FakeClient()
    await _pass(c, _ftj())
    calls = []
    monkeypatch.setattr(builders, "config_map", lambda *a, **k: calls.append(1) or {})
    monkeypatch.setattr(builders, "data_job", lambda *a, **k: calls.append(2) or {})
    await _pass(c, _ftj())
    _complete(c, "x-data")
    await _pass(c, _ftj())
    assert calls == [] and ("jobs", "ns", "x-train") in c.objects


async def test_service_is_created_with_the_training_job():
    c = FakeClient()
    await _pass(c, _ftj())
    assert ("services", "ns", "x-train") not in c.objects
    _complete(c, "x-data")
    out = await _pass(c, _ftj())
    assert out.phase == "Training"
    created = [(w[1], w[2]) for w in c.writes if w[0] == "create"]
    # the rendezvous NetworkPolicy (issue 25) comes with them, before the pods exist
    assert created[-3:] == [("services", "x-train"), ("networkpolicies", "x-train"), ("jobs", "x-train")]
    assert out.status["children"]["service"] == "x-train"


async def test_suspend_follows_the_spec_and_bumps_observed_generation():
    c = FakeClient()
    await _pass(c, _ftj(generation=1, suspend=True))
    assert c.objects[("jobs", "ns", "x-data")]["spec"]["suspend"] is True
    assert c.objects[("finetunejobs", "ns", "x")]["status"]["phase"] == "Suspended"
    out = await _pass(c, _ftj(generation=2, suspend=False))
    assert c.objects[("jobs", "ns", "x-data")]["spec"]["suspend"] is False
    assert out.phase == "ValidatingData" and out.status["observedGeneration"] == 2


async def test_invalid_spec_is_terminal_and_not_reprocessed():
    c = FakeClient()
    bad = _ftj()
    bad["spec"]["output"] = {"path": "/tmp/x"}
    out = await _pass(c, bad)
    assert out.invalid == "spec.output.path: output.path is for local runs; in a cluster use output.pvc (or output.s3)"
    n = len(c.writes)
    out2 = await _pass(c, bad)
    assert out2.phase == "Failed" and out2.invalid is None and len(c.writes) == n


# --- the HTTP client against a scripted server ---------------------------------------------
async def test_client_http_details():
    seen: list[tuple[str, str, str, dict, str]] = []

    async def handler(request: web.Request) -> web.Response:
        body = await request.text()
        seen.append((request.method, request.path, request.headers.get("Content-Type", ""), dict(request.query), body))
        if request.method == "POST":
            return web.json_response({"kind": "Status", "reason": "AlreadyExists", "message": "exists"}, status=409)
        if request.method == "GET" and request.path.endswith("/gone"):
            return web.json_response({"kind": "Status", "reason": "NotFound", "message": "gone"}, status=404)
        if request.method == "GET" and request.path.endswith("/jobs"):
            return web.json_response({"items": [{"metadata": {"name": "a", "labels": {"x": "1"}}},
                                                {"metadata": {"name": "b", "labels": {"x": "2"}}}]})
        return web.json_response({"metadata": {"name": "ok"}})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    async with TestServer(app) as server:
        client = KubeClient(Connection(server=str(server.make_url("")).rstrip("/"), headers={"Authorization": "Bearer t"}))
        try:
            items = await client.list(r.JOBS, "ns", labels={"x": "1"})
            assert [i["metadata"]["name"] for i in items] == ["a"]  # also filtered client-side
            assert seen[-1][3] == {"labelSelector": "x=1"}
            await client.patch(r.JOBS, "ns", "j", {"status": {"active": 1}}, subresource="status")
            method, path, ctype, _, body = seen[-1]
            assert (method, path, ctype) == ("PATCH", "/apis/batch/v1/namespaces/ns/jobs/j/status", "application/merge-patch+json")
            assert "resourceVersion" not in body and json.loads(body) == {"status": {"active": 1}}
            obj, created = await client.create(r.JOBS, "ns", {"metadata": {"name": "j"}})
            assert not created and obj == {"metadata": {"name": "ok"}}
            with pytest.raises(ApiError) as info:  # exists, but vanished before it could be read
                await client.create(r.JOBS, "ns", {"metadata": {"name": "gone"}})
            assert info.value.conflict and info.value.retriable
        finally:
            await client.close()


def _complete(client: FakeClient, job: str) -> None:
    client.objects[("jobs", "ns", job)]["status"] = {"conditions": [{"type": "Complete", "status": "True"}], "succeeded": 1}


async def test_evaluation_disabled_registers_not_evaluated_modelversion():
    c = FakeClient()
    body = _ftj()
    body["spec"]["evaluation"] = {"enabled": False}
    body["spec"]["registry"] = {"modelName": "Support Bot", "version": "2026.11"}
    await _pass(c, body)
    _complete(c, "x-data")
    await _pass(c, body)
    assert ("jobs", "ns", "x-train") in c.objects
    _complete(c, "x-train")
    out = await _pass(c, body)
    assert out.phase == "Succeeded" and ("jobs", "ns", "x-eval") not in c.objects
    mv = c.objects[("modelversions", "ns", "support-bot-2026-11")]
    assert mv["spec"]["modelName"] == "Support Bot" and mv["spec"]["evaluation"]["verdict"] == "NotEvaluated"
    assert mv["status"]["phase"] == "Ready"
    conds = {cd["type"]: (cd["status"], cd["reason"]) for cd in out.status["conditions"]}
    assert conds["Evaluated"] == ("False", "Disabled") and conds["Succeeded"] == ("True", "Completed")
    assert [w[3]["reason"] for w in c.writes if w[0] == "event"] == ["Training", "Succeeded"]


def test_failed_gates_reject_the_modelversion():
    from tuneloop.operator.builders.registration import model_version_phase

    assert model_version_phase({"verdict": "Failed"}) == "Rejected"
    assert model_version_phase({"verdict": "Passed"}) == "Ready"
    assert model_version_phase(None) == "Ready"


async def test_finished_stages_are_not_rerun_when_their_jobs_expire():
    """ttlSecondsAfterFinished deletes finished Jobs (GC, which kmock does not emulate)."""
    c = FakeClient()
    body = _ftj()
    body["spec"]["ttlSecondsAfterFinished"] = 0
    await _pass(c, body)
    _complete(c, "x-data")
    await _pass(c, body)
    del c.objects[("jobs", "ns", "x-data")]  # expired
    _complete(c, "x-train")
    out = await _pass(c, body)
    assert out.phase == "Evaluating"
    del c.objects[("jobs", "ns", "x-train")]
    out = await _pass(c, body)
    assert out.phase == "Evaluating"
    assert ("jobs", "ns", "x-data") not in c.objects and ("jobs", "ns", "x-train") not in c.objects
    assert [w[2] for w in c.writes if w[0] == "create" and w[1] == "jobs"] == ["x-data", "x-train", "x-eval"]
