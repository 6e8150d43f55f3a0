"""The canary step state machine, as pure code: (spec, status, observations) -> new status + effects.

One call of `advance` is one reconcile tick. It walks setWeight / pause / analysis steps as far as
it can at `now`, records measurements taken this tick, and decides promotion or rollback. The
handler applies the effects (weights, replicas, ModelVersion phases, events, metrics).

- setWeight W: behind a Gateway the weight moves only once the canary has enough available pods
  for W (no traffic to pods that are not ready); replica-weighted routing has no such wait. In sharedBase
  mode (one Deployment serves every adapter) it moves only once every pod lists the candidate adapter.
- pause: with a duration, until it elapsed; without, phase Paused until `promote` or `abort`.
- analysis: one measurement per metric per interval; Failed or Error -> rollback; Inconclusive ->
  Paused for a human; Successful -> next step. Provider errors never count as success, so an
  unreachable metrics provider (Prometheus) can never promote.
- experiment: the split is set (as setWeight) and held; every analysis interval (and at the end of its
  duration) both arms' counts since the split took effect are looked at (`analysis.experiment.decide`):
  Better -> next step; Worse -> rollback; Inconclusive at the end -> Paused for a human; the result goes
  to the candidate's ModelVersion. Background analysis runs meanwhile, as in a pause.
- mirror: once the candidate has the pods for its share, every stable pod's guard is asked to copy `percent` % of
  the requests to the candidate and compare the answers (`mirror`, done by the reconciler); once every guard holds
  it, the step's metrics are measured every analysis interval for `duration` (from initialDelay on; the window cut
  to the time since): Failed or Error -> rollback; Inconclusive -> Paused; at the end each metric needs a Successful
  measurement (else Paused), then the mirror is cleared and the next step runs. The canary weight does not change.
- background analysis: outside analysis and mirror steps, while the canary has traffic, every metric once per
  backgroundInterval; Failed or Error -> rollback (it never succeeds and ignores Inconclusive).
- no measurement before initialDelay after a weight change; the query window is cut to the time
  since the change (`query_window`).
- progress deadline: a canary with traffic whose measurements returned only no data for
  progressDeadlineSeconds (since the weight change or its last value) -> rollback, paused or not.
- after the last step: promotion (candidate becomes stable, weights 100/0, canary scaled down
  scaleDownDelaySeconds later, as after a rollback).
- status.stableModelVersion is what serves; spec.stable only seeds it and never replaces it
  (condition StableInSync). Removing spec.candidate forgets the candidate, so that setting it
  again starts the rollout over.
- nothing to serve (no stable and no candidate, e.g. a Rollout declared in Git before its
  FineTuneSchedule's first winning run): phase Waiting, Progressing False with reason
  WaitingForFirstVersion; nothing is created and the daemon sleeps until the spec changes. Once
  spec.candidate is set, it is the first version: served as stable at once, without a canary.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

from tuneloop.api import conditions
from tuneloop.api.conditions import RolloutCondition as C
from tuneloop.api.conditions import RolloutReason as R
from tuneloop.api.durations import format_duration, parse_duration
from tuneloop.api.experiment import (
    FINAL_DECISIONS,
    ArmResult,
    ArmSample,
    ExperimentDecision,
    ExperimentMeasurement,
    ExperimentResult,
    ExperimentStatus,
    ExperimentStep,
)
from tuneloop.api.mirror import MirrorStatus, MirrorStep
from tuneloop.api.modelversion import ModelVersionPhase
from tuneloop.api.rollout import (
    AnalysisMetric,
    Measurement,
    MeasurementPhase,
    MetricResult,
    RolloutPhase,
    RolloutSpec,
    RolloutStatus,
    ServingMode,
    Step,
)
from tuneloop.contract import names

from ..analysis.experiment import Counts, Look, Plan, Sample, decide
from . import mirror, traffic
from .verdicts import Assessment, Verdict, metric_verdict, record, run_verdict

MAX_MEASUREMENTS = 50
TERMINAL = {RolloutPhase.PROMOTED.value, RolloutPhase.ROLLED_BACK.value, RolloutPhase.ABORTED.value}
NOTHING_TO_SERVE = "no ModelVersion to serve yet: set spec.candidate (a FineTuneSchedule hands off its first winning run here)"
WAITING_FOR = "a first ModelVersion in spec.candidate"
WAITING_RECHECK = 3600.0  # a Waiting Rollout has nothing due: a spec change wakes its daemon; this is only a safety net


@dataclass(frozen=True)
class PodFailure:
    """A vLLM pod of a Rollout that exited or restarted (whatever its exit code): its version is not serving from it."""

    role: str  # stable | canary
    model_version: str
    pod: str
    message: str  # e.g. "pod r-canary-abc exited with code 1 (Error): <termination message>"
    at: dt.datetime | None = None  # when it ended (None: unknown, always counts)


@dataclass(frozen=True)
class World:
    """What the handler observed before this tick."""

    now: dt.datetime
    canary_available: int = 0
    # Available pods of the stable Deployment that run status.stableModelVersion (the readiness probe passes only once
    # /v1/models lists the served names). None: not observed (pure tests of other behaviour); the reconciler always observes.
    stable_available: int | None = None
    pod_failures: tuple[PodFailure, ...] = ()
    serving_error: str | None = None  # the candidate/stable cannot be served (bad artifact, missing ModelVersion)
    serving_reason: str = R.SERVING_ERROR.value  # the condition reason for serving_error (e.g. CandidateNotEvaluated)
    generation: int | None = None
    # sharedBase mode: (pods whose /v1/models lists the candidate adapter, live pods of the shared Deployment), and why a
    # pod refused to load the candidate adapter (vLLM's answer), if one did
    adapter_pods: tuple[int, int] = (0, 0)
    adapter_error: str | None = None
    # a mirror step: (stable guards holding the wanted mirror, live stable pods, guards holding a mirror not wanted),
    # after this tick's writes; None when the guards were not looked at (no mirror to run or clear)
    mirror_guards: tuple[int, int, int] | None = None
    mirror_error: str | None = None  # why a guard refused the mirror this tick (e.g. a target it was not started with)


@dataclass
class Outcome:
    status: RolloutStatus
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (Normal|Warning, reason, message)
    model_versions: dict[str, tuple[str | None, str]] = field(default_factory=dict)  # name -> (phase or None, message)
    clear_flags: bool = False
    rolled_back: bool = False
    first_failure_at: dt.datetime | None = None
    experiments: dict[str, ExperimentResult] = field(default_factory=dict)  # candidate ModelVersion -> its decided A/B experiment


def shared_base(spec: RolloutSpec) -> bool:
    """serving.mode sharedBase: one Deployment serves every version as an adapter; weights on an InferenceModelRewrite."""
    return spec.serving.mode == ServingMode.SHARED_BASE.value


def gateway_mode(spec: RolloutSpec) -> bool:
    """Exact weights (an HTTPRoute, or an InferenceModelRewrite), which move only once the candidate can take them."""
    return spec.traffic_routing.gateway_api is not None or shared_base(spec)


def canary_capacity(spec: RolloutSpec, weight: int, world: World) -> tuple[int, int]:
    """(available, needed) for the candidate to take `weight` % behind exact weights: its available canary pods and
    the pods that weight needs; in sharedBase mode the pods whose /v1/models lists the candidate adapter, and all of
    the shared Deployment's live pods (every pod, since any of them may get a request for it; at least one)."""
    if shared_base(spec):
        have, live = world.adapter_pods
        return have, max(live, 1)
    return world.canary_available, traffic.gateway_canary_replicas(spec.serving.replicas, weight)


