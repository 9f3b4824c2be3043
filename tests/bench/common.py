"""The figure type and the report every benchmark suite writes."""

from __future__ import annotations

import json
import platform
import statistics
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path("bench-results")


@dataclass(slots=True)
class Figure:
    name: str
    value: float
    unit: str
    target: str
    met: bool | None
    note: str = ""


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[min(998, int(pct * 10) - 1)]


def report(suite: str, figures: list[Figure]) -> Path:
    """Write bench-results/<suite>.json and print a table."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{suite}.json"
    path.write_text(
        json.dumps(
            {
                "suite": suite,
                "at": datetime.now(UTC).isoformat(),
                "machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count()},
                "figures": [asdict(f) for f in figures],
            },
            indent=2,
        )
    )
    width = max([len(f.name) for f in figures] + [6])
    print(f"\n{suite}")
    print(f"{'figure':<{width}}  {'value':>12}  {'unit':<8} {'target':<12} {'met':<5} note")
    for f in figures:
        met = "-" if f.met is None else ("yes" if f.met else "NO")
        print(f"{f.name:<{width}}  {f.value:>12.2f}  {f.unit:<8} {f.target:<12} {met:<5} {f.note}")
    print(f"(written to {path})")
    return path
