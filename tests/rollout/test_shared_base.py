"""serving.mode sharedBase as pure code: the API's rules, the shared Deployment and the InferenceModelRewrite (golden),
which adapters each pod must load or unload, and the step machine's gate on the candidate adapter (no I/O)."""

from __future__ import annotations

import copy
import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from tuneloop.api.modelversion import ModelVersion
from tuneloop.api.rollout import MeasurementPhase, Rollout, RolloutPhase, RolloutStatus
from tuneloop.contract import names
from tuneloop.operator.analysis.prometheus import PrometheusError, PrometheusProvider
from tuneloop.operator.analysis.prometheus import queries as q
from tuneloop.operator.analysis.provider import Pods
from tuneloop.operator.builders import serving, traffic
from tuneloop.operator.builders.serving import ServingError
from tuneloop.operator.rollout import adapters
from tuneloop.operator.rollout.adapters import PodAdapters
from tuneloop.operator.rollout.steps import World, advance, canary_shortfall, due_metrics, weights_text
from tuneloop.operator.rollout.verdicts import Assessment

from . import samples
from .test_builders import CONFIG, _k8s_valid, check_golden

pytestmark = pytest.mark.unit

T0 = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)
OK = {"error-rate": Assessment(MeasurementPhase.SUCCESSFUL, 0.0, None, "ok"),
      "latency": Assessment(MeasurementPhase.SUCCESSFUL, 0.2, 0.2, "ok")}


def spec_of(raw: dict):
    return Rollout.model_validate(raw).spec


def mv(name: str, **art) -> ModelVersion:
    raw = samples.model_version(name)
    raw["spec"]["artifact"].update(art)
    return ModelVersion.model_validate(raw)


# --- the API ------------------------------------------------------------------------------------------------------------
def test_a_shared_base_rollout_is_valid_and_shows_its_mode():
    spec = spec_of(samples.shared_rollout())
    assert spec.serving.mode == "sharedBase" and spec.traffic_routing.inference_model_rewrite.pool_ref.name == "support-bot-pool"
    assert spec_of(samples.gateway_rollout()).serving.mode == "perVersion"  # the default


@pytest.mark.parametrize(("edit", "says"), [
    (lambda s: s["trafficRouting"].update({"inferenceModelRewrite": None, "gatewayAPI": {"httpRoute": "r", "parentRefs": [{"name": "g"}]}}),
     "serving.mode sharedBase needs trafficRouting.inferenceModelRewrite"),
    (lambda s: s["serving"].update(mode="perVersion"), "inferenceModelRewrite needs serving.mode sharedBase"),
    (lambda s: s["serving"].update(maxLoras=1), "needs serving.maxLoras of at least 2"),
    (lambda s: s["serving"].update(guard={}), "serving.guard is not supported with serving.mode sharedBase"),
    (lambda s: s["analysis"]["metrics"].append({"name": "ttft", "builtin": "ttft-p95", "max": 1.0}), "not available: ttft-p95"),
    (lambda s: s["analysis"]["metrics"].append({"name": "aborts", "builtin": "abort-rate", "max": 0.1}), "not available: abort-rate"),
])
def test_what_a_shared_base_rollout_cannot_do_is_said_clearly(edit, says):
    raw = samples.shared_rollout()
    edit(raw["spec"])
    with pytest.raises(ValidationError, match=says):
        Rollout.model_validate(raw)


def test_a_custom_query_is_allowed_in_shared_base():
    raw = samples.shared_rollout()
    raw["spec"]["analysis"]["metrics"].append({"name": "tokens", "query": "sum(rate(inference_objective_output_tokens_sum{ {{selector}} }[{{window}}]))",
                                               "max": 100})
    spec_of(raw)


