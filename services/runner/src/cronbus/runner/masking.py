"""Masking a job's secret values in its output before the output leaves the runner (pure).

Output arrives in arbitrary pieces (pipe reads, HTTP body parts), so a secret can be split
across two of them. A `Masker` keeps back the end of what it has seen only while that end
could still be the beginning of a secret, and releases it masked or as it was once the next
piece (or the end of the output) decides. Output that cannot begin a secret, like a line
ending in a newline, passes at once, so masking does not delay live output.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

MASK = b"***"


class Masker:
    """Replaces every occurrence of `secrets` in one output stream by `***`."""

    def __init__(self, secrets: Sequence[str]) -> None:
        # Longest first: where two secrets start at the same place, the longer is masked whole.
        values = sorted({s.encode() for s in secrets if s}, key=len, reverse=True)
        self._secrets = values
        self._pattern = re.compile(b"|".join(re.escape(v) for v in values)) if values else None
        self._longest = len(values[0]) if values else 0
        self._held = b""

    def feed(self, data: bytes) -> bytes:
        """The masked output that can be released now; may keep back the last few bytes."""
        if self._pattern is None:
            return data
        buf = self._held + data
        cut = self._undecided_from(buf)
        out: list[bytes] = []
        pos = 0
        for match in self._pattern.finditer(buf):
            start, end = match.span()
            if start >= cut:
                break
            out.append(buf[pos:start])
            out.append(MASK)
            pos = end
        # A match that began before the cut is complete: what follows it is decided next time.
        cut = max(cut, pos)
        out.append(buf[pos:cut])
        self._held = buf[cut:]
        return b"".join(out)

    def finish(self) -> bytes:
        """What was kept back, masked: the output has ended, so nothing more can complete it."""
        held, self._held = self._held, b""
        return self.mask(held)

    def mask(self, data: bytes) -> bytes:
        """`data` with every whole occurrence masked (for text that arrives in one piece)."""
        if self._pattern is None:
            return data
        return self._pattern.sub(MASK, data)

    @property
    def held(self) -> int:
        return len(self._held)

    def _undecided_from(self, buf: bytes) -> int:
        """The first position from which `buf` to its end could still begin a secret."""
        first = max(0, len(buf) - self._longest + 1)
        for start in range(first, len(buf)):
            tail = buf[start:]
            if any(len(v) > len(tail) and v.startswith(tail) for v in self._secrets):
                return start
        return len(buf)
