"""`python -m cronbus.runner.reaper`: ends a runner's runs when the runner itself dies.

A runner killed with SIGKILL (or by the OOM killer) cannot end its runs' process groups, and
they would run on as orphans while another runner retries them. So each runner starts one
reaper, a small process in its own session that outlives it. The runner writes a line to the
reaper's stdin when a run's process group starts (`+<pgid>`) and when it has ended
(`-<pgid>`). When stdin reaches end-of-file the runner is gone (the kernel closes the pipe of a
dead process, however it died): the reaper sends SIGTERM to every group still listed, SIGKILL
to what is left after `GRACE` seconds, and exits. A runner that stops normally ends its runs
first, then closes the pipe, so the reaper has nothing left to do.

Standard library only: it starts once per runner and must not cost the runner much.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterable

# SIGTERM -> SIGKILL grace for the runs of a dead runner: nobody is waiting for their outcome.
GRACE = 2.0


def _signal(pgid: int, sig: int) -> bool:
    """Signal a group; False when nothing of it is left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def end_groups(groups: set[int], grace: float = GRACE) -> None:
    alive = {pgid for pgid in groups if _signal(pgid, signal.SIGTERM)}
    deadline = time.monotonic() + grace
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = {pgid for pgid in alive if _signal(pgid, 0)}
    for pgid in alive:
        _signal(pgid, signal.SIGKILL)


def serve(lines: Iterable[bytes]) -> set[int]:
    """Follow `+pgid`/`-pgid` lines until end-of-file; the groups still listed then."""
    groups: set[int] = set()
    for raw in lines:
        line = raw.strip()
        try:
            op, pgid = line[:1], int(line[1:])
        except ValueError:
            print(f"cronbus reaper: ignoring line {line!r}", file=sys.stderr)
            continue
        if op == b"+":
            groups.add(pgid)
        elif op == b"-":
            groups.discard(pgid)
    return groups


def main() -> int:
    # Only the end of its stdin ends it: a Ctrl-C or SIGTERM meant for the runner's process
    # group must not take away what cleans up after the runner.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    left = serve(sys.stdin.buffer)
    if left:
        print(f"cronbus reaper: the runner is gone; ending {len(left)} run(s)", file=sys.stderr)
        end_groups(left)
    return 0


if __name__ == "__main__":
    sys.exit(main())
