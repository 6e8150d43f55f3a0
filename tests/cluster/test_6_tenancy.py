"""Tenant boundaries on the real API server (issue 25's "Done when"): the operator runs as a shared, multi-tenant
install (no TUNELOOP_ALLOW_ANY_METRICS_ADDRESS; the admin's providers only), and a tenant of namespace A cannot
(a) make the operator fetch a URL of its choice, (b) read a metric of namespace B, (c) have the operator patch a
Service it did not create, (d) get a FineTuneJob it made itself handed off by a FineTuneSchedule.

Everything runs in one restricted namespace (the tenant's, A) with the chart installed namespaced and the operator
running as the chart's ServiceAccount. Namespace B exists only as a label on series in the Prometheus the admin
configured: what matters is what the operator sends and what reaches A's status.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Gauge

from tests.rollout.promstack import PrometheusServer, free_port, serve_text_format

from .conftest import Env, cond, create_env, destroy_env, phase, tiny_finetunejob, write_tiny_inputs
from .kube import Kube

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1200)]

SCHED, RO, SVC = "tenant-loop", "tenant-ro", "payments"


class TenantEnv(Env):
    """The operator as a platform admin would run it for many teams: its providers only (here `default`, the
    operator's prometheusUrl), queries confined, the admission policy's defaults."""

    def operator_env(self) -> dict[str, str]:
        env = super().operator_env()
        env.pop("TUNELOOP_ALLOW_ANY_METRICS_ADDRESS", None)
        return env


class Counting:
    """An HTTP server that counts every request and answers like Prometheus (value 42): the URL a tenant wants
    the operator to fetch (a metadata service, an internal admin API)."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests.append(self.path)
                body = b'{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[0,"42"]}]}}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture(scope="module")
def tenant(kube: Kube, crds: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    workdir = tmp_path_factory.mktemp("tenancy")
    # the admin's Prometheus: series of two namespaces, A's value 0 and B's 5 (honour_labels keeps `namespace`)
    exporters, pods = [], []
    e = create_env(kube, workdir, install_crds=False)
    for ns_label, value in ((e.ns, 0.0), ("team-b", 5.0)):
        reg = CollectorRegistry()
        Gauge("tenant_probe", "a per-namespace signal", registry=reg).set(value)
        port = free_port()
        exporters.append(serve_text_format(reg, port))
        pods.append((SimpleNamespace(port=port), {"namespace": ns_label}))
    prom = PrometheusServer(workdir, pods)
    prom.start()
    prom.wait_scraped(2)
    foreign = Counting()
    e.__class__ = TenantEnv
    e.prometheus_url = prom.url
    try:
        write_tiny_inputs(e.ns)
        e.start_operator()
        time.sleep(5)
        assert e.operator is not None and e.operator.proc is not None and e.operator.proc.poll() is None, \
            f"the operator did not start:\n{e.operator_log()}"
        yield SimpleNamespace(env=e, prom=prom, foreign=foreign)
    finally:
        foreign.close()
        destroy_env(kube, e)
        prom.stop()
        for x in exporters:
            x.shutdown()


def _schedule(ns: str, foreign_url: str) -> dict[str, Any]:
    template = tiny_finetunejob("unused", ns)
    spec = template["spec"]
    spec["evaluation"]["backend"] = "transformers"
    spec.pop("registry")
    return {"apiVersion": "tuneloop.dev/v1alpha1", "kind": "FineTuneSchedule", "metadata": {"name": SCHED, "namespace": ns},
            "spec": {"triggers": {"prometheus": [
                        # (a) an address of the tenant's choice
                        {"name": "foreign", "query": "vector(1)", "interval": "3s", "prometheusAddress": foreign_url},
                        # (b) its own namespace's signal, written without a selector, and B's, asked for by name
                        {"name": "mine", "query": "max(tenant_probe)", "interval": "3s"},
                        {"name": "theirs", "query": 'max(tenant_probe{namespace="team-b"})', "interval": "3s"},
                     ]},
                     "handOff": {"rollout": {"name": RO}},
                     "jobTemplate": {"spec": {**spec, "registry": {"modelName": "tenant-bot"}}}}}


def _observations(kube: Kube, ns: str) -> dict[str, dict]:
    st = (kube.get("finetuneschedules", SCHED, ns) or {}).get("status") or {}
    return {p["name"]: p for p in st.get("prometheus") or []}


def test_a_tenant_can_neither_make_the_operator_fetch_its_url_nor_read_another_namespaces_metric(kube: Kube, tenant: SimpleNamespace):
    ns = tenant.env.ns
    kube.apply(_schedule(ns, tenant.foreign.url))

    def checked(obs: dict[str, dict]) -> bool:
        return all(obs.get(n, {}).get("checkedAt") for n in ("foreign", "mine", "theirs"))

    deadline = time.monotonic() + 90
    while not checked(obs := _observations(kube, ns)) and time.monotonic() < deadline:
        time.sleep(1)
    assert checked(obs), f"the schedule's triggers were not checked: {obs}\n{tenant.env.operator_log()}"
    time.sleep(8)  # a few more checks of every trigger
    obs = _observations(kube, ns)
    # (a) the operator never requested the tenant's URL, and says why
    assert tenant.foreign.requests == []
    assert "not configured by the operator's administrator" in (obs["foreign"].get("message") or ""), obs["foreign"]
    assert obs["foreign"].get("value") is None and not obs["foreign"].get("fired")
    # (b) its own signal reads A's series only (0, not B's 5); B's asked for by name reads nothing of B
    assert obs["mine"].get("value") == 0.0 and not obs["mine"].get("message"), obs["mine"]
    assert obs["theirs"].get("value") in (None, 0.0), obs["theirs"]
    assert not obs["theirs"].get("fired")
    # while the admin's Prometheus does hold B's value: the confinement made the difference
    assert tenant.prom.query('max(tenant_probe{namespace="team-b"})')["data"]["result"][0]["value"][1] == "5"
    assert not kube.list("finetunejobs", ns, selector=f"tuneloop.dev/schedule={SCHED}")


def test_a_rollout_does_not_patch_a_service_the_tenant_did_not_let_it_own(kube: Kube, tenant: SimpleNamespace):
    """(c) A Service `payments` that someone else made is named as the Rollout's replica-weighted Service: the
    operator leaves it as it is and says so on the Rollout (ObjectsOwned False, ObjectNotOwned)."""
    ns = tenant.env.ns
    kube.create("services", {"apiVersion": "v1", "kind": "Service", "metadata": {"name": SVC, "namespace": ns, "labels": {"app": "payments"}},
                             "spec": {"selector": {"app": "payments"}, "ports": [{"name": "https", "port": 443, "targetPort": 8443}]}}, ns)
    before = kube.get("services", SVC, ns)
    mv = {"apiVersion": "tuneloop.dev/v1alpha1", "kind": "ModelVersion", "metadata": {"name": "pay-v1", "namespace": ns},
          "spec": {"modelName": "pay", "version": "v1", "baseModel": {"name": "tiny"},
                   "artifact": {"uri": "pvc://datasets/no-such-model", "format": "full"}, "evaluation": {"verdict": "Passed"}}}
    kube.create("modelversions", mv, ns)
    kube.patch("modelversions", "pay-v1", ns, {"status": {"phase": "Ready"}}, sub="status")
    kube.apply({"apiVersion": "tuneloop.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": "pay", "namespace": ns},
                "spec": {"servedModelName": "pay", "candidate": {"name": "pay-v1"},
                         "serving": {"replicas": 1, "port": free_port(), "resources": {"gpus": 0, "cpu": "100m", "memory": "256Mi"}},
                         "trafficRouting": {"replicaWeighted": {"service": SVC}},
                         "steps": [{"setWeight": 50}]}})

    def not_owned(o: dict) -> bool:
        c = cond(o, "ObjectsOwned")
        return bool(c) and c["status"] == "False" and c["reason"] == "ObjectNotOwned"

    ro = kube.wait("rollouts", "pay", ns, not_owned, timeout=120)
    assert f"Service {ns}/{SVC}" in cond(ro, "ObjectsOwned")["message"]
    time.sleep(5)
    after = kube.get("services", SVC, ns)
    assert after["spec"]["selector"] == before["spec"]["selector"] and after["spec"]["ports"] == before["spec"]["ports"]
    assert after["metadata"].get("labels") == before["metadata"].get("labels")
    assert not after["metadata"].get("ownerReferences")
    kube.delete("rollouts", "pay", ns)


def test_a_finetunejob_the_tenant_made_is_not_handed_off_by_a_schedule(kube: Kube, tenant: SimpleNamespace):
    """(d) A FineTuneJob the tenant created by hand, labelled as a run of the schedule and marked champion, trains and
    passes its gates, but the schedule did not create it: it is not judged, not recorded, and never becomes the
    Rollout's candidate. And a FineTuneJob with an image the admin did not allow fails before any pod runs."""
    ns = tenant.env.ns
    if kube.get("finetuneschedules", SCHED, ns) is None:
        kube.apply(_schedule(ns, tenant.foreign.url))
    kube.apply({"apiVersion": "tuneloop.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": RO, "namespace": ns},
                "spec": {"servedModelName": "tenant-bot",
                         "serving": {"replicas": 1, "port": free_port(), "resources": {"gpus": 0, "cpu": "100m", "memory": "256Mi"}},
                         "trafficRouting": {"replicaWeighted": {"service": "tenant-bot"}}, "steps": [{"setWeight": 50}]}})
    job = tiny_finetunejob("selfmade", ns, max_steps=10, save_steps=10, annotations={"tuneloop.dev/champion": "true"})
    job["metadata"]["labels"] = {"tuneloop.dev/schedule": SCHED}
    job["spec"]["evaluation"]["backend"] = "transformers"
    kube.apply(job)
    done = kube.wait("finetunejobs", "selfmade", ns, lambda o: phase(o) in ("Succeeded", "Failed"), timeout=900)
    assert phase(done) == "Succeeded", f"the self-made job itself should run: {done.get('status')}\n{tenant.env.operator_log()}"
    time.sleep(15)  # several schedule ticks (its triggers are checked every 3 s) after the job finished
    ro = kube.get("rollouts", RO, ns)
    assert not (ro["spec"].get("candidate") or {}).get("name"), ro["spec"]
    assert phase(ro) == "Waiting"
    sched = kube.get("finetuneschedules", SCHED, ns)
    st = sched.get("status") or {}
    assert "selfmade" not in [r["name"] for r in st.get("runs") or []], st.get("runs")
    owned = cond(sched, "RunsOwned")  # and the schedule says why it ignores the job
    assert owned and (owned["status"], owned["reason"]) == ("False", "JobNotOwned") and "selfmade" in owned["message"], owned
    # an image the admin did not allow is refused before anything runs (the verdict's trust boundary)
    rogue = tiny_finetunejob("rogue-image", ns, image="registry.example/evil/trainer:latest")
    kube.apply(rogue)
    failed = kube.wait("finetunejobs", "rogue-image", ns, lambda o: phase(o) == "Failed", timeout=60)
    assert "image" in failed["status"].get("message", "") and not kube.list("jobs", ns, selector="tuneloop.dev/finetunejob=rogue-image")
