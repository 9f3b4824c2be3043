"""`python -m cronbus.runner`: the same as `cronbus runner`."""

from __future__ import annotations

import sys

from cronbus.shared.cli import main

if __name__ == "__main__":
    sys.exit(main(["runner", *sys.argv[1:]]))
