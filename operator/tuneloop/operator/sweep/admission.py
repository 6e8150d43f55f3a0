"""What the operator refuses in a FineTuneSweep before it starts a trial (pure, no I/O): the model's own rules (the
CRD's CEL rules and the checks CEL cannot do: a searched field the template lacks, a value it refuses) and the
operator's checks of the FineTuneJob a trial and the final run would be (local paths, one dataset claim, the batch
split, the platform policy) at each end of every range. Such a sweep is Failed (Ready False, InvalidSpec) and starts
nothing, instead of failing trial after trial."""

from __future__ import annotations

import itertools
from typing import Any

from pydantic import ValidationError

from tuneloop.api.sweep import FineTuneSweep, SweepTrial

from ..builders import sweep as build


def first_problem(body: dict[str, Any], settings: Any = None) -> tuple[str, str]:
    """(field path, message) of the first reason the sweep cannot run, or ("", "")."""
    try:
        sweep = FineTuneSweep.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        return ".".join(str(p) for p in err["loc"]) or "spec", str(err["msg"]).removeprefix("Value error, ")
    from tuneloop.operator.finetunejob.reconcile import validate
    from tuneloop.operator.settings import get_settings

    meta = {"name": "x", "namespace": "default", "uid": "admission", **(body.get("metadata") or {})}
    obj = {**body, "metadata": meta}
    space = sweep.spec.search_space
    corners = itertools.islice(itertools.product(*(p.candidates() for p in space)), 64)  # every range's ends, bounded
    for combo in corners:
        params = {p.path: v for p, v in zip(space, combo, strict=True)}
        for job in (build.trial_job(obj, sweep.spec, 0, params),
                    build.best_job(obj, sweep.spec, SweepTrial(number=0, name="x-t000", params=params), None)[0]):
            job["metadata"].setdefault("uid", "admission")
            spec, where, why = validate(job, settings or get_settings())
            if spec is None:
                return (where.replace("spec.", "spec.jobTemplate.spec.", 1),
                        f"a trial's FineTuneJob would fail ({', '.join(f'{k}={v!r}' for k, v in params.items())}): {why}")
    return "", ""
