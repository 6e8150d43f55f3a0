"""Property-based tests (Hypothesis) of the schedule's pure deciders over their input space (issue 20 "what to build"
2): cron/timeZone due and next times, trigger holding and wake-up, history retention, the data digest, the hand-off.
Bounded (a few seconds in all on 2 cores): derandomized, small example counts, no deadline."""

from __future__ import annotations

import datetime as dt
import hashlib
import tempfile
from pathlib import Path

import pytest
from croniter import croniter
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tuneloop.api.durations import parse_duration
from tuneloop.api.schedule import (
    FineTuneSchedule,
    FineTuneScheduleStatus,
    PrometheusObservation,
    RunOutcome,
    RunPhase,
    ScheduleRun,
    TriggerKind,
)
from tuneloop.contract import datadigest
from tuneloop.operator.schedule import decide

from . import samples

pytestmark = pytest.mark.unit
UTC = dt.UTC
BOUNDED = settings(max_examples=60, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])

# --- cron and timeZone ---------------------------------------------------------------------------------------------

SCHEDULES = {  # expression → the longest real-time gap between two of its times, DST hour included
    "* * * * *": dt.timedelta(hours=1, minutes=1),
    "*/7 * * * *": dt.timedelta(hours=1, minutes=7),
    "15 * * * *": dt.timedelta(hours=2),
    "0 */2 * * *": dt.timedelta(hours=3),
    "30 2 * * *": dt.timedelta(hours=25),
    "0 3 * * 1": dt.timedelta(days=7, hours=1),
    "@daily": dt.timedelta(hours=25),
    "0 0 29 2 *": dt.timedelta(days=8 * 366),
}
ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata", "America/Santiago"]
# around DST changes of the zones above and leap days
ANCHORS = [dt.datetime(2024, 2, 28, 12, tzinfo=UTC), dt.datetime(2024, 3, 10, 6, tzinfo=UTC), dt.datetime(2024, 3, 31, 0, tzinfo=UTC),
           dt.datetime(2024, 10, 27, 0, tzinfo=UTC), dt.datetime(2024, 11, 3, 5, tzinfo=UTC), dt.datetime(2025, 4, 5, 14, tzinfo=UTC),
           dt.datetime(2026, 11, 23, 2, 59, 59, tzinfo=UTC), dt.datetime(2028, 2, 29, 0, tzinfo=UTC)]


@st.composite
def clock(draw, max_span_s: int = 3 * 86400):
    anchor = draw(st.sampled_from(ANCHORS))
    last = anchor + dt.timedelta(seconds=draw(st.integers(-2 * 86400, 2 * 86400)), microseconds=draw(st.integers(0, 999_999)))
    now = last + dt.timedelta(seconds=draw(st.integers(0, max_span_s)), microseconds=draw(st.integers(0, 999_999)))
    if draw(st.booleans()):  # within the last second before a whole minute (where cron_due once returned the next one)
        now = now.replace(second=59, microsecond=draw(st.integers(1, 999_999)))
    return last, max(now, last)


@BOUNDED
@given(schedule=st.sampled_from(sorted(SCHEDULES)), zone=st.sampled_from(ZONES), times=clock())
def test_cron_due_is_never_after_now_and_the_next_time_is_always_after_it(schedule, zone, times):
    last, now = times
    due, nxt = decide.cron_due(schedule, last, now, zone)
    assert nxt > now
    if due is not None:
        assert last < due <= now and nxt > due
        assert decide.cron_due(schedule, due, now, zone)[0] is None  # acted on: nothing more is due until nxt
    else:
        assert nxt > last
    assert nxt - max(now, due or last) <= SCHEDULES[schedule]  # never further away than the schedule's longest gap


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(schedule=st.sampled_from(["*/7 * * * *", "15 * * * *", "0 */2 * * *", "30 2 * * *"]), times=clock(max_span_s=12 * 3600))
def test_cron_due_in_utc_is_the_latest_matching_minute(schedule, times):
    """Against a brute-force oracle: every whole minute in (last, now], the latest one the expression matches."""
    last, now = times
    due, _ = decide.cron_due(schedule, last, now)
    m = now.replace(second=0, microsecond=0)
    want = None
    while m > last:
        if croniter.match(schedule, m):
            want = m
            break
        m -= dt.timedelta(minutes=1)
    assert due == want


# --- Prometheus trigger holding and wake-up --------------------------------------------------------------------------

DURATIONS = ["0s", "1m", "5m", "7m", "30m"]


