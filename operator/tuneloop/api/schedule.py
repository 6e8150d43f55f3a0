"""FineTuneSchedule: retrain on a schedule or a trigger, gate each run against the serving version, hand winners
to a Rollout (the continuous loop)."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Literal

from pydantic import Field, field_validator, model_validator

from .common import API_VERSION, ApiModel, Condition, ObjectMeta, ObjectRef, cel
from .deprecations import provider_ref
from .durations import DURATION
from .finetunejob import FineTuneJobSpec
from .rollout import MIN_ANALYSIS_INTERVAL, PROVIDER_NAME, check_floor, floor_rule

# Five fields (minute hour day-of-month month day-of-week) or a macro; croniter parses it in the operator.
CRON = r"^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|(\S+\s+){4}\S+)$"
RETRAIN_ANNOTATION = "tuneloop.dev/retrain"  # `kubectl tuneloop retrain` sets it; a new value starts a run
# An IANA time zone name's shape (Europe/Berlin, America/Argentina/Buenos_Aires, Etc/GMT+5, UTC); whether the zone
# exists is checked by the models (zoneinfo) and, in the API server, by the CEL rule below.
TIME_ZONE = r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$"
TIME_ZONE_MESSAGE = "timeZone must be an IANA time zone name such as Europe/Berlin or UTC"
# The plain forms of a cron date that never comes, for the API server (CEL cannot run croniter; the models check every
# form): day 30/31 in February, day 31 in a 30-day month, any weekday (`*`). No backslashes: CEL string and RE2 alike.
NEVER_FEB = "^[^ ]+ +[^ ]+ +0*3[01] +0*(2|[Ff][Ee][Bb]) +[*?]$"
NEVER_31 = "^[^ ]+ +[^ ]+ +0*31 +0*(4|6|9|11|[Aa][Pp][Rr]|[Jj][Uu][Nn]|[Ss][Ee][Pp]|[Nn][Oo][Vv]) +[*?]$"
NEVER_MESSAGE = "schedule names a date that never comes (30 or 31 February, 31 April, June, September or November)"
# A digest glob is relative to the claim's root and stays inside it: not absolute, no `..` segment.
GLOB_ESCAPES = r"(^/)|(^|/)[.][.](/|$)"  # no backslash: the same text is a CEL string and a Python regex
GLOB_MESSAGE = "glob must stay inside the claim: a relative pattern without '..' segments (e.g. support/**/*.jsonl)"
# Metrics a `format: text` dataset can be compared on (text items have no prompt/answer to generate and score).
TEXT_COMPARABLE = ("perplexity", "forgettingAccuracy")
TEXT_MESSAGE = ("a schedule on a format: text dataset compares runs with the serving version by perplexity (text items have no "
                "answers to score): jobTemplate.spec.evaluation must compute perplexity (in metrics or a gate), and its "
                "reference: serving gates may use only perplexity or forgettingAccuracy")
S3_MESSAGE = ("jobTemplate.spec.output must be pvc: every run is handed to a Rollout, which serves only pvc:// artifacts, and the "
              "next run reads the serving version's eval.json from the same claim")


class ConcurrencyPolicy(str, Enum):
    ALLOW = "Allow"
    FORBID = "Forbid"
    REPLACE = "Replace"


class TriggerKind(str, Enum):
    SCHEDULE = "Schedule"
    NEW_DATA = "NewData"
    PROMETHEUS = "Prometheus"
    MANUAL = "Manual"


class NewDataTrigger(ApiModel):
    """Start a run when the content digest of the files matching `glob` on a PVC changes."""

    claim_name: str = Field(min_length=1, description="PersistentVolumeClaim holding the accumulated data (mounted read-only at /data).")
    glob: str = Field(
        default="**/*.jsonl",
        min_length=1,
        max_length=1024,
        description="Files that make up the data, relative to the claim's root (a Python glob; ** matches any number of "
        "directories, and a matched directory counts with every file under it). Absolute patterns and '..' are refused.",
        json_schema_extra={"x-kubernetes-validations": [cel(f"!self.matches('{GLOB_ESCAPES}')", GLOB_MESSAGE)]},
    )
    check_interval: str = Field(
        default="15m",
        pattern=DURATION,
        description="How often a short digest Job (the trainer image, read-only mount, no GPU) reads the files' digest.",
    )

    @field_validator("glob")
    @classmethod
    def _inside(cls, value: str) -> str:
        if glob_escapes(value):
            raise ValueError(f"{GLOB_MESSAGE}; got {value!r}")
        return value


def glob_escapes(pattern: str) -> bool:
    """The pattern could name a file outside the directory it is applied to."""
    import re

    return re.search(GLOB_ESCAPES, pattern) is not None


class PrometheusTrigger(ApiModel):
    """Start a run when a PromQL query has returned a non-zero value for `for` (e.g. a drift or feedback signal)."""

    name: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", description="Name shown in status and runs.")
    query: str = Field(min_length=1, max_length=4096, description="PromQL; holds while it returns a non-zero, non-NaN value (empty = not holding).")
    for_: str = Field(default="0s", alias="for", pattern=DURATION, description="How long it must hold before a run starts (once per holding period).")
    interval: str = Field(default="1m", pattern=DURATION, description=f"Time between evaluations of the query (at least {MIN_ANALYSIS_INTERVAL}).")
    provider: str | None = Field(
        default=None, max_length=63, pattern=PROVIDER_NAME,
        description=(
            "Name of a metrics provider the platform admin configured (chart value metricsProviders, operator setting "
            "TUNELOOP_METRICS_PROVIDERS); empty: the operator's default provider. The query is confined to this "
            "schedule's namespace. See docs/security.md."
        ),
    )
    prometheus_address: str | None = Field(
        default=None, max_length=2048,
        description=(
            "Deprecated, use provider (removed in tuneloop.dev/v1beta1; a schedule that sets it gets condition "
            "DeprecatedFields and a Warning event). A Prometheus base URL; queried only when it is the address of a "
            "provider the admin configured (otherwise the trigger's check fails, naming the allowed providers)."
        ),
    )

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                floor_rule("interval", MIN_ANALYSIS_INTERVAL),
                cel("!(has(self.provider) && has(self.prometheusAddress))", "set provider or prometheusAddress, not both"),
            ]
        }
    }

    @model_validator(mode="after")
    def _provider(self) -> PrometheusTrigger:
        check_floor(self.interval, "interval", MIN_ANALYSIS_INTERVAL)
        if self.provider is not None and self.prometheus_address is not None:
            raise ValueError("set provider or prometheusAddress, not both")
        return self

    @property
    def provider_ref(self) -> str | None:
        """The provider to query, provider-neutral (the deprecated prometheusAddress converted: api.deprecations)."""
        return provider_ref(self.provider, self.prometheus_address)


class Triggers(ApiModel):
    """Events besides the cron schedule that start a run."""

    new_data: NewDataTrigger | None = Field(default=None, description="New data on a PVC (content digest changed).")
    prometheus: list[PrometheusTrigger] = Field(default_factory=list, max_length=8, description="Prometheus conditions.")


class JobTemplateMeta(ApiModel):
    """Labels and annotations copied onto every run's FineTuneJob."""

    labels: dict[str, str] = Field(default_factory=dict, description="Labels of each FineTuneJob.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Annotations of each FineTuneJob.")


