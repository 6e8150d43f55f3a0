"""Ownership before write (issue 25, findings 6 and 11): the operator patches or adopts only what it created (pure).

Every object tuneloop creates carries a controller ownerReference to the tuneloop object it serves (a Rollout's
Deployments, Services and HTTPRoute; a FineTuneJob's ConfigMap, Service and Jobs; a ModelVersion's report
ConfigMap). An object of the same name that someone else made — a `payments` Service a Rollout's
`replicaWeighted.service` names, a `<job>-config` ConfigMap planted before the FineTuneJob — has no such
reference, and the operator refuses to touch it (`NotOwned`, shown in a condition that names the object).
"""

from __future__ import annotations

from typing import Any


class NotOwned(Exception):
    """An object exists under the name the operator needs, and it is not controlled by `owner`."""

    def __init__(self, obj: dict[str, Any], owner: dict[str, Any]):
        self.object = describe(obj)
        self.owner = f"{owner.get('kind', '?')} {owner.get('name', '?')}"
        ctrl = controller(obj)
        held = f"it is controlled by {ctrl.get('kind')} {ctrl.get('name')}" if ctrl else "it has no controller"
        super().__init__(f"{self.object} already exists and is not controlled by {self.owner} ({held}); "
                         "tuneloop does not change or adopt objects it did not create: delete or rename it, or choose another name")


def describe(obj: dict[str, Any]) -> str:
    m = obj.get("metadata") or {}
    return f"{obj.get('kind') or 'object'} {m.get('namespace', '')}/{m.get('name', '?')}".replace(" /", " ")


def controller(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The ownerReference with controller: true, if any."""
    return next((o for o in (obj.get("metadata") or {}).get("ownerReferences") or [] if o.get("controller")), None)


def _group(api_version: str | None) -> str:
    return (api_version or "").rpartition("/")[0]


def controlled_by(obj: dict[str, Any], owner: dict[str, Any]) -> bool:
    """`obj`'s controller is `owner` (an ownerReference as tuneloop writes it): same group, kind and name, and the
    same uid when `owner` carries one."""
    ctrl = controller(obj)
    if ctrl is None:
        return False
    if (_group(ctrl.get("apiVersion")), ctrl.get("kind"), ctrl.get("name")) != (_group(owner.get("apiVersion")), owner.get("kind"), owner.get("name")):
        return False
    return not owner.get("uid") or ctrl.get("uid") == owner["uid"]


def check_owned(existing: dict[str, Any], manifest: dict[str, Any]) -> None:
    """Raise NotOwned unless `existing` is controlled by the controller named in `manifest` (what we would have created)."""
    owner = controller(manifest)
    assert owner is not None, f"{describe(manifest)}: tuneloop's manifests carry a controller ownerReference"
    if not controlled_by(existing, owner):
        raise NotOwned({**existing, "kind": existing.get("kind") or manifest.get("kind")}, owner)


def same_registration(existing: dict[str, Any], built: dict[str, Any]) -> bool:
    """A ModelVersion found under the name a FineTuneJob registers is that job's registration: the same job (name
    and uid in spec.lineage.fineTuneJob), artifact and evaluation verdict as the one the job would create."""
    def key(mv: dict[str, Any]) -> tuple[Any, ...]:
        spec = mv.get("spec") or {}
        job = (spec.get("lineage") or {}).get("fineTuneJob") or {}
        return (job.get("name"), job.get("uid"), (spec.get("artifact") or {}).get("uri"), (spec.get("evaluation") or {}).get("verdict"))
    return key(existing) == key(built)
