"""Attempts of one run: what a delivery must do given the run's last recorded event (pure).

The attempt number is the dispatch message's delivery count. Before running, a runner reads
the run's last event on RUNS: a final `RunFinished` means the run is over (ack, never run it
twice); a `RunStarted` of an earlier attempt with nothing after it means that attempt's runner
died (it is recorded as `lost`); a non-final `RunFinished` means another attempt was promised.
"""

from __future__ import annotations

from dataclasses import dataclass

from cronbus.shared.events import Retries, RunEvents, RunFinished, RunStarted, RunStatus

# Outcomes that never earn another attempt: the job did what it should, or a person said stop.
_NO_RETRY: frozenset[RunStatus] = frozenset({"succeeded", "cancelled", "skipped"})


@dataclass(frozen=True, slots=True)
class DeliveryPlan:
    # The run already has a final outcome: ack and do nothing.
    finished: bool = False
    # An earlier attempt started and never finished: record it as lost.
    lost_attempt: int | None = None
    lost_is_final: bool = False

    @property
    def run(self) -> bool:
        return not self.finished and not self.lost_is_final


def plan_delivery(last: RunEvents | None, attempt: int, retries: Retries) -> DeliveryPlan:
    match last:
        case RunFinished(final=True):
            return DeliveryPlan(finished=True)
        case RunStarted(attempt=started) if started < attempt:
            return DeliveryPlan(lost_attempt=started, lost_is_final=started >= retries.max_attempts)
    return DeliveryPlan()


@dataclass(frozen=True, slots=True)
class AttemptResult:
    final: bool
    retry_delay: float | None


def after_attempt(status: RunStatus, attempt: int, retries: Retries) -> AttemptResult:
    """Whether the run is over after `attempt` ended with `status`, and if not, when to retry."""
    if status in _NO_RETRY or attempt >= retries.max_attempts:
        return AttemptResult(final=True, retry_delay=None)
    return AttemptResult(final=False, retry_delay=retries.delay_after(attempt))