def capacity_text(spec: RolloutSpec, weight: int, available: int, need: int) -> str:
    if shared_base(spec):
        return f"the candidate adapter on every pod for {weight}%: {available}/{need} pods list it"
    return f"canary pods ready for {weight}%: {available}/{need} available"


def step_metrics(spec: RolloutSpec, index: int | None) -> list[AnalysisMetric]:
    """The metrics an analysis step at `index` measures ([] for other steps)."""
    analysis = spec.steps[index].analysis if index is not None and index < len(spec.steps) else None
    if analysis is None:
        return []
    wanted = set(analysis.metrics)
    return [m for m in spec.analysis.metrics if m.name in wanted] if wanted else live_metrics(spec)


def live_metrics(spec: RolloutSpec) -> list[AnalysisMetric]:
    """The metrics of the live traffic: all but the shadow-* built-ins, which only a mirror step's comparisons feed (an
    analysis step that names no metrics, and background analysis, measure these)."""
    return [m for m in spec.analysis.metrics if not m.shadow]


def mirror_metrics(spec: RolloutSpec, step: MirrorStep) -> list[AnalysisMetric]:
    """The metrics a mirror step judges: those it names, else every analysis metric with a shadow-* built-in."""
    if step.metrics:
        return [m for m in spec.analysis.metrics if m.name in set(step.metrics)]
    return [m for m in spec.analysis.metrics if m.shadow]


def running_mirror(spec: RolloutSpec, status: RolloutStatus | None) -> MirrorStatus | None:
    """The current mirror step's mirror once every stable guard holds it (started) and until it ended."""
    step = _current_step(spec, status) if status is not None else None
    m = status.mirror if status is not None else None
    if step is None or step.mirror is None or m is None or status is None or m.step_index != status.current_step_index:
        return None
    if m.candidate_model_version != status.candidate_model_version or m.started_at is None or m.ended_at is not None:
        return None
    return m


def background_interval(spec: RolloutSpec) -> float:
    """Seconds between background measurements (0: background analysis is off)."""
    return parse_duration(spec.analysis.background_interval or spec.analysis.interval) if live_metrics(spec) else 0.0


def _current_step(spec: RolloutSpec, status: RolloutStatus) -> Step | None:
    i = status.current_step_index
    return spec.steps[i] if i is not None and i < len(spec.steps) else None


def _measuring(spec: RolloutSpec, status: RolloutStatus | None) -> tuple[list[AnalysisMetric], float]:
    """What the current step measures and how often: an analysis step's metrics, or background analysis."""
    if status is None or status.phase not in (RolloutPhase.PROGRESSING.value, RolloutPhase.PAUSED.value):
        return [], 0.0
    if spec.candidate is None or status.candidate_model_version != spec.candidate.name:
        return [], 0.0
    step = _current_step(spec, status)
    if step is None:
        return [], 0.0
    if step.analysis is not None:  # a Paused analysis step is waiting for a human: it measures no more
        if status.phase != RolloutPhase.PROGRESSING.value:
            return [], 0.0
        return step_metrics(spec, status.current_step_index), parse_duration(spec.analysis.interval)
    if step.mirror is not None:  # its own metrics while its mirror runs; no background analysis meanwhile
        if status.phase != RolloutPhase.PROGRESSING.value or running_mirror(spec, status) is None:
            return [], 0.0
        return mirror_metrics(spec, step.mirror), parse_duration(spec.analysis.interval)
    every = background_interval(spec)
    if status.canary_weight <= 0 or every <= 0:
        return [], 0.0
    return live_metrics(spec), every


def canary_shortfall(spec: RolloutSpec, status: RolloutStatus | None, world: World) -> tuple[int, int] | None:
    """(available, needed) while a weighted canary (gateway mode) has fewer available pods than its weight needs —
    pods that restarted or lost readiness after the weight was set: a canary that serves nothing yields no data, which
    is not a verdict, so its measurements wait (and the progress deadline runs). None when its pods suffice."""
    if status is None or status.canary_weight <= 0 or not gateway_mode(spec) or status.candidate_model_version is None \
            or status.phase not in (RolloutPhase.PROGRESSING.value, RolloutPhase.PAUSED.value):  # fmt: skip
        return None
    available, need = canary_capacity(spec, status.canary_weight, world)
    return (available, need) if available < need else None


def traffic_since(spec: RolloutSpec, status: RolloutStatus) -> dt.datetime | None:
    """Since when the traffic being measured is the current one: the last weight change, or in a mirror step the
    moment every stable guard held the mirror."""
    m = running_mirror(spec, status)
    return m.started_at if m is not None else status.weight_changed_at


def measure_from(spec: RolloutSpec, status: RolloutStatus) -> dt.datetime | None:
    """Measurements start initialDelay after the last weight change (traffic before it is not the canary's), or after
    a mirror started."""
    since = traffic_since(spec, status)
    if since is None:
        return None
    return since + dt.timedelta(seconds=parse_duration(spec.analysis.initial_delay))


def next_measurement_at(spec: RolloutSpec, status: RolloutStatus | None, now: dt.datetime) -> dt.datetime | None:
    """When the current step's next measurement is due (None: the step measures nothing)."""
    metrics, every = _measuring(spec, status)
    if not metrics or status is None:
        return None
    due = now
    last = last_measurement_at(status)
    if last is not None:
        due = last + dt.timedelta(seconds=every)
    start = measure_from(spec, status)
    if start is not None and start > due:
        due = start
    return due


def due_metrics(spec: RolloutSpec, status: RolloutStatus | None, now: dt.datetime) -> list[AnalysisMetric]:
    """Metrics to measure now: the analysis step's once per interval, or background analysis outside
    analysis steps while the canary has traffic; never before initialDelay after a weight change."""
    due = next_measurement_at(spec, status, now)
    if due is None or (due - now).total_seconds() > 0.05:
        return []
    if status is not None and status.canary_unready_since is not None:  # its pods were short: this tick restarts its clock
        return []
    start = measure_from(spec, status) if status is not None else None
    if start is not None and now < start:  # the interval may be met a little early; the initial delay may not
        return []
    return _measuring(spec, status)[0]


def query_window(spec: RolloutSpec, status: RolloutStatus | None, now: dt.datetime) -> str:
    """analysis.window, shortened to the time since the last weight change so that a measurement only
    covers traffic at the current weight."""
    window = spec.analysis.window
    start = traffic_since(spec, status) if status is not None else None
    if start is None:
        return window
    since = (now - start).total_seconds()
    if since >= parse_duration(window):
        return window
    return format_duration(since)


