"""One reconcile tick of a Rollout: read state, measure, decide (pure), apply, write status.

Order of effects on a rollback: the canary's traffic goes to 0 first (HTTPRoute weight, the
InferenceModelRewrite's candidate target in sharedBase mode, or the canary scaled to 0 in replica-weighted
mode), then everything else; time-to-rollback is measured from the first failing measurement to that first write.

sharedBase mode (serving.mode): before the state machine runs, `sync_adapters` observes every live pod of the one
shared Deployment (GET /v1/models), loads the adapters the pure `adapters.plan` says a pod lacks and unloads those
no longer wanted (after scaleDownDelaySeconds), and observes again; the state machine reads the result (`World.adapter_pods`).

Mirror steps (perVersion, serving.guard): `sync_mirror` does the same with every live stable pod's output guard —
observe (GET /tuneloop/mirror), set or clear what the pure `mirror.plan` says, observe again (`World.mirror_guards`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import logging
import math
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from tuneloop.api import deprecations
from tuneloop.api.common import Condition
from tuneloop.api.conditions import RolloutCondition, RolloutReason, find_condition
from tuneloop.api.conditions import set_condition as set_condition_in
from tuneloop.api.experiment import ExperimentResult, ExperimentStep
from tuneloop.api.modelversion import ModelVersion
from tuneloop.api.rollout import AnalysisMetric, DriftStatus, Rollout, RolloutPhase, RolloutSpec, RolloutStatus
from tuneloop.contract import names, ownership
from tuneloop.operator.builders import serving, traffic
from tuneloop.operator.kube import ApiError, KubeClient
from tuneloop.operator.kube import resources as r

from .. import policy
from ..analysis.experiment import Sample
from ..analysis.provider import HISTOGRAM_SIGNALS, MetricsProvider, Pods, ProviderError, ProviderFactory, WindowSignal
from . import adapters, drift, mirror, telemetry
from .desired import Desired, canary_active, desired
from .guard_api import GuardApi, HttpGuardApi
from .steps import (
    TERMINAL,
    Outcome,
    PodFailure,
    World,
    advance,
    canary_shortfall,
    due_metrics,
    experiment_due,
    next_wakeup,
    query_window,
    set_condition,
    shared_base,
)
from .verdicts import Assessment, QueryOutcome, assess
from .vllm_api import AdapterApi, HttpAdapterApi

log = logging.getLogger(__name__)
HASH_ANNOTATION = "tuneloop.dev/manifest-hash"


def manifest_hash(obj: dict) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class NotOwned(serving.ServingError):
    """An object the Rollout needs exists and is someone else's: it is neither patched nor adopted."""

    def __init__(self, exc: ownership.NotOwned):
        super().__init__(str(exc), RolloutReason.OBJECT_NOT_OWNED.value)


async def ensure(client: KubeClient, res: r.Resource, manifest: dict, *, replicas: int | None = None) -> dict:
    """Create, or patch when our manifest (or the replica count) changed since we last wrote it. An existing object
    the Rollout does not control (ownerReference) is never patched: NotOwned."""
    manifest = json.loads(json.dumps(manifest))
    digest = manifest_hash(manifest)
    manifest["metadata"].setdefault("annotations", {})[HASH_ANNOTATION] = digest
    ns, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
    existing = await client.get(res, ns, name)
    if existing is None:
        existing, created = await client.create(res, ns, manifest)  # 409 (a racing create) -> the existing one
        if created:
            return existing
    try:
        ownership.check_owned({"kind": res.kind, **existing}, manifest)
    except ownership.NotOwned as exc:
        raise NotOwned(exc) from None
    same = (existing.get("metadata", {}).get("annotations") or {}).get(HASH_ANNOTATION) == digest
    if same and (replicas is None or existing.get("spec", {}).get("replicas") == replicas):
        return existing
    patch = {"metadata": {"labels": manifest["metadata"]["labels"], "annotations": {HASH_ANNOTATION: digest}}, "spec": manifest["spec"]}
    return await client.patch(res, ns, name, patch)


async def scale(client: KubeClient, namespace: str, name: str, replicas: int) -> None:
    dep = await client.get(r.DEPLOYMENTS, namespace, name)
    if dep is not None and dep.get("spec", {}).get("replicas") != replicas:
        await client.patch(r.DEPLOYMENTS, namespace, name, {"spec": {"replicas": replicas}})


def available_for(dep: dict | None, mv: str | None) -> int:
    """Available pods of a Deployment's current template, which runs `mv` (0 while it runs another version).

    While the template changes, the Deployment's `availableReplicas` also counts the old template's pods, which still
    serve until they go: an old pod available and a new one not yet ready read available 1, updated 1. Only what
    cannot be an old pod counts — available minus every pod that is not updated (`replicas - updatedReplicas`)."""
    if dep is None or mv is None:
        return 0
    labels = dep.get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {})
    st = dep.get("status") or {}
    if labels.get(names.LABEL_MODEL_VERSION) != mv:
        return 0
    if (st.get("observedGeneration") or 0) < (dep.get("metadata", {}).get("generation") or 0):
        return 0
    updated = int(st.get("updatedReplicas") or 0)
    old = max(0, int(st.get("replicas") or 0) - updated)
    return max(0, min(updated, int(st.get("availableReplicas") or 0) - old))


def _time(value: Any) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00")) if value else None
    except ValueError:
        return None