# --- who can share -----------------------------------------------------------------------------------------------------
def test_only_lora_adapters_of_the_same_base_on_the_same_claim_share_a_deployment():
    spec = spec_of(samples.shared_rollout())
    v1 = mv("support-bot-v1")
    serving.check_shareable(spec, mv("support-bot-v2"), v1)  # same base, revision, claim: fine
    cases = [
        (mv("support-bot-v2", format="merged"), "NotAnAdapter", "not a LoRA adapter"),
        (mv("support-bot-v2", uri="pvc://other-claim/v2/artifact"), "AdapterClaimMismatch", "mounts claim tuneloop-output"),
        (mv("support-bot-v2", loraRank=64), "LoraRankTooLarge", "set serving.maxLoraRank"),
    ]
    other = samples.model_version("support-bot-v2")
    other["spec"]["baseModel"] = {"name": "Qwen/Qwen2.5-0.5B-Instruct", "revision": "main"}
    cases.append((ModelVersion.model_validate(other), "BaseMismatch", "two ModelVersions of different bases cannot share"))
    rev = samples.model_version("support-bot-v2")
    rev["spec"]["baseModel"]["revision"] = "abc123"
    cases.append((ModelVersion.model_validate(rev), "BaseMismatch", "@abc123"))
    for cand, reason, says in cases:
        with pytest.raises(ServingError, match=says) as exc:
            serving.check_shareable(spec, cand, v1)
        assert exc.value.reason == reason, (cand.spec.artifact, exc.value)


def test_max_lora_rank_of_the_shared_deployment_comes_from_the_spec_not_the_artifact():
    assert serving.shared_rank(spec_of(samples.shared_rollout()).serving) == 16
    raw = samples.shared_rollout()
    raw["spec"]["serving"]["maxLoraRank"] = 40
    spec = spec_of(raw)
    assert serving.shared_rank(spec.serving) == 64
    serving.check_shareable(spec, mv("support-bot-v2", loraRank=64))


