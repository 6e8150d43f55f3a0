"""Issue 25, findings 7-9: the admin's admission policy (tuneloop.operator.policy) and where it acts.

- a FineTuneJob's `spec.image` must be one the admin allows (the evaluation pod writes the verdict);
- `tokenSecretRef` may name only Secrets marked for tuneloop by name (the operator reads no Secret);
- `baseModel.trustRemoteCode` and the denied `vllm serve` flags only where the admin allows them, in every spelling
  argparse accepts (`--flag=value`, abbreviations, vLLM's underscores and `.key` sub-options);
- tolerations and nodeSelectors may not target the reserved (control-plane) nodes or tolerate every taint;
- stage pods run with a read-only root filesystem.

Each rule has examples that failed before it existed and a property test of the decision."""

from __future__ import annotations

import argparse
import copy

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from tuneloop.api import FineTuneJobSpec
from tuneloop.operator import builders
from tuneloop.operator.builders.common import JobMeta
from tuneloop.operator.finetunejob.reconcile import validate
from tuneloop.operator.policy import (
    CONTROL_PLANE_KEYS,
    DENIED_SERVING_ARGS,
    Policy,
    denied_args,
    image_allowed,
    scheduling_problems,
    secret_allowed,
)
from tuneloop.operator.settings import OperatorSettings

from .test_reconcile_unit import FakeClient, _ftj, _pass

pytestmark = pytest.mark.unit
TRAINER = OperatorSettings().trainer_image


def job(**spec) -> dict:
    body = _ftj()
    for path, value in spec.items():
        node = body["spec"]
        *parents, leaf = path.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return body


def refused(body: dict, settings: OperatorSettings | None = None) -> tuple[str, str]:
    spec, where, why = validate(copy.deepcopy(body), settings or OperatorSettings())
    return ("", "") if spec is not None else (where, why)


# --- finding 7b: the stage image ----------------------------------------------------------------------------------


def test_a_job_running_its_own_image_fails_invalid_spec_naming_the_allowed_images():
    where, why = refused(job(image="ghcr.io/mallory/evaluator:latest"))
    assert where == "spec.image" and "ghcr.io/mallory/evaluator:latest" in why and TRAINER in why


async def test_the_operator_starts_nothing_for_a_job_with_a_foreign_image():
    c = FakeClient()
    out = await _pass(c, job(image="ghcr.io/mallory/evaluator:latest"))
    conds = {x["type"]: x for x in out.status["conditions"]}
    assert out.phase == "Failed" and conds["Failed"]["reason"] == "InvalidSpec" and TRAINER in conds["Failed"]["message"]
    assert not [w for w in c.writes if w[0] == "create"]  # no ConfigMap, no stage Job


@pytest.mark.parametrize("image,allowed,ok", [
    (TRAINER, [], True),  # the operator's own image, named explicitly
    ("ghcr.io/acme/trainer:1.2", ["ghcr.io/acme/trainer"], True),
    ("ghcr.io/acme/trainer@sha256:" + "a" * 64, ["ghcr.io/acme/trainer"], True),
    ("ghcr.io/acme/trainer-evil:1", ["ghcr.io/acme/trainer"], False),
    ("ghcr.io/acme/trainer/evil:1", ["ghcr.io/acme/trainer"], False),
    ("ghcr.io/acme/trainer:2", ["ghcr.io/acme/trainer:1"], False),
    ("ghcr.io/acme/trainer:2", ["ghcr.io/acme/trainer:*"], True),
    ("anything/at:all", ["*"], True),
])
def test_the_image_allowlist(image, allowed, ok):
    s = OperatorSettings(allowed_images=allowed)
    assert (refused(job(image=image), s) == ("", "")) is ok


REPO = st.from_regex(r"[a-z0-9]{1,8}(\.[a-z]{2,3})?(:[0-9]{2,4})?(/[a-z0-9][-a-z0-9_.]{0,8}){1,3}", fullmatch=True)
TAG = st.from_regex(r"[A-Za-z0-9_][-A-Za-z0-9_.]{0,12}", fullmatch=True)
REF = st.one_of(REPO, st.builds(lambda r, t: f"{r}:{t}", REPO, TAG), st.builds(lambda r: f"{r}@sha256:{'b' * 64}", REPO))