def running_experiment(spec: RolloutSpec, status: RolloutStatus | None) -> tuple[ExperimentStep, ExperimentStatus] | None:
    """The current step's experiment while it runs undecided (Progressing, the split set, no final decision)."""
    if status is None or status.phase != RolloutPhase.PROGRESSING.value or spec.candidate is None \
            or status.candidate_model_version != spec.candidate.name:  # fmt: skip
        return None
    step, ex = _current_step(spec, status), status.experiment
    if step is None or step.experiment is None or ex is None or ex.step_index != status.current_step_index \
            or ex.candidate_model_version != status.candidate_model_version or ex.decision in FINAL_DECISIONS:  # fmt: skip
        return None
    return step.experiment, ex


def next_look_at(spec: RolloutSpec, status: RolloutStatus | None) -> dt.datetime | None:
    """When the running experiment's next look is due: initialDelay after the split took effect, then every
    analysis.interval, and at the end of its duration (the final look)."""
    running = running_experiment(spec, status)
    if running is None:
        return None
    _, ex = running
    first = ex.started_at + dt.timedelta(seconds=parse_duration(spec.analysis.initial_delay))
    last = ex.measurements[-1].at if ex.measurements else None
    if last is None:
        return first
    due = last + dt.timedelta(seconds=parse_duration(spec.analysis.interval))
    if ex.ends_at is not None and last < ex.ends_at:
        due = min(due, ex.ends_at)
    return max(due, first)


def experiment_due(spec: RolloutSpec, status: RolloutStatus | None, now: dt.datetime) -> tuple[ExperimentStep, str] | None:
    """The experiment to look at now and the query window (the time since its split took effect), or None."""
    at = next_look_at(spec, status)
    if at is None or status is None or (at - now).total_seconds() > 0.05 or status.canary_unready_since is not None:
        return None
    running = running_experiment(spec, status)
    assert running is not None
    step, ex = running
    return step, format_duration((now - ex.started_at).total_seconds())


def last_measurement_at(status: RolloutStatus) -> dt.datetime | None:
    times = [m.at for m in status.measurements if m.step_index == status.current_step_index and m.at is not None]
    return max(times) if times else None


def deadline_at(spec: RolloutSpec, status: RolloutStatus) -> dt.datetime | None:
    """When the progress deadline runs out for a canary with traffic that has produced no data."""
    if status.canary_weight <= 0 or not spec.analysis.metrics or status.phase not in (RolloutPhase.PROGRESSING.value, RolloutPhase.PAUSED.value):
        return None
    ref = max((t for t in (status.weight_changed_at, status.canary_data_at) if t is not None), default=None)
    if ref is None:
        return None
    return ref + dt.timedelta(seconds=spec.progress_deadline_seconds)


def next_wakeup(spec: RolloutSpec, status: RolloutStatus, now: dt.datetime) -> float:
    """Seconds until this Rollout needs another tick (the daemon sleeps that long unless woken): a mirror waiting for
    the stable guards, or one ended but perhaps still held, is looked at every `mirror.POLL` seconds; a running one at its end."""
    wake = _next_wakeup(spec, status, now)
    m = status.mirror
    if m is not None and not m.cleared and (m.started_at is None or m.ended_at is not None):
        wake = min(wake, mirror.POLL)
    running = running_mirror(spec, status)
    if running is not None and running.ends_at is not None and status.phase == RolloutPhase.PROGRESSING.value:
        wake = min(wake, max(0.05, (running.ends_at - now).total_seconds()))
    return wake


def _next_wakeup(spec: RolloutSpec, status: RolloutStatus, now: dt.datetime) -> float:
    if status.phase == RolloutPhase.WAITING.value:
        return WAITING_RECHECK  # nothing serves, nothing is measured: only a spec change (a candidate) has work
    interval = parse_duration(spec.analysis.interval)
    times: list[dt.datetime] = []
    if status.canary_scale_down_at is not None and status.canary_scale_down_at > now:
        times.append(status.canary_scale_down_at)
    if status.phase not in (RolloutPhase.PROGRESSING.value, RolloutPhase.PAUSED.value) or status.current_step_index is None:
        return _until(times, now, max(interval, 5.0))
    deadline = deadline_at(spec, status)
    if deadline is not None:
        times.append(deadline)
    measure = next_measurement_at(spec, status, now)
    if measure is not None:
        times.append(measure)
    look = next_look_at(spec, status)
    if look is not None:
        times.append(look)
    if status.phase == RolloutPhase.PAUSED.value:
        return _until(times, now, max(interval, 5.0))
    if status.waiting_for and status.waiting_for.startswith("pods of"):  # a first version starting: its pods take minutes
        return _until(times, now, max(5.0, min(interval, 15.0)))
    if status.waiting_for and status.waiting_for.startswith("canary pods"):
        return _until(times, now, min(2.0, interval))
    step = _current_step(spec, status)
    if step is not None and step.pause is not None and step.pause.duration and status.step_started_at is not None:
        times.append(status.step_started_at + dt.timedelta(seconds=parse_duration(step.pause.duration)))
        return _until(times, now, interval)
    if step is not None and (step.analysis is not None or step.experiment is not None or step.mirror is not None):
        return _until(times, now, interval)
    return _until(times, now, min(interval, 1.0))


def _until(times: list[dt.datetime], now: dt.datetime, default: float) -> float:
    soonest = min([(t - now).total_seconds() for t in times] + [default])
    return max(0.05, soonest)


def set_condition(status: RolloutStatus, type_: str, value: bool | str, reason: str, message: str, world: World) -> None:
    """One condition of the Rollout's status at `world.now` (tuneloop.api.conditions.set_condition)."""
    conditions.set_condition(status.conditions, type_, value, reason, message, now=world.now, generation=world.generation)


