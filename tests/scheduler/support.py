"""Helpers for scheduler tests: writing job events to JOBS and reading DISPATCH back."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from cronbus.shared.bus import MSG_ID
from cronbus.shared.events import (
    Catchup,
    JobCreated,
    JobEvents,
    JobSpec,
    RunDispatched,
    ShellExecutor,
    decode_dispatch,
    encode,
)
from cronbus.shared.names import Names


def spec(schedule: str = "* * * * * *", **fields: object) -> JobSpec:
    catchup = fields.pop("catchup", Catchup(policy="all", window=3600.0))
    return JobSpec(
        name=fields.pop("name", "t"),  # type: ignore[arg-type]
        schedule=schedule,
        executor=ShellExecutor(command="true"),
        catchup=catchup,  # type: ignore[arg-type]
        **fields,  # type: ignore[arg-type]
    )


async def publish_job(js: JetStreamContext, names: Names, event: JobEvents) -> None:
    await js.publish(names.job_subject(event.job_id), encode(event), stream=names.jobs_stream)


async def create_job(js: JetStreamContext, names: Names, job_id: str, job_spec: JobSpec) -> JobCreated:
    event = JobCreated(job_id=job_id, revision=1, spec=job_spec)
    await publish_job(js, names, event)
    return event


@dataclass(frozen=True, slots=True)
class Dispatch:
    msg_id: str
    event: RunDispatched
    stored_at: datetime
    seq: int


async def read_dispatches(js: JetStreamContext, names: Names) -> list[Dispatch]:
    """Every message in DISPATCH, in stream order."""
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE, inactive_threshold=10.0
    )
    sub = await js.pull_subscribe(names.dispatch_all, stream=names.dispatch_stream, config=config)
    out: list[Dispatch] = []
    try:
        remaining = (await sub.consumer_info()).num_pending or 0
        while remaining > 0:
            for msg in await sub.fetch(min(remaining, 1000), timeout=5.0):
                remaining -= 1
                out.append(
                    Dispatch(
                        msg_id=(msg.headers or {}).get(MSG_ID, ""),
                        event=decode_dispatch(msg.data),
                        stored_at=msg.metadata.timestamp,
                        seq=msg.metadata.sequence.stream,
                    )
                )
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return out