class FineTuneJobTemplate(ApiModel):
    """The FineTuneJob each run creates."""

    metadata: JobTemplateMeta = Field(default_factory=JobTemplateMeta, description="Labels and annotations of each FineTuneJob.")
    spec: FineTuneJobSpec = Field(description="The FineTuneJob spec (the schedule sets output paths, the registry model name and the serving reference).")


class HandOff(ApiModel):
    """When a run's ModelVersion counts as beating the serving one, and which Rollout gets it."""

    rollout: ObjectRef = Field(description="The Rollout whose stable version is the champion and whose spec.candidate receives winners.")
    require_improvement: bool = Field(
        default=True,
        description="A winner must be measurably better than the serving version (evaluation.serving.outcome Better); "
        "false accepts NoSignificantDifference too. The first version (nothing serving) only needs verdict Passed.",
    )


class FineTuneScheduleSpec(ApiModel):
    """Desired state of a FineTuneSchedule."""

    schedule: str | None = Field(
        default=None, pattern=CRON, max_length=256,  # bounded: the API server estimates the CEL regex's cost from it
        description="Cron schedule in `timeZone` (default UTC), e.g. '0 3 * * 1' (Mondays 03:00). A date that never comes "
        "(30 February, 31 April) is refused.",
        json_schema_extra={"x-kubernetes-validations": [cel(
            f"!self.matches('{NEVER_FEB}') && !self.matches('{NEVER_31}')", NEVER_MESSAGE)]},
    )
    time_zone: str | None = Field(
        default=None,
        max_length=64,
        pattern=TIME_ZONE,
        description="IANA time zone the schedule's times are in, e.g. Europe/Berlin (as a CronJob's timeZone); default UTC. "
        "On a daylight-saving change a time the clocks skip fires once when they jump; a time in the repeated hour fires "
        "once (its first occurrence) unless the schedule's hour field is * or */n.",
        json_schema_extra={"x-kubernetes-validations": [cel("timestamp('2000-01-01T00:00:00Z').getHours(self) >= 0", TIME_ZONE_MESSAGE)]},
    )
    starting_deadline_seconds: int | None = Field(
        default=None, ge=1, description="A scheduled run that could not start within this many seconds of its time is skipped."
    )
    triggers: Triggers = Field(default_factory=Triggers, description="New-data and Prometheus triggers.")
    job_template: FineTuneJobTemplate = Field(description="The FineTuneJob each run creates.")
    hand_off: HandOff = Field(description="Champion/challenger against the Rollout's serving version; winners become its candidate.")
    concurrency_policy: ConcurrencyPolicy = Field(
        default=ConcurrencyPolicy.FORBID,
        description="Allow (runs overlap), Forbid (a trigger waits until the running run ends; a missed cron time is skipped) "
        "or Replace (the running run is deleted).",
    )
    suspend: bool = Field(default=False, description="Start no new runs (running ones continue).")
    successful_runs_history_limit: int = Field(default=3, ge=0, le=50, description="Finished successful FineTuneJobs kept.")
    failed_runs_history_limit: int = Field(default=1, ge=0, le=50, description="Failed FineTuneJobs kept.")

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel(
                    "has(self.schedule) || has(self.triggers.newData) || size(self.triggers.prometheus) > 0",
                    "a FineTuneSchedule needs a schedule, triggers.newData or triggers.prometheus "
                    "(kubectl tuneloop retrain works on any of them)",
                ),
                cel(
                    "!has(self.jobTemplate.spec.registry.version)",
                    "jobTemplate.spec.registry.version must be empty: every run registers its own version",
                ),
                cel(
                    "!has(self.jobTemplate.spec.output.path) && !has(self.jobTemplate.spec.output.s3)",
                    S3_MESSAGE,
                ),
                cel(
                    "self.jobTemplate.spec.dataset.format != 'text' || ("
                    "(!has(self.jobTemplate.spec.evaluation.metrics) || self.jobTemplate.spec.evaluation.metrics.exists(m, m == 'perplexity')"
                    " || (has(self.jobTemplate.spec.evaluation.gates) && self.jobTemplate.spec.evaluation.gates.exists(g, g.metric == 'perplexity')))"
                    " && (!has(self.jobTemplate.spec.evaluation.gates) || self.jobTemplate.spec.evaluation.gates.all(g, "
                    "!has(g.reference) || g.reference != 'serving' || g.metric == 'perplexity' || g.metric == 'forgettingAccuracy')))",
                    TEXT_MESSAGE,
                ),
                cel(
                    "self.jobTemplate.spec.evaluation.enabled",
                    "jobTemplate.spec.evaluation.enabled must be true: runs are compared with the serving version",
                ),
            ]
        }
    }

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        if value is not None:
            zone_problem(value)
        return value

    @model_validator(mode="after")
    def _shape(self) -> FineTuneScheduleSpec:
        if self.schedule is None and self.triggers.new_data is None and not self.triggers.prometheus:
            raise ValueError("a FineTuneSchedule needs a schedule, triggers.newData or triggers.prometheus "
                             "(kubectl tuneloop retrain works on any of them)")
        tmpl = self.job_template.spec
        if tmpl.registry.version is not None:
            raise ValueError("jobTemplate.spec.registry.version must be empty: every run registers its own version")
        if tmpl.output.path is not None or tmpl.output.s3 is not None:
            raise ValueError(S3_MESSAGE)
        if _v(tmpl.dataset.format) == "text":
            ev = tmpl.evaluation
            computed = {_v(m) for m in ev.metrics} | {_v(g.metric) for g in ev.gates}
            serving_gates = {_v(g.metric) for g in ev.gates if _v(g.reference) == "serving"}
            if "perplexity" not in computed or not serving_gates <= set(TEXT_COMPARABLE):
                raise ValueError(TEXT_MESSAGE)
        if not tmpl.evaluation.enabled:
            raise ValueError("jobTemplate.spec.evaluation.enabled must be true: runs are compared with the serving version")
        names = [p.name for p in self.triggers.prometheus]
        if len(set(names)) != len(names):
            raise ValueError("triggers.prometheus names must be unique")
        return self

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None:
            from croniter import croniter  # the operator's dependency; the CRD pattern only checks the shape

            if not croniter.is_valid(value):
                raise ValueError(f"schedule {value!r} is not a valid cron expression")
            cron_never_fires(value)
        return value


