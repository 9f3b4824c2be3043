"""What services publish about themselves in KV, for other services (the API) to read.

`SchedulerStatus` lives under key `status` of bucket `<p>_scheduler` (written by the leader);
`RunnerPresence` under key `<instance_id>` of bucket `<p>_runners` (TTL: absent = gone).
Both evolve additively like events.
"""

from __future__ import annotations

from datetime import datetime

import msgspec


class SchedulerStatus(msgspec.Struct, kw_only=True):
    leader: str
    lease_revision: int
    jobs: int
    watermark: datetime | None = None
    dispatch_lag_ms: float = 0.0
    dispatched_total: int = 0
    updated_at: datetime
    schedule_errors: dict[str, str] = {}


class RunnerPresence(msgspec.Struct, kw_only=True):
    id: str
    host: str
    pid: int
    pools: list[str]
    running: int
    # Runs it may execute at once: its slots plus its HTTP slots (HTTP runs beyond those
    # take slots). The two parts follow; a presence from a runner before them has 0 for both.
    capacity: int
    version: str
    started_at: datetime
    updated_at: datetime
    slots: int = 0
    http_slots: int = 0


_encoder = msgspec.json.Encoder()
_scheduler_decoder = msgspec.json.Decoder(SchedulerStatus)
_runner_decoder = msgspec.json.Decoder(RunnerPresence)


def encode_status(value: SchedulerStatus | RunnerPresence) -> bytes:
    return _encoder.encode(value)


def decode_scheduler_status(data: bytes) -> SchedulerStatus:
    return _scheduler_decoder.decode(data)


def decode_runner_presence(data: bytes) -> RunnerPresence:
    return _runner_decoder.decode(data)


# --- terms of leadership -----------------------------------------------------------------------
#
# Key `terms` of bucket `<p>_scheduler` (written by each new leader as its term begins): the
# last MAX_TERMS terms, oldest first. A term that began long after the watermark it started
# from had a leader gap before it: no scheduler was leading between the two. The API explains
# slots with it (`GET /v1/jobs/{id}/slots`).

TERMS_KEY = "terms"
MAX_TERMS = 500


class LeaderTerm(msgspec.Struct, kw_only=True):
    """A term of leadership: who led from `started_at`, starting from `watermark` (every slot at
    or before it was dispatched by earlier terms)."""

    leader: str
    lease_revision: int
    started_at: datetime
    watermark: datetime


class LeaderTerms(msgspec.Struct, kw_only=True):
    terms: list[LeaderTerm] = []


_terms_decoder = msgspec.json.Decoder(LeaderTerms)


def encode_terms(value: LeaderTerms) -> bytes:
    return _encoder.encode(value)


def decode_terms(data: bytes) -> LeaderTerms:
    return _terms_decoder.decode(data)