def serving_pod_failures(pods: list[dict], shared_version: str | None = None) -> tuple[PodFailure, ...]:
    """vLLM pods that exited (phase Failed or Succeeded: vLLM's server can exit 0 after its engine died) or restarted,
    whatever the exit code; pods being deleted (scale-down, rollout) are not failures. Oldest first. A pod of a shared
    Deployment (sharedBase: no version label) is the serving version's (`shared_version`), in the stable role."""
    found: list[PodFailure] = []
    for pod in pods:
        meta, st = pod.get("metadata") or {}, pod.get("status") or {}
        labels = meta.get("labels") or {}
        role, mv = labels.get(names.LABEL_ROLE), labels.get(names.LABEL_MODEL_VERSION)
        if role == names.SHARED and mv is None and shared_version is not None:
            role, mv = names.STABLE, shared_version
        if meta.get("deletionTimestamp") or role is None or mv is None:
            continue
        ended = st.get("phase") in ("Failed", "Succeeded")
        for cs in st.get("containerStatuses") or []:
            term = ((cs.get("state") or {}).get("terminated") if ended else None) or (
                (cs.get("lastState") or {}).get("terminated") if int(cs.get("restartCount") or 0) > 0 else None)
            if not term:
                continue
            how = f"exited with code {term.get('exitCode')}" + (f" ({term['reason']})" if term.get("reason") else "")
            if not ended:
                how = f"restarted {cs.get('restartCount')} time(s), last {how}"
            detail = (term.get("message") or "").strip().splitlines()
            found.append(PodFailure(role, mv, meta.get("name", "?"), f"pod {meta.get('name')} {how}" + (f": {detail[-1][:200]}" if detail else ""),
                                    _time(term.get("finishedAt"))))
            break
        else:
            if ended:
                found.append(PodFailure(role, mv, meta.get("name", "?"), f"pod {meta.get('name')} ended ({st.get('phase')})", None))
    return tuple(sorted(found, key=lambda f: f.at or dt.datetime.min.replace(tzinfo=dt.UTC)))


async def measure(
    provider: MetricsProvider, metrics_: list[AnalysisMetric], spec: RolloutSpec, namespace: str, rollout: str, window: str | None = None,
    stable: str | None = None,
) -> dict[str, Assessment]:
    """Every metric of the canary (and the stable, for relative thresholds) over `window` (default
    analysis.window), as the provider answers it, assessed (pure). The canary's pods are the candidate's
    (`spec.candidate`), the stable's those of the `stable` ModelVersion."""
    window = window or spec.analysis.window

    # each role's own version only: the pods of a role's previous version serve (and are scraped) until they are gone
    versions = {names.CANARY: spec.candidate.name if spec.candidate else None, names.STABLE: stable}
    served = spec.served_model_name if shared_base(spec) else None  # sharedBase: each version's share of the served name

    async def one(m: AnalysisMetric, role: str) -> QueryOutcome:
        try:
            pods = Pods(namespace, rollout, role=role, model_version=versions[role], served_model=served)
            return QueryOutcome(value=await provider.measure(m, pods, window))
        except ProviderError as exc:
            return QueryOutcome(error=str(exc))

    async def metric(m: AnalysisMetric) -> tuple[str, Assessment]:
        calls = [one(m, names.CANARY)]
        if m.max_relative_to_stable is not None:
            calls.append(one(m, names.STABLE))
        got = await asyncio.gather(*calls)
        return m.name, assess(m, spec.analysis, got[0], got[1] if len(got) > 1 else None)

    return dict(await asyncio.gather(*(metric(m) for m in metrics_)))


async def look_at_experiment(provider: MetricsProvider, step: ExperimentStep, namespace: str, rollout: str, window: str,
                             candidate: str | None, stable: str | None) -> Sample:
    """One look at an A/B experiment: each arm's counts over `window` (since the split took effect), the canary's pods
    of the candidate and the stable's of the serving version. A provider error is the look's error (never a decision)."""

    async def arm(role: str, mv: str | None) -> object:
        try:
            return await provider.counts(step.metric, Pods(namespace, rollout, role=role, model_version=mv), window)
        except ProviderError as exc:
            return exc

    got = await asyncio.gather(arm(names.CANARY, candidate), arm(names.STABLE, stable))
    errors = [f"{role} query failed: {g}" for role, g in zip((names.CANARY, names.STABLE), got, strict=True) if isinstance(g, ProviderError)]
    if errors:
        return Sample(error="; ".join(errors))
    return Sample(candidate=got[0], stable=got[1])  # type: ignore[arg-type]


# which drift signals a provider's signal feeds (a failed answer leaves them unknown)
_FEEDS = {WindowSignal.PROMPT_TOKENS: [drift.PROMPT], WindowSignal.GENERATION_TOKENS: [drift.GENERATION],
          WindowSignal.REQUESTS: [drift.ERROR_RATE, drift.LATENCY], WindowSignal.ERRORS: [drift.ERROR_RATE],
          WindowSignal.LATENCY_P95: [drift.LATENCY]}  # fmt: skip


def _number(v: float | None) -> float | None:
    return None if v is None or math.isnan(v) else float(v)


