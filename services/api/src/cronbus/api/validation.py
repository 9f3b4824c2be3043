"""The one gate every job input passes before anything is appended to JOBS.

Pure: no I/O. Each check appends a `FieldError` (the field, and a reason that states the
limit) instead of raising, so one answer names every problem of a job, and of every job in
a batch. `domain.spec_from_input` runs these checks; `decode_jobs`/`decode_patch` read the
body strictly first (a string is not an integer, an unknown field is an error).

The limits exist because of what carries a job: a JetStream message (a job event, then each
run's dispatch, must fit the server's max payload), a Linux `execve` (one argument or
environment string at most 128 KiB, all of them together well under `ARG_MAX`), the history
database (no NUL in text on PostgreSQL) and an HTTP request line and headers. They are
documented in docs/api.md ("Limits").
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from cronbus.api.schemas import FieldError, HttpExecutorIn, JobIn, JobPatch, ShellExecutorIn
from cronbus.shared.schedule import MAX_YEAR, MIN_YEAR

KIB = 1024
DAY = 86400.0

# Durations, in seconds.
MAX_TIMEOUT = 7 * DAY
MAX_JITTER = DAY
MAX_BACKOFF = DAY
MAX_MAX_BACKOFF = 7 * DAY
MAX_CATCHUP_WINDOW = 7 * DAY
# Retries.
MAX_ATTEMPTS = 100
MAX_MULTIPLIER = 100.0
# Text.
MAX_NAME = 200
MAX_DESCRIPTION_BYTES = 16 * KIB
MAX_LABELS = 64
MAX_LABEL_KEY = 100
MAX_LABEL_VALUE = 1000
# A shell job: Linux refuses one argv or environment string of 128 KiB or more
# (MAX_ARG_STRLEN counts the terminating NUL), and we keep all of them well under ARG_MAX.
MAX_ARG_BYTES = 128 * KIB - 1
MAX_ARGV_ENV_BYTES = 192 * KIB
MAX_CWD_BYTES = 4095
# An http job.
MAX_URL = 8 * KIB
MAX_HEADERS = 100
MAX_HEADER_BYTES = 8 * KIB
MAX_HTTP_BODY_BYTES = 128 * KIB
MAX_EXPECT_STATUS = 100
MAX_RESPONSE_BYTES = 1024 * KIB * KIB
# One encoded job event; a dispatch carries the same spec and must fit NATS's max payload
# too (1 MiB by default), so this leaves room for the run's own fields and headers.
MAX_EVENT_BYTES = 256 * KIB
# A batch create.
MAX_BATCH = 1000
# The Idempotency-Key header: it becomes part of ids and NATS headers.
MAX_IDEMPOTENCY_KEY = 200

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# RFC 9110 token characters.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Control characters: none may appear in one-line text (names, labels, urls, headers, ...).
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# In multi-line text (a description, a command) only tab, newline and carriage return.
_CONTROL_MULTILINE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _shown(key: str) -> str:
    """A map key as it can appear in a field name: escaped, and cut when long."""
    escaped = key.encode("unicode_escape").decode("ascii")
    return escaped if len(escaped) <= 60 else escaped[:60] + "..."


def _size(value: str) -> int:
    return len(value.encode("utf-8", "surrogatepass"))


def check_text(
    errors: list[FieldError],
    field: str,
    value: str,
    *,
    max_chars: int | None = None,
    max_bytes: int | None = None,
    multiline: bool = False,
) -> None:
    """Text that can be stored (UTF-8, no NUL), shown and carried: bounded, no control characters
    (tab, newline and carriage return are allowed in multi-line text)."""
    if max_chars is not None and len(value) > max_chars:
        errors.append(FieldError(field=field, reason=f"{len(value)} characters; at most {max_chars}"))
        return
    if max_bytes is not None and (size := _size(value)) > max_bytes:
        errors.append(
            FieldError(field=field, reason=f"{size} bytes (UTF-8); at most {max_bytes} ({_kib(max_bytes)})")
        )
        return
    bad = (_CONTROL_MULTILINE if multiline else _CONTROL).search(value)
    if bad is not None:
        char = bad.group()
        what = "a NUL byte" if char == "\x00" else f"the control character {char!r}"
        allowed = "; tab and newline are allowed" if multiline else ""
        errors.append(FieldError(field=field, reason=f"contains {what} at position {bad.start()}{allowed}"))
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        errors.append(FieldError(field=field, reason="contains an unpaired surrogate; send valid UTF-8 text"))


def _kib(size: int) -> str:
    return f"{size / KIB:g} KiB" if size < KIB * KIB else f"{size / KIB / KIB:g} MiB"


def _spelled(seconds: float) -> str:
    return f"{seconds / DAY:g}d" if seconds >= DAY else f"{seconds:g}s"


def check_duration(errors: list[FieldError], field: str, seconds: float, maximum: float) -> None:
    """A parsed duration within its documented maximum."""
    if seconds > maximum:
        errors.append(
            FieldError(field=field, reason=f"{seconds:g} seconds is too long; at most {_spelled(maximum)}")
        )


def check_retries(errors: list[FieldError], prefix: str, max_attempts: int, multiplier: float) -> None:
    if not 1 <= max_attempts <= MAX_ATTEMPTS:
        errors.append(
            FieldError(
                field=f"{prefix}retries.max_attempts",
                reason=f"{max_attempts} is out of range; give 1 (no retries) to {MAX_ATTEMPTS}",
            )
        )
    if not (math.isfinite(multiplier) and 1 <= multiplier <= MAX_MULTIPLIER):
        errors.append(
            FieldError(
                field=f"{prefix}retries.multiplier",
                reason=f"{multiplier} is out of range; give 1 (fixed backoff) to {MAX_MULTIPLIER:g}",
            )
        )


def check_instant(errors: list[FieldError], field: str, value: datetime | None) -> datetime | None:
    """An aware datetime in the years the scheduler handles, in UTC; None (with an error) if not."""
    if value is None:
        return None
    if value.tzinfo is None:
        errors.append(
            FieldError(field=field, reason="give a UTC offset, e.g. '2030-01-31T09:00:00Z' or '...+01:00'")
        )
        return None
    if not MIN_YEAR <= value.year <= MAX_YEAR:
        errors.append(
            FieldError(field=field, reason=f"the year {value.year} is outside {MIN_YEAR} to {MAX_YEAR}")
        )
        return None
    return value.astimezone(UTC)


def check_labels(errors: list[FieldError], prefix: str, labels: dict[str, str]) -> None:
    if len(labels) > MAX_LABELS:
        errors.append(
            FieldError(field=f"{prefix}labels", reason=f"{len(labels)} labels; at most {MAX_LABELS}")
        )
        return
    for key, value in labels.items():
        field = f"{prefix}labels.{_shown(key)}"
        if not key:
            errors.append(FieldError(field=field, reason="an empty label name; give it a name"))
        check_text(errors, field, key, max_chars=MAX_LABEL_KEY)
        check_text(errors, field, value, max_chars=MAX_LABEL_VALUE)


def check_shell(errors: list[FieldError], prefix: str, executor: ShellExecutorIn) -> None:
    """A command and environment that `execve` can take."""
    field = f"{prefix}executor"
    total = 0
    items = [executor.command] if isinstance(executor.command, str) else executor.command
    for i, item in enumerate(items):
        where = f"{field}.command" if isinstance(executor.command, str) else f"{field}.command[{i}]"
        check_text(errors, where, item, max_bytes=MAX_ARG_BYTES, multiline=True)
        total += _size(item) + 1
    for key, value in executor.env.items():
        where = f"{field}.env.{_shown(key)}"
        if not _ENV_NAME.fullmatch(key):
            errors.append(
                FieldError(
                    field=where,
                    reason="not a variable name: letters, digits and '_', not starting with a digit",
                )
            )
        entry = _size(key) + 1 + _size(value)
        if entry > MAX_ARG_BYTES:
            errors.append(
                FieldError(
                    field=where, reason=f"{entry} bytes as NAME=value; at most {MAX_ARG_BYTES} (128 KiB)"
                )
            )
        else:
            check_text(errors, where, value, multiline=True)
        total += entry + 1
    if total > MAX_ARGV_ENV_BYTES:
        errors.append(
            FieldError(
                field=f"{field}.command",
                reason=f"the command and env take {total} bytes together; at most {MAX_ARGV_ENV_BYTES} "
                f"({_kib(MAX_ARGV_ENV_BYTES)})",
            )
        )
    if executor.cwd is not None:
        check_text(errors, f"{field}.cwd", executor.cwd, max_bytes=MAX_CWD_BYTES)
    _check_secret_names(errors, field, executor.secrets, set(executor.env), "env", case_sensitive=True)


def check_http(errors: list[FieldError], prefix: str, executor: HttpExecutorIn) -> None:
    field = f"{prefix}executor"
    check_text(errors, f"{field}.url", executor.url, max_chars=MAX_URL)
    if len(executor.headers) > MAX_HEADERS:
        errors.append(
            FieldError(
                field=f"{field}.headers", reason=f"{len(executor.headers)} headers; at most {MAX_HEADERS}"
            )
        )
    else:
        for name, value in executor.headers.items():
            where = f"{field}.headers.{_shown(name)}"
            if not _HEADER_NAME.fullmatch(name) or len(name) > 200:
                errors.append(FieldError(field=where, reason="not a header name (letters, digits, '-' ...)"))
            check_text(errors, where, value, max_bytes=MAX_HEADER_BYTES)
    if executor.body is not None:
        check_text(errors, f"{field}.body", executor.body, max_bytes=MAX_HTTP_BODY_BYTES, multiline=True)
    if len(executor.expect_status) > MAX_EXPECT_STATUS:
        errors.append(
            FieldError(field=f"{field}.expect_status", reason=f"at most {MAX_EXPECT_STATUS} status codes")
        )
    if executor.max_body_bytes > MAX_RESPONSE_BYTES:
        errors.append(
            FieldError(
                field=f"{field}.max_body_bytes",
                reason=f"{executor.max_body_bytes} is too large; at most {MAX_RESPONSE_BYTES} (1 GiB)",
            )
        )
    _check_secret_names(
        errors, field, executor.secrets, set(executor.headers), "headers", case_sensitive=False
    )


def _check_secret_names(
    errors: list[FieldError],
    field: str,
    secrets: list[str],
    keys: set[str],
    where: str,
    *,
    case_sensitive: bool,
) -> None:
    # A misspelt secret name would leave the value it meant readable: refuse it.
    known = keys if case_sensitive else {k.lower() for k in keys}
    for name in secrets:
        if (name if case_sensitive else name.lower()) not in known:
            errors.append(
                FieldError(
                    field=f"{field}.secrets",
                    reason=f"{_shown(name)!r} is not one of the executor's {where}; name a key of {where}",
                )
            )


def check_event_size(errors: list[FieldError], field: str, size: int, limit: int) -> None:
    if size > limit:
        errors.append(
            FieldError(
                field=field,
                reason=f"the job takes {size} bytes as an event; at most {limit} ({_kib(limit)}): "
                "shorten the command, env, body or description",
            )
        )


def check_idempotency_key(key: str) -> list[FieldError]:
    if len(key) > MAX_IDEMPOTENCY_KEY or not key.isprintable():
        return [
            FieldError(
                field="Idempotency-Key",
                reason=f"at most {MAX_IDEMPOTENCY_KEY} printable characters, e.g. a UUID",
            )
        ]
    return []


# --- strict body decoding --------------------------------------------------------------------

_job_decoder = msgspec.json.Decoder(JobIn)
_batch_decoder = msgspec.json.Decoder(list[msgspec.Raw])
_patch_decoder = msgspec.json.Decoder(JobPatch)

JobsBody = JobIn | Annotated[list[JobIn], Meta(min_length=1, max_length=MAX_BATCH)]

# msgspec says e.g. "Object missing required field `name` - at `$[3].executor`".
_MISSING = re.compile(r"Object missing required field `([^`]+)`")
_UNKNOWN = re.compile(r"Object contains unknown field `([^`]+)`")
_AT = re.compile(r" - at `\$\.?([^`]*)`")


class BodyError(ValueError):
    """A body that cannot be read as JSON at all (→ 400), as opposed to invalid fields (→ 422)."""


class BodyInvalid(ValueError):
    """A body that is JSON but not jobs; `errors` names each field."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(f"{e.field}: {e.reason}" for e in errors))
        self.errors = errors


