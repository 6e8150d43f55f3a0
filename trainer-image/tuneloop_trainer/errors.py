"""Expected failures: each carries a one-line cause and the exit code the operator acts on."""

from __future__ import annotations

# The exit codes and reasons are the contract's: the operator's podFailurePolicy fails the Job at
# once (no retry) on EXIT_CONFIG_ERROR; anything else non-zero is retried up to backoffLimit.
from tuneloop.contract.exits import EXIT_CONFIG_ERROR, EXIT_RUNTIME_ERROR, Reason

__all__ = ["EXIT_CONFIG_ERROR", "EXIT_RUNTIME_ERROR", "ConfigError", "DataError", "ResourceError", "TrainerError"]


class TrainerError(Exception):
    """An expected failure with a clear cause. `hint` says which knob to turn."""

    exit_code = EXIT_RUNTIME_ERROR
    reason = Reason.RUNTIME_ERROR.value

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint

    def one_line(self) -> str:
        text = str(self).replace("\n", " ").strip()
        return f"{text} ({self.hint})" if self.hint else text


class ConfigError(TrainerError):
    """The spec is wrong or asks for something this environment cannot do. Never retried."""

    exit_code = EXIT_CONFIG_ERROR
    reason = Reason.INVALID_SPEC.value


class DataError(ConfigError):
    """The dataset is missing, unreadable or fails validation. Never retried."""

    reason = Reason.INVALID_DATA.value


class ResourceError(TrainerError):
    """Out of memory or similar: retrying the same way will likely fail again; the hint says what to change."""

    reason = Reason.OUT_OF_RESOURCES.value
