"""The study of a FineTuneSweep: Optuna's ask, rebuilt from the sweep's status on every ask (pure: no I/O, no clock).

Nothing of Optuna lives between two asks. Each ask builds an in-memory study from the trials recorded in
`status.trials` (parameters, objective values, states, validation losses: `add_trial`) and a sampler seeded with the
sweep's seed and the new trial's number, then asks once. The next point is therefore a function of what the status
holds: an operator restarted between two trials (or in the middle of one) asks exactly what it would have asked
without the restart, and a local run resumed after Ctrl-C continues the same sequence (tests/sweep/test_study.py).

Grid search is enumerated here rather than by Optuna's GridSampler (which keeps its visited grid points in trial system
attributes): the grid's points in a seeded order, the next one the first no trial has taken.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
import warnings
from typing import Any

from tuneloop.api.sweep import Direction, FineTuneSweepSpec, SamplerType, SearchParameter, SweepTrial, TrialState

_SCALARS = (type(None), bool, int, float, str)


def _optuna() -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def encode(value: Any) -> Any:
    """A categorical choice as Optuna stores it (scalars as they are; lists and objects as canonical JSON text)."""
    return value if isinstance(value, _SCALARS) else json.dumps(value, sort_keys=True)


def distribution(p: SearchParameter) -> Any:
    d = _optuna().distributions
    if p.float_ is not None:
        return d.FloatDistribution(p.float_.low, p.float_.high, log=p.float_.log, step=p.float_.step)
    if p.int_ is not None:
        return d.IntDistribution(p.int_.low, p.int_.high, log=p.int_.log, step=p.int_.step)
    assert p.categorical is not None
    return d.CategoricalDistribution([encode(c) for c in p.categorical.choices])


def decode(p: SearchParameter, raw: Any) -> Any:
    if p.categorical is not None:
        return next(c for c in p.categorical.choices if encode(c) == raw)
    if p.int_ is not None:
        return int(raw)
    return float(raw)


def trial_seed(seed: int, number: int) -> int:
    """The sampler's seed for trial `number` (stable across processes and Python versions)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{number}".encode()).digest()[:4], "big")


def sign(direction: Direction | str) -> float:
    """+1 when lower is better (minimize), −1 when higher is: a loss-like view of the objective."""
    return 1.0 if str(getattr(direction, "value", direction)) == Direction.MINIMIZE.value else -1.0


def _recorded(spec: FineTuneSweepSpec, t: SweepTrial, dists: dict[str, Any], direction: Direction) -> Any:
    """One recorded trial as an Optuna FrozenTrial. Pruned trials carry their validation losses as intermediate values,
    turned into the objective's direction (Optuna's TPE orders pruned trials by them as if they were the objective)."""
    optuna = _optuna()
    state = {TrialState.RUNNING.value: optuna.trial.TrialState.RUNNING, TrialState.PRUNED.value: optuna.trial.TrialState.PRUNED,
             TrialState.FAILED.value: optuna.trial.TrialState.FAIL}.get(str(getattr(t.state, "value", t.state)))
    value = t.value
    if state is None:  # Complete: only a finite value measured on the validation split counts
        ok = value is not None and math.isfinite(value) and t.split == "validation"
        state = optuna.trial.TrialState.COMPLETE if ok else optuna.trial.TrialState.FAIL
    params = {p.path: encode(t.params[p.path]) for p in spec.search_space if p.path in t.params}
    if len(params) != len(dists):  # a trial of another search space (the spec changed): not evidence for this one
        return None
    s = sign(direction)
    inter = {iv.step: iv.eval_loss * s for iv in t.intermediate if math.isfinite(iv.eval_loss)} \
        if state == optuna.trial.TrialState.PRUNED else {}
    return optuna.trial.create_trial(
        params=params, distributions=dists, state=state, intermediate_values=inter,
        value=value if state == optuna.trial.TrialState.COMPLETE else None)


def ask(spec: FineTuneSweepSpec, trials: list[SweepTrial], number: int | None = None) -> dict[str, Any]:
    """The parameters of the next trial (`number`, default the count of recorded trials), by path."""
    number = len(trials) if number is None else number
    kind = str(getattr(spec.sampler.type, "value", spec.sampler.type))
    if kind == SamplerType.GRID.value:
        point = next_grid_point(spec, trials)
        if point is None:
            raise ValueError("the grid is exhausted")
        return point
    optuna = _optuna()
    direction = spec.objective.direction()
    seed = trial_seed(spec.sampler.seed, number)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant_liar is marked experimental
        if kind == SamplerType.RANDOM.value:
            sampler = optuna.samplers.RandomSampler(seed=seed)
        else:
            sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=spec.sampler.startup_trials, constant_liar=True)
        study = optuna.create_study(direction=direction.value, sampler=sampler)
        dists = {p.path: distribution(p) for p in spec.search_space}
        for t in sorted(trials, key=lambda t: t.number):
            frozen = _recorded(spec, t, dists, direction)
            if frozen is not None:
                study.add_trial(frozen)
        asked = study.ask(dists)
    return {p.path: decode(p, asked.params[p.path]) for p in spec.search_space}


def grid_values(p: SearchParameter) -> list[Any]:
    if p.categorical is not None:
        return list(p.categorical.choices)
    if p.int_ is not None:
        return list(range(p.int_.low, p.int_.high + 1, p.int_.step))
    assert p.float_ is not None and p.float_.step is not None
    n = int(math.floor((p.float_.high - p.float_.low) / p.float_.step + 1e-9))
    return [round(p.float_.low + i * p.float_.step, 12) for i in range(n + 1)]


def grid(spec: FineTuneSweepSpec) -> list[dict[str, Any]]:
    """Every grid point, in the order the sweep's seed shuffles them into."""
    points = [dict(zip([p.path for p in spec.search_space], combo, strict=True))
              for combo in itertools.product(*(grid_values(p) for p in spec.search_space))]
    random.Random(spec.sampler.seed).shuffle(points)
    return points


def grid_size(spec: FineTuneSweepSpec) -> int:
    return math.prod(len(grid_values(p)) for p in spec.search_space)


def _key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True)


def next_grid_point(spec: FineTuneSweepSpec, trials: list[SweepTrial]) -> dict[str, Any] | None:
    taken = {_key(t.params) for t in trials}
    return next((p for p in grid(spec) if _key(p) not in taken), None)
