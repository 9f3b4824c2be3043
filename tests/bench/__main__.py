"""`python -m tests.bench [suite ...]`: run the named suites (all when none is named)."""

from __future__ import annotations

import asyncio
import importlib
import sys

from tests.bench.common import report

SUITES = ("scheduler", "runner")


def main(argv: list[str]) -> int:
    names = argv or list(SUITES)
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        print(f"unknown suite(s) {unknown}; choose from {SUITES}", file=sys.stderr)
        return 2
    for name in names:
        module = importlib.import_module(f"tests.bench.{name}")
        report(name, asyncio.run(module.main()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