@st.composite
def trigger_world(draw):
    return {
        "interval": draw(st.sampled_from(["1m", "5m", "2m"])),
        "for": draw(st.sampled_from(DURATIONS)),
        "values": draw(st.lists(st.sampled_from([1.0, 0.0, None, "error"]), min_size=20, max_size=20)),
        "blocked": draw(st.sampled_from(["forbid", "suspend", "free"])),
        "run_minutes": draw(st.integers(10, 240)),
    }


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(w=trigger_world())
def test_a_trigger_never_wakes_the_schedule_before_its_next_check_and_fires_when_it_can(w):
    """Simulated with a fake clock through the same pure functions the tick uses: while no run can start, ticks are
    at least the time to the next check apart (never a spin); a trigger that held for `for` fires as soon as a run can
    start."""
    trig = {"name": "drift", "query": "q", "for": w["for"], "interval": w["interval"]}
    spec = FineTuneSchedule.model_validate(samples.schedule(schedule=None, triggers={"prometheus": [trig]},
                                                            suspend=w["blocked"] == "suspend")).spec
    start = dt.datetime(2026, 11, 23, tzinfo=UTC)
    now, obs, i, ticks = start, PrometheusObservation(name="drift"), 0, 0
    running_until = start + dt.timedelta(minutes=w["run_minutes"]) if w["blocked"] == "forbid" else None
    interval = parse_duration(w["interval"])
    while now < start + dt.timedelta(hours=6):
        ticks += 1
        if decide.prometheus_check_due(obs, w["interval"], now, w["for"]) and not spec.suspend:
            v = w["values"][i % len(w["values"])]
            i += 1
            obs = decide.observe_prometheus(obs, None, "down", now) if v == "error" else decide.observe_prometheus(obs, v, None, now)
        active = ["bot-1"] if running_until and now < running_until else []
        dec = decide.decide(spec, created=start, last_schedule_time=None, data=None, prom=[obs], retrain=None,
                            last_retrain=None, active=active, now=now)
        can_start = not active and not spec.suspend
        held = (obs.holding_since is not None and not obs.fired and obs.message is None and decide.holding(obs.value)
                and (obs.checked_at - obs.holding_since).total_seconds() >= parse_duration(w["for"]))
        assert bool(dec.start) == (held and can_start)
        if dec.start:
            obs = obs.model_copy(update={"fired": True})
        delay = decide.wake_after(spec, FineTuneScheduleStatus(prometheus=[obs]), now, poll=5.0, idle=3600.0)
        nxt = decide.prometheus_next_check(obs, w["interval"], w["for"])
        assert delay >= decide.MIN_WAKE
        if spec.suspend:
            assert delay == 3600.0
        else:
            assert delay >= min(interval, (nxt - now).total_seconds()) - 1e-6
        if running_until and now < running_until < now + dt.timedelta(seconds=delay):
            now = running_until  # the run's FineTuneJob event wakes the schedule
        else:
            now += dt.timedelta(seconds=delay)
    assert ticks <= 6 * 3600 / interval * 2 + 5


# --- history retention ------------------------------------------------------------------------------------------------

PHASES_OUTCOMES = [(RunPhase.RUNNING, RunOutcome.PENDING), (RunPhase.SUCCEEDED, RunOutcome.PENDING),
                   (RunPhase.SUCCEEDED, RunOutcome.HANDED_OFF), (RunPhase.SUCCEEDED, RunOutcome.LOST_TO_SERVING),
                   (RunPhase.SUCCEEDED, RunOutcome.NOT_BETTER), (RunPhase.SUCCEEDED, RunOutcome.REJECTED),
                   (RunPhase.SUCCEEDED, RunOutcome.NOT_COMPARED), (RunPhase.FAILED, RunOutcome.NO_MODEL_VERSION)]


@BOUNDED
@given(kinds=st.lists(st.sampled_from(PHASES_OUTCOMES), max_size=30), ok=st.integers(0, 5), failed=st.integers(0, 5))
def test_history_never_deletes_a_running_run_or_a_pending_winner_and_keeps_the_newest(kinds, ok, failed):
    runs = [ScheduleRun(name=f"r{i}", trigger=TriggerKind.SCHEDULE, phase=p, outcome=o) for i, (p, o) in enumerate(kinds)]
    gone = decide.history_to_delete(runs, ok, failed)
    by_name = {r.name: r for r in runs}
    assert len(gone) == len(set(gone))
    for name in gone:
        assert by_name[name].phase != RunPhase.RUNNING and by_name[name].outcome != RunOutcome.PENDING
    for phase, limit in ((RunPhase.SUCCEEDED, ok), (RunPhase.FAILED, failed)):
        final = [r.name for r in runs if r.phase == phase and r.outcome != RunOutcome.PENDING]
        kept = [n for n in final if n not in gone]
        assert kept == final[len(final) - min(limit, len(final)):]  # the newest `limit`, in order