# One tick is `_Machine.run`, built from units that each fit on a screen: `_Effects` (what a tick may do to the
# status: enter a step, pause, promote, roll back, start a candidate), `_Serving` (no rollout in progress: waiting,
# a first version, the steady state), `_Analysis` (measurements -> verdicts, the progress deadline), `_Machine` (the
# order of the checks) and the step table `STEP_KINDS` (one callable per kind of step: setWeight, pause, analysis).
class _Effects:
    """The status of one tick and the transitions that change it (each sets the phase, message and conditions)."""

    def __init__(self, spec: RolloutSpec, status: RolloutStatus | None, world: World):
        self.spec, self.world = spec, world
        self.st = status.model_copy(deep=True) if status is not None else RolloutStatus()
        self.out = Outcome(status=self.st)

    def event(self, type_: str, reason: str, message: str) -> None:
        self.out.events.append((type_, getattr(reason, "value", reason), message))

    def enter_step(self, index: int) -> None:
        self.st.current_step_index = index
        self.st.step_started_at = self.world.now
        self.st.metric_results = []
        self.st.waiting_for = None

    def progressing(self, waiting: str | None) -> None:
        self.st.phase = RolloutPhase.PROGRESSING
        self.st.waiting_for = waiting
        i = self.st.current_step_index or 0
        msg = f"step {i + 1}/{len(self.spec.steps)}, canary weight {self.st.canary_weight}%" + (f"; waiting for {waiting}" if waiting else "")
        self.st.message = msg
        set_condition(self.st, C.PROGRESSING, True, conditions.step_reason(i), msg, self.world)

    def end_mirror(self) -> None:
        """A running (or requested) mirror ends: the guards are cleared from the next tick on."""
        if self.st.mirror is not None and self.st.mirror.ended_at is None:
            self.st.mirror.ended_at = self.world.now

    def pause(self, reason: str, waiting: str) -> None:
        self.end_mirror()
        if self.st.phase != RolloutPhase.PAUSED.value:
            self.event("Normal", reason, f"paused: waiting for {waiting}")
        self.st.phase = RolloutPhase.PAUSED
        self.st.waiting_for = waiting
        self.st.message = f"paused at step {(self.st.current_step_index or 0) + 1}: waiting for {waiting}"
        set_condition(self.st, C.PROGRESSING, False, reason, self.st.message, self.world)

    def scale_down_later(self) -> None:
        """Traffic has left the canary: its Deployment keeps its pods for scaleDownDelaySeconds."""
        self.st.canary_scale_down_at = self.world.now + dt.timedelta(seconds=self.spec.scale_down_delay_seconds)

    def promote(self, reason: str, how: str) -> None:
        cand, old = self.st.candidate_model_version, self.st.stable_model_version
        assert cand is not None
        self.end_mirror()
        self.st.stable_model_version = cand
        self.st.canary_weight = 0
        self.st.canary_unready_since = None
        self.st.phase = RolloutPhase.PROMOTED
        self.st.current_step_index = len(self.spec.steps)
        self.st.waiting_for = None
        self.st.message = f"{cand} promoted to stable ({how})"
        if old is not None and old != cand:
            self.scale_down_later()
        set_condition(self.st, C.PROGRESSING, False, reason, self.st.message, self.world)
        set_condition(self.st, C.ROLLED_BACK, False, reason, self.st.message, self.world)
        self.out.model_versions[cand] = (ModelVersionPhase.SERVING.value, f"serving as stable of Rollout ({how})")
        if old and old != cand:
            self.out.model_versions[old] = (ModelVersionPhase.RETIRED.value, f"replaced by {cand}")
        self.event("Normal", reason, self.st.message)

    def rollback(self, phase: RolloutPhase, reason: str, message: str) -> None:
        cand = self.st.candidate_model_version
        self.end_mirror()
        self.st.canary_weight = 0
        self.st.canary_unready_since = None
        self.st.phase = phase
        self.st.waiting_for = None
        self.st.message = f"{cand} rolled back: {message}"
        self.scale_down_later()
        set_condition(self.st, C.PROGRESSING, False, reason, self.st.message, self.world)
        set_condition(self.st, C.ROLLED_BACK, True, reason, message, self.world)
        if cand:
            self.out.model_versions[cand] = (ModelVersionPhase.ROLLED_BACK.value, message)
        self.out.rolled_back = True
        fails = [m.at for m in self.st.measurements if m.phase in (MeasurementPhase.FAILED.value, MeasurementPhase.ERROR.value)
                 and m.step_index == self.st.current_step_index and m.at is not None]  # fmt: skip
        self.out.first_failure_at = min(fails) if fails else self.world.now
        self.event("Warning", reason, self.st.message)

    def start(self, cand: str) -> None:
        st = self.st
        st.candidate_model_version = cand
        st.candidate_since = self.world.now
        st.canary_weight = 0
        st.measurements = []
        st.weight_changed_at = None
        st.canary_data_at = None
        st.canary_unready_since = None
        st.canary_scale_down_at = None
        st.experiment = None
        self.end_mirror()  # an earlier candidate's mirror: cleared, then replaced by this one's
        self.enter_step(0)
        st.phase = RolloutPhase.PROGRESSING
        set_condition(st, C.ROLLED_BACK, False, R.NEW_CANDIDATE, f"rolling out {cand}", self.world)
        if st.stable_model_version is None:
            return  # the first version: served as stable at once (once it is servable)
        self.out.model_versions[cand] = (None, "candidate of Rollout")
        self.event("Normal", "RolloutStarted", f"rolling out {cand} over {len(self.spec.steps)} steps (stable {st.stable_model_version})")

    def failures(self, role: str, mv: str | None) -> list[PodFailure]:
        """Pod failures of `mv` in `role` since its rollout began (status.candidateSince)."""
        since = self.st.candidate_since
        return [f for f in self.world.pod_failures
                if f.role == role and f.model_version == mv and (since is None or f.at is None or f.at >= since)]  # fmt: skip


