"""What the client prints: aligned tables for people, JSON for scripts."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TextIO

Column = tuple[str, Callable[[dict[str, Any]], Any]]


def field(name: str) -> Callable[[dict[str, Any]], Any]:
    """A column reading `name` ("a.b" reads nested objects)."""

    def read(item: dict[str, Any]) -> Any:
        value: Any = item
        for part in name.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return value

    return read


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"))
    text = str(value)
    # ISO times read better without the sub-second digits in a table.
    if len(text) >= 20 and text[10:11] == "T" and text[4:5] == "-":
        text = text[:19].replace("T", " ") + ("Z" if text.endswith(("Z", "+00:00")) else "")
    return text


def table(rows: Iterable[dict[str, Any]], columns: Sequence[Column], out: TextIO = sys.stdout) -> int:
    """Print `rows` under `columns`; the number of rows."""
    cells = [[cell(read(row)) for _, read in columns] for row in rows]
    heads = [name for name, _ in columns]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(heads)]
    print("  ".join(h.upper().ljust(w) for h, w in zip(heads, widths, strict=True)).rstrip(), file=out)
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip(), file=out)
    return len(cells)


def as_json(value: Any, out: TextIO = sys.stdout) -> None:
    print(json.dumps(value, indent=2, default=str), file=out)


def details(item: dict[str, Any], out: TextIO = sys.stdout) -> None:
    """One object as `key: value` lines (nested objects as JSON)."""
    width = max((len(k) for k in item), default=0)
    for key, value in item.items():
        print(f"{key.ljust(width)}  {cell(value) if not isinstance(value, str) else value}", file=out)