# --- the data digest -------------------------------------------------------------------------------------------------

NAMES = st.sampled_from(["a.jsonl", "b.jsonl", "sub/c.jsonl", "sub/deeper/d.jsonl", "e.txt", "sub/f.txt"])
FILES = st.dictionaries(NAMES, st.binary(min_size=0, max_size=64), min_size=1, max_size=6)


def write(root: Path, files: dict[str, bytes], order: list[str]) -> None:
    for name in order:
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(files[name])


@BOUNDED
@given(files=FILES, seed=st.randoms(use_true_random=False), pattern=st.sampled_from(["**", "**/*.jsonl", "sub", "*.jsonl", "sub/**/*"]))
def test_the_digest_ignores_creation_order_and_sees_every_byte(files, seed, pattern):
    order = sorted(files)
    shuffled = order[:]
    seed.shuffle(shuffled)
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        write(Path(a), files, order)
        write(Path(b), files, shuffled)
        da, db = datadigest.digest(a, pattern), datadigest.digest(b, pattern)
        assert da == db
        if da["files"]:
            victim = sorted(p.relative_to(a).as_posix() for p in datadigest.matches(a, pattern))[seed.randrange(da["files"])]
            data = (Path(a) / victim).read_bytes()
            (Path(a) / victim).write_bytes(data + b"\n" if not data else bytes([data[0] ^ 1]) + data[1:])
            assert datadigest.digest(a, pattern)["digest"] != da["digest"]


SEGMENTS = st.sampled_from(["*", "**", "sub", "..", "*.jsonl", "deeper", "", "."])


@BOUNDED
@given(files=FILES, segs=st.lists(SEGMENTS, min_size=1, max_size=4), absolute=st.booleans())
def test_the_digest_never_reads_outside_the_claim(files, segs, absolute):
    pattern = ("/" if absolute else "") + "/".join(segs)
    with tempfile.TemporaryDirectory() as top:
        claim = Path(top) / "claim"
        write(claim, files, sorted(files))
        (Path(top) / "outside.jsonl").write_bytes(b"secret")
        try:
            found = datadigest.matches(claim, pattern)
        except datadigest.DigestError:
            return  # refused (or not a pattern pathlib accepts): nothing was read
        real = claim.resolve()
        assert all(p.resolve().is_relative_to(real) for p in found)


# --- the hand-off ---------------------------------------------------------------------------------------------------

VERSIONS = st.sampled_from([None, "v1", "v2", "v3"])


@st.composite
def hand_off_world(draw):
    stable_in = draw(st.sampled_from(["status", "spec", "both"]))
    stable = draw(VERSIONS)
    cand_spec, cand_status = draw(st.sampled_from([None, "v2", "v9", "new"])), draw(st.sampled_from([None, "v2", "v9", "new"]))
    ro: dict | None = {"metadata": {"name": "bot"}, "spec": {}, "status": {"phase": draw(st.sampled_from(["Promoted", "Progressing", "Paused", "Waiting", "RolledBack"]))}}
    if stable and stable_in in ("status", "both"):
        ro["status"]["stableModelVersion"] = stable
    if stable and stable_in in ("spec", "both"):
        ro["spec"]["stable"] = {"name": stable}
    if cand_spec:
        ro["spec"]["candidate"] = {"name": cand_spec}
    if cand_status:
        ro["status"]["candidateModelVersion"] = cand_status
    if draw(st.booleans()) and draw(st.booleans()):
        ro = None
    serving = None
    if draw(st.booleans()):
        serving = {"modelVersion": draw(VERSIONS), "outcome": draw(st.sampled_from(["Better", "Worse", "NoSignificantDifference", "NotComparable", None]))}
    verdict = draw(st.sampled_from(["Passed", "Passed", "Failed", "NotEvaluated"]))
    return {"rollout": ro, "champion": draw(VERSIONS), "serving": serving, "verdict": verdict,
            "require": draw(st.booleans()), "phase": draw(st.sampled_from(["Ready", "Rejected"]))}


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(w=hand_off_world())
def test_a_run_is_handed_off_only_against_the_version_serving_now(w):
    run = ScheduleRun(name="bot-1", trigger=TriggerKind.SCHEDULE, champion=w["champion"])
    mv = samples.model_version("new", verdict=w["verdict"], serving=w["serving"], phase=w["phase"])
    j = decide.judge(run, samples.finished_job("bot-1", mv="new"), mv, w["rollout"], w["require"])
    if not j.hand_off:
        return
    serving_now = decide.serving_version(w["rollout"])
    assert w["rollout"] is not None and w["verdict"] == "Passed" and w["phase"] != "Rejected"
    if serving_now is None:
        pass  # nothing serves now: like a first version, its own Passed verdict is enough (whatever it was compared with)
    else:
        s = w["serving"] or {}
        assert w["champion"] == serving_now == s.get("modelVersion")  # compared with exactly the version serving now
        assert s.get("outcome") == "Better" or (s.get("outcome") == "NoSignificantDifference" and not w["require"])
    assert decide.rollout_busy_with(w["rollout"], "new") is None  # never over another winner's hand-off


