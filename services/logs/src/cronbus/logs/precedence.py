"""Which run event wins: the rules that make the `runs` projection independent of order.

The four streams are consumed independently, so a run's `run.started` can be projected
before its `run.dispatched`, and a retry's events can overtake the previous attempt's. Every
write is therefore an upsert whose effect depends only on the event and the row, never on
which came first:

* a row's *progress* is `attempt * PHASES + phase(status)`; the status only moves forward;
* columns that belong to an attempt (runner, times, exit code, ...) follow the newest attempt:
  an event of a newer attempt resets those it does not carry, an older attempt's event leaves
  them alone;
* columns that belong to the run (job, slot, pool, trigger, dispatch time) come from
  `run.dispatched` whenever it arrives;
* `run.dispatched` always counts as attempt 1, whatever its `attempt` field says: attempts
  are numbered by the runner's events. (The scheduler has written its publish retries into
  that field; a dispatch published on its third try then out-ranked the run's own
  `succeeded` of attempt 1, and the run showed `dispatched` for good.)

Pure: no I/O. `store` turns these rules into SQL.
"""

from __future__ import annotations

from typing import Final, get_args

from cronbus.shared.events import RunStatus

DISPATCHED: Final = "dispatched"
RUNNING: Final = "running"
RETRYING: Final = "retrying"

# The outcomes that end a run (events.RunStatus); a run in one of them is history.
FINAL_STATUSES: Final[tuple[str, ...]] = get_args(RunStatus)

# Phase of a status within one attempt. Outcomes share the top phase: two different outcomes
# for the same attempt keep the first one projected (it should never happen; see docs).
_PHASE: Final[dict[str, int]] = {DISPATCHED: 0, RUNNING: 1, RETRYING: 2}
FINAL_PHASE: Final = 3
PHASES: Final = 4

# Columns of `runs` that describe one attempt, with the value they take when a newer attempt
# begins and has not said anything about them yet.
ATTEMPT_COLUMNS: Final[dict[str, object]] = {
    "runner": None,
    "started_at": None,
    "finished_at": None,
    "exit_code": None,
    "duration_ms": None,
    "error": None,
    "cpu_ms": None,
    "peak_rss_bytes": None,
    "output_bytes": 0,
    "truncated": False,
}

# The attempt a `run.dispatched` is projected as (see the module docstring).
DISPATCH_ATTEMPT: Final = 1

# Columns of `runs` that describe the run as dispatched; only `run.dispatched` sets them.
DISPATCH_COLUMNS: Final[tuple[str, ...]] = ("pool", "trigger", "dispatched_at", "lateness_ms")


def phase(status: str) -> int:
    """The phase of `status` within an attempt; any outcome is the last phase."""
    return _PHASE.get(status, FINAL_PHASE)


def progress(status: str, attempt: int) -> int:
    """How far a run has come: a later attempt beats any status of an earlier one."""
    return attempt * PHASES + phase(status)


def finished_status(outcome: str, final: bool) -> str:
    """The run status a `run.finished` projects: its outcome, or `retrying` if more follow."""
    return outcome if final else RETRYING
