"""Traffic split between stable and canary (pure decisions; the manifests are `builders.traffic`).

Gateway API: one HTTPRoute rule with two weighted backendRefs (exact percentages).
Replica-weighted: one Service selects both roles, so the split follows the ready pod counts; a
weight is approximated by replica counts (coarse: with 4 replicas the steps are 25 %).
"""

from __future__ import annotations

import math
from typing import Any

from tuneloop.contract import names


def route_weights(route: dict[str, Any], rollout: str) -> tuple[int, int] | None:
    """(stable, canary) weights currently on an HTTPRoute we built, None when unrecognisable."""
    try:
        refs = route["spec"]["rules"][0]["backendRefs"]
    except (KeyError, IndexError, TypeError):
        return None
    by_name = {r.get("name"): int(r.get("weight", 1)) for r in refs}
    stable, canary = names.service_name(rollout, names.STABLE), names.service_name(rollout, names.CANARY)
    if stable not in by_name or canary not in by_name:
        return None
    return by_name[stable], by_name[canary]


def replica_split(total: int, canary_weight: int) -> tuple[int, int]:
    """(stable, canary) replicas approximating `canary_weight` % of `total` pods.

    The canary gets at least one pod whenever its weight is above 0 and all pods at 100; the stable
    keeps at least one pod below 100 so it still takes its share.
    """
    if canary_weight <= 0:
        return total, 0
    if canary_weight >= 100:
        return 0, total
    canary = min(max(1, round(total * canary_weight / 100)), max(total - 1, 1))
    stable = max(total - canary, 1)
    return stable, canary


def effective_weight(stable_replicas: int, canary_replicas: int) -> int:
    """The percentage a replica-weighted split really sends to the canary (equal pods, round-robin)."""
    total = stable_replicas + canary_replicas
    return 0 if total == 0 else round(100 * canary_replicas / total)


def gateway_canary_replicas(stable_replicas: int, canary_weight: int) -> int:
    """Canary pods behind a weighted HTTPRoute: capacity for its share, at least one while it runs."""
    return max(1, math.ceil(stable_replicas * canary_weight / 100))