def repository(ref: str) -> str:
    """The repository of a reference: without its digest and tag (a ':' after the last '/' starts the tag)."""
    ref = ref.split("@", 1)[0]
    head, _, last = ref.rpartition("/")
    return f"{head}/{last.split(':', 1)[0]}" if head else last.split(":", 1)[0]


@settings(max_examples=400, deadline=None)
@given(image=REF, entries=st.lists(REF, max_size=3))
def test_an_entry_without_a_wildcard_allows_only_its_own_repository(image, entries):
    """Exact references and repositories never let another repository through — not a longer name, not a path
    below it, not the same path on another registry port."""
    if image_allowed(image, entries):
        assert any(image == e or (repository(image) == e and image != e) for e in entries), (image, entries)
        assert repository(image) in {repository(e) for e in entries}


@settings(max_examples=300, deadline=None)
@given(repo=REPO, tag=TAG)
def test_a_repository_entry_allows_each_of_its_tags_and_digests(repo, tag):
    assert image_allowed(f"{repo}:{tag}", [repo]) and image_allowed(f"{repo}@sha256:{'c' * 64}", [repo])
    assert not image_allowed(f"{repo}x:{tag}", [repo]) and not image_allowed(f"{repo}/x:{tag}", [repo])


@settings(max_examples=300, deadline=None)
@given(image=REF, prefix=st.text(alphabet="abc/:.", max_size=6))
def test_a_wildcard_entry_is_a_literal_prefix_and_star_allows_everything(image, prefix):
    assert image_allowed(image, ["*"])
    assert image_allowed(image, [prefix + "*"]) == image.startswith(prefix)
    assert not image_allowed(image, [])


# --- finding 8: Secrets ---------------------------------------------------------------------------------------------


def test_a_job_naming_an_unmarked_secret_fails_invalid_spec():
    where, why = refused(job(baseModel__tokenSecretRef={"name": "db-password", "key": "password"}))
    assert where == "spec.baseModel.tokenSecretRef.name" and "db-password" in why and "'tuneloop-'" in why
    assert refused(job(baseModel__tokenSecretRef={"name": "tuneloop-hf", "key": "token"})) == ("", "")
    assert refused(job(baseModel__tokenSecretRef={"name": "db-password"}), OperatorSettings(token_secret_prefix="")) == ("", "")


SECRET = st.from_regex(r"[a-z0-9]([-a-z0-9.]{0,20}[a-z0-9])?", fullmatch=True)


@settings(max_examples=400, deadline=None)
@given(name=SECRET, prefix=st.sampled_from(["tuneloop-", "hf-", "", "t"]))
def test_a_secret_is_usable_exactly_when_its_name_carries_the_prefix(name, prefix):
    assert secret_allowed(name, prefix) == (name.startswith(prefix) and name != prefix)
    where, _ = refused(job(baseModel__tokenSecretRef={"name": name}), OperatorSettings(token_secret_prefix=prefix))
    assert (where == "") == secret_allowed(name, prefix)


def test_s3_credentials_follow_the_same_rule():
    body = _ftj()
    body["spec"]["baseModel"] = {"s3": {"uri": "s3://models/base", "credentialsSecretRef": {"name": "aws-admin", "key": "k"}}}
    where, why = refused(body)
    assert where == "spec.baseModel.s3.credentialsSecretRef.name" and "aws-admin" in why
    body["spec"]["baseModel"]["s3"]["credentialsSecretRef"]["name"] = "tuneloop-aws"
    assert refused(body) == ("", "")


def test_remote_code_in_the_stages_needs_the_admin():
    where, why = refused(job(baseModel__trustRemoteCode=True))
    assert where == "spec.baseModel.trustRemoteCode" and "--trust-remote-code" in why
    assert refused(job(baseModel__trustRemoteCode=True), OperatorSettings(allowed_extra_args=["--trust-remote-code"])) == ("", "")
    assert refused(job(baseModel__trustRemoteCode=True), OperatorSettings(allowed_extra_args=["*"])) == ("", "")


