"""The FineTuneJob reconciler's cache of validated specs: an owned, bounded object (no module global), parsed once
per (uid, generation, spec), never shared between reconcilers that were not handed the same one."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tuneloop.operator.finetunejob import handlers
from tuneloop.operator.finetunejob import reconcile as rec_mod
from tuneloop.operator.finetunejob.reconcile import Reconciler, ValidatedSpecs
from tuneloop.operator.settings import OperatorSettings

pytestmark = pytest.mark.unit


def _ftj(uid: str = "u-1", generation: int = 1, claim: str = "d") -> dict:
    return {"apiVersion": "tuneloop.dev/v1alpha1", "kind": "FineTuneJob",
            "metadata": {"name": "x", "namespace": "ns", "uid": uid, "generation": generation},
            "spec": {"baseModel": {"huggingFace": {"id": "m"}}, "dataset": {"train": {"pvc": {"claimName": claim, "path": "t.jsonl"}}},
                     "output": {"pvc": {"claimName": "o"}}}}


@pytest.fixture
def counted(monkeypatch):
    calls: list[str] = []
    real = rec_mod.validate

    def validate(body, config):
        calls.append(body["metadata"].get("uid", ""))
        return real(body, config)

    monkeypatch.setattr(rec_mod, "validate", validate)
    return calls


def test_the_same_spec_is_parsed_once_and_a_new_generation_or_spec_again(counted):
    cache, cfg = ValidatedSpecs(), OperatorSettings()
    first = cache.get(_ftj(), cfg)
    assert first[0] is not None and cache.get(copy.deepcopy(_ftj()), cfg) is first
    assert len(counted) == 1
    cache.get(_ftj(generation=2), cfg)
    cache.get(_ftj(claim="other"), cfg)
    assert len(counted) == 3 and len(cache) == 3


def test_an_object_without_a_uid_is_never_cached(counted):
    cache, body = ValidatedSpecs(), _ftj()
    del body["metadata"]["uid"]
    cache.get(body, OperatorSettings())
    cache.get(body, OperatorSettings())
    assert len(counted) == 2 and len(cache) == 0


def test_reconcilers_share_a_cache_only_when_handed_one(counted):
    cfg = OperatorSettings()
    a, b = Reconciler(None, cfg), Reconciler(None, cfg)  # type: ignore[arg-type]  # no API calls here
    assert a.validated is not b.validated
    a.validated.get(_ftj(), cfg)
    b.validated.get(_ftj(), cfg)
    assert len(counted) == 2  # nothing leaks from one to the other (or from one test to the next)
    shared = ValidatedSpecs()
    c, d = Reconciler(None, cfg, shared), Reconciler(None, cfg, shared)  # type: ignore[arg-type]
    c.validated.get(_ftj(), cfg)
    d.validated.get(_ftj(), cfg)
    assert len(counted) == 3 and c.validated is d.validated is shared


def test_the_operator_keeps_one_cache_for_its_lifetime():
    """The handlers' Memory owns the one the operator's passes share (a fresh Memory, a fresh cache)."""
    assert isinstance(handlers.MEMORY.validated, ValidatedSpecs)
    assert handlers.Memory().validated is not handlers.MEMORY.validated


@settings(max_examples=60, deadline=None)
@given(bound=st.integers(1, 6), keys=st.lists(st.tuples(st.sampled_from("abcdefgh"), st.integers(1, 3)), max_size=40))
def test_the_cache_is_bounded_evicts_the_oldest_and_always_answers_as_validate_would(bound, keys):
    cfg = OperatorSettings()
    cache = ValidatedSpecs(max_entries=bound)
    order: list[tuple[str, int]] = []
    for uid, gen in keys:
        got = cache.get(_ftj(uid, gen), cfg)
        assert got == rec_mod.validate(_ftj(uid, gen), cfg)
        if (uid, gen) not in order:
            order.append((uid, gen))
            order = order[-bound:]
        assert len(cache) == len(order) <= bound
    kept = {(k[0], k[1]) for k in cache._entries}
    assert kept == set(order)  # first in, first out
