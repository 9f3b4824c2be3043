"""Byte sizes ("50MB", "1.5GiB", 1048576) as used in job specs and settings."""

from __future__ import annotations

import re

# Decimal units are powers of 1000, binary ones powers of 1024, as everywhere else (IEC).
_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)")
_EXAMPLES = "e.g. 1048576, '500KB', '50MB', '1.5GiB'"


class SizeError(ValueError):
    """A size that cannot be read."""


def parse_size(value: str | int) -> int:
    """Bytes in `value`: an integer number of bytes, or a number with a unit
    (B, KB, MB, GB = powers of 1000; KiB, MiB, GiB = powers of 1024; any case).

    >>> parse_size("50MB"), parse_size("1.5KiB"), parse_size(7)
    (50000000, 1536, 7)
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise SizeError(f"{value!r} is not a size; write {_EXAMPLES}")
    if isinstance(value, int):
        if value < 0:
            raise SizeError(f"{value!r} is negative; sizes must be zero or more")
        return value
    match = _SIZE.fullmatch(value.strip().lower())
    if match is None or match.group(2) not in _UNITS:
        raise SizeError(f"{value!r} is not a size; write {_EXAMPLES}")
    return round(float(match.group(1)) * _UNITS[match.group(2)])
