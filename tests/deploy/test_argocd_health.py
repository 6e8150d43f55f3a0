"""Argo CD health checks (Lua, shipped in manifests/argocd/argocd-cm-health.yaml) run with lupa
against the samples in every phase, as Argo CD runs them: `obj` global, script returns {status, message}."""

from __future__ import annotations

import copy

import pytest
import yaml
from tuneloop.api import schema_check
from tuneloop.api.modelversion import ModelVersionPhase
from tuneloop.api.rollout import RolloutPhase
from tuneloop.api.schedule import SchedulePhase
from tuneloop.api.status import FineTuneJobPhase
from tuneloop.api.sweep import SweepPhase

from ._support import ROOT

pytestmark = pytest.mark.unit

SAMPLES = ROOT / "manifests" / "samples"
CM = ROOT / "manifests" / "argocd" / "argocd-cm-health.yaml"
ARGO_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}
T = "2026-11-22T03:00:00Z"

FINETUNEJOB = {
    "Pending": "Progressing", "ValidatingData": "Progressing", "Training": "Progressing", "Evaluating": "Progressing", "Exporting": "Progressing",
    "Succeeded": "Healthy", "Failed": "Degraded", "Suspended": "Suspended",
}
MODELVERSION = {"Pending": "Progressing", "Ready": "Healthy", "Serving": "Healthy", "Retired": "Healthy",
                "Rejected": "Degraded", "RolledBack": "Degraded"}
ROLLOUT = {"Waiting": "Healthy", "Progressing": "Progressing", "Paused": "Suspended", "Promoted": "Healthy", "RolledBack": "Degraded",
           "Degraded": "Degraded", "Aborted": "Degraded"}
SCHEDULE = {"Idle": "Healthy", "Running": "Healthy", "Suspended": "Suspended", "Failed": "Degraded"}
SWEEP = {"Running": "Progressing", "Evaluating": "Progressing", "Succeeded": "Healthy", "Failed": "Degraded", "Suspended": "Suspended"}
EXPECTED = {"FineTuneJob": FINETUNEJOB, "ModelVersion": MODELVERSION, "Rollout": ROLLOUT, "FineTuneSchedule": SCHEDULE,
            "FineTuneSweep": SWEEP}
SAMPLE_FILES = {"FineTuneJob": "finetunejob-llama-2x8-zero3.yaml", "ModelVersion": "modelversion.yaml", "Rollout": "rollout.yaml",
                "FineTuneSchedule": "finetuneschedule.yaml", "FineTuneSweep": "sweep-quickstart.yaml"}


def test_every_phase_is_covered():
    """A phase added to the API without a health mapping fails here."""
    assert set(FINETUNEJOB) == {p.value for p in FineTuneJobPhase}
    assert set(MODELVERSION) == {p.value for p in ModelVersionPhase}
    assert set(ROLLOUT) == {p.value for p in RolloutPhase}
    assert set(SCHEDULE) == {p.value for p in SchedulePhase}
    assert set(SWEEP) == {p.value for p in SweepPhase}


@pytest.fixture(scope="module")
def scripts() -> dict[str, str]:
    data = yaml.safe_load(CM.read_text())["data"]
    return {key.rsplit("_", 1)[1]: text for key, text in data.items() if key.startswith("resource.customizations.health.tuneloop.dev_")}


def run(script: str, obj: dict) -> dict:
    import lupa

    lua = lupa.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(script)
    return {"status": result["status"], "message": result["message"]}


def sample(kind: str, phase: str | None, **status) -> dict:
    obj = yaml.safe_load((SAMPLES / SAMPLE_FILES[kind]).read_text())
    obj = copy.deepcopy(obj)
    obj["metadata"]["generation"] = 3
    if phase is not None:
        obj["status"] = {"phase": phase, "observedGeneration": 3, **status}
    problems = schema_check.check_document(obj)
    assert not problems, problems  # the sample with this status is something the API server accepts
    return obj


def _condition(ctype: str, status: str, reason: str, message: str) -> dict:
    return {"type": ctype, "status": status, "reason": reason, "message": message, "lastTransitionTime": T, "observedGeneration": 3}


def test_keys_name_the_three_kinds(scripts):
    assert set(scripts) == {"FineTuneJob", "ModelVersion", "Rollout", "FineTuneSchedule", "FineTuneSweep"}


def test_sweep_messages(scripts):
    running = sample("FineTuneSweep", "Running", trialsComplete=2, trialsPruned=1, trialsRunning=2, bestTrial="s-t001", bestValue=0.8)
    assert run(scripts["FineTuneSweep"], running) == {
        "status": "Progressing", "message": "Running: 3 trial(s) ended, 2 running; best s-t001 (0.8)"}
    done = sample("FineTuneSweep", "Succeeded", bestTrial="s-t001", bestValue=0.8, best={"name": "s-best", "trial": "s-t001",
                                                                                        "modelVersion": "m-s"})
    assert run(scripts["FineTuneSweep"], done)["message"] == "Sweep finished; best trial s-t001 (0.8); ModelVersion m-s"


@pytest.mark.parametrize("kind,phase", [(k, p) for k, phases in EXPECTED.items() for p in phases])
def test_health_of_every_phase(scripts, kind, phase):
    result = run(scripts[kind], sample(kind, phase))
    assert result["status"] == EXPECTED[kind][phase]
    assert result["message"]


@pytest.mark.parametrize("kind", EXPECTED)
def test_no_status_yet_is_progressing(scripts, kind):
    assert run(scripts[kind], sample(kind, None)) == {
        "status": "Progressing", "message": "Waiting for the tuneloop operator to report status"}


