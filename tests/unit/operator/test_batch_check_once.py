"""The batch split is checked once per validation (issue 24: it ran three times with DeepSpeed on), and a spec that
does not split is refused with the same field and message either way."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from tuneloop.contract import deepspeed
from tuneloop.operator.finetunejob.reconcile import validate
from tuneloop.operator.settings import OperatorSettings

pytestmark = pytest.mark.unit

SAMPLE = Path(__file__).resolve().parents[3] / "manifests" / "samples" / "finetunejob-llama-2x8-zero3.yaml"


def body(**hyper: int) -> dict:
    doc = yaml.safe_load(SAMPLE.read_text())
    doc["metadata"]["uid"] = ""  # no cache: every call validates
    doc["spec"]["hyperparameters"].update(hyper)
    return doc


@pytest.mark.parametrize("deepspeed_on", [True, False])
def test_the_split_is_computed_once(monkeypatch, deepspeed_on):
    calls = []
    real = deepspeed.gradient_accumulation
    monkeypatch.setattr(deepspeed, "gradient_accumulation", lambda *a: calls.append(a) or real(*a))
    b = body()
    if not deepspeed_on:
        b["spec"].pop("deepspeed", None)
    cfg = OperatorSettings(trainer_image=b["spec"].get("image") or OperatorSettings().trainer_image, allowed_images=["*"])
    spec, where, why = validate(b, cfg)
    assert spec is not None, (where, why)
    assert len(calls) == 1


@pytest.mark.parametrize("deepspeed_on", [True, False])
def test_a_batch_that_does_not_split_is_refused_at_the_same_field(deepspeed_on):
    b = body(batchSize=132, microBatchSize=4)  # 132 = 4 × 33: a multiple of microBatchSize, not of 4 × 16 ranks
    if not deepspeed_on:
        b["spec"].pop("deepspeed", None)
    spec, where, why = validate(b, OperatorSettings(allowed_images=["*"]))
    assert spec is None and where == deepspeed.BATCH_FIELD
    assert "is not a multiple of microBatchSize 4 × world size 16" in why and "use a batchSize that is a multiple of 64" in why