def _v(x: object) -> str:
    return str(getattr(x, "value", x))


def cron_never_fires(schedule: str) -> None:
    """ValueError when the cron expression names no date that exists (`0 0 30 2 *`, `0 0 31 4 *`): croniter would raise
    at every tick. A leap day (`0 0 29 2 *`) exists and is accepted."""
    import datetime as dt

    from croniter import CroniterBadDateError, croniter

    try:
        croniter(schedule, dt.datetime(2000, 1, 1, tzinfo=dt.UTC)).get_next(dt.datetime)
    except CroniterBadDateError:
        raise ValueError(f"schedule {schedule!r} never fires: no date matches its day-of-month and month fields "
                         "(e.g. 30 February or 31 April)") from None


def zone_problem(name: str) -> None:
    """ValueError (in the spec's words) when `name` is not a time zone this machine's zoneinfo knows."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"timeZone {name!r} is not a known IANA time zone (e.g. Europe/Berlin, America/New_York, UTC)") from None


class RunPhase(str, Enum):
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class RunOutcome(str, Enum):
    """What became of a run's ModelVersion."""

    PENDING = "Pending"  # not finished, or waiting for the Rollout to be free
    HANDED_OFF = "HandedOff"  # set as the Rollout's candidate
    LOST_TO_SERVING = "LostToServing"
    NOT_BETTER = "NotBetter"
    REJECTED = "Rejected"  # its own gates failed
    NOT_COMPARED = "NotCompared"  # a serving version existed but the run has no comparison with it
    NO_MODEL_VERSION = "NoModelVersion"  # the job failed or registered nothing


