"""What the operator refuses in a FineTuneSchedule before it starts anything (pure, no I/O): the model's own rules
(the CRD's CEL rules and the checks CEL cannot do, such as a cron date that never comes) and the operator's checks of
the FineTuneJob every run would create (what the API server cannot see: local paths, one dataset claim, output
staging, the batch split). The operator sets such a schedule Failed (condition Ready False, InvalidSpec);
`kubectl tuneloop validate --cluster` prints the same problem."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import ValidationError

from tuneloop.api.schedule import FineTuneSchedule, TriggerKind

from ..builders import schedule as build
from . import decide


def first_problem(body: dict[str, Any], settings: Any = None) -> tuple[str, str]:
    """(field path, message) of the first reason the schedule cannot run, or ("", "")."""
    try:
        sched = FineTuneSchedule.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "spec"
        return where, str(err["msg"]).removeprefix("Value error, ")
    from tuneloop.operator.finetunejob.reconcile import validate
    from tuneloop.operator.settings import get_settings

    meta = {"name": "x", "namespace": "default", **(body.get("metadata") or {})}
    fire = decide.Fire(TriggerKind.MANUAL, "admission", "admission")
    job, _ = build.finetunejob({**body, "metadata": meta}, sched.spec, fire, decide.run_name(meta["name"], fire), None,
                               dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
    job["metadata"].setdefault("uid", meta.get("uid") or "admission")
    spec, where, why = validate(job, settings or get_settings())
    if spec is None:
        return where.replace("spec.", "spec.jobTemplate.spec.", 1), f"every run's FineTuneJob would fail: {why}"
    return "", ""