def field_error(message: str, prefix: str = "") -> FieldError:
    """A msgspec validation message as a FieldError naming the field (`[3].executor.command`)."""
    path = prefix
    if (at := _AT.search(message)) is not None:
        path = _joined(prefix, at.group(1))
        message = message[: at.start()]
    if (m := _MISSING.search(message)) is not None:
        return FieldError(field=_joined(path, m.group(1)), reason="missing; this field is required")
    if (m := _UNKNOWN.search(message)) is not None:
        return FieldError(
            field=_joined(path, m.group(1)), reason="unknown field; remove it or check its spelling"
        )
    if path.endswith("executor") and "type" in message:
        path = _joined(path, "type")
    if path.endswith("executor.type"):
        return FieldError(field=path, reason=f"{message}; the executor type must be 'shell' or 'http'")
    return FieldError(field=path or "body", reason=message)


def _joined(path: str, name: str) -> str:
    """`[3]` + `executor` is `[3].executor`; `[3]` + `[0]` is `[3][0]`."""
    if not path or not name:
        return path or name
    return path + name if name.startswith("[") else f"{path}.{name}"


def _decode(decoder: msgspec.json.Decoder[Any], data: bytes | msgspec.Raw, prefix: str = "") -> Any:
    try:
        return decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise BodyInvalid([field_error(str(exc), prefix)]) from None
    except msgspec.DecodeError as exc:
        raise BodyError(f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BodyError("the request body is nested too deeply to be a job") from None
    except UnicodeDecodeError:
        raise BodyError("the request body is not valid UTF-8 (in a JSON string)") from None


def decode_jobs(body: bytes) -> JobIn | list[JobIn]:
    """A job object, or an array of 1 to MAX_BATCH of them, read strictly.

    In an array each item is read on its own, so every invalid item is named (`[17].schedule`).
    """
    start = body.lstrip()[:1]
    if start == b"{":
        job: JobIn = _decode(_job_decoder, body)
        return job
    if start != b"[":
        raise BodyInvalid(
            [
                FieldError(
                    field="body", reason=f"give a job object, or an array of 1 to {MAX_BATCH} job objects"
                )
            ]
        )
    items: list[msgspec.Raw] = _decode(_batch_decoder, body)
    if not 1 <= len(items) <= MAX_BATCH:
        raise BodyInvalid(
            [
                FieldError(
                    field="body",
                    reason=f"{len(items)} jobs; an array holds 1 to {MAX_BATCH}; send the rest separately",
                )
            ]
        )
    jobs: list[JobIn] = []
    errors: list[FieldError] = []
    for i, raw in enumerate(items):
        try:
            jobs.append(_decode(_job_decoder, raw, prefix=f"[{i}]"))
        except BodyInvalid as exc:
            errors += exc.errors
    if errors:
        raise BodyInvalid(errors)
    return jobs


def decode_patch(body: bytes) -> JobPatch:
    if body.lstrip()[:1] != b"{":
        raise BodyInvalid([FieldError(field="body", reason="give an object with the fields to change")])
    patch: JobPatch = _decode(_patch_decoder, body)
    return patch