# --- builders (golden) -------------------------------------------------------------------------------------------------
def test_shared_deployment_golden_names_no_adapter_and_enables_runtime_loading():
    raw = samples.shared_rollout()
    spec = spec_of(raw)
    dep = serving.build_shared_deployment(raw, spec, mv("support-bot-v1"), 2, CONFIG)
    check_golden("deployment-shared", dep)
    _k8s_valid(dep)
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert "--lora-modules" not in c["args"] and "--enable-lora" in c["args"]
    assert c["args"][c["args"].index("--max-loras") + 1] == "2" and c["args"][c["args"].index("--served-model-name") + 1] == "support-bot-base"
    assert {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"} in c["env"]
    assert {"name": "adapters", "mountPath": "/models/adapters", "readOnly": True} in c["volumeMounts"]
    assert {"name": "adapters", "persistentVolumeClaim": {"claimName": "tuneloop-output", "readOnly": True}} in dep["spec"]["template"]["spec"]["volumes"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["metadata"]["name"] == "support-bot-shared" and labels[names.LABEL_ROLE] == "shared"
    assert names.LABEL_MODEL_VERSION not in labels
    assert serving.adapter_path(mv("support-bot-v2")) == "/models/adapters/support-bot-v2/artifact"


@settings(max_examples=40, deadline=None)
@given(a=st.sampled_from(["v1", "v2", "v3-long-name", "x"]), b=st.sampled_from(["v1", "v2", "v9"]), rank_a=st.sampled_from([1, 4, 8, 16]),
       rank_b=st.sampled_from([1, 4, 8, 16]))
def test_the_shared_pod_template_is_the_same_for_every_version_it_may_serve(a, b, rank_a, rank_b):
    """A promotion (the serving version changes) never changes the template: no pod restarts."""
    raw = samples.shared_rollout()
    spec = spec_of(raw)
    one = serving.build_shared_deployment(raw, spec, mv(a, loraRank=rank_a), 2, CONFIG)
    two = serving.build_shared_deployment(raw, spec, mv(b, loraRank=rank_b), 2, CONFIG)
    assert one == two


def test_the_shared_readiness_probe_wants_the_base_and_an_adapter():
    import json
    import subprocess
    import sys

    probe = serving.shared_readiness_probe(8000, "support-bot-base")
    script = probe["exec"]["command"][2].replace("d=json.load(u.urlopen('http://127.0.0.1:8000/v1/models',timeout=4))['data']",
                                                 "d=json.loads(sys.stdin.read())['data']")
    base = {"id": "support-bot-base", "parent": None}
    for data, ready in [([base], False), ([base, {"id": "v1", "parent": "support-bot-base"}], True),
                        ([{"id": "v1", "parent": "x"}], False)]:
        rc = subprocess.run([sys.executable, "-c", script, "support-bot-base"], input=json.dumps({"data": data}), text=True).returncode
        assert (rc == 0) == ready, data


@pytest.mark.parametrize(("weight", "golden"), [(0, "imr-0"), (10, "imr-10"), (100, "imr-100")])
def test_inference_model_rewrite_golden(weight, golden):
    raw = samples.shared_rollout()
    imr = traffic.build_inference_model_rewrite(raw, spec_of(raw), "support-bot-v1", "support-bot-v2", weight)
    check_golden(golden, imr)
    assert imr["apiVersion"] == "inference.networking.x-k8s.io/v1alpha2" and imr["metadata"]["name"] == "support-bot"
    rule = imr["spec"]["rules"][0]
    assert rule["matches"] == [{"model": {"type": "Exact", "value": "support-bot"}}]
    assert imr["spec"]["poolRef"] == {"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": "support-bot-pool"}


@given(w=st.integers(-5, 105), same=st.booleans(), none=st.booleans())
def test_rewrite_targets_follow_the_weight_within_the_apis_bounds(w, same, none):
    cand = None if none else ("v1" if same else "v2")
    targets = traffic.rewrite_targets("v1", cand, w)
    weights = [t.get("weight") for t in targets]
    assert all(x is None for x in weights) or all(isinstance(x, int) and 1 <= x <= 1_000_000 for x in weights)  # all or none, >= 1
    shares = traffic.rewrite_weights({"spec": {"rules": [{"targets": targets}]}})
    want = 0 if cand in (None, "v1") else max(0, min(100, w))
    assert shares.get("v2", 0.0) == pytest.approx(want / 100) and sum(shares.values()) == pytest.approx(1.0)


# --- analysis from the traffic layer -----------------------------------------------------------------------------------
class Recording:
    def __init__(self):
        self.seen: list[str] = []

    async def query(self, promql: str) -> float | None:
        self.seen.append(promql)
        return 0.1

    async def query_vector(self, promql: str):
        return []


async def test_shared_base_metrics_read_the_endpoint_pickers_series_by_target_model():
    spec = spec_of(samples.shared_rollout())
    client = Recording()
    prov = PrometheusProvider(client)
    pods = Pods("llm", "support-bot", role="canary", model_version="support-bot-v2", served_model="support-bot")
    for m in spec.analysis.metrics:
        await prov.measure(m, pods, "30s")
    sel = 'namespace="llm", model_name="support-bot", target_model_name="support-bot-v2"'
    assert client.seen == [
        f"(sum(rate(inference_objective_request_error_total{{ {sel} }}[30s])) or vector(0)) / sum(rate(inference_objective_request_total{{ {sel} }}[30s]))",
        f"histogram_quantile(0.95, sum by (le) (rate(inference_objective_request_duration_seconds_bucket{{ {sel} }}[30s])))",
    ]
    # a custom query's {{selector}} is the same split; {{modelVersion}} the adapter
    custom = q.render("sum(inference_objective_request_total{ {{selector}} }) + {{modelVersion}}", namespace="llm", rollout="r", role="stable",
                      window="1m", model_version="support-bot-v1", served_model="support-bot")
    assert custom == 'sum(inference_objective_request_total{ namespace="llm", model_name="support-bot", target_model_name="support-bot-v1" }) + support-bot-v1'
    # per-version pods keep vLLM's own series and pod labels
    per = q.render_metric(spec.analysis.metrics[0], namespace="llm", rollout="r", role="canary", window="1m", model_version="v2")
    assert "http_requests_total" in per and 'tuneloop_dev_model_version="v2"' in per


async def test_a_builtin_without_a_per_adapter_source_is_an_error_not_a_number():
    raw = samples.gateway_rollout()
    m = Rollout.model_validate(raw).spec.analysis.metrics[1]  # ttft-p95
    with pytest.raises(PrometheusError, match="no per-adapter query"):
        await PrometheusProvider(Recording()).measure(m, Pods("llm", "r", role="canary", model_version="v2", served_model="bot"), "1m")


def test_the_drift_watch_of_a_shared_deployment_reads_its_pods_whatever_the_version():
    from tuneloop.operator.analysis.provider import WindowSignal

    assert 'tuneloop_dev_model_version' not in q.render_drift(WindowSignal.REQUESTS, namespace="llm", rollout="r", model_version=None, window="1h")


# --- adapters: what to load and unload (pure) --------------------------------------------------------------------------
def status(**kw) -> RolloutStatus:
    return RolloutStatus(**kw)


def test_wanted_adapters_follow_the_rollout():
    spec = spec_of(samples.shared_rollout())  # stable v1, candidate v2
    assert adapters.wanted(spec, None, stable="support-bot-v1", candidate_servable=True) == {"support-bot-v1", "support-bot-v2"}
    assert adapters.wanted(spec, None, stable="support-bot-v1", candidate_servable=False) == {"support-bot-v1"}
    rolled = status(phase=RolloutPhase.ROLLED_BACK, stable_model_version="support-bot-v1", candidate_model_version="support-bot-v2")
    assert adapters.wanted(spec, rolled, stable="support-bot-v1", candidate_servable=True) == {"support-bot-v1"}
    promoted = status(phase=RolloutPhase.PROMOTED, stable_model_version="support-bot-v2", candidate_model_version="support-bot-v2")
    assert adapters.wanted(spec, promoted, stable="support-bot-v2", candidate_servable=True) == {"support-bot-v2"}


def test_plan_loads_what_a_pod_lacks_and_unloads_the_rest_only_after_the_hold():
    pods = [PodAdapters("a", frozenset({"v1"})), PodAdapters("b", frozenset({"v1", "v0"})), PodAdapters("c", None)]
    want = frozenset({"v1", "v2"})
    p = adapters.plan(pods, want, hold=True)
    assert p.load == (("a", "v2"), ("b", "v2")) and p.unload == ()
    p = adapters.plan(pods, want, hold=False)
    assert p.unload == (("b", "v0"),)
    assert adapters.coverage(pods, "v1") == (2, 3) and adapters.coverage(pods, None) == (0, 3)
    assert not adapters.settled(pods, want, hold=False)
    done = [PodAdapters(x, want) for x in "abc"]
    assert adapters.settled(done, want, hold=False) and adapters.plan(done, want, hold=False).empty


pod_views = st.lists(st.tuples(st.sampled_from("abcdef"), st.one_of(st.none(), st.frozensets(st.sampled_from(["v0", "v1", "v2", "v3"])))),
                     max_size=5, unique_by=lambda t: t[0]).map(lambda xs: [PodAdapters(p, s) for p, s in xs])


@settings(max_examples=200, deadline=None)
@given(pods=pod_views, want=st.frozensets(st.sampled_from(["v1", "v2", "v3"]), max_size=2), hold=st.booleans())
def test_a_plan_never_unloads_what_is_wanted_nor_anything_while_holding_and_applied_it_settles(pods, want, hold):
    p = adapters.plan(pods, want, hold=hold)
    answered = {x.pod for x in pods if x.served is not None}
    assert {pod for pod, _ in p.load + p.unload} <= answered  # a pod that did not answer is left alone
    assert not any(a in want for _, a in p.unload)
    assert not (hold and p.unload)
    after = [PodAdapters(x.pod, None if x.served is None else
                         (x.served | {a for pod, a in p.load if pod == x.pod}) - {a for pod, a in p.unload if pod == x.pod}) for x in pods]
    assert adapters.plan(after, want, hold=hold).empty  # applied, nothing is left to do on the pods that answered
    assert adapters.settled(after, want, hold=hold) == (len(answered) == len(pods))


# --- the step machine's gate: every pod lists the candidate before its weight moves ------------------------------------
def shared_world(t: float, have: int, live: int, error: str | None = None) -> World:
    return World(now=T0 + dt.timedelta(seconds=t), stable_available=live, adapter_pods=(have, live), adapter_error=error, generation=1)


def test_the_weight_moves_only_once_every_pod_lists_the_candidate_adapter():
    spec = spec_of(samples.shared_rollout())
    out = advance(spec, None, shared_world(0, 0, 2))
    st_ = out.status
    assert st_.canary_weight == 0 and st_.waiting_for == "the candidate adapter on every pod for 10%: 0/2 pods list it"
    out = advance(spec, st_, shared_world(1, 1, 2))
    assert out.status.canary_weight == 0 and out.status.waiting_for.endswith("1/2 pods list it")
    out = advance(spec, out.status, shared_world(2, 2, 2))
    assert out.status.canary_weight == 10 and out.status.weights == "support-bot-v1=90 support-bot-v2=10"
    # a pod that restarts (its adapters are gone) stops the measurements, as a canary pod that lost readiness would
    short = shared_world(3, 1, 2)
    assert canary_shortfall(spec, out.status, short) == (1, 2)
    out = advance(spec, out.status, short)
    assert out.status.canary_unready_since is not None and out.status.canary_weight == 10


def test_no_pods_is_not_every_pod():
    spec = spec_of(samples.shared_rollout())
    out = advance(spec, None, shared_world(0, 0, 0))
    assert out.status.canary_weight == 0 and out.status.waiting_for.endswith("0/1 pods list it")


def test_an_adapter_that_a_pod_refuses_to_load_is_rolled_back_before_any_traffic():
    spec = spec_of(samples.shared_rollout())
    out = advance(spec, None, shared_world(0, 0, 2, error="a pod refused to load adapter support-bot-v2: pod p: HTTP 400: bad rank"))
    assert out.status.phase == "RolledBack" and out.status.canary_weight == 0 and out.rolled_back
    assert out.model_versions["support-bot-v2"][0] == "RolledBack"
    assert any(r == "AdapterLoadFailed" for _, r, _ in out.events)


@settings(max_examples=150, deadline=None)
@given(ticks=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3), st.floats(0.5, 20)), min_size=1, max_size=30))
def test_the_candidate_never_gains_weight_in_a_tick_where_a_pod_lacks_its_adapter(ticks):
    """Any sequence of observations: a tick that raises the candidate's weight saw every live pod (at least one) list it."""
    spec = spec_of(samples.shared_rollout())
    state, t = None, 0.0
    for have, live, dt_ in ticks:
        t += dt_
        world = shared_world(t, min(have, live), live)
        before = state.canary_weight if state else 0
        due = due_metrics(spec, state, world.now) if canary_shortfall(spec, state, world) is None else []  # as the reconciler
        out = advance(spec, state, world, {m.name: OK[m.name] for m in due})
        state = out.status
        if state.canary_weight > before:
            assert live > 0 and min(have, live) == live


def test_weights_text_for_kubectl_get():
    assert weights_text(status()) is None
    assert weights_text(status(stable_model_version="v1")) == "v1=100"
    assert weights_text(status(stable_model_version="v1", candidate_model_version="v2", canary_weight=25)) == "v1=75 v2=25"
    assert weights_text(status(stable_model_version="v1", candidate_model_version="v2", canary_weight=100)) == "v2=100"


def test_the_shared_rollout_sample_deepcopies():
    a, b = samples.shared_rollout(), samples.shared_rollout()
    a["spec"]["serving"]["replicas"] = 9
    assert b["spec"]["serving"]["replicas"] == 2 and copy.deepcopy(a) == a
