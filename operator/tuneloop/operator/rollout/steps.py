"""The canary step state machine, as pure code: (spec, status, observations) -> new status + effects.

One call of `advance` is one reconcile tick. It walks setWeight / pause / analysis steps as far as
it can at `now`, records measurements taken this tick, and decides promotion or rollback. The
handler applies the effects (weights, replicas, ModelVersion phases, events, metrics).

- setWeight W: behind a Gateway the weight moves only once the canary has enough available pods
  for W (no traffic to pods that are not ready); replica-weighted routing has no such wait.
- pause: with a duration, until it elapsed; without, phase Paused until `promote` or `abort`.
- analysis: one measurement per metric per interval; Failed or Error -> rollback; Inconclusive ->
  Paused for a human; Successful -> next step. Prometheus errors never count as success, so an
  unreachable Prometheus can never promote.
- after the last step: promotion (candidate becomes stable, weights 100/0, canary scaled down).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from tuneloop.api.common import Condition, ConditionStatus
from tuneloop.api.modelversion import ModelVersionPhase
from tuneloop.api.rollout import AnalysisMetric, Measurement, MeasurementPhase, MetricResult, RolloutPhase, RolloutSpec, RolloutStatus

from . import traffic
from .analysis import Assessment, Verdict, metric_verdict, parse_duration, record, run_verdict

MAX_MEASUREMENTS = 50
TERMINAL = {RolloutPhase.PROMOTED.value, RolloutPhase.ROLLED_BACK.value, RolloutPhase.ABORTED.value}


@dataclass(frozen=True)
class World:
    """What the handler observed before this tick."""

    now: dt.datetime
    canary_available: int = 0
    serving_error: str | None = None  # the candidate/stable cannot be served (bad artifact, missing ModelVersion)
    generation: int | None = None


@dataclass
class Outcome:
    status: RolloutStatus
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (Normal|Warning, reason, message)
    model_versions: dict[str, tuple[str | None, str]] = field(default_factory=dict)  # name -> (phase or None, message)
    clear_flags: bool = False
    rolled_back: bool = False
    first_failure_at: dt.datetime | None = None


def gateway_mode(spec: RolloutSpec) -> bool:
    return spec.traffic_routing.gateway_api is not None


def step_metrics(spec: RolloutSpec, index: int | None) -> list[AnalysisMetric]:
    """The metrics an analysis step at `index` measures ([] for other steps)."""
    if index is None or index >= len(spec.steps) or spec.steps[index].analysis is None:
        return []
    wanted = set(spec.steps[index].analysis.metrics)
    return [m for m in spec.analysis.metrics if not wanted or m.name in wanted]


def due_metrics(spec: RolloutSpec, status: RolloutStatus | None, now: dt.datetime) -> list[AnalysisMetric]:
    """Metrics to measure now: the current analysis step's, once per interval."""
    if status is None or status.phase != RolloutPhase.PROGRESSING.value:
        return []
    if spec.candidate is None or status.candidate_model_version != spec.candidate.name:
        return []
    metrics = step_metrics(spec, status.current_step_index)
    if not metrics:
        return []
    last = last_measurement_at(status)
    if last is not None and (now - last).total_seconds() < parse_duration(spec.analysis.interval) - 0.05:
        return []
    return metrics


def last_measurement_at(status: RolloutStatus) -> dt.datetime | None:
    times = [m.at for m in status.measurements if m.step_index == status.current_step_index and m.at is not None]
    return max(times) if times else None


def next_wakeup(spec: RolloutSpec, status: RolloutStatus, now: dt.datetime) -> float:
    """Seconds until this Rollout needs another tick (the daemon sleeps that long unless woken)."""
    interval = parse_duration(spec.analysis.interval)
    if status.phase != RolloutPhase.PROGRESSING.value or status.current_step_index is None:
        return max(interval, 5.0)
    if status.waiting_for and status.waiting_for.startswith("canary pods"):
        return min(2.0, interval)
    i = status.current_step_index
    if i < len(spec.steps):
        step = spec.steps[i]
        if step.pause is not None and step.pause.duration and status.step_started_at is not None:
            end = status.step_started_at + dt.timedelta(seconds=parse_duration(step.pause.duration))
            return max(0.05, min(interval, (end - now).total_seconds()))
        if step.analysis is not None:
            last = last_measurement_at(status)
            if last is None:
                return 0.05
            return max(0.05, min(interval, interval - (now - last).total_seconds()))
    return min(interval, 1.0)


