"""Expected failures: each carries a one-line cause and the exit code the operator acts on."""

from __future__ import annotations

# The operator's podFailurePolicy fails the Job at once (no retry) on this exit code.
EXIT_CONFIG_ERROR = 42
# Anything else non-zero is retried up to backoffLimit.
EXIT_RUNTIME_ERROR = 1


class TrainerError(Exception):
    """An expected failure with a clear cause. `hint` says which knob to turn."""

    exit_code = EXIT_RUNTIME_ERROR
    reason = "RuntimeError"

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint

    def one_line(self) -> str:
        text = str(self).replace("\n", " ").strip()
        return f"{text} ({self.hint})" if self.hint else text


class ConfigError(TrainerError):
    """The spec is wrong or asks for something this environment cannot do. Never retried."""

    exit_code = EXIT_CONFIG_ERROR
    reason = "InvalidSpec"


class DataError(ConfigError):
    """The dataset is missing, unreadable or fails validation. Never retried."""

    reason = "InvalidData"


class ResourceError(TrainerError):
    """Out of memory or similar: retrying the same way will likely fail again; the hint says what to change."""

    reason = "OutOfResources"