# --- finding 8: vllm serve arguments ------------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [
    ["--trust-remote-code"], ["--trust_remote_code"], ["--trust-remote"], ["--trust"], ["--max-model-len", "8192", "--trust-remote-code"],
    ["--allowed-local-media-path=/"], ["--allowed-local-media-path", "/"], ["--allowed-media-domains", "evil.example"],
    ["--config", "/models/artifact/args.yaml"], ["--model=evil/model"], ["--lora-modules", "bot=/tmp/x"],
    ["--kv-transfer-config.kv_connector=x"], ["--otlp-traces-endpoint=http://collector.evil:4317"],
    ["--tool-parser-plugin", "/models/artifact/plugin.py"], ["--middleware", "evil.Middleware"],
    ["--compilation-config", '{"inductor_passes": {"p": "os.system"}}'], ["-O", '{"level": 3}'], ['-O{"level":3}'],
    ["-O.inductor_passes.p=os.system"], ["--compilation_config.level=3"],
])
def test_denied_serving_flags_are_found_in_every_spelling(args):
    assert denied_args(args)


@pytest.mark.parametrize("args", [["--max-model-len", "8192"], ["--dtype=bfloat16"], ["--no-trust-remote-code"],
                                  ["--enable-prefix-caching"], ["--tokenizer-mode", "auto"], ["--model-impl", "vllm"],
                                  ["--gpu-memory-utilization", "0.9"], ["-tp", "2"], ["--served-model-name", "bot"], ["-O3"], ["-O", "3"], ["-O=0"]])
def test_ordinary_serving_flags_pass(args):
    assert denied_args(args) == []


def test_the_admin_allows_a_flag_in_any_spelling_or_all_of_them():
    assert denied_args(["--trust_remote_code", "--model", "x"], ["--trust-remote-code"]) == ["--model"]
    assert denied_args(["--trust_remote_code", "--model", "x"], ["*"]) == []


def _parser() -> argparse.ArgumentParser:
    """An argparse parser like vLLM's: every denied flag and some ordinary ones, abbreviations allowed."""
    p = argparse.ArgumentParser(allow_abbrev=True, exit_on_error=False, add_help=False)
    for flag in DENIED_SERVING_ARGS:
        p.add_argument(flag, dest="denied_" + flag[2:].replace("-", "_"), nargs="?", const=True, default=None)
    for flag in ("--max-model-len", "--dtype", "--enable-prefix-caching", "--tokenizer-mode", "--model-impl", "--port",
                 "--max-num-seqs", "--load-balancer", "--trust-env"):
        p.add_argument(flag, nargs="?", const=True, default=None)
    return p


FLAGS = [*DENIED_SERVING_ARGS, "--max-model-len", "--dtype", "--enable-prefix-caching", "--tokenizer-mode", "--model-impl",
         "--port", "--max-num-seqs"]


@st.composite
def spelled(draw) -> str:
    """A token as a tenant might write it: a flag, cut to a prefix, with `=value`, or a plain value."""
    kind = draw(st.sampled_from(["flag", "prefix", "assign", "value"]))
    flag = draw(st.sampled_from(FLAGS))
    if kind == "value":
        return draw(st.from_regex(r"[a-z0-9/.=-]{1,10}", fullmatch=True))
    if kind == "prefix":
        flag = flag[: draw(st.integers(3, len(flag)))]
    if kind == "assign":
        flag = f"{flag}={draw(st.from_regex(r'[a-z0-9/.]{0,6}', fullmatch=True))}"
    return flag


