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
    capacity: int
    version: str
    started_at: datetime
    updated_at: datetime


_encoder = msgspec.json.Encoder()
_scheduler_decoder = msgspec.json.Decoder(SchedulerStatus)
_runner_decoder = msgspec.json.Decoder(RunnerPresence)


def encode_status(value: SchedulerStatus | RunnerPresence) -> bytes:
    return _encoder.encode(value)


def decode_scheduler_status(data: bytes) -> SchedulerStatus:
    return _scheduler_decoder.decode(data)


def decode_runner_presence(data: bytes) -> RunnerPresence:
    return _runner_decoder.decode(data)
