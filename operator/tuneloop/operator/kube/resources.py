"""The Kubernetes resources the operator touches: group/version/plural and URL building."""

from __future__ import annotations

from dataclasses import dataclass

from tuneloop.api.common import GROUP, VERSION


@dataclass(frozen=True)
class Resource:
    """One API resource. `group` is "" for the core API."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
        """URL path, e.g. /apis/batch/v1/namespaces/ns/jobs/name/status."""
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        parts = [base]
        if self.namespaced and namespace:
            parts.append(f"namespaces/{namespace}")
        parts.append(self.plural)
        if name:
            parts.append(name)
            if subresource:
                parts.append(subresource)
        return "/".join(parts)


NAMESPACES = Resource("", "v1", "namespaces", "Namespace", namespaced=False)
PODS = Resource("", "v1", "pods", "Pod")
SERVICES = Resource("", "v1", "services", "Service")
CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap")
SECRETS = Resource("", "v1", "secrets", "Secret")
EVENTS = Resource("", "v1", "events", "Event")
PVCS = Resource("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim")
JOBS = Resource("batch", "v1", "jobs", "Job")
DEPLOYMENTS = Resource("apps", "v1", "deployments", "Deployment")
HTTPROUTES = Resource("gateway.networking.k8s.io", "v1", "httproutes", "HTTPRoute")
NETWORKPOLICIES = Resource("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy")
# Gateway API Inference Extension: weights between model names (adapters) inside one InferencePool (sharedBase Rollouts)
INFERENCEMODELREWRITES = Resource("inference.networking.x-k8s.io", "v1alpha2", "inferencemodelrewrites", "InferenceModelRewrite")
FINETUNEJOBS = Resource(GROUP, VERSION, "finetunejobs", "FineTuneJob")
MODELVERSIONS = Resource(GROUP, VERSION, "modelversions", "ModelVersion")
ROLLOUTS = Resource(GROUP, VERSION, "rollouts", "Rollout")
FINETUNESCHEDULES = Resource(GROUP, VERSION, "finetuneschedules", "FineTuneSchedule")
FINETUNESWEEPS = Resource(GROUP, VERSION, "finetunesweeps", "FineTuneSweep")

ALL = [NAMESPACES, PODS, SERVICES, CONFIGMAPS, SECRETS, EVENTS, PVCS, JOBS, DEPLOYMENTS, HTTPROUTES, NETWORKPOLICIES,
       INFERENCEMODELREWRITES, FINETUNEJOBS, MODELVERSIONS, ROLLOUTS, FINETUNESCHEDULES, FINETUNESWEEPS]
_BY_KIND = {(r.api_version, r.kind): r for r in ALL}


def for_object(obj: dict) -> Resource:
    """The Resource of a manifest, from its apiVersion and kind."""
    key = (obj.get("apiVersion", ""), obj.get("kind", ""))
    try:
        return _BY_KIND[key]
    except KeyError:
        raise KeyError(f"unknown resource {key[0]}/{key[1]}; add it to tuneloop.operator.kube.resources") from None

# Not part of ALL (the emulator harness does not serve it): used to install CRDs in cluster tests.
CRDS = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", namespaced=False)
