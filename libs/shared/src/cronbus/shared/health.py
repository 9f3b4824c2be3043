"""`cronbus health --service NAME`: a readiness check for container healthchecks and probes.

Exit 0 when the service can do its work, 1 (with the reason on stderr) when it cannot:

- every service: NATS answers and JetStream is available;
- `scheduler`: a scheduler holds the lease (this one or another; a standby is ready when the
  group has a leader);
- `runner`: this runner's presence (key `<instance_id>` of the runners bucket) is there, so it
  is connected and heartbeating (the presence has a TTL);
- `logs`: the projection's durable consumers exist on every stream it reads.

The API has `/readyz` instead. The check reads `CRONBUS_NATS_URL`, `CRONBUS_PREFIX` and
`CRONBUS_INSTANCE_ID`, which must name the instance (set it per container: the default holds
the process id, which differs in the checking process).
"""

from __future__ import annotations

import asyncio

import nats
from nats.errors import Error as NatsError
from nats.js.errors import Error as JetStreamError

from cronbus.shared.names import Names
from cronbus.shared.settings import Settings

HEALTH_SERVICES = ("scheduler", "runner", "logs")
LEASE_KEY = "leader"
LOGS_FEEDS = ("jobs", "dispatch", "runs", "logs", "audit")


class Unhealthy(Exception):
    """Why the service is not ready."""


async def _check(service: str, settings: Settings, timeout: float) -> str:
    servers = [url.strip() for url in settings.nats_url.split(",") if url.strip()]
    failures: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        failures.append(exc)

    try:
        # Each server once (more tries are the healthcheck's retries), quietly.
        nc = await nats.connect(
            servers,
            connect_timeout=timeout,
            max_reconnect_attempts=1,
            reconnect_time_wait=0.1,
            allow_reconnect=False,
            error_cb=on_error,
        )
    except (OSError, NatsError, TimeoutError) as exc:
        cause = failures[-1] if failures else exc
        raise Unhealthy(f"NATS at {settings.nats_url} is unreachable ({_why(cause)})") from exc
    try:
        js = nc.jetstream(timeout=timeout)
        try:
            await js.account_info()
        except (NatsError, JetStreamError, TimeoutError) as exc:
            raise Unhealthy(f"JetStream is not available ({_why(exc)})") from exc
        names = Names(settings.prefix)
        if service == "scheduler":
            return await _scheduler(js, names)
        if service == "runner":
            return await _runner(js, names, settings.instance_id)
        return await _logs(js, names)
    finally:
        await nc.close()


async def _scheduler(js: nats.js.JetStreamContext, names: Names) -> str:
    try:
        kv = await js.key_value(names.leader_bucket)
        entry = await kv.get(LEASE_KEY)
    except (NatsError, JetStreamError, TimeoutError) as exc:
        raise Unhealthy(f"no scheduler holds the lease ({_why(exc)})") from exc
    holder = (entry.value or b"").decode(errors="replace")
    return f"scheduler: lease held by {holder}"


async def _runner(js: nats.js.JetStreamContext, names: Names, instance_id: str) -> str:
    try:
        kv = await js.key_value(names.runners_bucket)
        await kv.get(instance_id)
    except (NatsError, JetStreamError, TimeoutError) as exc:
        raise Unhealthy(
            f"runner {instance_id} has no presence in {names.runners_bucket} ({_why(exc)})"
        ) from exc
    return f"runner: {instance_id} present"


async def _logs(js: nats.js.JetStreamContext, names: Names) -> str:
    streams = {
        "jobs": names.jobs_stream,
        "dispatch": names.dispatch_stream,
        "runs": names.runs_stream,
        "logs": names.logs_stream,
        "audit": names.audit_stream,
    }
    for feed in LOGS_FEEDS:
        consumer = Names.logs_consumer(feed)
        try:
            await js.consumer_info(streams[feed], consumer)
        except (NatsError, JetStreamError, TimeoutError) as exc:
            raise Unhealthy(f"consumer {consumer} on {streams[feed]} is missing ({_why(exc)})") from exc
    return f"logs: consumers on {len(LOGS_FEEDS)} streams"


def _why(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def check(service: str, settings: Settings, timeout: float = 3.0) -> str:
    """What is ready, or raise `Unhealthy` saying what is not."""
    if service not in HEALTH_SERVICES:
        raise Unhealthy(f"unknown service {service!r}; one of {', '.join(HEALTH_SERVICES)}")
    return asyncio.run(asyncio.wait_for(_check(service, settings, timeout), timeout * 3))
