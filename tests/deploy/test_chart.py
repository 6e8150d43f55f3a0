"""The Helm chart rendered with helm-python-sdk (Helm v4 as a library): lint, schema, every object valid."""

from __future__ import annotations

import copy

import helm_python as helm
import pytest
import yaml
from tuneloop.operator.settings import OperatorSettings

from ._support import ROOT, all_problems, by_kind, chart, container, env, objects, one, render

pytestmark = pytest.mark.unit

CHART = ROOT / "charts" / "tuneloop"
MONITORING_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}

CASES = {
    "default": {},
    "namespaced": {"scope": "namespaced", "watchNamespaces": ["ml-team", "research"]},
    "namespaced-own-namespace": {"scope": "namespaced"},
    "crds-off": {"crds": {"enabled": False, "keep": False}},
    "monitoring-off": {"monitoring": {"enabled": False}, "dashboard": {"enabled": False}},
    "monitoring-partial": {"monitoring": {"serviceMonitor": {"enabled": False}, "trainerPodMonitor": {"enabled": False},
                                          "prometheusRule": {"enabled": False}}, "metrics": {"service": {"enabled": False}}},
    "everything-custom": {
        "fullnameOverride": "tl", "image": {"digest": "sha256:" + "a" * 64}, "imagePullSecrets": [{"name": "regcred"}],
        "serviceAccount": {"create": False, "name": "existing-sa"},
        "config": {"defaultOutputPvc": "models", "modelCachePvc": "hf-cache", "jobServiceAccount": "trainer",
                   "verbose": True, "metricsPort": 9090, "healthPort": 9091,
                   "metricsProviders": {"team-a": "http://prom-label-proxy.team-a:8080", "team-b": "https://prom-b.example"},
                   "allowUnconfinedQueries": True, "metricsMaxBytes": 2097152,
                   "allowedImages": ["ghcr.io/acme/trainer", "registry.local:5000/ml/*"], "tokenSecretPrefix": "hf-",
                   "allowedExtraArgs": ["--trust-remote-code"], "reservedNodeKeys": ["node-role.kubernetes.io/*", "dedicated"],
                   "allowAnyToleration": True, "trainerMetricsPortRange": "20000-29999"},
        "networkPolicy": {"prometheus": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "observability"}}}],
                          "gateway": [{"podSelector": {}}]},
        "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}],
        "nodeSelector": {"kubernetes.io/os": "linux"}, "tolerations": [{"key": "infra", "operator": "Exists", "effect": "NoSchedule"}],
        "priorityClassName": "system-cluster-critical", "podAnnotations": {"a": "b"}, "podLabels": {"team": "ml"},
        "metrics": {"service": {"port": 9090}},
        "monitoring": {"labels": {"release": "kube-prometheus-stack"}, "podMonitorNamespaces": ["ml-team"],
                       "prometheusRule": {"additionalLabels": {"team": "ml-platform"}, "trainingStalledMinutes": 10}},
        "dashboard": {"namespace": "grafana", "annotations": {"grafana_folder": "tuneloop"}},
    },
}


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {case: objects(values or None) for case, values in CASES.items()}


@pytest.mark.parametrize("case", CASES)
def test_every_rendered_object_is_valid(rendered, case):
    objs = rendered[case]
    assert objs, "nothing rendered"
    assert all_problems(objs) == []


def test_validation_catches_bad_objects(rendered):
    """The validator is not a rubber stamp: a misspelt field or a wrong type is reported."""
    deployment = copy.deepcopy(one(rendered["default"], "Deployment"))
    deployment["spec"]["replica"] = 1
    assert all_problems([deployment])
    monitor = copy.deepcopy(by_kind(rendered["default"])["PodMonitor"][0])
    monitor["spec"]["podMetricsEndpoints"][0]["prot"] = "http"
    assert all_problems([monitor])
    crd = copy.deepcopy(by_kind(rendered["default"])["CustomResourceDefinition"][0])
    crd["spec"]["scope"] = 3
    assert all_problems([crd])


@pytest.mark.parametrize("case", CASES)
def test_lint_has_no_errors(case):
    report = helm.lint(CHART, CASES[case] or None, strict=True, namespace="tuneloop-system", kube_version="v1.31.0")
    errors = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]  # warnings count too
    assert errors == []