class _Serving(_Effects):
    """Without a rollout in progress: nothing to serve (Waiting), a first version coming up, the steady state; and
    spec.stable checked against what serves."""

    def canary_waits(self) -> bool:
        """While the weighted canary's pods do not suffice (canary_shortfall), nothing is measured or decided:
        Progressing with the count, or rolled back once that lasts progressDeadlineSeconds. When they suffice again,
        the canary's traffic starts anew: measurements begin initialDelay later and cover only the time since."""
        st, world = self.st, self.world
        short = canary_shortfall(self.spec, st, world)
        if short is None:
            if st.canary_unready_since is not None:
                st.canary_unready_since = None
                st.weight_changed_at = world.now
            return False
        available, need = short
        if st.canary_unready_since is None:
            st.canary_unready_since = world.now
            what = capacity_text(self.spec, st.canary_weight, available, need) if shared_base(self.spec) else \
                f"{available}/{need} canary pods available at {st.canary_weight}%"
            self.event("Normal", "CanaryNotReady", f"{what}: measurements wait")
        elif (world.now - st.canary_unready_since).total_seconds() >= self.spec.progress_deadline_seconds:
            what = "the candidate adapter not on every pod" if shared_base(self.spec) else "canary pods not ready"
            self.rollback(RolloutPhase.ROLLED_BACK, R.PROGRESS_DEADLINE_EXCEEDED,
                          f"{what} at {st.canary_weight}% for {self.spec.progress_deadline_seconds}s "
                          f"(progressDeadlineSeconds; {available}/{need} {'pods list it' if shared_base(self.spec) else 'available'})")
            return True
        if st.phase == RolloutPhase.PROGRESSING.value:
            self.progressing(f"{capacity_text(self.spec, st.canary_weight, available, need)} (measurements wait)")
        return True

    def check_spec_stable(self) -> None:
        """A spec.stable that differs from what serves never replaces it (Argo Rollouts: what serves only
        changes through a rollout); the condition StableInSync says so."""
        spec, st = self.spec, self.st
        if spec.stable is None or st.stable_model_version is None:
            return
        if spec.stable.name == st.stable_model_version:
            if conditions.find_condition(st.conditions, C.STABLE_IN_SYNC) is not None:
                set_condition(st, C.STABLE_IN_SYNC, True, R.IN_SYNC, f"spec.stable names {st.stable_model_version}, which serves", self.world)
            return
        msg = (
            f"spec.stable {spec.stable.name} is not serving; {st.stable_model_version} is (status.stableModelVersion). "
            f"spec.stable only names the first stable version and never replaces the serving one; "
            f"to serve {spec.stable.name} again, roll it out as spec.candidate"
        )
        old = conditions.find_condition(st.conditions, C.STABLE_IN_SYNC)
        if old is None or old.status != "False" or old.message != msg:
            self.event("Normal", R.SPEC_STABLE_NOT_SERVING, msg)
        set_condition(st, C.STABLE_IN_SYNC, False, R.SPEC_STABLE_NOT_SERVING, msg, self.world)

    def steady(self, cand: str | None) -> Outcome:
        st = self.st
        waited = conditions.find_condition(st.conditions, C.PROGRESSING)
        if waited is not None and waited.reason == R.WAITING_FOR_FIRST_VERSION.value:  # spec.stable named a first version
            st.conditions = [c for c in st.conditions if c is not waited]
        if st.phase in (RolloutPhase.PROGRESSING.value, RolloutPhase.PAUSED.value, RolloutPhase.DEGRADED.value) and st.candidate_model_version \
                and st.candidate_model_version != st.stable_model_version:  # fmt: skip
            self.rollback(RolloutPhase.ABORTED, R.CANDIDATE_REMOVED, "spec.candidate was removed (or set to the stable version) during the rollout")
        if st.phase not in TERMINAL and not self.bring_up():
            return self.out
        st.canary_weight = 0
        st.waiting_for = None
        prev = st.candidate_model_version
        if cand is None and prev is not None:
            # forget the removed candidate, so that setting it again rolls it out again (the documented retry)
            st.candidate_model_version = None
            st.current_step_index = None
            st.metric_results = []
            if prev == st.stable_model_version:
                st.message = f"serving {st.stable_model_version}"
            else:
                st.message = f"serving {st.stable_model_version}; candidate {prev} removed ({st.phase}); set spec.candidate to roll out again"
                self.event("Normal", "CandidateCleared", st.message)
        else:
            st.message = f"serving {st.stable_model_version}" + (f"; last candidate {prev} ({st.phase})" if prev else "")
        return self.out

    def bring_up(self) -> bool:
        """A first version (or one spec.stable names) is served once a pod of its stable Deployment is available;
        until then the phase is Progressing (Starting), or Degraded while its pods exit or restart. True once served."""
        st, world = self.st, self.world
        mv = st.stable_model_version
        if mv is None:
            return True
        if world.stable_available is None or world.stable_available > 0:
            if st.candidate_model_version == mv:
                self.promote(R.FIRST_VERSION, "first version, nothing to compare with: served as stable without a canary")
                return False  # this tick's message is the promotion's
            st.phase = RolloutPhase.PROMOTED
            self.out.model_versions.setdefault(mv, (ModelVersionPhase.SERVING.value, "serving as stable"))
            return True
        failed = self.failures(names.STABLE, mv)
        if failed:
            msg = f"first version {mv} is not serving: {_describe(failed)}"
            if st.phase != RolloutPhase.DEGRADED.value or st.message != msg:
                self.event("Warning", R.SERVING_POD_FAILED, msg)
            st.phase, st.waiting_for, st.message = RolloutPhase.DEGRADED, f"a serving pod of {mv}", msg
            set_condition(st, C.PROGRESSING, False, R.SERVING_POD_FAILED, msg, world)
            return False
        replicas = self.spec.serving.replicas
        st.phase, st.waiting_for = RolloutPhase.PROGRESSING, f"pods of {mv} to serve (0/{replicas} ready)"
        st.message = f"first version {mv}: waiting for its pods to serve ({self.spec.served_model_name} listed by /v1/models)"
        set_condition(st, C.PROGRESSING, True, R.STARTING, st.message, world)
        return False

    def waiting(self) -> Outcome:
        """No stable and no candidate: nothing to serve, nothing to measure (phase Waiting). A first candidate that
        was removed before it served (it was never servable) is forgotten: nothing changes for its ModelVersion."""
        st = self.st
        prev = st.candidate_model_version
        st.phase = RolloutPhase.WAITING
        st.waiting_for = WAITING_FOR
        st.canary_weight = 0
        st.candidate_model_version = None
        st.current_step_index = None
        st.step_started_at = None
        st.metric_results = []
        st.message = NOTHING_TO_SERVE
        if prev is not None:
            st.message = f"{NOTHING_TO_SERVE}; candidate {prev} was removed before it served"
            self.event("Normal", "CandidateCleared", st.message)
        st.conditions = [c for c in st.conditions if c.type != C.SERVABLE.value]  # no version: nothing to judge
        set_condition(st, C.PROGRESSING, False, R.WAITING_FOR_FIRST_VERSION, st.message, self.world)
        return self.out


class _Analysis(_Effects):
    """Measurements of this tick -> the step's (or the background) verdict; the progress deadline."""

    def fail(self, i: int, verdict: Verdict, what: str) -> None:
        st = self.st
        wanted = MeasurementPhase.FAILED.value if verdict == Verdict.FAILED else MeasurementPhase.ERROR.value
        bad = [m for m in reversed(st.measurements) if m.step_index == i and m.phase == wanted]
        detail = bad[0].message if bad else f"{what} failed"
        reason = R.ANALYSIS_FAILED if verdict == Verdict.FAILED else R.ANALYSIS_ERROR
        self.rollback(RolloutPhase.ROLLED_BACK, reason, f"{verdict.value} {what} at step {i + 1}: {detail}")

    def record_measurements(self, i: int, metrics: list[AnalysisMetric], assessments: dict[str, Assessment]) -> dict[str, MetricResult]:
        st = self.st
        results = {r.metric: r for r in st.metric_results}
        for m in metrics:
            a = assessments.get(m.name)
            if a is None:
                continue
            results[m.name] = record(results.get(m.name) or MetricResult(metric=m.name), a.phase, ignored=a.ignored)
            st.measurements.append(
                Measurement(metric=m.name, phase=a.phase, value=a.value, stable_value=a.stable_value,
                            message=a.message[:512], step_index=i, at=self.world.now)
            )  # fmt: skip
            if a.value is not None:
                st.canary_data_at = self.world.now
        st.measurements = st.measurements[-MAX_MEASUREMENTS:]
        return results

    def tally(self, metrics: list[AnalysisMetric], results: dict[str, MetricResult], count: int | None, background: bool) -> Verdict:
        verdicts = []
        for m in metrics:
            r = results.get(m.name) or MetricResult(metric=m.name)
            v = metric_verdict(r, self.spec.analysis, count, m, background=background)
            r.phase = v.value
            results[m.name] = r
            verdicts.append(v)
        self.st.metric_results = [results[m.name] for m in metrics]
        return run_verdict(verdicts)

    def analyse(self, i: int, assessments: dict[str, Assessment]) -> Verdict:
        metrics = step_metrics(self.spec, i)
        count = self.spec.steps[i].analysis.count or self.spec.analysis.count  # type: ignore[union-attr]
        return self.tally(metrics, self.record_measurements(i, metrics, assessments), count, background=False)

    def background(self, i: int, assessments: dict[str, Assessment]) -> bool:
        """Background analysis outside analysis steps: Failed or Error rolls back at once (True)."""
        metrics = live_metrics(self.spec)
        verdict = self.tally(metrics, self.record_measurements(i, metrics, assessments), None, background=True)
        if verdict in (Verdict.FAILED, Verdict.ERROR):
            self.fail(i, verdict, "background analysis")
            return True
        return False

    def check_deadline(self) -> None:
        """progressDeadlineSeconds: a canary with traffic whose measurements since its last weight change
        (or its last value) all returned no data is rolled back, also while paused."""
        spec, st, now = self.spec, self.st, self.world.now
        deadline = deadline_at(spec, st)
        if deadline is None or now < deadline:
            return
        ref = deadline - dt.timedelta(seconds=spec.progress_deadline_seconds)
        empty = [m for m in st.measurements if m.at is not None and m.at > ref and m.value is None and m.phase != MeasurementPhase.ERROR.value]
        if not empty:
            return
        self.rollback(
            RolloutPhase.ROLLED_BACK,
            R.PROGRESS_DEADLINE_EXCEEDED,
            f"no data from the canary at {st.canary_weight}% for {spec.progress_deadline_seconds}s "
            f"(progressDeadlineSeconds; {len(empty)} measurements, latest: {empty[-1].message})",
        )

    def analysis_progress(self, i: int) -> str:
        """How far the analysis of step `i` is (`metric done/count`, and the initialDelay's first measurement)."""
        spec, st = self.spec, self.st
        done = {r.metric: r.count for r in st.metric_results}
        need = spec.steps[i].analysis.count or spec.analysis.count  # type: ignore[union-attr]
        progress = ", ".join(f"{m.name} {done.get(m.name, 0)}/{need}" for m in step_metrics(spec, i))
        start = measure_from(spec, st)
        if start is not None and self.world.now < start and last_measurement_at(st) is None:
            progress += f"; first measurement at {start.strftime('%Y-%m-%dT%H:%M:%SZ')} (initialDelay)"
        return progress


