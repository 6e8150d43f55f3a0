"""Issue 19 item 6: a version counts as served only when its pods serve, and a vLLM pod that exits or restarts
(whatever its exit code: vLLM's server exits 0 after its engine died) is a failure, never "served"."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tuneloop.operator.rollout.desired import desired
from tuneloop.operator.rollout.reconcile import serving_pod_failures
from tuneloop.operator.rollout.steps import PodFailure, World, canary_shortfall, next_wakeup

from . import samples
from .test_steps import Driver, at

pytestmark = pytest.mark.unit

FIRST = "support-bot-v2"


def first_version_driver() -> Driver:
    raw = samples.gateway_rollout()
    del raw["spec"]["stable"]
    return Driver(raw)


def failure(role: str, mv: str, seconds: float, code: int = 0, pod: str = "bot-x") -> PodFailure:
    return PodFailure(role, mv, pod, f"pod {pod} exited with code {code} (Completed)", at(seconds))


def test_a_first_version_is_served_only_once_one_of_its_pods_is_available():
    d = first_version_driver()
    out = d.tick(stable=0)
    st = out.status
    assert (st.phase, st.stable_model_version, st.canary_weight) == ("Progressing", FIRST, 0)
    assert st.waiting_for == f"pods of {FIRST} to serve (0/4 ready)" and not out.model_versions and not out.events
    cond = next(c for c in st.conditions if c.type == "Progressing")
    assert (cond.status, cond.reason) == ("True", "Starting")
    want = desired(d.spec, st, now=at(d.t))
    assert (want.stable_mv, want.canary_mv, want.stable_replicas) == (FIRST, None, 4)  # its Deployment is made now
    assert next_wakeup(d.spec, st, at(d.t)) >= 5.0  # no 1 s polling while a model loads
    assert d.tick(30, stable=0).status.phase == "Progressing"
    out = d.tick(30, stable=1)
    assert out.status.phase == "Promoted" and out.status.stable_model_version == FIRST
    assert out.model_versions[FIRST][0] == "Serving" and [e[1] for e in out.events] == ["FirstVersion"]
    assert d.tick(10, stable=1).status.phase == "Promoted"


def test_a_first_version_whose_pod_exits_with_code_zero_is_degraded_not_served():
    d = first_version_driver()
    d.tick(stable=0)
    out = d.tick(40, stable=0, failures=[failure("stable", FIRST, 39, code=0)])
    st = out.status
    assert st.phase == "Degraded" and not out.model_versions
    assert st.message == f"first version {FIRST} is not serving: pod bot-x exited with code 0 (Completed)"
    assert [(e[0], e[1]) for e in out.events] == [("Warning", "ServingPodFailed")]
    cond = next(c for c in st.conditions if c.type == "Progressing")
    assert (cond.status, cond.reason) == ("False", "ServingPodFailed")
    assert d.tick(10, stable=0, failures=[failure("stable", FIRST, 39)]).events == []  # said once
    # Kubernetes replaces the pod; once a new one serves, the version is served
    out = d.tick(60, stable=1, failures=[failure("stable", FIRST, 39)])
    assert out.status.phase == "Promoted" and out.model_versions[FIRST][0] == "Serving"


def test_a_canary_pod_that_exits_or_restarts_rolls_the_canary_back():
    d = Driver()
    d.tick(available=0)
    d.tick(1)  # weight 10, analysis next
    out = d.tick(1, failures=[failure("canary", "support-bot-v2", 1.5, code=1)])
    st = out.status
    assert st.phase == "RolledBack" and st.canary_weight == 0 and out.rolled_back
    assert st.message == "support-bot-v2 rolled back: a canary pod is not serving: pod bot-x exited with code 1 (Completed)"
    cond = next(c for c in st.conditions if c.type == "RolledBack")
    assert (cond.status, cond.reason) == ("True", "ServingPodFailed")
    assert out.model_versions["support-bot-v2"][0] == "RolledBack"


def test_stable_pod_failures_and_failures_before_this_rollout_do_not_roll_a_canary_back():
    d = Driver()
    d.tick(available=0)
    out = d.tick(1, failures=[failure("canary", "support-bot-v2", -5), failure("stable", "support-bot-v1", 0.5),
                              failure("canary", "support-bot-other", 0.5)])
    assert out.status.phase == "Progressing" and not out.rolled_back


def pod(name, role="canary", mv="v2", phase="Running", statuses=None, deleting=False):
    meta = {"name": name, "labels": {"tuneloop.dev/role": role, "tuneloop.dev/model-version": mv}}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-06T10:00:00Z"
    return {"metadata": meta, "status": {"phase": phase, "containerStatuses": statuses or []}}


def test_serving_pod_failures_reads_exits_restarts_and_ignores_deleted_and_healthy_pods():
    term0 = {"exitCode": 0, "reason": "Completed", "finishedAt": "2026-12-06T10:00:05Z", "message": "log\nEngine core died"}
    term137 = {"exitCode": 137, "reason": "OOMKilled", "finishedAt": "2026-12-06T10:00:01Z"}
    pods = [
        pod("ok", statuses=[{"name": "vllm", "restartCount": 0, "state": {"running": {}}}]),
        pod("exited", phase="Succeeded", statuses=[{"name": "vllm", "restartCount": 0, "state": {"terminated": term0}}]),
        pod("restarted", role="stable", mv="v1", statuses=[{"name": "vllm", "restartCount": 2, "state": {"running": {}},
                                                            "lastState": {"terminated": term137}}]),
        pod("scaled-down", phase="Failed", deleting=True, statuses=[{"name": "vllm", "state": {"terminated": term137}}]),
        pod("no-status", phase="Failed"),
    ]
    got = {f.pod: f for f in serving_pod_failures(pods)}
    assert set(got) == {"exited", "restarted", "no-status"}
    assert got["exited"].message == "pod exited exited with code 0 (Completed): Engine core died"
    assert (got["exited"].role, got["exited"].model_version) == ("canary", "v2")
    assert got["exited"].at == dt.datetime(2026, 12, 6, 10, 0, 5, tzinfo=dt.UTC)
    assert got["restarted"].message == "pod restarted restarted 2 time(s), last exited with code 137 (OOMKilled)"
    assert got["no-status"].message == "pod no-status ended (Failed)" and got["no-status"].at is None
    assert [f.pod for f in serving_pod_failures(pods)] == ["no-status", "restarted", "exited"]  # oldest first, unknown first


world_steps = st.lists(
    st.tuples(st.integers(0, 120), st.integers(0, 2), st.booleans(), st.sampled_from(["stable", "canary"])), min_size=1, max_size=25)


@settings(max_examples=150, deadline=None)
@given(world_steps)
def test_a_first_version_is_never_served_in_a_tick_where_none_of_its_pods_is_available(ticks):
    d = first_version_driver()
    failures: list[PodFailure] = []
    for gap, available, fails, role in ticks:
        if fails:
            failures.append(failure(role, FIRST, d.t + gap - 0.5, pod=f"p{len(failures)}"))
        before = d.status.phase if d.status is not None else None
        out = d.tick(gap, stable=available, failures=failures)
        became_served = out.model_versions.get(FIRST, (None,))[0] == "Serving" or (out.status.phase == "Promoted" and before != "Promoted")
        assert not became_served or available > 0  # served only in a tick that saw one of its pods available
        if before != "Promoted" and available == 0:
            assert out.status.phase in ("Progressing", "Degraded")
            counted = [f for f in failures if f.role == "stable" and f.at >= out.status.candidate_since]
            assert out.status.phase == ("Degraded" if counted else "Progressing")


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 60), st.integers(0, 4), st.booleans()), min_size=1, max_size=30))
def test_a_canary_with_a_failed_pod_since_its_rollout_began_is_never_promoted(ticks):
    d = Driver()
    failed = False
    for gap, available, fails in ticks:
        if not failed and d.status is not None and d.status.phase == "Promoted":
            return  # promoted before any pod failed: a later failure is the stable's, not a canary's (nothing to check)
        failures = (failure("canary", "support-bot-v2", d.t + gap - 0.5),) if fails or failed else ()
        failed = failed or fails
        out = d.tick(gap, available=available, failures=failures)
        if failed:
            assert out.status.phase != "Promoted" and out.status.stable_model_version == "support-bot-v1"


def test_a_canary_whose_pods_stop_serving_after_its_weight_was_set_is_not_measured_until_they_serve_again():
    """A canary pod that loses readiness (vLLM still loading, a restart) after the weight moved produces no data: that
    is no verdict. Before, every measurement was 'no data' → Inconclusive → paused for a human (seen in the cluster
    tier with real vLLM, whose pods take a minute to load). Now the measurements wait, then start initialDelay after
    the pods serve again, over the traffic since then only."""
    d = Driver()
    d.tick(available=0)
    out = d.tick(1)  # weight 10, analysis step
    assert out.status.canary_weight == 10 and out.status.current_step_index == 1
    measured = len(out.status.measurements)
    out = d.tick(1, available=0)
    st = out.status
    assert st.phase == "Progressing" and st.waiting_for == "canary pods ready for 10%: 0/1 available (measurements wait)"
    assert st.canary_unready_since == at(d.t) and [e[1] for e in out.events] == ["CanaryNotReady"]
    for _ in range(12):  # two minutes without a serving canary pod: nothing measured, nothing decided
        out = d.tick(10, available=0)
        assert out.status.phase == "Progressing" and not out.events
    assert len(out.status.measurements) == measured and out.status.canary_weight == 10
    out = d.tick(5, available=1)  # it serves again: its traffic starts now
    assert out.status.canary_unready_since is None and out.status.weight_changed_at == at(d.t)
    assert len(out.status.measurements) == measured
    out = d.tick(0.5)  # inside initialDelay (1s)
    assert len(out.status.measurements) == measured
    out = d.tick(1)
    assert len(out.status.measurements) == measured + 2 and all(m.at == at(d.t) for m in out.status.measurements[-2:])


def test_a_canary_whose_pods_never_serve_again_is_rolled_back_at_the_progress_deadline():
    d = Driver()
    d.tick(available=0)
    d.tick(1)
    d.tick(1, available=0)
    deadline = d.spec.progress_deadline_seconds
    out = d.tick(deadline - 1, available=0)
    assert out.status.phase == "Progressing"
    out = d.tick(1, available=0)
    st = out.status
    assert st.phase == "RolledBack" and st.canary_weight == 0 and st.canary_unready_since is None
    cond = next(c for c in st.conditions if c.type == "RolledBack")
    assert cond.reason == "ProgressDeadlineExceeded" and "canary pods not ready at 10%" in cond.message


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0.5, 1.0, 3.0, 10.0, 45.0]), st.integers(0, 3)), min_size=1, max_size=40))
def test_no_measurement_and_no_promotion_while_the_weighted_canarys_pods_do_not_suffice(ticks):
    """Property over any availability sequence: a tick at which the weighted canary has fewer available pods than its
    weight needs records no measurement and never promotes; the phase stays one the machine documents."""
    d = Driver()
    for seconds, available in ticks:
        before = d.status
        world_short = before is not None and canary_shortfall(d.spec, before, World(now=at(d.t + seconds), canary_available=available)) is not None
        n = len(before.measurements) if before is not None else 0
        out = d.tick(seconds, available=available)
        if world_short:
            assert out.status.phase != "Promoted"
            new = [m for m in out.status.measurements if m.at == at(d.t)]
            assert not new and len(out.status.measurements) >= min(n, len(out.status.measurements))
        assert out.status.phase in ("Progressing", "Paused", "Promoted", "RolledBack")
