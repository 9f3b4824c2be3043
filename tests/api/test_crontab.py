"""Reading crontabs: environment lines, macros, `%`, skipped lines, ids that depend on content."""

from __future__ import annotations

import subprocess

import pytest

from cronbus.api.crontab import parse_crontab, split_percent
from cronbus.api.domain import check_spec
from cronbus.api.schemas import ShellExecutorIn

KEEPALIVED = """\
# m h  dom mon dow   command
0 * * * * ./if_master.sh "./command.sh"
"""

EVERYTHING = """\
SHELL=/bin/bash
PATH=/usr/local/bin:/usr/bin:/bin
MAILTO="ops@example.com"
CRON_TZ=Europe/Berlin
# nightly backup
30 2 * * 1-5   pg_dump db > /backup/db-$(date +\\%F).sql
@daily         find /tmp -mtime +7 -delete
@reboot        /usr/local/bin/start-agent
@weekly        mail -s "weekly" root%Hello,%this is the weekly mail.%
CRON_TZ=UTC
*/15 * * * *   echo quarter
this is not a crontab line
61 * * * *     echo never
@fortnightly   echo unknown macro
*/15 * * * *   echo quarter
"""


def test_the_keepalived_crontab_imports_as_is() -> None:
    entries, skipped = parse_crontab(KEEPALIVED)
    assert skipped == []
    [entry] = entries
    assert entry.line == 2
    assert entry.job.schedule == "0 * * * *" and entry.job.timezone == "UTC"
    assert entry.job.executor == ShellExecutorIn(command='./if_master.sh "./command.sh"', env={})
    assert entry.job.catchup.policy == "skip" and entry.job.overlap == "allow"
    spec, errors = check_spec(entry.job)
    assert errors == [] and spec is not None


def test_every_syntax_feature() -> None:
    entries, skipped = parse_crontab(EVERYTHING, pool="batch", prefix="legacy-")
    by_line = {e.line: e for e in entries}
    assert sorted(by_line) == [6, 7, 9, 11]
    backup = by_line[6].job
    assert backup.timezone == "Europe/Berlin" and backup.schedule == "30 2 * * 1-5" and backup.pool == "batch"
    # SHELL runs the command; PATH goes into the environment; MAILTO is kept as a label.
    assert isinstance(backup.executor, ShellExecutorIn)
    assert backup.executor.command == ["/bin/bash", "-c", "pg_dump db > /backup/db-$(date +%F).sql"]
    assert backup.executor.env == {"PATH": "/usr/local/bin:/usr/bin:/bin"}
    assert backup.labels == {"source": "crontab", "mailto": "ops@example.com"}
    assert backup.name.startswith("legacy-pg-dump-db")
    assert by_line[7].job.schedule == "@daily"
    assert by_line[11].job.timezone == "UTC"
    reasons = {s.line: s.reason for s in skipped}
    assert "@reboot" in reasons[8]
    assert reasons[12].startswith("schedule:") and reasons[13].startswith("schedule:")
    assert "unknown macro" in reasons[14]
    assert "same entry as line 11" in reasons[15]


def test_percent_is_standard_input_and_an_escaped_percent_is_literal() -> None:
    assert split_percent("date +\\%F") == ("date +%F", None)
    assert split_percent("mail -s hi root%line one%line two%") == ("mail -s hi root", "line one\nline two\n")
    entries, _ = parse_crontab("@weekly cat%Hello,%world\n")
    command = entries[0].job.executor.command  # type: ignore[union-attr]
    assert isinstance(command, str)
    result = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, check=True)
    assert result.stdout == "Hello,\nworld"


def test_ids_and_names_follow_the_content() -> None:
    first, _ = parse_crontab(EVERYTHING)
    again, _ = parse_crontab("# a comment that moves lines\n\n" + EVERYTHING)
    assert [e.job_id for e in first] == [e.job_id for e in again]
    assert [e.job.name for e in first] == [e.job.name for e in again]
    other_pool, _ = parse_crontab(EVERYTHING, pool="other")
    assert not {e.job_id for e in first} & {e.job_id for e in other_pool}


@pytest.mark.parametrize("zone", ["UTC", "America/New_York"])
def test_the_default_zone_applies_until_cron_tz(zone: str) -> None:
    entries, _ = parse_crontab("0 1 * * * a\nCRON_TZ=Asia/Tokyo\n0 1 * * * b\n", timezone=zone)
    assert [e.job.timezone for e in entries] == [zone, "Asia/Tokyo"]
