"""Issue 25, findings 8 and 9 on the Rollout's side: `serving.extraArgs` with a denied `vllm serve` flag, and
tolerations/nodeSelectors aimed at the control plane, make the Rollout Degraded (InvalidSpec, naming the flag)
and create no Deployment; the admin's setting allows them. vLLM pods run with a read-only root filesystem."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from tuneloop.api.modelversion import ModelVersion
from tuneloop.api.rollout import Rollout
from tuneloop.operator.analysis.prometheus import PrometheusProvider
from tuneloop.operator.builders import serving
from tuneloop.operator.builders.serving import ServingConfig
from tuneloop.operator.kube import resources as r
from tuneloop.operator.policy import Policy
from tuneloop.operator.rollout.reconcile import Reconciler

from ..operator.harness import cluster
from . import samples
from .test_reconcile import NS, Scripted, objs, setup, tick

pytestmark = pytest.mark.operator


def _progressing(st: dict) -> dict:
    return next(c for c in st["conditions"] if c["type"] == "Progressing")


@pytest.mark.parametrize("serving_spec,flag", [
    ({"extraArgs": ["--max-model-len", "4096", "--trust-remote-code"]}, "--trust-remote-code"),
    ({"extraArgs": ["--allowed-local-media-path=/"]}, "--allowed-local-media-path=/"),
    ({"extraArgs": ["--trust_remote"]}, "--trust_remote"),
    ({"tolerations": [{"operator": "Exists"}]}, "spec.serving.tolerations[0]"),
    ({"nodeSelector": {"node-role.kubernetes.io/control-plane": ""}}, "node-role.kubernetes.io/control-plane"),
])
async def test_a_rollout_the_admin_policy_refuses_serves_nothing(tmp_path: Path, serving_spec: dict, flag: str):
    ro, mvs = objs()
    ro["spec"].setdefault("serving", {}).update(serving_spec)
    async with cluster(tmp_path) as kc:
        await setup(kc, ro, mvs)
        rec = Reconciler(kc.client, ServingConfig(), "http://prom", provider_factory=lambda url: PrometheusProvider(Scripted()))
        await tick(kc, rec, 0)
        st = (await kc.get(r.ROLLOUTS, NS, "bot"))["status"]
        cond = _progressing(st)
        assert st["phase"] == "Degraded" and cond["reason"] == "InvalidSpec" and flag in cond["message"], st
        assert kc.count(r.DEPLOYMENTS) == 0
        # the admin allows it: the same Rollout is served
        allow = Policy(allowed_extra_args=("*",), reserved_node_keys=(), allow_any_toleration=True)
        rec = Reconciler(kc.client, ServingConfig(policy=allow), "http://prom", provider_factory=lambda url: PrometheusProvider(Scripted()))
        await tick(kc, rec, 1)
        assert kc.count(r.DEPLOYMENTS) >= 1
        assert (await kc.get(r.ROLLOUTS, NS, "bot"))["status"]["phase"] != "Degraded"


def test_vllm_pods_have_a_read_only_root_filesystem_and_writable_caches():
    ro, _ = objs()
    mv = ModelVersion.model_validate({**copy.deepcopy(samples.model_version("v1")), "metadata": {"name": "v1", "namespace": NS}})
    dep = serving.build_deployment(ro, Rollout.model_validate(ro).spec, "stable", mv, 1, ServingConfig())
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    env = {e["name"]: e.get("value") for e in c["env"]}
    writable = {m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")}
    for var in ("HOME", "HF_HOME", "VLLM_CACHE_ROOT", "XDG_CACHE_HOME"):
        assert any(env[var] == m or env[var].startswith(m + "/") for m in writable), var
    assert "/dev/shm" in writable


def test_validate_cluster_names_a_denied_serving_flag(tmp_path: Path, capsys):
    import yaml
    from tuneloop.cli.main import main as cli

    ro, _ = objs()
    ro["spec"].setdefault("serving", {})["extraArgs"] = ["--max-model-len", "4096", "--config=/models/artifact/x.yaml"]
    path = tmp_path / "ro.yaml"
    path.write_text(yaml.safe_dump(ro))
    assert cli(["validate", str(path)]) == 0  # the schema cannot know the admin's policy
    assert cli(["validate", "--cluster", str(path)]) == 1
    err = capsys.readouterr().err
    assert "spec.serving.extraArgs" in err and "--config=/models/artifact/x.yaml" in err and "Degraded, InvalidSpec" in err
