"""Reading a crontab into jobs (`POST /v1/import/crontab`). Pure: text in, jobs and reasons out.

What a user crontab (`crontab -l`) says, it keeps:

* `NAME=value` lines set a variable for the entries below them. `CRON_TZ` is their time zone,
  `SHELL` the shell their command runs in, `MAILTO` is kept as the label `mailto` (cronbus does
  not send mail; its run history replaces it), every other variable (`PATH=...`) goes into the
  jobs' environment. Values may be quoted.
* An entry is five fields and a command, or an `@` macro (`@hourly`, `@daily`, `@midnight`,
  `@weekly`, `@monthly`, `@yearly`, `@annually`) and a command. `@reboot` has no slot in a
  scheduler and is skipped with that reason, as is a line that cannot be read or whose time
  fields are not a schedule (the reason names what is wrong) or an unknown time zone.
* In the command an unescaped `%` ends the command: the rest, with every further `%` turned
  into a newline, is the command's standard input; `\\%` is a literal `%`.
* Cron neither catches up missed runs nor stops overlapping ones: imported jobs have catch-up
  `skip` and overlap `allow`.

Each job's id and name derive from what the entry means (schedule, zone, command, environment,
pool, prefix), so importing the same crontab again finds the same jobs and creates nothing.
"""

from __future__ import annotations

import hashlib
import re
import shlex
import uuid
from dataclasses import dataclass

from cronbus.api.schemas import CatchupIn, JobIn, ShellExecutorIn
from cronbus.shared.schedule import Schedule, ScheduleError

IMPORT_NAMESPACE = uuid.UUID("0b9c7d2e-41f5-5a8b-9c3d-6e2f1a7b8c90")
MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_ASSIGNMENT = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")
_SLUG = re.compile(r"[^a-z0-9]+")
MAX_NAME_SLUG = 40


@dataclass(frozen=True, slots=True)
class Entry:
    """One crontab entry as a job: its line number, the job input and its derived id."""

    line: int
    text: str
    job_id: str
    job: JobIn


@dataclass(frozen=True, slots=True)
class Skipped:
    line: int
    text: str
    reason: str


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def split_percent(command: str) -> tuple[str, str | None]:
    """The command before the first unescaped `%`, and the standard input after it (or None)."""
    out: list[str] = []
    i = 0
    while i < len(command):
        c = command[i]
        if c == "\\" and command[i + 1 : i + 2] == "%":
            out.append("%")
            i += 2
            continue
        if c == "%":
            rest = command[i + 1 :]
            stdin = re.sub(r"(?<!\\)%", "\n", rest).replace("\\%", "%")
            return "".join(out), stdin
        out.append(c)
        i += 1
    return "".join(out), None


def _slug(command: str) -> str:
    words = _SLUG.sub("-", command.lower()).strip("-")
    return words[:MAX_NAME_SLUG].rstrip("-") or "job"


def parse_crontab(
    text: str, *, timezone: str = "UTC", pool: str = "default", prefix: str = "crontab-"
) -> tuple[list[Entry], list[Skipped]]:
    """The entries of `text` as jobs, and the lines skipped with their reasons."""
    env: dict[str, str] = {}
    zone = timezone
    shell = "/bin/sh"
    mailto: str | None = None
    entries: list[Entry] = []
    skipped: list[Skipped] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        assignment = _ASSIGNMENT.match(line)
        if assignment and not line.startswith("@"):
            name, value = assignment.group(1), _unquote(assignment.group(2))
            if name == "CRON_TZ":
                zone = value or timezone
            elif name == "SHELL":
                shell = value or "/bin/sh"
            elif name == "MAILTO":
                mailto = value
            else:
                env[name] = value
            continue
        if line.startswith("@"):
            macro, _, command = line.partition(" ")
            macro = macro.lower()
            if macro == "@reboot":
                skipped.append(
                    Skipped(number, raw, "@reboot runs when a machine boots; a scheduler has no such slot")
                )
                continue
            if macro not in MACROS:
                skipped.append(Skipped(number, raw, f"unknown macro {macro!r}; known: {', '.join(MACROS)}"))
                continue
            schedule = macro
        else:
            fields = line.split(None, 5)
            if len(fields) < 6:
                skipped.append(
                    Skipped(
                        number, raw, "an entry is five time fields and a command, e.g. '0 3 * * * backup.sh'"
                    )
                )
                continue
            schedule, command = " ".join(fields[:5]), fields[5]
        command = command.strip()
        try:
            Schedule.parse(schedule, zone)
        except ScheduleError as exc:
            skipped.append(Skipped(number, raw, f"{exc.field}: {exc.reason}"))
            continue
        if not command:
            skipped.append(Skipped(number, raw, "the entry has no command"))
            continue
        body, stdin = split_percent(command)
        if stdin is not None:
            body = f"printf '%s' {shlex.quote(stdin)} | {{ {body.strip()}\n}}"
        argv: str | list[str] = body if shell == "/bin/sh" else [shell, "-c", body]
        identity = repr((schedule, zone, argv, sorted(env.items()), mailto, pool, prefix))
        digest = hashlib.sha256(identity.encode()).hexdigest()
        job_id = str(uuid.uuid5(IMPORT_NAMESPACE, digest))
        if job_id in seen:
            skipped.append(Skipped(number, raw, f"the same entry as line {seen[job_id]}"))
            continue
        seen[job_id] = number
        labels = {"source": "crontab"}
        if mailto is not None:
            labels["mailto"] = mailto
        job = JobIn(
            name=f"{prefix}{_slug(command.split('%')[0])}-{digest[:6]}",
            schedule=schedule,
            timezone=zone,
            executor=ShellExecutorIn(command=argv, env=dict(env)),
            pool=pool,
            catchup=CatchupIn(policy="skip"),
            overlap="allow",
            labels=labels,
            # Not the line number: moving a line must not make it another job.
            description=f"imported from a crontab: {line}"[:1000],
        )
        entries.append(Entry(line=number, text=raw, job_id=job_id, job=job))
    return entries, skipped