@settings(max_examples=500, deadline=None)
@given(args=st.lists(spelled(), max_size=6))
def test_whatever_argparse_reads_as_a_denied_flag_is_refused(args):
    """The oracle is argparse itself: any argument list it parses into a denied option is refused by the denylist
    (abbreviations included); an argument list with no token that names a denied flag parses to none."""
    try:
        ns, _ = _parser().parse_known_args(args)
    except (argparse.ArgumentError, SystemExit):
        assume(False)
    hit = {k for k, v in vars(ns).items() if k.startswith("denied_") and v is not None}
    if hit:
        assert denied_args(args), (args, hit)


@settings(max_examples=300, deadline=None)
@given(flag=st.sampled_from(DENIED_SERVING_ARGS), value=st.from_regex(r"[a-z0-9/.:]{0,8}", fullmatch=True),
       cut=st.integers(0, 30), underscores=st.booleans())
def test_a_denied_flag_is_refused_in_vllms_spellings_unless_allowed(flag, value, cut, underscores):
    name = flag[: max(3, len(flag) - cut)]
    if underscores:
        name = "--" + name[2:].replace("-", "_")
    for token in (name, f"{name}={value}", f"{name}.key={value}"):
        assert denied_args([token]) == [token]
        if name.replace("_", "-") == flag:
            assert denied_args([token], [flag]) == []


# --- finding 9: scheduling ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("resources,where", [
    ({"tolerations": [{"operator": "Exists"}]}, "spec.resources.tolerations[0]"),
    ({"nodeSelector": {"node-role.kubernetes.io/control-plane": ""}}, "spec.resources.nodeSelector.node-role.kubernetes.io/control-plane"),
    ({"tolerations": [{"key": "node-role.kubernetes.io/master", "operator": "Exists", "effect": "NoSchedule"}]}, "spec.resources.tolerations[0]"),
])
def test_a_job_on_the_control_plane_fails_invalid_spec(resources, where):
    assert refused(job(resources=resources))[0] == where
    assert refused(job(resources=resources), OperatorSettings(reserved_node_keys=[], allow_any_toleration=True)) == ("", "")


