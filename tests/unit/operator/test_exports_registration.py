"""output.exports in the operator: the export Job runs after the evaluation, and each export that held up against
its source becomes its own ModelVersion (lineage.exportOf, its artifact format, spec.equivalence); a refused one
is not registered and the FineTuneJob says why."""

from __future__ import annotations

import json

import pytest
from tuneloop.api import ModelVersion
from tuneloop.contract.termination import fit_publish
from tuneloop.operator import builders
from tuneloop.operator.builders.common import JobMeta
from tuneloop.operator.settings import OperatorSettings

from .test_reconcile_unit import FakeClient, _complete, _ftj, _pass

pytestmark = pytest.mark.unit

EVALUATION = {"verdict": "Passed", "testExamples": 4, "metrics": [{"name": "exactMatch", "base": 0.0, "tuned": 0.5}], "gates": []}


def _equivalence(passed: bool, agreement: float) -> dict:
    return {"testItems": 4, "agreement": agreement, "minAgreement": 0.9, "passed": passed, "backend": "transformers",
            "reason": ("same greedy answer on 100.0% of 4 test items" if passed else
                       f"refused: same greedy answer on {agreement:.1%} of 4 test items (at least 90.0% required)"),
            "metrics": [{"name": "exactMatch", "source": 0.5, "export": 0.5 if passed else 0.0, "difference": 0.0 if passed else -0.5,
                         "differenceInterval": {"low": -0.1, "high": 0.1}, "maxDrop": 0.02, "passed": passed}],
            "agreementInterval": {"low": 0.5, "high": 1.0}, "tokensPerSecond": 50.0, "sourceTokensPerSecond": 40.0}


EXPORTS = [{"format": "merged", "sizeBytes": 1000, "equivalence": _equivalence(True, 1.0)},
           {"format": "gguf-q8_0", "sizeBytes": 300, "equivalence": _equivalence(False, 0.25)}]


class PodsClient(FakeClient):
    """Finished pods with the termination messages the stages would leave."""

    messages: dict[str, str] = {}

    async def list(self, res, ns=None, labels=None):
        self.requests.append(("LIST", res.plural, ""))
        job = (labels or {}).get("batch.kubernetes.io/job-name")
        if res.plural != "pods" or job not in self.messages:
            return []
        return [{"metadata": {"name": f"{job}-pod", "namespace": ns},
                 "status": {"containerStatuses": [{"name": "trainer", "state": {"terminated": {"exitCode": 0, "message": self.messages[job]}}}]}}]


def _body() -> dict:
    body = _ftj()
    body["spec"]["output"]["exports"] = [{"format": "merged"}, {"format": "gguf-q8_0"}]
    body["spec"]["registry"] = {"modelName": "bot", "version": "v1"}
    return body


def test_the_export_job_is_a_cpu_job_that_exports_reports_and_publishes():
    from tuneloop.api import FineTuneJobSpec

    body = _body()
    job = builders.export_job(FineTuneJobSpec.model_validate(body["spec"]), JobMeta.from_body(body), OperatorSettings())
    c = job["spec"]["template"]["spec"]["containers"][0]
    assert job["metadata"]["name"] == "x-export"
    script = c["command"][2]
    assert script.index(" export ") < script.index(" report ") < script.index("--exports")
    assert not any("gpu" in k for k in c["resources"]["requests"])


async def test_exports_run_after_the_evaluation_and_only_those_that_hold_up_are_registered():
    c = PodsClient()
    c.messages = {"x-eval": fit_publish({"stage": "publish", "outcome": "Succeeded", "evaluation": EVALUATION}),
                  "x-export": fit_publish({"stage": "publish", "outcome": "Succeeded", "exports": EXPORTS})}
    body = _body()
    await _pass(c, body)
    _complete(c, "x-data")
    await _pass(c, body)
    _complete(c, "x-train")
    await _pass(c, body)
    _complete(c, "x-eval")
    out = await _pass(c, body)
    assert out.phase == "Exporting" and ("jobs", "ns", "x-export") in c.objects
    assert ("modelversions", "ns", "bot-v1") not in c.objects  # nothing is registered before the exports are checked
    _complete(c, "x-export")
    out = await _pass(c, body)
    assert out.phase == "Succeeded", out.status.get("message")
    source = c.objects[("modelversions", "ns", "bot-v1")]
    merged = ModelVersion.model_validate(c.objects[("modelversions", "ns", "bot-v1-merged")])
    assert merged.spec.lineage.export_of is not None and merged.spec.lineage.export_of.model_version == "bot-v1"
    assert merged.spec.artifact.format == "merged" and merged.spec.artifact.uri == "pvc://o/x/exports/merged"
    assert merged.spec.version == "v1-merged" and merged.spec.equivalence is not None and merged.spec.equivalence.agreement == 1.0
    assert merged.spec.evaluation.verdict == source["spec"]["evaluation"]["verdict"] == "Passed"
    assert c.objects[("modelversions", "ns", "bot-v1-merged")]["status"]["phase"] == "Ready"
    assert ("modelversions", "ns", "bot-v1-gguf-q8-0") not in c.objects  # refused: never registered
    assert out.status["children"]["exportModelVersions"] == ["bot-v1-merged"]
    exported = next(cd for cd in out.status["conditions"] if cd["type"] == "Exported")
    assert exported["reason"] == "ExportsRefused" and "gguf-q8_0: refused: same greedy answer on 25.0%" in exported["message"]
    assert "refused by the equivalence gate: gguf-q8_0" in out.status["message"]


async def test_no_exports_no_export_job():
    c = PodsClient()
    c.messages = {"x-eval": fit_publish({"stage": "publish", "outcome": "Succeeded", "evaluation": EVALUATION})}
    body = _ftj()
    for _ in range(3):
        await _pass(c, body)
        for j in ("x-data", "x-train", "x-eval"):
            if ("jobs", "ns", j) in c.objects:
                _complete(c, j)
    out = await _pass(c, body)
    assert out.phase == "Succeeded" and ("jobs", "ns", "x-export") not in c.objects
    assert not any(cd["type"] == "Exported" for cd in out.status["conditions"])


def test_three_exports_fit_the_termination_message():
    exports = [{**e, "format": f} for e, f in zip(EXPORTS * 2, ("merged", "gguf-f16", "gguf-q8_0"))]
    for e in exports:
        e["equivalence"] = {**e["equivalence"], "metrics": e["equivalence"]["metrics"] * 6, "reason": "refused: " + "x" * 900}
    msg = json.loads(fit_publish({"stage": "publish", "outcome": "Succeeded", "exports": exports}))
    assert [e["format"] for e in msg["exports"]] == ["merged", "gguf-f16", "gguf-q8_0"]
    assert all("passed" in e["equivalence"] and "agreement" in e["equivalence"] for e in msg["exports"])