def set_condition(status: RolloutStatus, type_: str, value: bool, reason: str, message: str, world: World) -> None:
    new = ConditionStatus.TRUE.value if value else ConditionStatus.FALSE.value
    for c in status.conditions:
        if c.type == type_:
            if c.status != new:
                c.last_transition_time = world.now
            c.status, c.reason, c.message, c.observed_generation = new, reason, message, world.generation
            return
    status.conditions.append(
        Condition(type=type_, status=new, reason=reason, message=message, last_transition_time=world.now, observed_generation=world.generation)
    )


class _Machine:
    def __init__(self, spec: RolloutSpec, status: RolloutStatus | None, world: World):
        self.spec, self.world = spec, world
        self.st = status.model_copy(deep=True) if status is not None else RolloutStatus()
        self.out = Outcome(status=self.st)

    # --- effects --------------------------------------------------------------------------
    def event(self, type_: str, reason: str, message: str) -> None:
        self.out.events.append((type_, reason, message))

    def enter_step(self, index: int) -> None:
        self.st.current_step_index = index
        self.st.step_started_at = self.world.now
        self.st.metric_results = []
        self.st.waiting_for = None

    def progressing(self, waiting: str | None) -> None:
        self.st.phase = RolloutPhase.PROGRESSING.value
        self.st.waiting_for = waiting
        i = self.st.current_step_index or 0
        msg = f"step {i + 1}/{len(self.spec.steps)}, canary weight {self.st.canary_weight}%" + (f"; waiting for {waiting}" if waiting else "")
        self.st.message = msg
        set_condition(self.st, "Progressing", True, f"Step{i}", msg, self.world)

    def pause(self, reason: str, waiting: str) -> None:
        if self.st.phase != RolloutPhase.PAUSED.value:
            self.event("Normal", reason, f"paused: waiting for {waiting}")
        self.st.phase = RolloutPhase.PAUSED.value
        self.st.waiting_for = waiting
        self.st.message = f"paused at step {(self.st.current_step_index or 0) + 1}: waiting for {waiting}"
        set_condition(self.st, "Progressing", False, reason, self.st.message, self.world)

    def promote(self, reason: str, how: str) -> None:
        cand, old = self.st.candidate_model_version, self.st.stable_model_version
        assert cand is not None
        self.st.stable_model_version = cand
        self.st.canary_weight = 0
        self.st.phase = RolloutPhase.PROMOTED.value
        self.st.current_step_index = len(self.spec.steps)
        self.st.waiting_for = None
        self.st.message = f"{cand} promoted to stable ({how})"
        set_condition(self.st, "Progressing", False, reason, self.st.message, self.world)
        set_condition(self.st, "RolledBack", False, reason, self.st.message, self.world)
        self.out.model_versions[cand] = (ModelVersionPhase.SERVING.value, f"serving as stable of Rollout ({how})")
        if old and old != cand:
            self.out.model_versions[old] = (ModelVersionPhase.RETIRED.value, f"replaced by {cand}")
        self.event("Normal", reason, self.st.message)

    def rollback(self, phase: RolloutPhase, reason: str, message: str) -> None:
        cand = self.st.candidate_model_version
        self.st.canary_weight = 0
        self.st.phase = phase.value
        self.st.waiting_for = None
        self.st.message = f"{cand} rolled back: {message}"
        set_condition(self.st, "Progressing", False, reason, self.st.message, self.world)
        set_condition(self.st, "RolledBack", True, reason, message, self.world)
        if cand:
            self.out.model_versions[cand] = (ModelVersionPhase.ROLLED_BACK.value, message)
        self.out.rolled_back = True
        fails = [m.at for m in self.st.measurements if m.phase in (MeasurementPhase.FAILED.value, MeasurementPhase.ERROR.value)
                 and m.step_index == self.st.current_step_index and m.at is not None]  # fmt: skip
        self.out.first_failure_at = min(fails) if fails else self.world.now
        self.event("Warning", reason, self.st.message)

    # --- the tick -------------------------------------------------------------------------
    def run(self, assessments: dict[str, Assessment]) -> Outcome:
        spec, st, world = self.spec, self.st, self.world
        if st.stable_model_version is None and spec.stable is not None:
            st.stable_model_version = spec.stable.name
        cand = spec.candidate.name if spec.candidate else None
        if spec.promote or spec.abort:
            self.out.clear_flags = True

        if cand is None or cand == st.stable_model_version:
            return self.steady(cand)
        if st.candidate_model_version != cand:
            self.start(cand)
            if st.phase == RolloutPhase.PROMOTED.value:
                return self.out
        if st.phase in TERMINAL:
            return self.out
        if spec.abort:
            self.rollback(RolloutPhase.ABORTED, "Aborted", "aborted by user (spec.abort)")
            return self.out
        if spec.promote and not world.serving_error:
            self.promote("PromotedByUser", "promoted by user, remaining steps skipped")
            return self.out
        if world.serving_error:
            if spec.promote:
                self.event("Warning", "PromoteRefused", f"not promoting an unservable candidate: {world.serving_error}")
            st.phase = RolloutPhase.DEGRADED.value
            st.waiting_for = "a servable candidate"
            st.message = world.serving_error
            set_condition(st, "Progressing", False, "ServingError", world.serving_error, world)
            return self.out
        if st.phase == RolloutPhase.PAUSED.value:
            return self.out
        self.walk(assessments)
        return self.out

    def steady(self, cand: str | None) -> Outcome:
        st, spec = self.st, self.spec
        if st.phase in (RolloutPhase.PROGRESSING.value, RolloutPhase.PAUSED.value, RolloutPhase.DEGRADED.value) and st.candidate_model_version:
            self.rollback(RolloutPhase.ABORTED, "CandidateRemoved", "spec.candidate was removed during the rollout")
            return self.out
        if cand is None and spec.stable is not None and spec.stable.name != st.stable_model_version:
            old = st.stable_model_version
            st.stable_model_version = spec.stable.name
            self.out.model_versions[spec.stable.name] = (ModelVersionPhase.SERVING.value, "set as stable in spec")
            if old:
                self.out.model_versions[old] = (ModelVersionPhase.RETIRED.value, f"replaced by {spec.stable.name}")
            self.event("Normal", "StableChanged", f"stable set to {spec.stable.name} without a canary (no candidate)")
        if st.phase not in TERMINAL:
            st.phase = RolloutPhase.PROMOTED.value
            if st.stable_model_version:
                self.out.model_versions.setdefault(st.stable_model_version, (ModelVersionPhase.SERVING.value, "serving as stable"))
        st.canary_weight = 0
        st.waiting_for = None
        st.message = f"serving {st.stable_model_version}" + (f"; last candidate {st.candidate_model_version} ({st.phase})" if st.candidate_model_version else "")
        return self.out

    def start(self, cand: str) -> None:
        st = self.st
        st.candidate_model_version = cand
        st.canary_weight = 0
        st.measurements = []
        self.enter_step(0)
        set_condition(st, "RolledBack", False, "NewCandidate", f"rolling out {cand}", self.world)
        if st.stable_model_version is None:
            self.promote("FirstVersion", "first version, nothing to compare with: served as stable without a canary")
            return
        st.phase = RolloutPhase.PROGRESSING.value
        self.out.model_versions[cand] = (None, "candidate of Rollout")
        self.event("Normal", "RolloutStarted", f"rolling out {cand} over {len(self.spec.steps)} steps (stable {st.stable_model_version})")

    def walk(self, assessments: dict[str, Assessment]) -> None:
        spec, st, world = self.spec, self.st, self.world
        for _ in range(len(spec.steps) + 1):
            i = st.current_step_index or 0
            if i >= len(spec.steps):
                self.promote("Promoted", f"all {len(spec.steps)} steps passed")
                return
            step = spec.steps[i]
            if step.set_weight is not None:
                w = step.set_weight
                if gateway_mode(spec) and w > 0:
                    need = traffic.gateway_canary_replicas(spec.serving.replicas, w)
                    if world.canary_available < need:
                        self.progressing(f"canary pods ready for {w}%: {world.canary_available}/{need} available")
                        return
                if w != st.canary_weight:
                    self.event("Normal", "WeightChanged", f"canary weight {st.canary_weight}% -> {w}%")
                st.canary_weight = w
                self.enter_step(i + 1)
                continue
            if step.pause is not None:
                if not step.pause.duration:
                    self.pause("PausedIndefinitely", f"`kubectl tuneloop promote` (indefinite pause at step {i + 1})")
                    return
                started = st.step_started_at or world.now
                end = started + dt.timedelta(seconds=parse_duration(step.pause.duration))
                if world.now < end:
                    self.progressing(f"pause until {end.strftime('%Y-%m-%dT%H:%M:%SZ')}")
                    return
                self.enter_step(i + 1)
                continue
            verdict = self.analyse(i, assessments)
            assessments = {}  # measurements belong to the step that was current when they were taken
            if verdict == Verdict.SUCCESSFUL:
                self.event("Normal", "AnalysisPassed", f"analysis at step {i + 1} passed")
                self.enter_step(i + 1)
                continue
            if verdict in (Verdict.FAILED, Verdict.ERROR):
                bad = [m for m in reversed(st.measurements) if m.step_index == i and m.phase in (
                    MeasurementPhase.FAILED.value if verdict == Verdict.FAILED else MeasurementPhase.ERROR.value,)]  # fmt: skip
                detail = bad[0].message if bad else "analysis failed"
                reason = "AnalysisFailed" if verdict == Verdict.FAILED else "AnalysisError"
                self.rollback(RolloutPhase.ROLLED_BACK, reason, f"{verdict.value} analysis at step {i + 1}: {detail}")
                return
            if verdict == Verdict.INCONCLUSIVE:
                self.pause("AnalysisInconclusive", f"a human: analysis at step {i + 1} inconclusive (promote or abort)")
                return
            done = {r.metric: r.count for r in st.metric_results}
            need = spec.steps[i].analysis.count or spec.analysis.count  # type: ignore[union-attr]
            progress = ", ".join(f"{m.name} {done.get(m.name, 0)}/{need}" for m in step_metrics(spec, i))
            self.progressing(f"analysis ({progress})")
            return

    def analyse(self, i: int, assessments: dict[str, Assessment]) -> Verdict:
        spec, st = self.spec, self.st
        metrics = step_metrics(spec, i)
        count = spec.steps[i].analysis.count or spec.analysis.count  # type: ignore[union-attr]
        results = {r.metric: r for r in st.metric_results}
        for m in metrics:
            a = assessments.get(m.name)
            if a is None:
                continue
            results[m.name] = record(results.get(m.name) or MetricResult(metric=m.name), a.phase)
            st.measurements.append(
                Measurement(metric=m.name, phase=a.phase, value=a.value, stable_value=a.stable_value,
                            message=a.message[:512], step_index=i, at=self.world.now)
            )
        st.measurements = st.measurements[-MAX_MEASUREMENTS:]
        verdicts = []
        for m in metrics:
            r = results.get(m.name) or MetricResult(metric=m.name)
            v = metric_verdict(r, spec.analysis, count, m)
            r.phase = v.value
            results[m.name] = r
            verdicts.append(v)
        st.metric_results = [results[m.name] for m in metrics]
        return run_verdict(verdicts)


def advance(spec: RolloutSpec, status: RolloutStatus | None, world: World, assessments: dict[str, Assessment] | None = None) -> Outcome:
    """One reconcile tick. `assessments` are this tick's measurements (metric name -> Assessment)."""
    out = _Machine(spec, status, world).run(assessments or {})
    out.status.observed_generation = world.generation if world.generation is not None else out.status.observed_generation
    return out
