"""The platform admin's admission policy for what a namespace's users put into specs (issue 25, findings 7-9; pure).

Each decision is a pure function of the spec's value and the admin's setting (`tuneloop.operator.settings`), so the
operator (InvalidSpec), `kubectl tuneloop validate --cluster` and the schedule's template check give one answer:

- `image_allowed`: the image of the data, training and evaluation stages (a FineTuneJob's `spec.image`) is one the
  admin allows (`TUNELOOP_ALLOWED_IMAGES`): the evaluation pod writes the verdict, so its code must be the admin's;
- `secret_allowed`: `baseModel.tokenSecretRef` names a Secret the namespace marked for tuneloop by its name prefix
  (`TUNELOOP_TOKEN_SECRET_PREFIX`, default `tuneloop-`): the operator reads no Secret, so the mark is the name;
- `denied_args`: `vllm serve` flags that run code, read files or reach the network (`--trust-remote-code`, …) are
  refused in a Rollout's `serving.extraArgs` unless the admin allows them (`TUNELOOP_ALLOWED_EXTRA_ARGS`), in every
  spelling argparse (and vLLM's parser) accepts: `--flag=value`, `--flag_with_underscores`, a unique prefix, a
  `--flag.key=value` sub-key;
- `scheduling_problems`: tolerations and nodeSelectors may not target the nodes the admin reserves (control-plane
  by default) nor tolerate every taint (`operator: Exists` without a key).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

ANY = "*"

# `vllm serve` flags a tenant may not pass (the admin may allow each, or `*`): they run code that is not the image's
# (remote modelling code, plugins, middleware, worker classes), read the CLI from a file (which would bypass this
# list), serve weights other than the gated ModelVersion, read local files into requests, or make the server reach
# other hosts (media URLs, traces, KV-cache transfer, data-parallel peers).
DENIED_SERVING_ARGS: tuple[str, ...] = (
    "--trust-remote-code",
    "--allowed-local-media-path",
    "--allowed-media-domains",
    "--config",
    "--model",
    "--lora-modules",
    "--tokenizer",
    "--code-revision",
    "--download-dir",
    "--tool-parser-plugin",
    "--reasoning-parser-plugin",
    "--middleware",
    "--logits-processors",
    "--worker-cls",
    "--worker-extension-cls",
    "--model-loader-extra-config",
    "--compilation-config",  # inductor_passes: qualified names vLLM imports (also `-O` with a JSON or `.key` value)
    "--load-format",
    "--otlp-traces-endpoint",
    "--kv-transfer-config",
    "--kv-events-config",
    "--distributed-executor-backend",
    "--data-parallel-address",
    "--ssl-keyfile",
    "--ssl-certfile",
    "--ssl-ca-certs",
)
TRUST_REMOTE_CODE = "--trust-remote-code"  # also governs a FineTuneJob's baseModel.trustRemoteCode

CONTROL_PLANE_KEYS: tuple[str, ...] = ("node-role.kubernetes.io/control-plane", "node-role.kubernetes.io/master")


# --- images -----------------------------------------------------------------------------------------------------


def _tagged(ref: str) -> bool:
    """The reference carries a tag or a digest (a ':' or '@' after the last '/': a registry port is not a tag)."""
    last = ref.rsplit("/", 1)[-1]
    return ":" in last or "@" in ref


def image_allowed(image: str, allowed: Iterable[str]) -> bool:
    """`image` matches an entry of the admin's list:

    - `*`: any image (single-tenant installs);
    - an entry ending in `*`: a prefix (`ghcr.io/acme/trainer:*` any tag of that repository; `ghcr.io/acme/*` every
      repository under it — a prefix is taken literally, so `ghcr.io/acme/trainer*` also matches `…/trainer-x`);
    - a repository without tag or digest (`ghcr.io/acme/trainer`): that repository with any tag or digest, or bare;
    - anything else: exactly that reference.
    """
    image = image.strip()
    if not image or any(c.isspace() for c in image):
        return False
    for entry in allowed:
        entry = entry.strip()
        if not entry:
            continue
        if entry == ANY or image == entry:
            return True
        if entry.endswith("*"):
            if image.startswith(entry[:-1]):
                return True
            continue
        rest = image[len(entry):] if image.startswith(entry) else ""
        if not _tagged(entry) and len(rest) > 1 and rest[0] in ":@" and "/" not in rest:
            return True  # the repository with a tag and/or digest (never a path below it, nor another registry port)
    return False


# --- Secrets ------------------------------------------------------------------------------------------------------


def secret_allowed(name: str, prefix: str) -> bool:
    """A Secret a FineTuneJob may expose to its pods: its name starts with the admin's prefix (an empty prefix: any)."""
    return name.startswith(prefix) and (not prefix or len(name) > len(prefix))


