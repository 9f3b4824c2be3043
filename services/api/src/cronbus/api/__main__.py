"""`python -m cronbus.api`: the same as `cronbus api`."""

import sys

from cronbus.shared.cli import main

sys.exit(main(["api", *sys.argv[1:]]))