class _Machine(_Serving, _Analysis):
    """One tick, in order: what the spec asks and what the world says first; then the states without a rollout;
    then the steps (STEP_KINDS)."""

    sample: Sample | None = None  # this tick's look at the current experiment step

    def run(self, assessments: dict[str, Assessment]) -> Outcome:
        cand = self.prepare()
        if cand is None and self.st.stable_model_version is None:
            return self.waiting()
        if cand is None or cand == self.st.stable_model_version:
            return self.steady(cand)
        if self.st.candidate_model_version != cand:
            self.start(cand)
        if not self.interrupted(cand):
            self.progress(assessments)
        return self.out

    def prepare(self) -> str | None:
        """Seed the stable from spec.stable, note the one-shot flags, check spec.stable; the candidate's name."""
        spec, st = self.spec, self.st
        if st.stable_model_version is None and spec.stable is not None:
            st.stable_model_version = spec.stable.name  # spec.stable only seeds the stable; the status says what serves
        if spec.promote or spec.abort:
            self.out.clear_flags = True
        self.check_spec_stable()
        return spec.candidate.name if spec.candidate else None

    def interrupted(self, cand: str) -> bool:
        """What ends a rollout's tick before its steps (True): a terminal phase, abort, promote, an unservable
        candidate, a first version coming up, a failing canary pod."""
        spec, st, world = self.spec, self.st, self.world
        if st.phase in TERMINAL:
            return True
        if spec.abort:
            self.rollback(RolloutPhase.ABORTED, R.ABORTED, "aborted by user (spec.abort)")
            return True
        if spec.promote and not world.serving_error:
            self.promote(R.PROMOTED_BY_USER, "promoted by user, remaining steps skipped")
            return True
        if world.serving_error:
            self.degraded(world.serving_error)
            return True
        if conditions.find_condition(st.conditions, C.SERVABLE) is not None:
            set_condition(st, C.SERVABLE, True, R.SERVABLE, "the stable and candidate ModelVersions can be served", world)
        if st.stable_model_version is None:
            st.stable_model_version = cand  # its Deployment is made now; it is the stable once one of its pods serves
            self.bring_up()
            return True
        if world.adapter_error and st.phase in (RolloutPhase.PROGRESSING.value, RolloutPhase.PAUSED.value):
            self.rollback(RolloutPhase.ROLLED_BACK, R.ADAPTER_LOAD_FAILED, world.adapter_error)
            return True
        failed = self.failures(names.CANARY, cand)
        if failed and st.phase in (RolloutPhase.PROGRESSING.value, RolloutPhase.PAUSED.value):
            self.rollback(RolloutPhase.ROLLED_BACK, R.SERVING_POD_FAILED, f"a canary pod is not serving: {_describe(failed)}")
            return True
        return False

    def degraded(self, error: str) -> None:
        """The candidate (or the stable) cannot be served: Degraded, and a promote is refused."""
        st, world = self.st, self.world
        if self.spec.promote:
            self.event("Warning", "PromoteRefused", f"not promoting an unservable candidate: {error}")
        if st.phase != RolloutPhase.DEGRADED.value or st.message != error:
            self.event("Warning", world.serving_reason, error)
        st.phase = RolloutPhase.DEGRADED
        st.waiting_for = "a servable candidate"
        st.message = error
        set_condition(st, C.PROGRESSING, False, world.serving_reason, error, world)
        set_condition(st, C.SERVABLE, False, world.serving_reason, error, world)

    def progress(self, assessments: dict[str, Assessment]) -> None:
        """The steps (or, while paused, the background analysis of an indefinite pause); then the deadline. Nothing
        while the weighted canary's pods do not suffice (canary_waits)."""
        st = self.st
        if self.canary_waits():
            return
        if st.phase == RolloutPhase.PAUSED.value:
            step = _current_step(self.spec, st)
            if step is not None and step.analysis is None and assessments:  # an indefinite pause: background analysis
                if self.background(st.current_step_index or 0, assessments):
                    return
        else:
            self.walk(assessments)
        self.check_deadline()

    def walk(self, assessments: dict[str, Assessment]) -> None:
        """From the current step on, as far as the steps are done this tick (each kind of step: STEP_KINDS)."""
        spec, st = self.spec, self.st
        for _ in range(len(spec.steps) + 1):
            i = st.current_step_index or 0
            if i >= len(spec.steps):
                self.promote(R.PROMOTED, f"all {len(spec.steps)} steps passed")
                return
            step = spec.steps[i]
            if step.analysis is None and step.mirror is None and assessments and self.background(i, assessments):
                return  # background analysis of the step that was current when measured failed
            if not STEP_KINDS[step_kind(step)](self, i, step, assessments):
                return
            self.enter_step(i + 1)
            assessments = {}  # measurements belong to the step that was current when they were taken


# --- the kinds of step: each returns True when its step is done (the walk enters the next) ----------------------------
def _set_weight(m: _Machine, i: int, step: Step, assessments: dict[str, Assessment]) -> bool:
    assert step.set_weight is not None
    return _move_weight(m, step.set_weight)


def _move_weight(m: _Machine, w: int) -> bool:
    """The canary weight to `w` (behind a gateway once its pods suffice: False while they do not)."""
    spec, st, world = m.spec, m.st, m.world
    if gateway_mode(spec) and w > 0:
        available, need = canary_capacity(spec, w, world)
        if available < need:
            m.progressing(capacity_text(spec, w, available, need))
            return False
    if w != st.canary_weight:
        m.event("Normal", "WeightChanged", f"canary weight {st.canary_weight}% -> {w}%")
        st.weight_changed_at = world.now
    st.canary_weight = w
    return True


def _pause(m: _Machine, i: int, step: Step, assessments: dict[str, Assessment]) -> bool:
    assert step.pause is not None
    if not step.pause.duration:
        m.pause(R.PAUSED_INDEFINITELY, f"`kubectl tuneloop promote` (indefinite pause at step {i + 1})")
        return False
    end = (m.st.step_started_at or m.world.now) + dt.timedelta(seconds=parse_duration(step.pause.duration))
    if m.world.now < end:
        m.progressing(f"pause until {end.strftime('%Y-%m-%dT%H:%M:%SZ')}")
        return False
    return True