class ScheduleRun(ApiModel):
    """One run: why it started and what became of it."""

    name: str = Field(description="The FineTuneJob.")
    uid: str | None = Field(default=None, description="The uid of the FineTuneJob the schedule created: only that object is judged and handed off.")
    trigger: TriggerKind = Field(description="Schedule, NewData, Prometheus or Manual.")
    reason: str = Field(default="", description="Why it started, with the numbers (cron time, digests, query value).")
    started_at: datetime | None = Field(default=None, description="When the FineTuneJob was created.")
    finished_at: datetime | None = Field(default=None, description="When it succeeded or failed.")
    phase: RunPhase = Field(default=RunPhase.RUNNING, description="Running, Succeeded or Failed (the FineTuneJob's outcome).")
    champion: str | None = Field(default=None, description="The serving ModelVersion it was compared with.")
    model_version: str | None = Field(default=None, description="The ModelVersion it registered.")
    verdict: str | None = Field(default=None, description="Its evaluation verdict (Passed, Failed, NotEvaluated).")
    serving_outcome: str | None = Field(default=None, description="Champion/challenger outcome (Better, Worse, NoSignificantDifference, NotComparable).")
    outcome: RunOutcome = Field(default=RunOutcome.PENDING, description="HandedOff, LostToServing, NotBetter, Rejected, NotCompared, NoModelVersion or Pending.")
    message: str = Field(default="", description="Why this outcome.")
    data_digest: str | None = Field(default=None, description="The data digest the run was started for (new-data trigger).")