async def measure_drift_window(provider: MetricsProvider, namespace: str, rollout: str, model_version: str | None, window: str) -> drift.Window:
    """One drift-watch window of the serving version's pods (None: every serving pod of the Rollout, sharedBase): the
    token histograms' bucket increases, requests, 5xx responses and the p95 latency. A signal without an answer is named
    in `failed` under the drift signal(s) it feeds."""
    pods = Pods(namespace, rollout, model_version=model_version)

    async def one(sig: WindowSignal) -> tuple[WindowSignal, object]:
        try:
            if sig in HISTOGRAM_SIGNALS:
                return sig, await provider.histogram(sig, pods, window)
            return sig, await provider.value(sig, pods, window)
        except ProviderError as exc:
            return sig, exc

    got = dict(await asyncio.gather(*(one(sig) for sig in WindowSignal)))
    failed = {d: str(v) for sig, v in got.items() if isinstance(v, ProviderError) for d in _FEEDS[sig]}
    val = {sig: (None if isinstance(v, ProviderError) else v) for sig, v in got.items()}
    return drift.Window(prompt=val[WindowSignal.PROMPT_TOKENS], generation=val[WindowSignal.GENERATION_TOKENS],  # type: ignore[arg-type]
                        requests=_number(val[WindowSignal.REQUESTS]), errors=_number(val[WindowSignal.ERRORS]),  # type: ignore[arg-type]
                        latency_p95=_number(val[WindowSignal.LATENCY_P95]), failed=failed)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Problem:
    """Why a ModelVersion is not rolled out: a condition reason and a message."""

    reason: str
    message: str


def candidate_problem(spec: RolloutSpec, mv: ModelVersion) -> Problem | None:
    """A candidate must have passed its evaluation: Rejected/Failed never, one that lost to the serving version
    (its record's champion/challenger outcome Worse) never, NotEvaluated only when the Rollout says
    allowUnevaluatedCandidate."""
    name = mv.metadata.name
    raw_verdict = mv.spec.evaluation.verdict
    verdict = str(getattr(raw_verdict, "value", raw_verdict))
    if (mv.status and mv.status.phase == "Rejected") or verdict == "Failed":
        return Problem(RolloutReason.CANDIDATE_REJECTED.value, f"ModelVersion {name} was Rejected by its evaluation gates; it is not rolled out")
    serving = mv.spec.evaluation.serving
    if serving is not None and str(getattr(serving.outcome, "value", serving.outcome)) == "Worse":
        return Problem(
            RolloutReason.CANDIDATE_LOST_TO_SERVING.value,
            f"ModelVersion {name} lost to the serving version {serving.model_version or '(unnamed)'} it would replace "
            f"({serving.reason}); it is not rolled out",
        )
    if verdict != "Passed" and not spec.allow_unevaluated_candidate:
        return Problem(
            RolloutReason.CANDIDATE_NOT_EVALUATED.value,
            f"ModelVersion {name} was never evaluated (spec.evaluation.verdict {verdict}); it is not rolled out. "
            "Evaluate it, or set spec.allowUnevaluatedCandidate: true on the Rollout to roll it out anyway",
        )
    return None


def note_deprecations(obj: dict[str, Any], out: Outcome, world: World) -> None:
    """The deprecated fields the Rollout sets: condition DeprecatedFields, and a Warning event (logged by `log_tick`)
    when that changes (api.deprecations)."""
    uses = deprecations.deprecated_fields("Rollout", obj.get("spec"))
    message = deprecations.note(out.status.conditions, uses, now=world.now, generation=world.generation)
    if message:
        out.events.append(("Warning", deprecations.EVENT_REASON, message))


def log_tick(ns: str, name: str, before: RolloutStatus | None, out: Outcome, assessments: dict[str, Assessment]) -> None:
    """One line per transition: measurements, step, weight, phase, and every event (verdicts, promotion, rollback)."""
    st = out.status
    who = f"rollout {ns}/{name}"
    if assessments:
        taken = ", ".join(f"{m}={a.value if a.value is not None else '-'} {a.phase.value if hasattr(a.phase, 'value') else a.phase}"
                          for m, a in assessments.items())  # fmt: skip
        log.info("%s: step %s measured %s", who, st.step or "-", taken)
    old_step = before.current_step_index if before else None
    if st.current_step_index != old_step:
        log.info("%s: step %s (index %s -> %s)", who, st.step or "-", old_step, st.current_step_index)
    old_weight = before.canary_weight if before else 0
    if st.canary_weight != old_weight:
        log.info("%s: canary weight %s%% -> %s%%", who, old_weight, st.canary_weight)
    old_phase = None if before is None else str(getattr(before.phase, "value", before.phase))
    if st.phase != old_phase:
        log.info("%s: phase %s -> %s: %s", who, old_phase, st.phase, st.message)
    for type_, reason, message in out.events:
        (log.warning if type_ == "Warning" else log.info)("%s: %s: %s", who, reason, message)


ADAPTER_POLL = 2.0  # sharedBase: seconds between looks at pods that lack an adapter they must serve
INFERENCE_EXTENSION_MISSING = (
    "the API server does not serve InferenceModelRewrite (inference.networking.x-k8s.io/v1alpha2): serving.mode sharedBase splits "
    "traffic between adapter names only through the Gateway API Inference Extension; install its CRDs and an InferencePool with "
    "its endpoint picker for the Rollout's pods (docs/rollout.md, sharedBase)")


def pod_url(pod: dict, port: int) -> str | None:
    """http://POD_IP:PORT of a running pod (vLLM's own port, not the guard's); None while it has no IP or is not running."""
    st = pod.get("status") or {}
    ip = st.get("podIP")
    if not ip or st.get("phase") != "Running":
        return None
    return f"http://[{ip}]:{port}" if ":" in ip else f"http://{ip}:{port}"