def _analysis(m: _Machine, i: int, step: Step, assessments: dict[str, Assessment]) -> bool:
    verdict = m.analyse(i, assessments)
    if verdict == Verdict.SUCCESSFUL:
        m.event("Normal", "AnalysisPassed", f"analysis at step {i + 1} passed")
        return True
    if verdict in (Verdict.FAILED, Verdict.ERROR):
        m.fail(i, verdict, "analysis")
    elif verdict == Verdict.INCONCLUSIVE:
        m.pause(R.ANALYSIS_INCONCLUSIVE, f"a human: analysis at step {i + 1} inconclusive (promote or abort)")
    else:
        m.progressing(f"analysis ({m.analysis_progress(i)})")
    return False


MAX_EXPERIMENT_MEASUREMENTS = 20


def _arm(kind: str, c: Counts | None) -> ArmSample | None:
    if c is None:
        return None
    c = c.clean(kind)
    if kind == "proportion":
        return ArmSample(samples=c.samples, successes=c.successes, estimate=c.estimate(kind))
    return ArmSample(samples=c.samples, sum=c.total, sum_of_squares=c.squares, estimate=c.estimate(kind))


def _experiment(m: _Machine, i: int, step: Step, assessments: dict[str, Assessment]) -> bool:
    """Hold the split; at each look decide (analysis.experiment.decide): Better -> done, Worse -> rollback,
    Inconclusive (the end came without a decision) -> Paused for a human. Provider errors never decide: past
    analysis.consecutiveErrorLimit in a row they roll back, as an analysis Error does."""
    ex = step.experiment
    assert ex is not None
    if not _move_weight(m, ex.split):
        return False
    st, world, name = m.st, m.world, ex.metric.name
    cur = st.experiment
    if cur is None or cur.step_index != i or cur.candidate_model_version != st.candidate_model_version:
        ends = world.now + dt.timedelta(seconds=parse_duration(ex.duration)) if ex.duration else None
        cur = ExperimentStatus(step_index=i, metric=name, candidate_model_version=st.candidate_model_version or "",
                               stable_model_version=st.stable_model_version, started_at=world.now, ends_at=ends,
                               message=f"the split holds: {ex.split}% to the candidate")  # fmt: skip
        st.experiment = cur
        cur = st.experiment  # (the status validates assignments: the object it holds)
        assert cur is not None
        m.event("Normal", "ExperimentStarted", f"experiment {name} at step {i + 1}: {ex.split}% of traffic to the candidate"
                + (f" for {ex.duration}" if ex.duration else f" until each arm has {ex.samples_needed} samples"))
    if cur.decision == ExperimentDecision.BETTER.value:
        return True
    sample, m.sample = m.sample, None  # a look belongs to the experiment that was running when it was taken
    if sample is not None and cur.started_at < world.now:
        if _look(m, i, ex, cur, sample):
            return True
        if st.phase != RolloutPhase.PROGRESSING.value:
            return False
    until = f" until {cur.ends_at.strftime('%Y-%m-%dT%H:%M:%SZ')}" if cur.ends_at is not None else ""
    m.progressing(f"experiment {name}{until} ({cur.message})")
    return False


def _look(m: _Machine, i: int, ex: ExperimentStep, cur: ExperimentStatus, sample: Sample) -> bool:
    """Record one look and act on its decision; True when the candidate was found better (the step is done)."""
    st, world, name, kind = m.st, m.world, ex.metric.name, ex.metric.kind
    if sample.error is not None or sample.candidate is None or sample.stable is None:
        err = sample.error or "no counts"
        cur.consecutive_errors += 1
        cur.message = f"query failed ({cur.consecutive_errors} in a row): {err}"[:512]
        cur.measurements = [*cur.measurements, ExperimentMeasurement(at=world.now, decision=ExperimentDecision.ERROR, message=cur.message)]
        cur.measurements = cur.measurements[-MAX_EXPERIMENT_MEASUREMENTS:]
        if cur.consecutive_errors > m.spec.analysis.consecutive_error_limit:
            cur.decision = ExperimentDecision.ERROR
            m.rollback(RolloutPhase.ROLLED_BACK, R.ANALYSIS_ERROR, f"Error experiment {name} at step {i + 1}: {err}"[:1024])
        return False
    cur.consecutive_errors = 0
    ended = cur.ends_at is not None and world.now >= cur.ends_at
    look = decide(Plan.of(ex), sample.candidate, sample.stable, ended=ended)
    e = look.effect
    cur.decision = look.decision
    cur.message = look.message[:512]
    cur.measurements = [*cur.measurements, ExperimentMeasurement(
        at=world.now, candidate=_arm(kind, sample.candidate), stable=_arm(kind, sample.stable), effect=e.effect if e else None,
        low=e.low if e else None, high=e.high if e else None, level=e.level if e else None, decision=look.decision,
        message=cur.message)][-MAX_EXPERIMENT_MEASUREMENTS:]  # fmt: skip
    if look.decision not in FINAL_DECISIONS:
        return False
    cur.decided_at = world.now
    cand = st.candidate_model_version
    if cand is not None:
        m.out.experiments[cand] = _result(i, ex, cur, look, sample, st.canary_weight)
    what = f"experiment {name} at step {i + 1}"
    if look.decision == ExperimentDecision.BETTER.value:
        m.event("Normal", "ExperimentPassed", f"{what}: {look.message}"[:1024])
        return True
    if look.decision == ExperimentDecision.WORSE.value:
        m.rollback(RolloutPhase.ROLLED_BACK, R.EXPERIMENT_WORSE, f"{what}: {look.message}"[:1024])
        return False
    m.pause(R.EXPERIMENT_INCONCLUSIVE, f"a human: {what} inconclusive (promote or abort)")
    return False


def _result(i: int, ex: ExperimentStep, cur: ExperimentStatus, look: Look, sample: Sample, split: int) -> ExperimentResult:
    kind, e = ex.metric.kind, look.effect
    c, s = (sample.candidate or Counts(0)).clean(kind), (sample.stable or Counts(0)).clean(kind)
    return ExperimentResult(
        step=i + 1, metric=ex.metric.name, kind=kind, higher_is_better=ex.metric.higher_is_better, split=split,
        started_at=cur.started_at, decided_at=cur.decided_at or cur.started_at,
        candidate=ArmResult(model_version=cur.candidate_model_version, samples=c.samples, estimate=c.estimate(kind)),
        stable=ArmResult(model_version=cur.stable_model_version, samples=s.samples, estimate=s.estimate(kind)),
        effect=e.effect if e else None, low=e.low if e else None, high=e.high if e else None, level=e.level if e else None,
        minimum_effect=ex.minimum_effect, test=e.test if e else "", decision=look.decision, message=look.message[:1024],
    )


