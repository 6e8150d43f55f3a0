"""The typed API of tuneloop.dev/v1alpha1: the source of truth for CRDs, validation and docs."""

from .common import API_VERSION, GROUP, VERSION, ApiModel, Condition, ConditionStatus
from .finetunejob import FineTuneJob, FineTuneJobSpec
from .modelversion import ModelVersion, ModelVersionSpec
from .rollout import Rollout, RolloutSpec
from .schedule import FineTuneSchedule, FineTuneScheduleSpec
from .status import FineTuneJobPhase, FineTuneJobStatus
from .sweep import FineTuneSweep, FineTuneSweepSpec

KINDS: dict[str, type[ApiModel]] = {"FineTuneJob": FineTuneJob, "ModelVersion": ModelVersion, "Rollout": Rollout, "FineTuneSchedule": FineTuneSchedule,
                              "FineTuneSweep": FineTuneSweep}

__all__ = [
    "API_VERSION",
    "GROUP",
    "VERSION",
    "KINDS",
    "Condition",
    "ConditionStatus",
    "FineTuneJob",
    "FineTuneJobSpec",
    "FineTuneJobPhase",
    "FineTuneJobStatus",
    "FineTuneSchedule",
    "FineTuneScheduleSpec",
    "FineTuneSweep",
    "FineTuneSweepSpec",
    "ModelVersion",
    "ModelVersionSpec",
    "Rollout",
    "RolloutSpec",
]
