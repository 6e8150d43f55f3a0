"""Pure builders of a FineTuneSweep (`tuneloop.operator.sweep` decides, these build): each trial's FineTuneJob and the
best trial's final run.

A trial is the template with the searched fields set, scored on the validation split (`evaluation.split: validation`)
and cheap to score: no gates (a trial has no verdict, only the objective), no base model or trivial baselines, no
forgetting check unless the objective is forgettingAccuracy, no serving reference and no ModelVersion. The final run is
the template with the winner's fields, evaluated on the test split with the template's gates like any FineTuneJob; its
ModelVersion's lineage names the sweep and the trial (annotation `tuneloop.dev/sweep-lineage`)."""

from __future__ import annotations

import copy
import json
from typing import Any

from tuneloop.api.common import API_VERSION
from tuneloop.api.sweep import FineTuneSweepSpec, SweepTrial, set_path
from tuneloop.contract.names import (
    ANNOTATION_SWEEP_LINEAGE,
    LABEL_MANAGED_BY,
    LABEL_SWEEP,
    MANAGED_BY,
    child_name,
    controller_reference,
    dns_label,
)

from .schedule import champion_eval_json

ANNOTATION_TRIAL = "tuneloop.dev/sweep-trial"  # the trial number (adoption after a lost status patch)
ANNOTATION_PARAMS = "tuneloop.dev/sweep-params"  # the trial's parameters (JSON)
LABEL_ROLE = "tuneloop.dev/sweep-role"  # trial | best
ANNOTATION_CHAMPION = "tuneloop.dev/champion"  # the serving ModelVersion the final run is compared with


def owner_ref(sweep: dict[str, Any]) -> dict[str, Any]:
    meta = sweep["metadata"]
    return controller_reference("FineTuneSweep", meta["name"], meta.get("uid", ""))


def trial_name(sweep: str, number: int) -> str:
    return child_name(sweep, f"t{number:03d}")


def best_name(sweep: str) -> str:
    return child_name(sweep, "best")


def model_name(spec: FineTuneSweepSpec, sweep: str) -> str:
    return spec.job_template.spec.registry.model_name or sweep


def best_version(spec: FineTuneSweepSpec, sweep: str) -> str:
    """The final run's registry.version: `best` under the sweep's own model name, else the sweep's name."""
    return "best" if model_name(spec, sweep) == sweep else dns_label(sweep)


def _body(spec: FineTuneSweepSpec, name: str, sweep: str, params: dict[str, Any]) -> dict[str, Any]:
    body = copy.deepcopy(spec.job_template.spec.model_dump(by_alias=True, exclude_none=True, mode="json"))
    for path, value in params.items():
        set_path(body, path, copy.deepcopy(value))
    out = body["output"]
    if "pvc" in out:
        out["pvc"]["path"] = f"{(out['pvc'].get('path') or sweep).strip('/')}/{name}"
    elif "s3" in out:
        out["s3"]["uri"] = f"{out['s3']['uri'].rstrip('/')}/{name}"
    elif "path" in out:
        out["path"] = f"{out['path'].rstrip('/')}/{name}"
    return body


def _job(sweep: dict[str, Any], spec: FineTuneSweepSpec, name: str, body: dict[str, Any], role: str,
         annotations: dict[str, str]) -> dict[str, Any]:
    meta = sweep["metadata"]
    tmpl = spec.job_template.metadata
    return {
        "apiVersion": API_VERSION,
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": meta.get("namespace") or "default",
                     "labels": {**tmpl.labels, LABEL_SWEEP: meta["name"], LABEL_ROLE: role, LABEL_MANAGED_BY: MANAGED_BY},
                     "annotations": {**tmpl.annotations, **annotations}, "ownerReferences": [owner_ref(sweep)]},
        "spec": body,
    }


def trial_job(sweep: dict[str, Any], spec: FineTuneSweepSpec, number: int, params: dict[str, Any]) -> dict[str, Any]:
    """Trial `number`'s FineTuneJob: scored on the validation split, no verdict, no ModelVersion."""
    name = trial_name(sweep["metadata"]["name"], number)
    body = _body(spec, name, sweep["metadata"]["name"], params)
    ev = body["evaluation"]
    objective = str(getattr(spec.objective.metric, "value", spec.objective.metric))
    ev.update({"split": "validation", "gates": [], "baseline": False, "baselines": False})
    ev.pop("serving", None)
    if objective != "forgettingAccuracy":
        ev.setdefault("forgetting", {})["enabled"] = False
    body["registry"] = {**body.get("registry", {}), "createModelVersion": False}
    return _job(sweep, spec, name, body, "trial", {ANNOTATION_TRIAL: str(number), ANNOTATION_PARAMS: json.dumps(params, sort_keys=True)})


def lineage(sweep: str, spec: FineTuneSweepSpec, trial: SweepTrial) -> dict[str, Any]:
    """What the final run's ModelVersion records of the sweep (api.modelversion.SweepLineage, wire form)."""
    out: dict[str, Any] = {"name": sweep, "trial": trial.name, "trialNumber": trial.number,
                           "objective": str(getattr(spec.objective.metric, "value", spec.objective.metric)),
                           "params": {k: v if isinstance(v, str) else json.dumps(v) for k, v in sorted(trial.params.items())}}
    if trial.value is not None:
        out["value"] = trial.value
    return out


def best_job(sweep: dict[str, Any], spec: FineTuneSweepSpec, trial: SweepTrial, champion: dict[str, Any] | None
             ) -> tuple[dict[str, Any], str | None]:
    """The best trial's configuration, run again and evaluated on the test split with the template's gates (and the
    serving version's eval.json as champion, the FineTuneSchedule's way, when the sweep hands off); why it has no
    serving reference when a champion exists but cannot be read."""
    s = sweep["metadata"]["name"]
    name = best_name(s)
    body = _body(spec, name, s, trial.params)
    body["evaluation"]["split"] = "test"
    body["registry"] = {**body.get("registry", {}), "modelName": model_name(spec, s), "version": best_version(spec, s),
                        "createModelVersion": True}
    claim = body["output"].get("pvc", {}).get("claimName")
    eval_json, why_not = champion_eval_json(champion, claim)
    if eval_json and champion is not None:
        body["evaluation"]["serving"] = {"modelVersion": champion["metadata"]["name"], "evalJson": eval_json}
    else:
        body["evaluation"].pop("serving", None)
        body["evaluation"]["gates"] = [g for g in body["evaluation"].get("gates", []) if g.get("reference") != "serving"]
    ann = {ANNOTATION_TRIAL: str(trial.number), ANNOTATION_PARAMS: json.dumps(trial.params, sort_keys=True),
           ANNOTATION_SWEEP_LINEAGE: json.dumps(lineage(s, spec, trial), sort_keys=True)}
    if champion is not None:
        ann[ANNOTATION_CHAMPION] = champion["metadata"]["name"]
    return _job(sweep, spec, name, body, "best", ann), why_not
