"""spec.timeZone: cron times on a zone's wall clock (as a CronJob's timeZone), daylight-saving gaps and overlaps, and
an unknown zone refused in the spec's words by the models, the CRD's CEL rule and `kubectl tuneloop validate`."""

from __future__ import annotations

import datetime as dt

import pytest
import yaml
from pydantic import ValidationError
from tuneloop.api.crdgen import openapi_schema
from tuneloop.api.schedule import FineTuneSchedule
from tuneloop.api.schema_check import check_document
from tuneloop.cli.main import main as cli
from tuneloop.operator.schedule import decide

from . import samples

pytestmark = pytest.mark.unit
UTC = dt.UTC
BERLIN = "Europe/Berlin"


def utc(month: int, day: int, h: int, m: int = 0) -> dt.datetime:
    return dt.datetime(2026, month, day, h, m, tzinfo=UTC)


def spec(**kw):
    return FineTuneSchedule.model_validate(samples.schedule(**kw)).spec


def times(schedule: str, start: dt.datetime, n: int, zone: str | None = BERLIN) -> list[dt.datetime]:
    """The next `n` cron times after `start`, walked with cron_due as the operator's ticks would see them."""
    out, last = [], start
    for _ in range(n):
        _, nxt = decide.cron_due(schedule, last, last, zone)
        due, _ = decide.cron_due(schedule, last, nxt, zone)
        assert due == nxt
        out.append(due)
        last = due
    return out


def test_default_is_utc_as_before():
    s = spec()
    assert s.time_zone is None
    d = decide.decide(s, created=utc(11, 23, 0), last_schedule_time=None, data=None, prom=[], retrain=None,
                      last_retrain=None, active=[], now=utc(11, 23, 3))
    assert d.last_schedule_time == utc(11, 23, 3)
    assert "at 2026-11-23T03:00:00+00:00" in d.start[0].reason


def test_cron_times_are_on_the_zones_wall_clock_and_stored_in_utc():
    s = spec(timeZone=BERLIN)  # '0 3 * * 1': Mondays 03:00 in Berlin = 02:00 UTC in winter (CET, +01:00)
    created = utc(11, 23, 0)
    early = decide.decide(s, created=created, last_schedule_time=None, data=None, prom=[], retrain=None,
                          last_retrain=None, active=[], now=utc(11, 23, 1, 59))
    assert early.start == [] and early.next_schedule_time == utc(11, 23, 2)
    d = decide.decide(s, created=created, last_schedule_time=None, data=None, prom=[], retrain=None,
                      last_retrain=None, active=[], now=utc(11, 23, 2))
    assert d.last_schedule_time == utc(11, 23, 2) and d.next_schedule_time == utc(11, 30, 2)
    assert d.next_schedule_time.tzinfo == UTC
    assert "at 2026-11-23T03:00:00+01:00 (Europe/Berlin)" in d.start[0].reason
    assert decide.run_name("bot", d.start[0]) == f"bot-{int(utc(11, 23, 2).timestamp()) // 60}"  # named by the instant


def test_summer_time_moves_the_utc_instant_not_the_wall_clock():
    # Berlin is +02:00 until 2026-10-25 03:00, then +01:00: 03:00 local on the Mondays around it
    assert times("0 3 * * 1", utc(10, 15, 0), 2) == [utc(10, 19, 1), utc(10, 26, 2)]


def test_a_time_the_clocks_skip_fires_once_when_they_jump():
    # 2026-03-29 02:00 CET → 03:00 CEST: 02:30 does not exist that day; it fires once, at 03:00 CEST (01:00 UTC)
    assert times("30 2 * * *", utc(3, 27, 12), 3) == [utc(3, 28, 1, 30), utc(3, 29, 1, 0), utc(3, 30, 0, 30)]
    # an hourly schedule just has no 02:30 that night
    assert times("30 * * * *", utc(3, 28, 23, 45), 3) == [utc(3, 29, 0, 30), utc(3, 29, 1, 30), utc(3, 29, 2, 30)]


def test_a_fixed_time_in_the_repeated_hour_fires_once():
    # 2026-10-25 03:00 CEST → 02:00 CET: 02:30 happens twice (00:30 and 01:30 UTC); a daily job fires at the first only
    assert times("30 2 * * *", utc(10, 23, 12), 3) == [utc(10, 24, 0, 30), utc(10, 25, 0, 30), utc(10, 26, 1, 30)]
    due, nxt = decide.cron_due("30 2 * * *", utc(10, 25, 0, 30), utc(10, 25, 1, 31), BERLIN)
    assert due is None and nxt == utc(10, 26, 1, 30)  # the second 02:30 is not a cron time


def test_an_hourly_schedule_fires_in_both_passes_of_the_repeated_hour():
    assert times("30 * * * *", utc(10, 25, 0), 3) == [utc(10, 25, 0, 30), utc(10, 25, 1, 30), utc(10, 25, 2, 30)]
    assert times("0 */2 * * *", utc(10, 24, 23, 30), 3) == [utc(10, 25, 0), utc(10, 25, 1), utc(10, 25, 3)]


def test_missed_times_collapse_into_the_latest_one_in_a_zone():
    due, nxt = decide.cron_due("0 3 * * *", utc(11, 20, 2), utc(11, 23, 12), BERLIN)
    assert due == utc(11, 23, 2) and nxt == utc(11, 24, 2)


def test_an_unknown_zone_is_refused_in_the_specs_words():
    doc = samples.schedule(timeZone="Europe/Atlantis")
    with pytest.raises(ValidationError) as exc:
        FineTuneSchedule.model_validate(doc)
    err = exc.value.errors()[0]
    assert err["loc"] == ("spec", "timeZone") and "'Europe/Atlantis' is not a known IANA time zone" in err["msg"]
    problems = check_document(doc, "s.yaml")
    assert [p.path for p in problems] == ["spec.timeZone"]
    assert "timeZone must be an IANA time zone name such as Europe/Berlin" in problems[0].message
    offset = check_document(samples.schedule(timeZone="+01:00"), "s.yaml")
    assert [p.path for p in offset] == ["spec.timeZone"]


def test_the_crd_carries_the_zone_rule_for_the_api_server():
    node = openapi_schema("FineTuneSchedule")["properties"]["spec"]["properties"]["timeZone"]
    assert node["type"] == "string" and node["maxLength"] == 64 and "pattern" in node
    assert "getHours(self)" in node["x-kubernetes-validations"][0]["rule"]
    assert "default UTC" in node["description"]


def test_cli_validate_names_the_bad_zone(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(samples.schedule(timeZone="Mars/Olympus_Mons")))
    assert cli(["validate", str(path)]) == 1
    assert "spec.timeZone: timeZone must be an IANA time zone name" in capsys.readouterr().err
    path.write_text(yaml.safe_dump(samples.schedule(timeZone="America/Argentina/Buenos_Aires")))
    assert cli(["validate", str(path)]) == 0
