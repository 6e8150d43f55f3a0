"""What the Reconciler tests against kmock share: the Rollout `bot` and its ModelVersions in NS, applied to the fake API
server, and one reconcile tick at an explicit time."""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any

from tuneloop.operator.kube import resources as r

from . import samples

NS = "default"


def model_version(name: str) -> dict[str, Any]:
    """samples.model_version(name), named `name` in NS."""
    mv = copy.deepcopy(samples.model_version(name))
    mv["metadata"] = {"name": name, "namespace": NS}
    return mv


def rollout_objs(ro: dict[str, Any], candidate: str = "v2", **spec: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The sample Rollout `ro` as `bot` in NS, from v1 to `candidate`, `spec` set over its spec, judged on the error rate
    alone; with the ModelVersions v1 and `candidate`."""
    ro["metadata"] = {"name": "bot", "namespace": NS}
    ro["spec"].update(stable={"name": "v1"}, candidate={"name": candidate}, **spec)
    ro["spec"]["analysis"]["metrics"] = [{"name": "error-rate", "builtin": "error-rate", "max": 0.05}]
    return ro, [model_version("v1"), model_version(candidate)]


async def setup(kc, ro: dict[str, Any], mvs: list[dict[str, Any]]) -> None:
    """Apply the ModelVersions, then the Rollout."""
    for mv in mvs:
        await kc.apply(mv)
    await kc.apply(ro)


def ticker(t0: dt.datetime) -> Callable[..., Awaitable[float]]:
    """`await tick(kc, rec, seconds)`: the Reconciler `rec` ticks the Rollout `bot` as it is now, at `t0` + `seconds`;
    it returns the tick's delay."""

    async def tick(kc, rec, seconds: float) -> float:
        obj = await kc.get(r.ROLLOUTS, NS, "bot")
        return await rec.tick(obj, t0 + dt.timedelta(seconds=seconds))

    return tick