@pytest.mark.parametrize("kind", EXPECTED)
def test_stale_observed_generation_is_progressing(scripts, kind):
    healthy = next(p for p, s in EXPECTED[kind].items() if s == "Healthy")
    obj = sample(kind, healthy)
    obj["status"]["observedGeneration"] = 2
    assert run(scripts[kind], obj) == {"status": "Progressing", "message": "Waiting for the tuneloop operator to observe generation 3"}
    del obj["status"]["observedGeneration"]
    assert run(scripts[kind], obj)["status"] == "Progressing"


def test_failed_finetunejob_explains_why(scripts):
    obj = sample("FineTuneJob", "Failed", conditions=[
        _condition("DataValidated", "False", "TooManyRejected", "612 of 10000 records rejected (6.1% > 5%); see data_report.txt")])
    assert run(scripts["FineTuneJob"], obj) == {
        "status": "Degraded", "message": "DataValidated: 612 of 10000 records rejected (6.1% > 5%); see data_report.txt"}
    obj["status"]["message"] = "training pod OOMKilled"
    assert run(scripts["FineTuneJob"], obj)["message"] == "training pod OOMKilled"


def test_training_shows_progress(scripts):
    obj = sample("FineTuneJob", "Training", progress={"step": 120, "totalSteps": 400, "percent": "30%"})
    assert run(scripts["FineTuneJob"], obj) == {"status": "Progressing", "message": "Training: step 120/400"}


def test_succeeded_names_the_model_version(scripts):
    obj = sample("FineTuneJob", "Succeeded", verdict="Passed", children={"modelVersion": "llama-support-v1"})
    assert run(scripts["FineTuneJob"], obj)["message"] == "Training and evaluation succeeded; gate verdict Passed; ModelVersion llama-support-v1"


def test_rollout_messages(scripts):
    progressing = sample("Rollout", "Progressing", canaryWeight=30, currentStepIndex=3, waitingFor="pause 5m (2m left)")
    assert run(scripts["Rollout"], progressing) == {"status": "Progressing", "message": "Canary at 30%, step 3: pause 5m (2m left)"}
    rolled = sample("Rollout", "RolledBack", conditions=[
        _condition("Healthy", "False", "AnalysisFailed", "error-rate 0.042 > max 0.01")])
    assert run(scripts["Rollout"], rolled) == {"status": "Degraded", "message": "Healthy: error-rate 0.042 > max 0.01"}
    paused = sample("Rollout", "Paused", canaryWeight=10)
    assert run(scripts["Rollout"], paused) == {"status": "Suspended", "message": "Paused at canary weight 10%; promote or abort"}
    promoted = sample("Rollout", "Promoted", stableModelVersion="support-triage-v3", canaryWeight=0)
    assert run(scripts["Rollout"], promoted)["message"] == "Promoted: support-triage-v3 serves 100%"


def test_a_rollout_waiting_for_its_first_version_is_healthy_and_says_why(scripts):
    """Declared in Git before its FineTuneSchedule's first winning run: nothing is wrong and nothing is deployed, so it
    is not Degraded (nor Progressing, which would hold sync waves until the first run wins)."""
    from tuneloop.operator.rollout.steps import NOTHING_TO_SERVE

    obj = sample("Rollout", "Waiting", canaryWeight=0, waitingFor="a first ModelVersion in spec.candidate", message=NOTHING_TO_SERVE,
                 conditions=[_condition("Progressing", "False", "WaitingForFirstVersion", NOTHING_TO_SERVE)])
    del obj["spec"]["stable"], obj["spec"]["candidate"]
    assert not schema_check.check_document(obj)
    assert run(scripts["Rollout"], obj) == {"status": "Healthy", "message": NOTHING_TO_SERVE}
    del obj["status"]["message"]  # no status.message: the condition says what it waits for
    assert run(scripts["Rollout"], obj) == {"status": "Healthy", "message": f"Progressing: {NOTHING_TO_SERVE}"}
    del obj["status"]["conditions"]
    assert run(scripts["Rollout"], obj) == {"status": "Healthy", "message": "Waiting for a first ModelVersion in spec.candidate; nothing is served yet"}


def test_schedule_messages(scripts):
    done = {"name": "bot-1", "trigger": "Schedule", "phase": "Succeeded", "outcome": "LostToServing",
           "message": "bot-v2 lost to the serving version bot-v1"}
    idle = sample("FineTuneSchedule", "Idle", message="last run bot-1: LostToServing", runs=[done])
    assert run(scripts["FineTuneSchedule"], idle) == {"status": "Healthy", "message": "last run bot-1: LostToServing"}
    failed = {**done, "name": "bot-2", "phase": "Failed", "outcome": "NoModelVersion", "message": "training pod OOMKilled"}
    still = {**done, "name": "bot-3", "phase": "Running", "outcome": "Pending", "message": ""}
    degraded = sample("FineTuneSchedule", "Running", runs=[done, failed, still])
    assert run(scripts["FineTuneSchedule"], degraded) == {"status": "Degraded", "message": "Run bot-2 failed: training pod OOMKilled"}


def test_unknown_phase_is_unknown(scripts):
    obj = sample("ModelVersion", "Ready")
    obj["status"]["phase"] = "Archived"  # a future phase this script does not know
    assert run(scripts["ModelVersion"], obj) == {"status": "Unknown", "message": "Unknown ModelVersion phase Archived"}


def test_statuses_are_argo_cd_statuses(scripts):
    for kind, phases in EXPECTED.items():
        assert set(phases.values()) <= ARGO_STATUSES