class DataObservation(ApiModel):
    """What the digest Jobs saw on the new-data trigger's claim."""

    digest: str | None = Field(default=None, description="Latest content digest (sha256 of the sorted paths, sizes and contents).")
    files: int | None = Field(default=None, ge=0, description="Files matching the glob.")
    bytes: int | None = Field(default=None, ge=0, description="Their total size.")
    observed_at: datetime | None = Field(default=None, description="When the digest was read.")
    last_run_digest: str | None = Field(default=None, description="The digest the latest data run started for (the baseline).")
    check_job: str | None = Field(default=None, description="The digest Job now running.")
    check_started_at: datetime | None = Field(default=None, description="When that Job was created.")
    message: str | None = Field(default=None, description="The last check's problem, if any.")


class PrometheusObservation(ApiModel):
    """The state of one Prometheus trigger."""

    name: str = Field(description="The trigger's name.")
    value: float | None = Field(default=None, description="Latest value (absent: no data or error).")
    holding_since: datetime | None = Field(default=None, description="Since when the query has held.")
    fired: bool = Field(default=False, description="A run was started in the current holding period (re-armed when it stops holding).")
    checked_at: datetime | None = Field(default=None, description="Latest evaluation.")
    message: str | None = Field(default=None, description="The latest error, if any.")


class SchedulePhase(str, Enum):
    IDLE = "Idle"
    RUNNING = "Running"
    SUSPENDED = "Suspended"
    FAILED = "Failed"


class FineTuneScheduleStatus(ApiModel):
    """Observed state of a FineTuneSchedule."""

    phase: SchedulePhase = Field(default=SchedulePhase.IDLE, description="Idle, Running, Suspended, or Failed (the spec cannot run).")
    active: list[str] = Field(default_factory=list, max_length=50, description="FineTuneJobs running now.")
    last_schedule_time: datetime | None = Field(default=None, description="The latest cron time acted on (run or skipped).")
    next_schedule_time: datetime | None = Field(default=None, description="The next cron time.")
    last_run_time: datetime | None = Field(default=None, description="When the latest run started.")
    last_successful_time: datetime | None = Field(default=None, description="When the latest successful run finished.")
    serving_model_version: str | None = Field(default=None, description="The Rollout's stable ModelVersion (the champion).")
    runs: list[ScheduleRun] = Field(default_factory=list, max_length=100, description="Runs, newest last (bounded by the history limits).")
    data: DataObservation | None = Field(default=None, description="The new-data trigger's observations.")
    prometheus: list[PrometheusObservation] = Field(default_factory=list, max_length=8, description="Each Prometheus trigger's state.")
    last_retrain_request: str | None = Field(default=None, description=f"The last {RETRAIN_ANNOTATION} annotation value acted on.")
    conditions: list[Condition] = Field(default_factory=list, max_length=32, description="Latest observations.")
    observed_generation: int | None = Field(default=None, description="The generation this status describes.")
    message: str | None = Field(default=None, description="Human-readable summary.")


class FineTuneSchedule(ApiModel):
    """Retrain on a cron schedule, new data or a Prometheus condition; hand runs that beat the serving version to a Rollout."""

    api_version: Literal["tuneloop.dev/v1alpha1"] = Field(default=API_VERSION, alias="apiVersion")
    kind: Literal["FineTuneSchedule"] = "FineTuneSchedule"
    metadata: ObjectMeta
    spec: FineTuneScheduleSpec
    status: FineTuneScheduleStatus | None = None
