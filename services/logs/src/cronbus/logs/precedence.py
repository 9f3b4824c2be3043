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

from typing import Any, Final, get_args

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


# --- the same rules in Python: a batch's events for one row folded into one ---
#
# A row here is a full `runs` or `run_attempts` row as one event writes it (None where the
# event has nothing to say), plus the two names a runner comes by: run.started's names it,
# run.finished's only fills a gap. The upserts in `store` take both names, so a row folded
# from a started and a finished event keeps which name came from which.

STARTED_RUNNER: Final = "started_runner"
FINISHED_RUNNER: Final = "finished_runner"

Row = dict[str, Any]


def _runner_names(row: Row, new: Row) -> Row:
    """The runner names of `row` followed by `new` (same attempt), and the runner they give."""
    started = new[STARTED_RUNNER]
    if started is None:
        started = row[STARTED_RUNNER]
    finished = row[FINISHED_RUNNER]
    if finished is None:
        finished = new[FINISHED_RUNNER]
    runner = started if started is not None else finished
    return {STARTED_RUNNER: started, FINISHED_RUNNER: finished, "runner": runner}


# Attempt columns where a value beats NULL (SQL's coalesce(new, current)).
_COALESCED: Final = tuple(n for n in ATTEMPT_COLUMNS if n not in ("runner", "output_bytes", "truncated"))
_FRESH: Final = (*ATTEMPT_COLUMNS, STARTED_RUNNER, FINISHED_RUNNER)
# `job_id` and `slot` are the same in every event of a run: the first row's stay.
_FROM_DISPATCH: Final = DISPATCH_COLUMNS
_FINISH_COLUMNS: Final = ("finished_at", "exit_code", "duration_ms", "error")


def merge_run(row: Row, new: Row) -> Row:
    """What the `runs` upsert makes of `row` when `new` (a later event's row) is written over
    it: so upserting `merge_run(a, b)` equals upserting `a`, then `b`."""
    out = dict(row)
    if progress(new["status"], new["attempt"]) > progress(row["status"], row["attempt"]):
        out["status"] = new["status"]
    if new["dispatched_at"] is not None:
        for name in _FROM_DISPATCH:
            out[name] = new[name]
    if new["attempt"] > row["attempt"]:
        out["attempt"] = new["attempt"]
        for name in _FRESH:
            out[name] = new[name]
    elif new["attempt"] == row["attempt"]:
        for name in _COALESCED:
            if new[name] is not None:
                out[name] = new[name]
        if new["output_bytes"] > row["output_bytes"]:
            out["output_bytes"] = new["output_bytes"]
        out["truncated"] = bool(new["truncated"] or row["truncated"])
        out |= _runner_names(row, new)
    return out


def merge_attempt(row: Row, new: Row) -> Row:
    """What the `run_attempts` upsert makes of `row` when `new` is written over it."""
    out = dict(row)
    if new["status"] != RUNNING:
        out["status"] = new["status"]
        for name in _FINISH_COLUMNS:
            out[name] = new[name]
    if new["started_at"] is not None:
        out["started_at"] = new["started_at"]
    out |= _runner_names(row, new)
    return out
