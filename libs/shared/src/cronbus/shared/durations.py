"""Human durations ("90s", "10m", "1h30m", "250ms") as used in job specs and settings."""

from __future__ import annotations

import math
import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


class DurationError(ValueError):
    """A duration string that cannot be read."""


def parse_duration(text: str | float | int) -> float:
    """Seconds in `text`: a number of seconds, or parts like `1h30m`, `90s`, `250ms`.

    >>> parse_duration("1h30m")
    5400.0
    """
    if isinstance(text, bool):
        raise DurationError(f"{text!r} is not a duration; write e.g. '90s', '10m' or '1h30m'")
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        cleaned = text.strip().lower().replace(" ", "")
        if not cleaned:
            raise DurationError("empty duration; write e.g. '90s', '10m' or '1h30m'")
        try:
            seconds = float(cleaned)
        except ValueError:
            pos = 0
            seconds = 0.0
            for match in _PART.finditer(cleaned):
                if match.start() != pos:
                    break
                seconds += float(match.group(1)) * _UNITS[match.group(2)]
                pos = match.end()
            if pos != len(cleaned):
                raise DurationError(
                    f"{text!r} is not a duration; write e.g. '90s', '10m', '1h30m' or '250ms'"
                ) from None
    if not math.isfinite(seconds):
        raise DurationError(f"{text!r} is not a finite duration; write e.g. '90s', '10m' or '1h30m'")
    if seconds < 0:
        raise DurationError(f"{text!r} is negative; durations must be zero or more")
    return seconds


# Beyond this (about 31,700 years) a duration is no longer exact in milliseconds as a float,
# and `timedelta` cannot hold it: such values are shown as plain seconds.
_FORMATTABLE = 1e12


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of `seconds` in the units parse_duration reads.

    Never raises: a value no input can produce any more (infinite, NaN, negative or huge,
    stored before input was bounded) is shown as its number of seconds, e.g. "1e+308s".
    """
    if seconds == 0:
        return "0s"
    if not 0 < seconds < _FORMATTABLE:  # NaN fails this too
        return f"{seconds}s" if math.isfinite(seconds) else str(seconds)
    millis = round(seconds * 1000)
    if millis % 1000:
        return f"{millis}ms"
    total = millis // 1000
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if total >= size:
            count, total = divmod(total, size)
            parts.append(f"{count}{unit}")
    return "".join(parts)
