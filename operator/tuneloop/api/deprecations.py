"""Deprecated API fields: still accepted, warned about, converted (docs/api-reference.md, "Deprecations").

The one list of them (`deprecated_fields`, read from an object's spec as it is on the wire, so the CLI's `validate`
and the operator see the same), the one conversion of each to its replacement (`provider_ref`: the models'
`provider_ref` properties call it, and the operator reads only those), and the one way a reconciler reports them
(`note`: the DeprecatedFields condition, and the Warning event's message when it newly turns True).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from .common import GROUP, Condition
from .conditions import DeprecationReason, find_condition, set_condition

REMOVED_IN: Final = f"{GROUP}/v1beta1"  # the API version that no longer accepts any field listed here
CONDITION: Final = "DeprecatedFields"  # the condition type (RolloutCondition / FineTuneScheduleCondition.DEPRECATED_FIELDS)
EVENT_REASON: Final = DeprecationReason.DEPRECATED_FIELD.value


# What is deprecated, what replaces it and when it goes: the API reference's "Deprecations" section (api.docgen).
DEPRECATIONS: Final = [
    ("Rollout `spec.analysis.prometheusAddress`", "`spec.analysis.provider`: the name of a metrics provider the admin "
     "configured (chart value `metricsProviders`)", f"`{REMOVED_IN}`"),
    ("FineTuneSchedule `spec.triggers.prometheus[].prometheusAddress`", "`spec.triggers.prometheus[].provider`", f"`{REMOVED_IN}`"),
    ("Condition reason `PrometheusError` (`Drifted`, `Degraded` of a Rollout and of its serving ModelVersion)",
     "`ProviderError`, which tuneloop writes instead: an alert or a script matching the old reason must match the new one",
     "no longer written"),
]


@dataclass(frozen=True)
class DeprecatedUse:
    """One deprecated field an object sets: where, and what to write instead."""

    path: str  # e.g. spec.analysis.prometheusAddress
    instead: str

    def message(self) -> str:
        return f"{self.path} is deprecated and will be removed in {REMOVED_IN}: {self.instead}"


def provider_ref(provider: str | None, prometheus_address: str | None) -> str | None:
    """The metrics provider an analysis or a trigger names, provider-neutral: `provider` (a name the admin configured),
    else the deprecated `prometheusAddress` converted to a reference (it is resolved as a configured provider's
    address), else None (the operator's default provider)."""
    return provider if provider is not None else prometheus_address


_ADDRESS_INSTEAD = "name the metrics provider the admin configured for that address in {}"


def deprecated_fields(kind: str, spec: Mapping[str, Any] | None) -> list[DeprecatedUse]:
    """Every deprecated field `spec` (wire form, camelCase) of a `kind` object sets, in document order."""
    spec = spec if isinstance(spec, Mapping) else {}
    out: list[DeprecatedUse] = []
    if kind == "Rollout":
        analysis = spec.get("analysis")
        if isinstance(analysis, Mapping) and analysis.get("prometheusAddress") is not None:
            out.append(DeprecatedUse("spec.analysis.prometheusAddress", _ADDRESS_INSTEAD.format("spec.analysis.provider")))
    elif kind == "FineTuneSchedule":
        triggers = spec.get("triggers")
        prometheus = triggers.get("prometheus") if isinstance(triggers, Mapping) else None
        for i, trigger in enumerate(prometheus if isinstance(prometheus, list) else []):
            if isinstance(trigger, Mapping) and trigger.get("prometheusAddress") is not None:
                out.append(DeprecatedUse(f"spec.triggers.prometheus[{i}].prometheusAddress",
                                         _ADDRESS_INSTEAD.format(f"spec.triggers.prometheus[{i}].provider")))
    return out


def note(conditions: list[Condition], uses: list[DeprecatedUse], *, now: dt.datetime, generation: int | None) -> str | None:
    """Record `uses` in `conditions` (in place): DeprecatedFields True naming each, or False once none is left (only
    where the condition was set: an object that never used one gets no condition). Returns the Warning event's
    message when the condition newly turned True or names other fields than before, else None (one event per change,
    not one per tick)."""
    before = find_condition(conditions, CONDITION)
    if not uses:
        if before is not None:
            set_condition(conditions, CONDITION, False, DeprecationReason.NO_DEPRECATED_FIELDS, "no deprecated field is set",
                          now=now, generation=generation)
        return None
    message = "; ".join(u.message() for u in uses)
    changed = before is None or str(getattr(before.status, "value", before.status)) != "True" or before.message != message
    set_condition(conditions, CONDITION, True, DeprecationReason.DEPRECATED_FIELD, message, now=now, generation=generation)
    return message if changed else None