class Reconciler:
    """Everything one tick needs besides the Rollout: the API client, settings, and the metrics provider
    (`provider_factory(ref)`, ref = spec.analysis.provider, else spec.analysis.prometheusAddress, else `metrics_address`;
    the operator's wiring, `handlers.py`, passes Prometheus behind the admin's allowlist: `analysis.prometheus.Endpoints`)."""

    def __init__(self, client: KubeClient, config: serving.ServingConfig, metrics_address: str, *, provider_factory: ProviderFactory,
                 serving_from: list[dict[str, Any]] | None = None, adapter_api: AdapterApi | None = None,
                 operator_namespace: str | None = None, guard_api: GuardApi | None = None):
        self.client = client
        self.config = config
        self.metrics_address = metrics_address
        self.provider_factory = provider_factory
        self.serving_from = serving_from  # NetworkPolicy peers of the vLLM pods (None: no NetworkPolicy)
        self.adapter_api: AdapterApi = adapter_api or HttpAdapterApi()  # sharedBase: vLLM's runtime LoRA API on each pod
        self.operator_namespace = operator_namespace  # sharedBase: the operator calls each vLLM pod (NetworkPolicy peer)
        self.guard_api: GuardApi = guard_api or HttpGuardApi()  # mirror steps: the stable pods' output guards

    async def model_version(self, spec: RolloutSpec, namespace: str, name: str | None) -> tuple[ModelVersion | None, Problem | None]:
        if name is None:
            return None, None
        raw = await self.client.get(r.MODELVERSIONS, namespace, name)
        if raw is None:
            return None, Problem(RolloutReason.MODEL_VERSION_NOT_FOUND.value, f"ModelVersion {name} not found in namespace {namespace}")
        try:
            mv = ModelVersion.model_validate(raw)
        except ValidationError as exc:
            return None, Problem(RolloutReason.MODEL_VERSION_INVALID.value, f"ModelVersion {name} is invalid: {exc.errors()[0]['msg']}")
        try:
            if shared_base(spec):
                serving.check_shareable(spec, mv)
            else:
                serving.vllm_args(spec, mv)
        except serving.ServingError as exc:
            return mv, Problem(exc.reason, f"ModelVersion {name} cannot be served: {exc}")
        return mv, None

    async def tick(self, obj: dict, now: dt.datetime | None = None) -> float:
        """Reconcile once; returns seconds until the next tick is needed."""
        now = now or utcnow()
        meta = obj["metadata"]
        ns, name = meta["namespace"], meta["name"]
        try:
            ro = Rollout.model_validate(obj)
            refused = policy.rollout_problems(ro.spec, self.config.policy)
        except ValidationError as exc:
            err = exc.errors()[0]
            refused = [(".".join(str(p) for p in err["loc"]), err["msg"])]
        if refused:
            await self.refuse(obj, f"invalid Rollout at {refused[0][0]}: {refused[0][1]}", now)
            return 30.0
        spec = ro.spec
        status = ro.status if obj.get("status") else None
        stable_name = (status.stable_model_version if status else None) or (spec.stable.name if spec.stable else None)
        cand_name = spec.candidate.name if spec.candidate else None
        stable_mv, err_s = await self.model_version(spec, ns, stable_name)
        cand_mv, err_c = await self.model_version(spec, ns, cand_name if cand_name != stable_name else None)
        if cand_mv is not None and err_c is None:
            err_c = candidate_problem(spec, cand_mv)
        if shared_base(spec) and cand_mv is not None and err_c is None and stable_mv is not None and err_s is None:
            try:
                serving.check_shareable(spec, cand_mv, stable_mv)
            except serving.ServingError as exc:
                err_c = Problem(exc.reason, f"ModelVersion {cand_name} cannot be served: {exc}")
        problem = err_c or err_s
        pods = await self.client.list(r.PODS, ns, labels=names.rollout_selector(name)) if (stable_name or cand_name) else []
        if shared_base(spec):
            shareable = {m.metadata.name: m for m, err in ((stable_mv, err_s), (cand_mv, err_c)) if m is not None and err is None}
            world, adapters_settled = await self.observe_shared(spec, status, ns, name, pods, shareable, problem, now, meta.get("generation"))
        else:
            adapters_settled = True
            world = await self.observe_per_version(obj, spec, status, stable_name, cand_name, pods, problem, now)
        assessments: dict[str, Assessment] = {}
        due = due_metrics(spec, status, now) if not world.serving_error and canary_shortfall(spec, status, world) is None else []
        if due:
            provider = self.provider_factory(spec.analysis.provider_ref or self.metrics_address)
            assessments = await measure(provider, due, spec, ns, name, window=query_window(spec, status, now), stable=stable_name)
            for mname, a in assessments.items():
                telemetry.measured(ns, name, mname, a.phase, a.value)
        sample = await self.experiment_look(spec, status, world, ns, name, stable_name) if not problem else None
        out = advance(spec, status, world, assessments, sample)
        note_deprecations(obj, out, world)
        log_tick(ns, name, status, out, assessments)
        watched = stable_mv if err_s is None else None
        drift_due, drift_conditions = await self.watch_drift(ns, name, spec, out, watched, world)
        servable = {m.metadata.name: m for m, err in ((stable_mv, err_s), (cand_mv, err_c)) if m is not None and err is None}
        await self.apply(obj, spec, out, servable, world)
        if drift_conditions and out.status.drift is not None:
            await self.mark_drift(ns, out.status.drift.model_version, drift_conditions, world.now)
        wake = next_wakeup(spec, out.status, now)
        if drift_due is not None:
            wake = min(wake, max(0.05, (drift_due - now).total_seconds()))
        if not adapters_settled:  # sharedBase: a pod lacks an adapter it must serve (starting, restarted): look again soon
            wake = min(wake, ADAPTER_POLL)
        return wake

    async def observe_per_version(self, obj: dict, spec: RolloutSpec, status: RolloutStatus | None, stable: str | None, cand: str | None,
                                  pods: list[dict], problem: Problem | None, now: dt.datetime) -> World:
        """The World of a perVersion tick: each role's Deployment, counted for its own ModelVersion only; the stable
        guards' mirror (set or cleared first: `sync_mirror`) when a mirror step runs or ended."""
        ns, name, generation = obj["metadata"]["namespace"], obj["metadata"]["name"], obj["metadata"].get("generation")
        guards: tuple[int, int, int] | None = None
        refused: str | None = None
        if mirror.watching(status) and spec.serving.guard is not None:
            guards, refused = await self.sync_mirror(obj, spec, status, pods)
        canary_dep = await self.client.get(r.DEPLOYMENTS, ns, names.deployment_name(name, names.CANARY))
        stable_dep = await self.client.get(r.DEPLOYMENTS, ns, names.deployment_name(name, names.STABLE)) if stable else None
        return World(
            now=now,
            canary_available=available_for(canary_dep, cand),
            stable_available=available_for(stable_dep, stable),
            pod_failures=serving_pod_failures(pods),
            serving_error=problem.message if problem else None,
            serving_reason=problem.reason if problem else RolloutReason.SERVING_ERROR.value,
            generation=generation,
            mirror_guards=guards,
            mirror_error=refused,
        )

    async def sync_mirror(self, obj: dict, spec: RolloutSpec, status: RolloutStatus | None,
                          pods: list[dict]) -> tuple[tuple[int, int, int], str | None]:
        """Every live stable pod's guard holds the mirror `status.mirror` wants (or none once it ended): observe, set or
        clear what `mirror.plan` says (concurrently), observe again. ((guards holding it, live stable pods, stale ones),
        the first refusal of this tick's writes)."""
        ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        assert spec.serving.guard is not None
        want = mirror.config(status, serving.mirror_target(obj, spec))
        urls: dict[str, str] = {}
        for p in pods:  # every running stable pod, whatever its version (after a promotion the old ones may still hold it)
            meta = p.get("metadata") or {}
            url = pod_url(p, spec.serving.guard.port)
            if (meta.get("labels") or {}).get(names.LABEL_ROLE) == names.STABLE and url is not None and not meta.get("deletionTimestamp"):
                urls[meta["name"]] = url

        async def observe(pod: str) -> mirror.GuardMirror:
            return mirror.GuardMirror(pod, await self.guard_api.mirror(urls[pod]))

        errors: list[str] = []

        async def write(pod: str, what: dict[str, Any] | None) -> None:
            err = await (self.guard_api.set_mirror(urls[pod], what) if what is not None else self.guard_api.clear_mirror(urls[pod]))
            log.info("rollout %s/%s: pod %s: %s mirror: %s", ns, name, pod, "set" if what is not None else "clear", err or "done")
            if err:
                errors.append(f"pod {pod}: {err}")

        view = list(await asyncio.gather(*(observe(p) for p in sorted(urls))))
        todo = mirror.plan(view, want)
        if not todo.empty:
            await asyncio.gather(*(write(p, want) for p in todo.set), *(write(p, None) for p in todo.clear))
            again = {g.pod: g for g in await asyncio.gather(*(observe(p) for p in todo.set + todo.clear))}
            view = [again.get(g.pod, g) for g in view]
        return mirror.coverage(view, want), (sorted(errors)[0][:300] if errors else None)

    async def experiment_look(self, spec: RolloutSpec, status: RolloutStatus | None, world: World, ns: str, name: str,
                              stable: str | None) -> Sample | None:
        """This tick's look at the running A/B experiment, when one is due and the canary's pods serve (else None)."""
        look = experiment_due(spec, status, world.now) if canary_shortfall(spec, status, world) is None else None
        if look is None:
            return None
        provider = self.provider_factory(spec.analysis.provider_ref or self.metrics_address)
        return await look_at_experiment(provider, look[0], ns, name, look[1], spec.candidate.name if spec.candidate else None, stable)

    # --- sharedBase ------------------------------------------------------------------------------------------------
    async def observe_shared(self, spec: RolloutSpec, status: RolloutStatus | None, ns: str, name: str, pods: list[dict],
                             mvs: dict[str, ModelVersion], problem: Problem | None, now: dt.datetime,
                             generation: int | None) -> tuple[World, bool]:
        """The World of a sharedBase tick: the InferenceModelRewrite API present (else the Rollout says what is
        missing), the adapters each live pod of the shared Deployment serves after this tick's loads and unloads
        (`sync_adapters`), the serving version's and the candidate's coverage, a load the candidate failed. `mvs`: the
        stable and candidate ModelVersions that can be served."""
        stable = (status.stable_model_version if status else None) or (spec.stable.name if spec.stable else None) \
            or (spec.candidate.name if spec.candidate else None)  # fmt: skip
        cand = spec.candidate.name if spec.candidate and spec.candidate.name != stable else None
        if stable is not None and problem is None and not await self.rewrite_api_installed(spec, ns, name):
            problem = Problem(RolloutReason.INFERENCE_EXTENSION_MISSING.value, INFERENCE_EXTENSION_MISSING)
        live = [p for p in pods if (p.get("metadata", {}).get("labels") or {}).get(names.LABEL_ROLE) == names.SHARED
                and not p["metadata"].get("deletionTimestamp") and (p.get("status") or {}).get("phase") not in ("Failed", "Succeeded")]
        want = adapters.wanted(spec, status, stable=stable, candidate_servable=cand is not None and cand in mvs)
        want = frozenset(a for a in want if a in mvs)  # a version that cannot be served (not found, invalid, refused) is not loaded
        hold = adapters.holding(status, now)
        view, errors = await self.sync_adapters(spec, ns, name, live, want, hold, mvs)
        failures = list(serving_pod_failures(pods, shared_version=stable))
        if stable is not None and errors.get(stable):  # the serving version's adapter (or the first version's) cannot be loaded
            failures.append(PodFailure(names.STABLE, stable, "?", f"a pod refused to load adapter {stable}: {errors[stable]}", now))
        world = World(
            now=now,
            stable_available=adapters.coverage(view, stable)[0],
            pod_failures=tuple(failures),
            serving_error=problem.message if problem else None,
            serving_reason=problem.reason if problem else RolloutReason.SERVING_ERROR.value,
            adapter_pods=adapters.coverage(view, cand),
            adapter_error=f"a pod refused to load adapter {cand}: {errors[cand]}" if cand is not None and errors.get(cand) else None,
            generation=generation,
        )
        return world, adapters.settled(view, want, hold=hold)

    async def rewrite_api_installed(self, spec: RolloutSpec, ns: str, name: str) -> bool:
        """Whether the API server serves InferenceModelRewrite (the Inference Extension's CRDs are installed): the
        Rollout's own object exists, or listing the kind in the namespace does not answer 404."""
        rewrite = traffic.rewrite_name({"metadata": {"name": name}}, spec)
        try:
            if await self.client.get(r.INFERENCEMODELREWRITES, ns, rewrite) is not None:
                return True
            await self.client.list(r.INFERENCEMODELREWRITES, ns, labels=names.rollout_selector(name))
            return True
        except ApiError as exc:
            if exc.not_found:
                return False
            raise

    async def sync_adapters(self, spec: RolloutSpec, ns: str, name: str, live: list[dict], want: frozenset[str], hold: bool,
                            mvs: dict[str, ModelVersion]) -> tuple[list[adapters.PodAdapters], dict[str, str]]:
        """Observe every live shared pod, load and unload what `adapters.plan` says (concurrently), observe again.
        Returns the view after the changes and, per adapter, the latest refusal to load it."""
        urls = {p["metadata"]["name"]: pod_url(p, spec.serving.port) for p in live}

        async def observe(pod: str) -> adapters.PodAdapters:
            url = urls[pod]
            return adapters.PodAdapters(pod, await self.adapter_api.adapters(url) if url else None)

        view = list(await asyncio.gather(*(observe(p) for p in urls)))
        todo = adapters.plan(view, want, hold=hold)
        if todo.empty:
            return view, {}
        errors: dict[str, str] = {}

        async def load(pod: str, adapter: str) -> None:
            err = await self.adapter_api.load(urls[pod], adapter, serving.adapter_path(mvs[adapter]))  # type: ignore[arg-type]
            if err:
                errors[adapter] = f"pod {pod}: {err}"
            log.info("rollout %s/%s: pod %s: load adapter %s: %s", ns, name, pod, adapter, err or "loaded")

        async def unload(pod: str, adapter: str) -> None:
            err = await self.adapter_api.unload(urls[pod], adapter)  # type: ignore[arg-type]
            log.info("rollout %s/%s: pod %s: unload adapter %s: %s", ns, name, pod, adapter, err or "unloaded")

        await asyncio.gather(*(load(p, a) for p, a in todo.load), *(unload(p, a) for p, a in todo.unload))
        touched = {p for p, _ in todo.load + todo.unload}
        again = {v.pod: v for v in await asyncio.gather(*(observe(p) for p in touched))}
        return [again.get(v.pod, v) for v in view], errors

    async def refuse(self, obj: dict, msg: str, now: dt.datetime) -> None:
        """An invalid or refused spec: Degraded, waiting for a valid spec; what the status knows (the stable version,
        the measurements) is kept, only the phase changes."""
        meta = obj["metadata"]
        try:
            kept = RolloutStatus.model_validate(obj.get("status") or {})
        except ValidationError:
            kept = RolloutStatus()
        if (obj.get("status") or {}).get("message") != msg:
            log.warning("rollout %s/%s: %s", meta["namespace"], meta["name"], msg)
        kept.phase, kept.message, kept.waiting_for = RolloutPhase.DEGRADED, msg, "a valid spec"
        set_condition(kept, RolloutCondition.PROGRESSING, False, RolloutReason.INVALID_SPEC, msg,
                      World(now=now, generation=meta.get("generation")))
        await self.write_status(obj, kept)

    async def watch_drift(
        self, ns: str, name: str, spec: RolloutSpec, out: Outcome, mv: ModelVersion | None, world: World
    ) -> tuple[dt.datetime | None, dict[str, drift.ConditionVerdict]]:
        """The drift watch of the serving version (status.stableModelVersion): at most once per driftWatch.interval,
        measure one window (I/O), judge it (pure `drift`), record it in status, the conditions and the gauges.
        Returns when the next comparison is due, and this comparison's Drifted/Degraded verdicts (for the ModelVersion)."""
        st, wd = out.status, spec.drift_watch
        serving_name = st.stable_model_version if mv is not None and mv.metadata.name == st.stable_model_version else None
        if st.phase not in TERMINAL:  # a rollout in progress is the analysis' business; the watch resumes after it
            serving_name = None
        due = drift.next_check_at(wd, st.drift, serving_name)
        if due is None or serving_name is None or mv is None:
            return None, {}
        if due > world.now:
            return due, {}
        d = st.drift.model_copy(deep=True) if st.drift is not None and st.drift.model_version == serving_name else None
        if d is None:
            d = DriftStatus(model_version=serving_name, since=world.now)
            log.info("rollout %s/%s: drift watch of %s begins", ns, name, serving_name)
        provider = self.provider_factory(spec.analysis.provider_ref or self.metrics_address)
        window = await measure_drift_window(provider, ns, name, None if shared_base(spec) else serving_name, wd.window)
        d = drift.record_baseline(wd, d, window, world.now)  # the values at promotion; a missing one is retried
        d.signals = drift.signals(wd, mv.spec.lineage.token_lengths, d, window)
        d.checked_at = world.now
        st.drift = d
        verdicts = {RolloutCondition.DRIFTED.value: drift.drifted(d.signals), RolloutCondition.DEGRADED.value: drift.degraded(d.signals)}
        for type_, v in verdicts.items():
            old = find_condition(st.conditions, type_)
            if old is None or old.status != v.status or old.reason != v.reason:
                log.info("rollout %s/%s: %s %s (%s): %s", ns, name, type_, v.status, v.reason, v.message)
                if v.status == "True":
                    out.events.append(("Warning", v.reason, f"{serving_name}: {v.message}"))
                elif old is not None and old.status == "True":
                    out.events.append(("Normal", v.reason, f"{serving_name}: {v.message}"))
            set_condition(st, type_, v.status, v.reason, f"{serving_name}: {v.message}"[:1024], world)
        telemetry.set_drift(ns, name, serving_name, drift.gauge_values(d.signals))
        return drift.next_check_at(wd, d, serving_name), verdicts

    async def apply(self, obj: dict, spec: RolloutSpec, out: Outcome, mvs: dict[str, ModelVersion], world: World) -> None:
        meta = obj["metadata"]
        ns, name = meta["namespace"], meta["name"]
        want = desired(spec, out.status, world.canary_available, world.now)
        if out.rolled_back and not want.serves_nothing:
            try:
                await self.cut_canary_traffic(obj, spec, ns, name, out.status.stable_model_version)
            except (NotOwned, serving.ServingError):
                pass  # apply_serving meets the same object (or the missing API) and reports it
            if out.first_failure_at is not None:
                telemetry.TIME_TO_ROLLBACK.observe(max(0.0, (utcnow() - out.first_failure_at).total_seconds()))
        try:
            if not want.serves_nothing:  # nothing to serve yet (phase Waiting): no Deployment, Service or HTTPRoute
                if shared_base(spec):
                    await self.apply_shared(obj, spec, out.status, mvs)
                else:
                    await self.apply_serving(obj, spec, want, mvs)
                if find_condition(out.status.conditions, RolloutCondition.OBJECTS_OWNED) is not None:
                    set_condition(out.status, RolloutCondition.OBJECTS_OWNED, True, RolloutReason.OWNED,
                                  "every object the Rollout needs is its own", world)
        except NotOwned as exc:  # someone else's Service/HTTPRoute/Deployment under a name the Rollout needs
            out.status.phase = RolloutPhase.DEGRADED
            out.status.message = str(exc)
            out.status.waiting_for = "the conflicting object to be deleted or renamed"
            set_condition(out.status, RolloutCondition.OBJECTS_OWNED, False, RolloutReason.OBJECT_NOT_OWNED, str(exc), world)
        except serving.ServingError as exc:
            out.status.phase = RolloutPhase.DEGRADED
            out.status.message = str(exc)
            out.status.waiting_for = "a servable ModelVersion"
        await self.write_status(obj, out.status)
        telemetry.set_state(ns, name, out.status.phase, out.status.canary_weight)
        for mv_name, (phase, message) in out.model_versions.items():
            await self.mark_model_version(ns, mv_name, name, phase, message)
        for mv_name, result in out.experiments.items():
            await self.mark_experiment(ns, mv_name, name, result)
        for type_, reason, message in out.events:
            try:
                await self.client.event(obj, type=type_, reason=reason, message=message)
            except ApiError as exc:  # events are best effort
                log.warning("could not record event %s on %s/%s: %s", reason, ns, name, exc)
        if out.clear_flags:
            await self.client.patch(r.ROLLOUTS, ns, name, {"spec": {"promote": False, "abort": False}})

    async def cut_canary_traffic(self, obj: dict, spec: RolloutSpec, ns: str, name: str, stable: str | None = None) -> None:
        if shared_base(spec):
            if stable is not None:
                await self.ensure_rewrite(obj, spec, stable, None, 0)
        elif spec.traffic_routing.gateway_api is not None:
            await ensure(self.client, r.HTTPROUTES, traffic.build_http_route(obj, spec, 0))
        else:
            await scale(self.client, ns, names.deployment_name(name, names.CANARY), 0)

    async def apply_serving(self, obj: dict, spec: RolloutSpec, want: Desired, mvs: dict[str, ModelVersion]) -> None:
        ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        gateway = spec.traffic_routing.gateway_api is not None
        if self.serving_from is not None:  # before any pod: vLLM is reachable only from the admin's peers
            await ensure(self.client, r.NETWORKPOLICIES, traffic.serving_network_policy(obj, spec, self.serving_from, self.operator_peers()))
        # traffic away from the canary before scaling it down; toward it only after its pods exist
        if gateway and want.canary_replicas == 0:
            await ensure(self.client, r.HTTPROUTES, traffic.build_http_route(obj, spec, 0))
        for role, mv_name, replicas in [(names.STABLE, want.stable_mv, want.stable_replicas), (names.CANARY, want.canary_mv, want.canary_replicas)]:
            dep_name = names.deployment_name(name, role)
            if gateway:
                await ensure(self.client, r.SERVICES, serving.build_service(obj, spec, role))
            if role == names.CANARY and want.canary_hold:
                continue  # its traffic is gone; its pods stay until scaleDownDelaySeconds have passed
            if mv_name is None or mv_name not in mvs:
                if role == names.CANARY:
                    await scale(self.client, ns, dep_name, 0)
                continue  # an unservable stable keeps whatever it runs now: never scale stable away
            manifest = serving.build_deployment(obj, spec, role, mvs[mv_name], replicas, self.config)
            await ensure(self.client, r.DEPLOYMENTS, manifest, replicas=replicas)
        if gateway:
            await ensure(self.client, r.HTTPROUTES, traffic.build_http_route(obj, spec, want.canary_weight))
        else:
            await ensure(self.client, r.SERVICES, traffic.build_shared_service(obj, spec))

    def operator_peers(self) -> list[dict[str, Any]]:
        """The operator's namespace as a NetworkPolicy peer (it calls the pods: runtime LoRA loading, the guards' mirror)."""
        ns = self.operator_namespace
        return [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}] if ns else []

    async def apply_shared(self, obj: dict, spec: RolloutSpec, st: RolloutStatus, mvs: dict[str, ModelVersion]) -> None:
        """sharedBase: the one Deployment of the base (built from the serving version: its template is the same for every
        version it may serve, so this patches nothing after a promotion) and the InferenceModelRewrite's weights. The
        adapters themselves are `sync_adapters`' (next tick, before any weight moves)."""
        ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        stable = st.stable_model_version
        if self.serving_from is not None:  # the operator too: it loads and lists adapters on every pod
            peers = self.serving_from + ([{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": self.operator_namespace}}}]
                                         if self.operator_namespace else [])
            await ensure(self.client, r.NETWORKPOLICIES, traffic.serving_network_policy(obj, spec, peers))
        if stable is None:
            return
        if stable in mvs:  # an unservable stable keeps whatever runs now
            replicas = spec.serving.replicas
            await ensure(self.client, r.DEPLOYMENTS, serving.build_shared_deployment(obj, spec, mvs[stable], replicas, self.config),
                         replicas=replicas)
        active = canary_active(st)
        await self.ensure_rewrite(obj, spec, stable, st.candidate_model_version if active else None, st.canary_weight if active else 0)
        log.debug("rollout %s/%s: shared Deployment and InferenceModelRewrite applied", ns, name)

    async def ensure_rewrite(self, obj: dict, spec: RolloutSpec, stable: str, candidate: str | None, weight: int) -> None:
        try:
            await ensure(self.client, r.INFERENCEMODELREWRITES, traffic.build_inference_model_rewrite(obj, spec, stable, candidate, weight))
        except ApiError as exc:
            if exc.not_found:
                raise serving.ServingError(INFERENCE_EXTENSION_MISSING, RolloutReason.INFERENCE_EXTENSION_MISSING.value) from None
            raise

    async def write_status(self, obj: dict, status: RolloutStatus) -> None:
        new = status.model_dump(by_alias=True, mode="json")
        old = obj.get("status") or {}
        if all(old.get(k) == v for k, v in new.items() if v is not None) and not any(old.get(k) is not None for k, v in new.items() if v is None):
            return
        meta = obj["metadata"]
        await self.client.patch(r.ROLLOUTS, meta["namespace"], meta["name"], {"status": new}, subresource="status")

    async def mark_drift(self, ns: str, mv_name: str, verdicts: dict[str, drift.ConditionVerdict], now: dt.datetime) -> None:
        """The serving ModelVersion's Drifted/Degraded conditions (this reconciler owns those two; the FineTuneJob's
        registration owns Evaluated/Ready): written only when a status or reason changed."""
        raw = await self.client.get(r.MODELVERSIONS, ns, mv_name)
        if raw is None:
            return
        conds = [Condition.model_validate(c) for c in (raw.get("status") or {}).get("conditions") or []]
        changed = False
        for type_, v in verdicts.items():
            cur = find_condition(conds, type_)
            if cur is not None and cur.status == v.status and cur.reason == v.reason:
                continue
            set_condition_in(conds, type_, v.status, v.reason, v.message[:1024], now=now.replace(microsecond=0))
            changed = True
        if changed:
            await self.client.patch(r.MODELVERSIONS, ns, mv_name, {"status": {"conditions": [c.wire() for c in conds]}},
                                    subresource="status")

    async def mark_model_version(self, ns: str, mv_name: str, rollout: str, phase: str | None, message: str) -> None:
        raw = await self.client.get(r.MODELVERSIONS, ns, mv_name)
        if raw is None:
            return
        cur = raw.get("status") or {}
        patch: dict[str, Any] = {"rollout": rollout}
        if phase is not None:
            patch |= {"phase": phase, "message": message}
        if all(cur.get(k) == v for k, v in patch.items()):
            return
        await self.client.patch(r.MODELVERSIONS, ns, mv_name, {"status": patch}, subresource="status")

    async def mark_experiment(self, ns: str, mv_name: str, rollout: str, result: ExperimentResult) -> None:
        """The decided A/B experiment on the candidate's ModelVersion (status.experiment; `kubectl tuneloop report` prints it)."""
        raw = await self.client.get(r.MODELVERSIONS, ns, mv_name)
        if raw is None:
            return
        want = result.wire()
        if (raw.get("status") or {}).get("experiment") == want:
            return
        await self.client.patch(r.MODELVERSIONS, ns, mv_name, {"status": {"rollout": rollout, "experiment": want}}, subresource="status")