def test_an_ordinary_gpu_toleration_and_node_selector_pass():
    res = {"nodeSelector": {"nvidia.com/gpu.product": "H100"}, "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]}
    assert refused(job(resources=res)) == ("", "")


TOLERATION = st.fixed_dictionaries({"operator": st.sampled_from(["Exists", "Equal"])},
                                   optional={"key": st.sampled_from(["", "nvidia.com/gpu", "dedicated", *CONTROL_PLANE_KEYS, "node-role.kubernetes.io/infra"]),
                                             "effect": st.sampled_from(["NoSchedule", "NoExecute"])})


@settings(max_examples=400, deadline=None)
@given(tolerations=st.lists(TOLERATION, max_size=4),
       selector=st.dictionaries(st.sampled_from(["kubernetes.io/os", "dedicated", *CONTROL_PLANE_KEYS]), st.just("x"), max_size=3),
       reserved=st.sampled_from([list(CONTROL_PLANE_KEYS), ["node-role.kubernetes.io/*"], [], ["dedicated"]]), allow_any=st.booleans())
def test_the_scheduling_policy_refuses_exactly_reserved_keys_and_catch_all_tolerations(tolerations, selector, reserved, allow_any):
    def is_reserved(key: str) -> bool:
        return bool(key) and any(key == r or (r.endswith("*") and key.startswith(r[:-1])) for r in reserved)

    problems = scheduling_problems(selector, tolerations, reserved=reserved, allow_any_toleration=allow_any, field="spec.resources")
    expected = {f"spec.resources.nodeSelector.{k}" for k in selector if is_reserved(k)}
    expected |= {f"spec.resources.tolerations[{i}]" for i, t in enumerate(tolerations)
                 if is_reserved(t.get("key") or "") or (not t.get("key") and t["operator"] == "Exists" and not allow_any)}
    assert {where for where, _ in problems} == expected
    assert len(problems) == len(expected)


# --- finding 9: read-only root filesystem ----------------------------------------------------------------------------


def test_stage_pods_have_a_read_only_root_filesystem_and_a_writable_home():
    spec = FineTuneJobSpec.model_validate(_ftj()["spec"])
    meta = JobMeta(name="x", namespace="ns", uid="u-1", generation=1)
    for build in (builders.data_job, builders.train_job, builders.eval_job, builders.export_job):
        pod = build(spec, meta, OperatorSettings())["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        env = {e["name"]: e.get("value") for e in c["env"]}
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        assert env["HOME"] == "/tmp" and "/tmp" in mounts and not mounts["/tmp"].get("readOnly")
        for path in (env["HF_HOME"], "/output", "/tmp/torch_extensions"):
            assert any(path == m or path.startswith(m + "/") for m, v in mounts.items() if not v.get("readOnly")), path


def test_the_policy_from_default_settings_is_the_multi_tenant_one():
    p = Policy.from_settings(OperatorSettings())
    assert p.allowed_images == (TRAINER,) and p.token_secret_prefix == "tuneloop-" and p.reserved_node_keys == CONTROL_PLANE_KEYS
    assert not p.allow_any_toleration and not p.allows_remote_code()


def test_the_schedules_digest_job_is_hardened_too():
    import datetime as dt

    from tuneloop.api.schedule import FineTuneSchedule
    from tuneloop.operator.builders import schedule as build

    from ...schedule import samples

    obj = samples.schedule(triggers={"newData": {"claimName": "datasets", "glob": "support/*.jsonl"}})
    job = build.digest_job(obj, FineTuneSchedule.model_validate(obj).spec, TRAINER, dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    pod = job["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True


def test_every_pod_the_operator_builds_has_the_one_security_context():
    """Stage Jobs, the digest Job and the vLLM Deployments share builders.security (issue 24: one home)."""
    import datetime as dt

    from tuneloop.api.modelversion import ModelVersion
    from tuneloop.api.rollout import Rollout
    from tuneloop.api.schedule import FineTuneSchedule
    from tuneloop.operator.builders import schedule as build
    from tuneloop.operator.builders import serving
    from tuneloop.operator.builders.security import container_security, pod_security

    from ...rollout import samples as rollout_samples
    from ...rollout.test_builders import CONFIG
    from ...schedule import samples

    spec = FineTuneJobSpec.model_validate(_ftj()["spec"])
    meta = JobMeta(name="x", namespace="ns", uid="u-1", generation=1)
    pods = [b(spec, meta, OperatorSettings(run_as_user=1234))["spec"]["template"]["spec"]
            for b in (builders.data_job, builders.train_job, builders.eval_job, builders.export_job)]
    obj = samples.schedule(triggers={"newData": {"claimName": "datasets", "glob": "support/*.jsonl"}})
    pods.append(build.digest_job(obj, FineTuneSchedule.model_validate(obj).spec, TRAINER, dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
                                 run_as_user=1234)["spec"]["template"]["spec"])
    raw = rollout_samples.gateway_rollout()
    mv = ModelVersion.model_validate(rollout_samples.model_version("support-bot-v2"))
    cfg = serving.ServingConfig(vllm_image=CONFIG.vllm_image, image_pull_policy="IfNotPresent", run_as_user=1234)
    pods.append(serving.build_deployment(raw, Rollout.model_validate(raw).spec, "canary", mv, 1, cfg)["spec"]["template"]["spec"])
    for pod in pods:
        assert pod["securityContext"] == pod_security(1234)
        assert [c["securityContext"] for c in pod["containers"]] == [container_security()] * len(pod["containers"])
    assert container_security()["readOnlyRootFilesystem"] is True and container_security()["capabilities"] == {"drop": ["ALL"]}


def test_validate_cluster_names_what_the_policy_refuses_in_a_finetunejob(tmp_path, capsys):
    import yaml
    from tuneloop.cli.main import main as cli

    body = job(image="ghcr.io/mallory/evaluator:latest")
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(body))
    assert cli(["validate", str(path)]) == 0  # the schema cannot know the admin's policy
    assert cli(["validate", "--cluster", str(path)]) == 1
    err = capsys.readouterr().err
    assert "spec.image" in err and "not allowed by the platform admin" in err and TRAINER in err
