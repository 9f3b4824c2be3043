"""`python -m cronbus.scheduler`: the same as `cronbus scheduler`."""

from __future__ import annotations

import sys

from cronbus.shared.cli import main

if __name__ == "__main__":
    sys.exit(main(["scheduler", *sys.argv[1:]]))
