"""Attempts of one run: what a delivery must do given the run's recorded events (pure).

The attempt number counts executions, not deliveries: a delivery runs attempt
`last attempt on RUNS + 1`, so a message nak'ed before its work started (queued behind
another run, an admission error, fetched while the runner stopped) keeps its number. Before
running, a runner reads the run's events on RUNS: a final `RunFinished` means the run is over
(ack, never run it twice); a `RunStarted` with nothing after it means that attempt's runner
died (it is recorded as `lost`); a non-final `RunFinished` means another attempt was promised.

`retries.max_attempts` bounds the attempts that *count*: every attempt except a hand-back (a
run the runner gave back on a graceful stop), which was not the job's failure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cronbus.shared.events import Retries, RunEvents, RunFinished, RunStarted, RunStatus

# Outcomes that never earn another attempt: the job did what it should, or a person said stop.
_NO_RETRY: frozenset[RunStatus] = frozenset({"succeeded", "cancelled", "skipped"})

# The `error` of the `lost` outcome a runner records when it hands a run back on a graceful
# stop (with `handed_back=True`).
HANDED_BACK = "the runner stopped before the run finished; handed back"


def is_hand_back(event: RunEvents) -> bool:
    """A hand-back: an attempt that does not count against `max_attempts`.

    Runners now say so in `RunFinished.handed_back`; events written before that field existed
    are recognised by their `error` text, so older history keeps its meaning.
    """
    if not isinstance(event, RunFinished):
        return False
    return event.handed_back or (event.status == "lost" and event.error == HANDED_BACK)


@dataclass(frozen=True, slots=True)
class DeliveryPlan:
    # The attempt number this delivery runs (or reports as skipped/cancelled).
    attempt: int = 1
    # Attempts before this one that count against `max_attempts` (lost ones included).
    counted: int = 0
    # The run already has a final outcome: ack and do nothing.
    finished: bool = False
    # An earlier attempt started and never finished: record it as lost.
    lost_attempt: int | None = None
    lost_is_final: bool = False

    @property
    def run(self) -> bool:
        return not self.finished and not self.lost_is_final


def needs_history(last: RunEvents | None) -> bool:
    """Whether the run's last event alone is not enough to plan a delivery."""
    return isinstance(last, RunStarted) or (isinstance(last, RunFinished) and not last.final)


def plan_delivery(events: Sequence[RunEvents], retries: Retries) -> DeliveryPlan:
    """The plan for a delivery of a run whose events on RUNS are `events`, oldest first.

    Only the last event is needed unless it is a `RunStarted` or a non-final `RunFinished`
    (see `needs_history`); then all of them are.
    """
    last = events[-1] if events else None
    if isinstance(last, RunFinished) and last.final:
        return DeliveryPlan(attempt=last.attempt, finished=True)
    numbers = [e.attempt for e in events if isinstance(e, RunStarted | RunFinished)]
    latest = max(numbers, default=0)
    counted = len({e.attempt for e in events if isinstance(e, RunFinished) and not is_hand_back(e)})
    if isinstance(last, RunStarted):
        counted += 1
        return DeliveryPlan(
            attempt=latest + 1,
            counted=counted,
            lost_attempt=last.attempt,
            lost_is_final=counted >= retries.max_attempts,
        )
    return DeliveryPlan(attempt=latest + 1, counted=counted)


@dataclass(frozen=True, slots=True)
class AttemptResult:
    final: bool
    retry_delay: float | None


def after_attempt(status: RunStatus, counted: int, retries: Retries) -> AttemptResult:
    """Whether the run is over after an attempt ended with `status`, and if not, when to retry.

    `counted` is the number of attempts that count against `max_attempts`, this one included.
    """
    if status in _NO_RETRY or counted >= retries.max_attempts:
        return AttemptResult(final=True, retry_delay=None)
    return AttemptResult(final=False, retry_delay=retries.delay_after(counted))