def test_the_property_inputs_reach_every_hand_off_outcome():
    """The strategy is not vacuous: hashing a few hundred drawn worlds covers every outcome (HandedOff included)."""
    seen = set()

    @settings(max_examples=300, deadline=None, derandomize=True, database=None)
    @given(w=hand_off_world())
    def collect(w):
        run = ScheduleRun(name="bot-1", trigger=TriggerKind.SCHEDULE, champion=w["champion"])
        mv = samples.model_version("new", verdict=w["verdict"], serving=w["serving"], phase=w["phase"])
        seen.add(decide.judge(run, samples.finished_job("bot-1", mv="new"), mv, w["rollout"], w["require"]).outcome)

    collect()
    assert {RunOutcome.HANDED_OFF, RunOutcome.LOST_TO_SERVING, RunOutcome.NOT_COMPARED, RunOutcome.REJECTED,
            RunOutcome.PENDING} <= seen, hashlib.sha256(repr(sorted(seen)).encode()).hexdigest()


# --- adoption of an unrecorded run (issue 25, finding 7) --------------------------------------------------------------

MUTATIONS = [  # (path in the FineTuneJob spec, value): each changes what the run trains, evaluates or gates on
    (("evaluation", "gates"), []),
    (("evaluation", "serving", "evalJson"), "/output/forged/eval.json"),
    (("evaluation", "serving", "modelVersion"), "someone-else"),
    (("image",), "ghcr.io/tuneloop/trainer:0.1.0"),
    (("hyperparameters", "learningRate"), 0.5),
    (("dataset", "train", "pvc", "path"), "other/train.jsonl"),
    (("output", "pvc", "path"), "elsewhere"),
    (("evaluation", "enabled"), False),
    (("registry", "modelName"), "another-model"),
]


@BOUNDED
@given(mutations=st.lists(st.sampled_from(range(len(MUTATIONS))), unique=True, max_size=3), version=st.text("abc0123-", min_size=1, max_size=8))
def test_only_a_job_the_template_builds_is_adopted(mutations, version):
    """The schedule adopts an unrecorded FineTuneJob (one that copies its ownerReference) only when its spec is what the
    template builds under its name: any change to what it trains, evaluates or gates on is refused; the version, which
    only names the run, is not compared."""
    import copy

    from tuneloop.operator.builders import schedule as build

    obj = samples.schedule()
    spec = FineTuneSchedule.model_validate(obj).spec
    champion = samples.model_version("support-bot-v1", phase="Serving")
    now = dt.datetime(2026, 11, 23, 3, tzinfo=UTC)
    fire = decide.Fire(TriggerKind.SCHEDULE, "cron", "29398500")
    job, _ = build.finetunejob(obj, spec, fire, decide.run_name("bot", fire), champion, now)
    assert build.template_mismatch(obj, spec, job, champion, now) is None
    job["spec"].setdefault("registry", {})["version"] = version
    assert build.template_mismatch(obj, spec, job, champion, now) is None
    assert build.template_mismatch(obj, spec, job, None, now) is not None  # another champion: another serving reference
    forged = copy.deepcopy(job)
    for i in mutations:
        path, value = MUTATIONS[i]
        node = forged["spec"]
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    refused = build.template_mismatch(obj, spec, forged, champion, now)
    assert (refused is None) == (forged["spec"] == job["spec"]), [MUTATIONS[i] for i in mutations]