# --- vllm serve arguments -------------------------------------------------------------------------------------------


COMPILATION_SHORT = "-O"  # vLLM's short form of --compilation-config: `-O3` is a level, `-O '{…}'` / `-O.key=v` a config


def flag_name(token: str) -> str | None:
    """The long option a command-line token spells, as vLLM's parser reads it (`--a_b.c=1` -> `--a-b`), or None for a
    value, a positional or a short option (`-O` with a config value, not a level, is `--compilation-config`)."""
    if token.startswith(COMPILATION_SHORT) and not token.startswith("--"):
        value = token[len(COMPILATION_SHORT):].removeprefix("=")
        return "--compilation-config" if value[:1] in ("{", ".") else None
    if not token.startswith("--") or token == "--":
        return None
    name = token.split("=", 1)[0]
    name = name.split(".", 1)[0]  # vLLM's `--hf-overrides.key=value` sub-keys belong to `--hf-overrides`
    return "--" + name[2:].replace("_", "-")


def denied_args(args: Iterable[str], allowed: Iterable[str] = (), denied: Iterable[str] = DENIED_SERVING_ARGS) -> list[str]:
    """The tokens of `args` that spell a denied flag the admin did not allow, in order.

    A token is a denied flag when its long-option name (`flag_name`) equals one, or is a prefix of one: argparse
    takes any unique prefix of a long option (`--trust-remote` is `--trust-remote-code`), and since tuneloop does not
    know every flag of every vLLM version, a prefix of a denied flag is refused whatever else it could abbreviate
    (`--mod` could be `--model`). `--no-<flag>` (vLLM's negative form) only turns a flag off and passes. Every token
    that starts with `--` is checked, wherever it stands (argparse reads such a token as an option, not as the
    previous option's value); what follows `=` in a token is its value."""
    allow = {a.strip() for a in allowed if a.strip()}
    if ANY in allow:
        return []
    allow = {flag_name(a) or a for a in allow}
    listed = set(denied)
    deny = [d for d in denied if d not in allow]
    out = []
    args = [str(a) for a in args]
    for i, token in enumerate(args):
        name = flag_name(token)
        if token == COMPILATION_SHORT and i + 1 < len(args) and not args[i + 1].strip()[:1].isdigit():
            name = "--compilation-config"  # `-O '{"inductor_passes": …}'`: only a bare level passes
        if name is None or len(name) <= 2:
            continue
        if name in listed:  # an exact option name wins over the options it is a prefix of (argparse)
            if name in deny:
                out.append(token)
            continue
        if name.startswith("--no-"):
            continue
        if any(d.startswith(name) for d in deny):
            out.append(token)
    return out


# --- scheduling -------------------------------------------------------------------------------------------------


def _reserved(key: str | None, reserved: Iterable[str]) -> bool:
    if not key:
        return False
    for r in reserved:
        r = r.strip()
        if r and (key == r or (r.endswith("*") and key.startswith(r[:-1]))):
            return True
    return False


def scheduling_problems(node_selector: Mapping[str, str], tolerations: Iterable[Mapping[str, Any]], *, reserved: Iterable[str],
                        allow_any_toleration: bool, field: str) -> list[tuple[str, str]]:
    """(field path, message) for each nodeSelector key and toleration the admin's policy refuses:

    - a nodeSelector key or toleration key among the admin's reserved node keys (`reserved`; an entry ending in `*`
      is a prefix), by default the control-plane role labels and taints;
    - a toleration with `operator: Exists` and no key (it tolerates every taint, the control plane's included),
      unless `allow_any_toleration`."""
    reserved = list(reserved)
    out = []
    for key in node_selector:
        if _reserved(key, reserved):
            out.append((f"{field}.nodeSelector.{key}", f"node label {key} is reserved by the platform admin (reservedNodeKeys); "
                        "tuneloop pods may not select those nodes"))
    for i, t in enumerate(tolerations):
        taint = t.get("key")
        if _reserved(taint, reserved):
            out.append((f"{field}.tolerations[{i}]", f"taint {taint} is reserved by the platform admin (reservedNodeKeys); "
                        "tuneloop pods may not tolerate it"))
        elif not taint and (t.get("operator") or "Equal") == "Exists" and not allow_any_toleration:
            out.append((f"{field}.tolerations[{i}]", "a toleration with operator Exists and no key tolerates every taint "
                        "(control-plane nodes included); name the taint's key (the admin may allow this: allowAnyToleration)"))
    return out