def _mirror(m: _Machine, i: int, step: Step, assessments: dict[str, Assessment]) -> bool:
    """Mirror `percent` % of the stable's requests to the candidate for `duration` and judge the comparisons (the
    step's metrics): once the candidate has the pods for its share the mirror is asked for (`status.mirror`, which the
    reconciler writes to every stable guard); once every guard holds it, it runs. Failed or Error -> rollback,
    Inconclusive -> Paused; at the end, each metric needs a Successful measurement (else Paused); then the next step."""
    mx = step.mirror
    assert mx is not None
    st, world = m.st, m.world
    cur = st.mirror
    if cur is None or cur.step_index != i or cur.candidate_model_version != st.candidate_model_version or cur.ended_at is not None:
        available = world.canary_available
        need = traffic.gateway_canary_replicas(m.spec.serving.replicas, mx.percent)
        if available < need:
            m.progressing(f"candidate pods to answer mirrored requests: {available}/{need} available")
            return False
        st.mirror = MirrorStatus(step_index=i, candidate_model_version=st.candidate_model_version or "", percent=mx.percent,
                                 requested_at=world.now, until=_mirror_until(world.now, mx))
        m.event("Normal", "MirrorRequested", f"mirror at step {i + 1}: {mx.percent}% of the stable's requests to the candidate for {mx.duration}")
        cur = st.mirror
        assert cur is not None
    held, live, _ = world.mirror_guards or (0, 0, 0)
    cur.guards = f"{held}/{live}"
    if cur.started_at is None and not _mirror_started(m, i, mx, cur, held, live):
        return False
    return _judge_mirror(m, i, mx, cur, assessments)


def _mirror_until(now: dt.datetime, mx: MirrorStep) -> dt.datetime:
    """When the guards stop by themselves: the duration, and a grace for every guard to take the mirror, from now."""
    return now.replace(microsecond=0) + dt.timedelta(seconds=parse_duration(mx.duration) + mirror.GRACE)


def _mirror_started(m: _Machine, i: int, mx: MirrorStep, cur: MirrorStatus, held: int, live: int) -> bool:
    """Start the mirror once every live stable guard holds it (True); meanwhile keep `until` a duration ahead."""
    now = m.world.now
    if (cur.until - now).total_seconds() < parse_duration(mx.duration):
        cur.until = _mirror_until(now, mx)  # the guards were slow: a later end, written to them again
        held = 0
    if live == 0 or held < live:
        refused = f" ({m.world.mirror_error})" if m.world.mirror_error else ""
        m.progressing(f"the mirror on every stable pod's guard: {held}/{live} hold it{refused}")
        return False
    cur.started_at = now
    cur.ends_at = now + dt.timedelta(seconds=parse_duration(mx.duration))
    m.event("Normal", "MirrorStarted", f"mirror at step {i + 1}: every stable guard ({live}) copies {mx.percent}% of its requests "
            f"to the candidate until {cur.ends_at.strftime('%Y-%m-%dT%H:%M:%SZ')}")
    return True


def _judge_mirror(m: _Machine, i: int, mx: MirrorStep, cur: MirrorStatus, assessments: dict[str, Assessment]) -> bool:
    metrics = mirror_metrics(m.spec, mx)
    results = m.record_measurements(i, metrics, assessments)
    verdict = m.tally(metrics, results, None, background=False)
    if verdict in (Verdict.FAILED, Verdict.ERROR):
        m.fail(i, verdict, "shadow analysis")
        return False
    if verdict == Verdict.INCONCLUSIVE:
        m.pause(R.ANALYSIS_INCONCLUSIVE, f"a human: shadow analysis at step {i + 1} inconclusive (promote or abort)")
        return False
    assert cur.ends_at is not None
    done = {r.metric: r for r in m.st.metric_results}
    progress = ", ".join(f"{x.name} {done[x.name].successful if x.name in done else 0} ok" for x in metrics)
    if m.world.now < cur.ends_at:
        m.progressing(f"mirror {mx.percent}% until {cur.ends_at.strftime('%Y-%m-%dT%H:%M:%SZ')} ({progress}; guards {cur.guards})")
        return False
    unproven = [x.name for x in metrics if x.name not in done or done[x.name].successful == 0]
    if unproven:  # never on to the next step on no evidence
        m.pause(R.ANALYSIS_INCONCLUSIVE, f"a human: the mirror at step {i + 1} ended without a successful measurement of "
                f"{', '.join(unproven)} (promote or abort)")
        return False
    m.end_mirror()
    m.event("Normal", "MirrorPassed", f"mirror at step {i + 1} passed ({progress})")
    return True


def step_kind(step: Step) -> str:
    """A step is one of setWeight, pause, analysis, experiment, mirror (the API's one-of)."""
    if step.experiment is not None:
        return "experiment"
    if step.mirror is not None:
        return "mirror"
    return "setWeight" if step.set_weight is not None else "pause" if step.pause is not None else "analysis"


def target_weight(step: Step) -> int | None:
    """The canary weight a step moves to (setWeight, an experiment's split); None for the others."""
    return step.experiment.split if step.experiment is not None else step.set_weight


def canary_share(step: Step) -> int | None:
    """The share of the traffic a step asks the canary's pods to serve: its weight, or a mirror step's copies."""
    return step.mirror.percent if step.mirror is not None else target_weight(step)


StepKind = Callable[[_Machine, int, Step, dict[str, Assessment]], bool]
STEP_KINDS: dict[str, StepKind] = {"setWeight": _set_weight, "pause": _pause, "analysis": _analysis, "experiment": _experiment,
                                   "mirror": _mirror}


def _describe(failed: list[PodFailure]) -> str:
    latest = failed[-1].message
    return latest if len(failed) == 1 else f"{latest} (and {len(failed) - 1} more pod failure(s))"


def advance(spec: RolloutSpec, status: RolloutStatus | None, world: World, assessments: dict[str, Assessment] | None = None,
            sample: Sample | None = None) -> Outcome:
    """One reconcile tick. `assessments` are this tick's measurements (metric name -> Assessment); `sample` is this
    tick's look at the current experiment step (both arms' counts), when one was due (`experiment_due`)."""
    machine = _Machine(spec, status, world)
    machine.sample = sample
    out = machine.run(assessments or {})
    st = out.status
    cleared_mirror(st, world)
    st.observed_generation = world.generation if world.generation is not None else st.observed_generation
    n, i = len(spec.steps), st.current_step_index
    st.step = None if i is None or st.candidate_model_version is None else f"{min(i + 1, n)}/{n}"
    st.weights = weights_text(st)
    return out


def cleared_mirror(st: RolloutStatus, world: World) -> None:
    """A mirror that ended before this tick is cleared once the guards, looked at this tick (after the reconciler
    cleared them), hold none, or once its `until` passed (the guards dropped it themselves)."""
    m = st.mirror
    if m is None or m.cleared or m.ended_at is None or m.ended_at >= world.now:
        return
    if (world.mirror_guards is not None and world.mirror_guards[2] == 0) or world.now >= m.until:
        m.cleared = True


def weights_text(st: RolloutStatus) -> str | None:
    """`kubectl get rollouts`' WEIGHTS: ModelVersion=percent of what takes traffic (`v1=90 v2=10`, `v2=100`)."""
    if st.stable_model_version is None:
        return None
    cand = st.candidate_model_version
    if st.canary_weight <= 0 or cand is None or cand == st.stable_model_version:
        return f"{st.stable_model_version}=100"
    if st.canary_weight >= 100:
        return f"{cand}=100"
    return f"{st.stable_model_version}={100 - st.canary_weight} {cand}={st.canary_weight}"
