"""`python -m tests.bench [suite ...] [--option ...]`: run the named suites (all when none is named).

Options after the suite names go to the suites that take them (`seed --jobs 5000 --minutes 1`).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import sys

from tests.bench.common import report

SUITES = ("scheduler", "runner", "projection", "seed", "endtoend", "console")
# Suites that a bare `just bench` runs; the seed workload takes minutes and the console needs
# Chromium, so they are asked for by name.
DEFAULT_SUITES = ("scheduler", "runner", "projection")


def main(argv: list[str]) -> int:
    split = next((i for i, arg in enumerate(argv) if arg.startswith("-")), len(argv))
    names, options = argv[:split] or list(DEFAULT_SUITES), argv[split:]
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        print(f"unknown suite(s) {unknown}; choose from {SUITES}", file=sys.stderr)
        return 2
    for name in names:
        module = importlib.import_module(f"tests.bench.{name}")
        takes_options = bool(inspect.signature(module.main).parameters)
        report(name, asyncio.run(module.main(options) if takes_options else module.main()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