@dataclass(frozen=True)
class Policy:
    """The admin's admission settings (from OperatorSettings; the defaults are the chart's)."""

    allowed_images: tuple[str, ...] = ()
    token_secret_prefix: str = "tuneloop-"
    allowed_extra_args: tuple[str, ...] = ()
    reserved_node_keys: tuple[str, ...] = CONTROL_PLANE_KEYS
    allow_any_toleration: bool = False

    @classmethod
    def from_settings(cls, s: Any) -> Policy:
        return cls(tuple(s.allowed_images_or_default()), s.token_secret_prefix, tuple(s.allowed_extra_args),
                   tuple(s.reserved_node_keys), s.allow_any_toleration)

    def allows_remote_code(self) -> bool:
        return not denied_args([TRUST_REMOTE_CODE], self.allowed_extra_args)


# --- per object ------------------------------------------------------------------------------------------------------


def _tolerations(items: Iterable[Any]) -> list[Mapping[str, Any]]:
    return [t.wire() if hasattr(t, "wire") else t for t in items]


def secret_refs(node: Any, path: str) -> list[tuple[str, str]]:
    """(field path, Secret name) of every `…SecretRef` in a spec (tokenSecretRef, S3 credentialsSecretRef)."""
    out: list[tuple[str, str]] = []
    if isinstance(node, dict):
        for k, v in node.items():
            if str(k).endswith("SecretRef") and isinstance(v, dict) and isinstance(v.get("name"), str):
                out.append((f"{path}.{k}", v["name"]))
            else:
                out += secret_refs(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += secret_refs(v, f"{path}[{i}]")
    return out


def finetunejob_problems(spec: Any, policy: Policy, trainer_image: str) -> list[tuple[str, str]]:
    """(field path, message) of everything in a FineTuneJobSpec the admin's policy refuses (the operator fails the job
    InvalidSpec with the first; a schedule's template is checked through the FineTuneJob it would create)."""
    out = []
    if spec.image and spec.image != trainer_image and not image_allowed(spec.image, policy.allowed_images):
        out.append(("spec.image", f"image {spec.image!r} is not allowed by the platform admin: the stages (evaluation "
                    f"included, which writes the gate verdict) run only {', '.join(policy.allowed_images) or trainer_image}; "
                    "leave spec.image empty for the operator's trainer image (allowedImages)"))
    for where, name in secret_refs(spec.wire() if hasattr(spec, "wire") else spec, "spec"):
        if not secret_allowed(name, policy.token_secret_prefix):
            out.append((f"{where}.name",
                        f"Secret {name!r} is not marked for tuneloop: a FineTuneJob may expose only Secrets whose name starts "
                        f"with {policy.token_secret_prefix!r} (tokenSecretPrefix); create or copy it under such a name"))
    if spec.base_model.trust_remote_code and not policy.allows_remote_code():
        out.append(("spec.baseModel.trustRemoteCode", "remote modelling code is not allowed by the platform admin (it would run "
                    f"in the training and evaluation pods); the admin allows it with {TRUST_REMOTE_CODE} in allowedExtraArgs"))
    r = spec.resources
    out += scheduling_problems(r.node_selector, _tolerations(r.tolerations), reserved=policy.reserved_node_keys,
                               allow_any_toleration=policy.allow_any_toleration, field="spec.resources")
    return out


def rollout_problems(spec: Any, policy: Policy) -> list[tuple[str, str]]:
    """(field path, message) of everything in a RolloutSpec the admin's policy refuses (the Rollout is Degraded,
    InvalidSpec, and changes nothing)."""
    out = []
    bad = denied_args(spec.serving.extra_args, policy.allowed_extra_args)
    if bad:
        out.append(("spec.serving.extraArgs", f"{', '.join(bad)}: not allowed by the platform admin (vllm serve flags that run "
                    "foreign code, read files, serve other weights or reach other hosts; allowedExtraArgs)"))
    s = spec.serving
    out += scheduling_problems(s.node_selector, _tolerations(s.tolerations), reserved=policy.reserved_node_keys,
                               allow_any_toleration=policy.allow_any_toleration, field="spec.serving")
    return out
