"""`python -m cronbus.logs`: the same as `cronbus logs`."""

import sys

from cronbus.shared.cli import main

sys.exit(main(["logs", *sys.argv[1:]]))
