"""A small synchronous Kubernetes client for the cluster tier: raw REST calls with the kubeconfig's
credentials (the operator's own `discover()`), plus `kubectl` for apply/-k/token/explain."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from tuneloop.operator.kube import discover
from tuneloop.operator.kube import resources as r

MERGE = "application/merge-patch+json"
CORE = {"pods": "Pod", "services": "Service", "configmaps": "ConfigMap", "events": "Event", "namespaces": "Namespace",
        "persistentvolumeclaims": "PersistentVolumeClaim", "persistentvolumes": "PersistentVolume", "serviceaccounts": "ServiceAccount",
        "secrets": "Secret"}
CLUSTER_SCOPED = {"namespaces", "persistentvolumes", "customresourcedefinitions", "clusterroles", "clusterrolebindings"}
# plural -> API prefix
PREFIX = {
    **{p: "/api/v1" for p in CORE},
    "jobs": "/apis/batch/v1",
    "deployments": "/apis/apps/v1", "replicasets": "/apis/apps/v1",
    "roles": "/apis/rbac.authorization.k8s.io/v1", "rolebindings": "/apis/rbac.authorization.k8s.io/v1",
    "clusterroles": "/apis/rbac.authorization.k8s.io/v1", "clusterrolebindings": "/apis/rbac.authorization.k8s.io/v1",
    "customresourcedefinitions": "/apis/apiextensions.k8s.io/v1",
    "httproutes": "/apis/gateway.networking.k8s.io/v1",
    "inferencemodelrewrites": "/apis/inference.networking.x-k8s.io/v1alpha2", "inferencepools": "/apis/inference.networking.k8s.io/v1",
    "finetunejobs": "/apis/tuneloop.dev/v1alpha1", "modelversions": "/apis/tuneloop.dev/v1alpha1",
    "rollouts": "/apis/tuneloop.dev/v1alpha1", "finetuneschedules": "/apis/tuneloop.dev/v1alpha1",
    "finetunesweeps": "/apis/tuneloop.dev/v1alpha1",
}


class ApiError(Exception):
    def __init__(self, status: int, body: dict):
        self.status = status
        self.body = body
        self.message = body.get("message", "")
        super().__init__(f"{status}: {self.message}")


def path(plural: str, ns: str | None = None, name: str | None = None, sub: str | None = None) -> str:
    parts = [PREFIX[plural]]
    if ns and plural not in CLUSTER_SCOPED:
        parts += ["namespaces", ns]
    parts.append(plural)
    if name:
        parts.append(name)
    if sub:
        parts.append(sub)
    return "/".join(parts)


class Kube:
    def __init__(self, kubeconfig: str | Path):
        self.kubeconfig = str(kubeconfig)
        conn = discover(self.kubeconfig)
        self.server = conn.server
        self.headers = dict(conn.headers)
        self.ctx: ssl.SSLContext | None = conn.ssl if isinstance(conn.ssl, ssl.SSLContext) else None

    # --- REST ----------------------------------------------------------------------------------
    def request(self, method: str, url_path: str, body: Any = None, *, ctype: str = "application/json",
                params: dict | None = None, raw: bool = False, timeout: float = 30) -> Any:
        url = self.server + url_path + ("?" + urllib.parse.urlencode(params) if params else "")
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method, headers={**self.headers, "Accept": "application/json",
                                                                             **({"Content-Type": ctype} if data else {})})
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=timeout) as resp:
                text = resp.read().decode()
        except urllib.error.HTTPError as e:
            text = e.read().decode()
            try:
                doc = json.loads(text)
            except ValueError:
                doc = {"message": text}
            raise ApiError(e.code, doc) from None
        if raw:
            return text
        return json.loads(text) if text else None

    def get(self, plural: str, name: str, ns: str | None = None, sub: str | None = None) -> dict | None:
        try:
            return self.request("GET", path(plural, ns, name, sub))
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def list(self, plural: str, ns: str | None = None, selector: str | None = None) -> list[dict]:
        params = {"labelSelector": selector} if selector else None
        return (self.request("GET", path(plural, ns), params=params) or {}).get("items") or []

    def create(self, plural: str, obj: dict, ns: str | None = None) -> dict:
        ns = ns or (obj.get("metadata") or {}).get("namespace")
        return self.request("POST", path(plural, ns), obj)

    def patch(self, plural: str, name: str, ns: str | None, patch: dict, sub: str | None = None) -> dict:
        return self.request("PATCH", path(plural, ns, name, sub), patch, ctype=MERGE)

    def delete(self, plural: str, name: str, ns: str | None = None, propagation: str = "Background") -> bool:
        try:
            self.request("DELETE", path(plural, ns, name), {"propagationPolicy": propagation})
            return True
        except ApiError as e:
            if e.status == 404:
                return False
            raise

    def wait(self, plural: str, name: str, ns: str | None, pred: Callable[[dict], bool] = lambda o: True, *,
             timeout: float = 120, every: float = 1.0, what: str = "", on_timeout: Callable[[], str] | None = None) -> dict:
        deadline = time.monotonic() + timeout
        last = None
        while True:
            last = self.get(plural, name, ns)
            if last is not None and pred(last):
                return last
            if time.monotonic() > deadline:
                extra = on_timeout() if on_timeout else ""
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {plural} {ns}/{name} {what}\n"
                                     f"last seen:\n{yaml.safe_dump(_trim(last))}\n{extra}")
            time.sleep(every)

    def wait_gone(self, plural: str, name: str, ns: str | None, timeout: float = 60) -> float:
        start = time.monotonic()
        while self.get(plural, name, ns) is not None:
            if time.monotonic() - start > timeout:
                obj = self.get(plural, name, ns)
                raise AssertionError(f"{plural} {ns}/{name} still there after {timeout:.0f}s:\n{yaml.safe_dump(_trim(obj))}")
            time.sleep(0.5)
        return time.monotonic() - start

    def events(self, ns: str) -> list[dict]:
        return self.list("events", ns)

    # --- kubectl -------------------------------------------------------------------------------
    def kubectl(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess:
        out = subprocess.run(["kubectl", "--kubeconfig", self.kubeconfig, *args], input=input, capture_output=True, text=True,
                             timeout=timeout, env={**os.environ, "KUBECTL_EXTERNAL_DIFF": ""})
        if check and out.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({out.returncode}):\n{out.stderr}\n{out.stdout}")
        return out

    def apply(self, docs: list[dict] | dict, *, server_side: bool = True, check: bool = True) -> subprocess.CompletedProcess:
        docs = docs if isinstance(docs, list) else [docs]
        args = ["apply", "-f", "-"] + (["--server-side", "--field-manager=tuneloop-tests"] if server_side else [])
        return self.kubectl(*args, input=yaml.safe_dump_all(docs), check=check)


def _trim(obj: dict | None) -> dict | None:
    """Drop managedFields from an object for readable failure messages."""
    if not obj:
        return obj
    obj = dict(obj)
    meta = dict(obj.get("metadata") or {})
    meta.pop("managedFields", None)
    obj["metadata"] = meta
    return obj


__all__ = ["ApiError", "Kube", "path", "r"]