@pytest.mark.parametrize("bad,where", [
    ({"scope": "everywhere"}, "/scope"),
    ({"replicaCount": 2}, "replicaCount"),
    ({"crds": {"enabled": "yes", "keep": True}}, "/crds/enabled"),
    ({"config": {"metricsPort": 70000}}, "/config/metricsPort"),
    ({"config": {"prometheusUrl": "prometheus:9090"}}, "/config/prometheusUrl"),
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ({"monitoring": {"prometheusRule": {"trainingStalledMinutes": 0}}}, "trainingStalledMinutes"),
    ({"monitoring": {"interval": "30 seconds"}}, "/monitoring/interval"),
    ({"watchNamespaces": ["Not_A_Namespace"]}, "/watchNamespaces/0"),
    ({"dashboard": {"labelz": "x"}}, "labelz"),
])
def test_values_that_break_the_schema_are_refused(bad, where):
    with pytest.raises(helm.HelmValuesError) as exc:
        render(bad)
    assert where in str(exc.value)


def test_every_value_is_documented():
    """Each key in values.yaml has a comment line right above it."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped.startswith("-") or ":" not in stripped:
            continue
        key, _, rest = stripped.partition(":")
        if rest.strip() == "" or rest.strip().startswith("#"):
            continue  # a section header: its leaves are documented
        if not lines[i - 1].strip().startswith("#"):
            undocumented.append(key)
    assert undocumented == []


def test_schema_closes_every_object():
    schema = helm.Chart.load(CHART).schema

    def walk(node, path):
        if isinstance(node, dict) and node.get("type") == "object" and "properties" in node:
            assert node.get("additionalProperties") is False, f"{path} is open"
            for k, v in node["properties"].items():
                walk(v, f"{path}.{k}")
    walk(schema, "values")
    assert set(schema["properties"]) == set(yaml.safe_load((CHART / "values.yaml").read_text()))


def test_operator_deployment(rendered):
    d = one(rendered["default"], "Deployment")
    spec = d["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    c = container(d)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    defaults = OperatorSettings()
    assert ports == {"metrics": defaults.metrics_port, "health": defaults.health_port}
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert c["image"] == "ghcr.io/tuneloop/operator:0.1.0"
    assert c["args"] == ["--all-namespaces"]
    sc, pod_sc = c["securityContext"], spec["template"]["spec"]["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"] and sc["readOnlyRootFilesystem"]
    assert pod_sc["runAsNonRoot"] and pod_sc["seccompProfile"]["type"] == "RuntimeDefault"


def test_env_is_operator_settings(rendered):
    """Every TUNELOOP_* variable the chart sets is a real setting, with a value the settings accept."""
    fields = {f"TUNELOOP_{name.upper()}" for name in OperatorSettings.model_fields}
    for case in ("default", "namespaced", "everything-custom"):
        variables = {k: v for k, v in env(one(rendered[case], "Deployment")).items() if k.startswith("TUNELOOP_")}
        assert set(variables) <= fields, set(variables) - fields
        parsed = OperatorSettings(**{k.removeprefix("TUNELOOP_").lower(): v for k, v in variables.items()})
        assert parsed.prometheus_url == CASES["default"].get("config", {}).get("prometheusUrl", parsed.prometheus_url)
    custom = env(one(rendered["everything-custom"], "Deployment"))
    assert custom["TUNELOOP_MODEL_CACHE_PVC"] == "hf-cache" and custom["TUNELOOP_SERVICE_ACCOUNT"] == "trainer"
    assert custom["HTTPS_PROXY"] == "http://proxy:3128" and custom["TUNELOOP_METRICS_PORT"] == "9090"
    assert OperatorSettings(trainer_metrics_port_range=custom["TUNELOOP_TRAINER_METRICS_PORT_RANGE"]).trainer_metrics_port_range == (20000, 29999)
    assert "TUNELOOP_TRAINER_METRICS_PORT_RANGE" not in env(one(rendered["default"], "Deployment"))  # default: the fixed port
    namespaced = env(one(rendered["namespaced"], "Deployment"))
    assert namespaced["TUNELOOP_CLUSTER_WIDE"] == "false" and namespaced["TUNELOOP_NAMESPACES"] == "ml-team,research"


def test_scopes_and_rbac(rendered):
    cluster = by_kind(rendered["default"])
    assert {"ClusterRole", "ClusterRoleBinding"} <= set(cluster) and "Role" not in cluster
    namespaced = by_kind(rendered["namespaced"])
    assert sorted(r["metadata"]["namespace"] for r in namespaced["Role"]) == ["ml-team", "research"]
    assert sorted(b["metadata"]["namespace"] for b in namespaced["RoleBinding"]) == ["ml-team", "research"]
    assert "ClusterRoleBinding" not in namespaced  # no cluster-scoped rules are needed today
    assert container(one(rendered["namespaced"], "Deployment"))["args"] == ["--namespace=ml-team", "--namespace=research"]
    own = one(rendered["namespaced-own-namespace"], "Deployment")
    assert "args" not in container(own) and "TUNELOOP_NAMESPACES" not in env(own)
    assert one(rendered["namespaced-own-namespace"], "Role")["metadata"]["namespace"] == "tuneloop-system"
    custom = by_kind(rendered["everything-custom"])
    assert "ServiceAccount" not in custom
    assert one(rendered["everything-custom"], "ClusterRoleBinding")["subjects"][0]["name"] == "existing-sa"


def test_crds_gate_and_keep(rendered):
    crds = by_kind(rendered["default"])["CustomResourceDefinition"]
    assert {c["metadata"]["name"] for c in crds} == {"finetunejobs.tuneloop.dev", "modelversions.tuneloop.dev", "rollouts.tuneloop.dev",
                                                         "finetuneschedules.tuneloop.dev", "finetunesweeps.tuneloop.dev"}
    assert all(c["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"} for c in crds)
    assert "CustomResourceDefinition" not in by_kind(rendered["crds-off"])
    not_kept = objects({"crds": {"enabled": True, "keep": False}})
    assert all("annotations" not in c["metadata"] for c in by_kind(not_kept)["CustomResourceDefinition"])


def test_chart_crds_equal_generated_crds(rendered):
    """Drift: the chart's copy renders to exactly crds/*.yaml (plus the keep annotation)."""
    for crd in by_kind(rendered["default"])["CustomResourceDefinition"]:
        crd = copy.deepcopy(crd)
        crd["metadata"].pop("annotations")
        path = ROOT / "crds" / f"tuneloop.dev_{crd['metadata']['name'].split('.')[0]}.yaml"
        assert crd == yaml.safe_load(path.read_text()), f"{path.name}: run make crds"


