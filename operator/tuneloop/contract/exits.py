"""Exit codes of `python -m tuneloop_trainer <stage>` and the failure reasons in its summaries.

The operator's podFailurePolicy fails a stage Job at once (no retry) on EXIT_CONFIG_ERROR; any
other non-zero code is retried up to backoffLimit.
"""

from __future__ import annotations

from tuneloop.api.conditions import StageFailureReason

EXIT_OK = 0
EXIT_RUNTIME_ERROR = 1  # retried
EXIT_CONFIG_ERROR = 42  # the spec or the data is wrong: never retried
EXIT_INTERRUPTED = 130  # Ctrl-C in a local run


# `reason` of a failed stage's summary, and of the FineTuneJob condition it becomes: one enum, in the API's
# condition module (tuneloop.api.conditions), so that the trainer's reasons and the operator's are the same names.
Reason = StageFailureReason


def reason_for_exit(code: int | None, default: str) -> str:
    """The reason when a stage died without saying one (e.g. only its exit code is known)."""
    return Reason.INVALID_SPEC.value if code == EXIT_CONFIG_ERROR else default