def test_chart_crd_copy_is_what_crdgen_writes():
    from tuneloop.api import crdgen

    for name, text in crdgen.render_all().items():
        assert (CHART / "templates" / "crds" / name).read_text() == crdgen.chart_copy(text), "run make crds"


def test_monitoring_needs_the_api_and_the_flag(rendered):
    assert MONITORING_KINDS <= set(by_kind(rendered["default"]))
    assert not MONITORING_KINDS & set(by_kind(rendered["monitoring-off"]))
    without_api = objects(None, monitoring_api=False)
    assert not MONITORING_KINDS & set(by_kind(without_api))
    assert "ConfigMap" in by_kind(without_api), "the dashboard does not need the Prometheus Operator"
    notes = render(None, monitoring_api=False)["tuneloop/templates/NOTES.txt"]
    assert "does not serve monitoring.coreos.com/v1" in notes


def test_monitoring_objects(rendered):
    objs = by_kind(rendered["everything-custom"])
    sm = one(rendered["everything-custom"], "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert sm["spec"]["endpoints"][0]["honorLabels"] is True
    service = one(rendered["everything-custom"], "Service")
    assert sm["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert service["spec"]["selector"].items() <= one(rendered["everything-custom"], "Deployment")["spec"]["template"]["metadata"]["labels"].items()
    for pm in objs["PodMonitor"]:
        assert pm["spec"]["namespaceSelector"] == {"matchNames": ["ml-team"]}
    default_pms = by_kind(rendered["default"])["PodMonitor"]
    assert all(pm["spec"]["namespaceSelector"] == {"any": True} for pm in default_pms)
    ns_pms = by_kind(rendered["namespaced"])["PodMonitor"]
    assert all(pm["spec"]["namespaceSelector"] == {"matchNames": ["ml-team", "research"]} for pm in ns_pms)
    rule = one(rendered["everything-custom"], "PrometheusRule")
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    assert all(r["labels"]["team"] == "ml-platform" for r in alerts)
    stalled = next(r for r in alerts if r["alert"] == "TuneloopTrainingStalled")
    assert "[10m]" in stalled["expr"] and "> 600" in stalled["expr"]
    cm = one(rendered["everything-custom"], "ConfigMap")
    assert cm["metadata"]["namespace"] == "grafana" and cm["metadata"]["labels"]["grafana_dashboard"] == "1"


def test_dashboard_configmap_holds_the_dashboard(rendered):
    import json

    cm = one(rendered["default"], "ConfigMap")
    board = json.loads(cm["data"]["tuneloop.json"])
    assert board == json.loads((CHART / "files" / "dashboards" / "tuneloop.json").read_text())
    assert board["uid"] == "tuneloop-overview" and len(board["panels"]) > 10


def test_notes_say_what_to_do_next():
    notes = render(None)["tuneloop/templates/NOTES.txt"]
    assert "kubectl -n tuneloop-system rollout status deployment/tuneloop" in notes
    assert "kubectl apply -n <namespace> -f finetunejob.yaml" in notes and "kubectl tuneloop status" in notes
    off = render({"crds": {"enabled": False, "keep": True}})["tuneloop/templates/NOTES.txt"]
    assert "kubectl apply --server-side -f crds/" in off


def test_render_helper_matches_plain_chart_render():
    """The api_versions path renders the same as helm-python-sdk's public Chart.render."""
    with helm.Chart.load(CHART) as c:
        public = c.render(None, name="tuneloop", namespace="tuneloop-system")
    ours = chart.render(None, api_versions=[])
    strip = lambda r: {k: v for k, v in r.items() if "NOTES" not in k}  # noqa: E731
    assert strip(public) == strip(ours)


def test_samples_are_valid_against_the_chart_crds(rendered):
    """The samples (CRD instances) validate against the CRDs the chart installs, and against the models."""
    import jsonschema
    from tuneloop.api import schema_check

    schemas = {c["spec"]["names"]["kind"]: c["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
               for c in by_kind(rendered["default"])["CustomResourceDefinition"]}
    samples = sorted((ROOT / "manifests" / "samples").glob("*.yaml"))
    assert len(samples) >= 3
    kinds = set()
    for path in samples:
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or not str(doc.get("apiVersion", "")).startswith("tuneloop.dev/"):
                continue
            kinds.add(doc["kind"])
            errors = list(jsonschema.Draft4Validator(schema_check.to_jsonschema(schemas[doc["kind"]])).iter_errors(doc))
            assert not errors, f"{path.name}: {errors[0].message}"
            assert schema_check.check_document(doc, str(path)) == []
    assert kinds == set(schemas)


def test_monitoring_parts_switch_off_one_by_one(rendered):
    kinds = by_kind(rendered["monitoring-partial"])
    assert [pm["metadata"]["name"] for pm in kinds["PodMonitor"]] == ["tuneloop-vllm"]
    assert not {"ServiceMonitor", "PrometheusRule", "Service"} & set(kinds)


@pytest.mark.parametrize("case,expected", [
    ("default", (True, [])),
    ("namespaced", (False, ["ml-team", "research"])),
    ("namespaced-own-namespace", (False, ["tuneloop-system"])),
])
def test_operator_entry_point_reads_the_chart_scope(rendered, case, expected, monkeypatch):
    """The container's args + env, given to tuneloop-operator's own parsing, give the intended scope."""
    from tuneloop.operator import main

    d = one(rendered[case], "Deployment")
    for name, value in env(d).items():
        if isinstance(value, str):
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("POD_NAMESPACE", "tuneloop-system")  # the fieldRef the kubelet resolves
    args = main.build_parser().parse_args(container(d).get("args", []))
    assert main.resolve_scope(args, OperatorSettings()) == expected


def test_operator_down_alert_needs_the_service_monitor():
    """Without this chart's ServiceMonitor the operator's `up` series never exists: no always-firing alert."""
    for values in ({"monitoring": {"serviceMonitor": {"enabled": False}}}, {"metrics": {"service": {"enabled": False}}}):
        rule = one(objects(values), "PrometheusRule")
        alerts = [r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]]
        assert "TuneloopOperatorDown" not in alerts and "TuneloopReconcileErrorsRising" in alerts


# --- tenancy (issue 25, docs/security.md) ------------------------------------------------------------------------
def test_defaults_render_the_operator_network_policy(rendered):
    pol = one(rendered["default"], "NetworkPolicy")
    assert pol["spec"]["policyTypes"] == ["Ingress"]
    assert pol["spec"]["ingress"] == [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
                                       "ports": [{"protocol": "TCP", "port": OperatorSettings().metrics_port}]}]
    assert pol["spec"]["podSelector"]["matchLabels"] == one(rendered["default"], "Deployment")["spec"]["selector"]["matchLabels"]
    assert "NetworkPolicy" not in {o["kind"] for o in objects({"networkPolicy": {"enabled": False}})}


def test_tenancy_values_reach_the_operator_settings(rendered):
    """The admin's choices (providers, confinement, byte caps, NetworkPolicy peers) become the operator's settings."""
    def settings(case: str) -> OperatorSettings:
        variables = {k: v for k, v in env(one(rendered[case], "Deployment")).items() if k.startswith("TUNELOOP_")}
        return OperatorSettings(**{k.removeprefix("TUNELOOP_").lower(): v for k, v in variables.items()})

    default = settings("default")
    assert default.metrics_providers == {} and not default.allow_any_metrics_address and not default.allow_unconfined_queries
    assert default.network_policies and default.trainer_metrics_from == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    assert default.serving_from == default.trainer_metrics_from + [{"namespaceSelector": {"matchLabels": {"tuneloop.dev/gateway": "true"}}}]
    assert default.eval_log_max_bytes == 4 << 20 and default.trainer_metrics_max_bytes == 256 << 10
    custom = settings("everything-custom")
    assert custom.metrics_endpoints() == {"default": custom.prometheus_url, "team-a": "http://prom-label-proxy.team-a:8080",
                                          "team-b": "https://prom-b.example"}
    assert custom.allow_unconfined_queries and custom.metrics_max_bytes == 2097152
    assert custom.serving_from[-1] == {"podSelector": {}}


@pytest.mark.parametrize("bad", [{"config": {"metricsProviders": {"default": "http://x"}}},
                                 {"config": {"metricsProviders": {"Team": "http://x"}}},
                                 {"config": {"metricsProviders": {"a": "http://x/#"}}},
                                 {"networkPolicy": {"gateway": [{}]}}])
def test_tenancy_values_that_break_the_schema_are_refused(bad):
    with pytest.raises(Exception):  # helm-python raises its own error type
        objects(bad)


def test_admission_policy_values_reach_the_operator_settings(rendered):
    """Issue 25, findings 7-9: the image allowlist, the Secret prefix, the extraArgs the admin allows and the
    scheduling policy become the operator's settings; the defaults are the multi-tenant ones (the trainer image only,
    `tuneloop-` Secrets, no denied flag, control-plane keys reserved, no catch-all toleration)."""
    from tuneloop.operator.policy import CONTROL_PLANE_KEYS, Policy

    def settings(case: str) -> OperatorSettings:
        variables = {k: v for k, v in env(one(rendered[case], "Deployment")).items() if k.startswith("TUNELOOP_")}
        return OperatorSettings(**{k.removeprefix("TUNELOOP_").lower(): v for k, v in variables.items()})

    default = Policy.from_settings(settings("default"))
    assert default == Policy(allowed_images=("ghcr.io/tuneloop/trainer:0.1.0",), token_secret_prefix="tuneloop-",
                             allowed_extra_args=(), reserved_node_keys=CONTROL_PLANE_KEYS, allow_any_toleration=False)
    assert "TUNELOOP_ALLOWED_IMAGES" not in env(one(rendered["default"], "Deployment"))
    custom = Policy.from_settings(settings("everything-custom"))
    assert custom == Policy(allowed_images=("ghcr.io/acme/trainer", "registry.local:5000/ml/*"), token_secret_prefix="hf-",
                            allowed_extra_args=("--trust-remote-code",), reserved_node_keys=("node-role.kubernetes.io/*", "dedicated"),
                            allow_any_toleration=True)
    assert custom.allows_remote_code() and not default.allows_remote_code()
    single = Policy.from_settings(settings_of({"config": {"allowedImages": ["*"], "tokenSecretPrefix": "", "allowedExtraArgs": ["*"],
                                                          "reservedNodeKeys": []}}))
    assert single.allowed_images == ("*",) and single.token_secret_prefix == "" and single.reserved_node_keys == ()


def settings_of(values: dict) -> OperatorSettings:
    variables = {k: v for k, v in env(one(objects(values), "Deployment")).items() if k.startswith("TUNELOOP_")}
    return OperatorSettings(**{k.removeprefix("TUNELOOP_").lower(): v for k, v in variables.items()})


@pytest.mark.parametrize("bad", [{"config": {"allowedImages": ["a b"]}}, {"config": {"allowedImages": "ghcr.io/x"}},
                                 {"config": {"allowedExtraArgs": ["trust-remote-code"]}},
                                 {"config": {"tokenSecretPrefix": "Bad Prefix"}}, {"config": {"reservedNodeKeys": [""]}},
                                 {"config": {"allowAnyToleration": "yes"}}])
def test_admission_policy_values_that_break_the_schema_are_refused(bad):
    with pytest.raises(Exception):  # helm-python raises its own error type
        objects(bad)
