"""The runner's composition root: consumers per pool, bounded concurrency, cancel, presence.

`create_service(settings)` builds the service without I/O; `RunnerService.run` connects,
binds one durable pull consumer per pool, fetches only as many messages as it has free
slots, and on stop hands back what does not finish within the grace period.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from cronbus.runner.environment import parse_passthrough
from cronbus.runner.executors import http_client
from cronbus.runner.overlap import RunningRecords
from cronbus.runner.presence import Presence
from cronbus.runner.processes import Reaper
from cronbus.runner.runs import RunHandler
from cronbus.runner.streams import StreamClient
from cronbus.shared import metrics
from cronbus.shared.bus import Bus
from cronbus.shared.events import HttpExecutor, MalformedEvent, RunDispatched, decode_dispatch
from cronbus.shared.runtime import brief
from cronbus.shared.settings import Settings
from cronbus.shared.tracing import setup_tracing

log = logging.getLogger(__name__)

# A fetch waits at most this long for work, so a stop request is noticed promptly (an idle
# pool costs two pull requests a second).
FETCH_WAIT = 0.5


class Slots:
    """The runner's free capacity; a fetch takes slots first, so in-flight never exceeds it.

    `sharers` fetchers (one per pool) share it: each takes at most its fair share of what is
    free, and slots given back go first to the fetchers waiting in line, so a busy or idle
    pool cannot starve another.
    """

    def __init__(self, capacity: int, sharers: int = 1) -> None:
        self.capacity = capacity
        self.free = capacity
        self.sharers = max(1, sharers)
        self._waiting: deque[asyncio.Future[int]] = deque()

    def _share(self) -> int:
        return -(-self.free // self.sharers)

    async def take(self, stopping: asyncio.Event) -> int:
        """A fair share of the free slots (at least one), or 0 once `stopping` is set."""
        if stopping.is_set():
            return 0
        if self.free and not self._waiting:
            taken = self._share()
            self.free -= taken
            return taken
        granted: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting.append(granted)
        try:
            while not granted.done() and not stopping.is_set():
                await asyncio.wait({granted}, timeout=FETCH_WAIT)
        except BaseException:
            self._leave(granted)
            raise
        if stopping.is_set():
            self._leave(granted)
            return 0
        return granted.result()

    def take_now(self) -> int:
        """A fair share of the free slots without waiting: 0 when none is free or some fetcher
        already waits for one."""
        if self.free and not self._waiting:
            taken = self._share()
            self.free -= taken
            return taken
        return 0

    def try_take_one(self) -> bool:
        """One free slot now, if there is one nobody waits for."""
        if self.free and not self._waiting:
            self.free -= 1
            return True
        return False

    def give_one(self, _: object = None) -> None:
        """One slot back (usable as a task's done callback)."""
        self.give(1)

    def give(self, count: int = 1) -> None:
        self.free += count
        while self.free and self._waiting:
            waiter = self._waiting.popleft()
            if waiter.done():
                continue
            share = self._share()
            self.free -= share
            waiter.set_result(share)

    def _leave(self, granted: asyncio.Future[int]) -> None:
        """Leave the line; slots already granted go back."""
        if granted.done():
            if not granted.cancelled():
                self.give(granted.result())
            return
        granted.cancel()
        try:
            self._waiting.remove(granted)
        except ValueError:
            pass


class RunnerService:
    name = "runner"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ready = asyncio.Event()
        self._runs: set[asyncio.Task[None]] = set()

    @property
    def running(self) -> int:
        return len(self._runs)

    async def run(self, stopping: asyncio.Event) -> None:
        settings = self.settings
        names = settings.names
        setup_tracing("runner", settings.instance_id)
        bus = await Bus.open_when_ready(self.settings, "runner", stopping)
        if bus is None:
            return
        http = http_client(settings.concurrency + settings.http_concurrency)
        # Ends the runs' process groups if this process is killed (it cannot do so itself).
        reaper = Reaper()
        reaper.start()
        presence_task: asyncio.Task[None] | None = None
        heartbeat_task: asyncio.Task[None] | None = None
        fetchers: list[asyncio.Task[None]] = []
        cancel_sub: Subscription | None = None
        pulls: list[JetStreamContext.PullSubscription] = []
        presence: Presence | None = None
        streams = StreamClient(bus.nc)
        # Set once no run is in flight any more (finished or handed back) after a stop.
        work_done = asyncio.Event()
        try:
            presence = Presence(await bus.js.key_value(names.runners_bucket), settings, lambda: self.running)
            records = RunningRecords(await bus.js.key_value(names.running_bucket), presence.is_live)
            await streams.open()
            handler = RunHandler(
                settings=settings,
                nc=bus.nc,
                js=bus.js,
                streams=streams,
                http=http,
                records=records,
                stopping=stopping,
                reaper=reaper,
            )

            async def on_cancel(msg: Msg) -> None:
                run_id = msg.subject.rsplit(".", 1)[-1]
                if handler.cancel(run_id):
                    log.info("cancelling run %s on request", run_id)

            cancel_sub = await bus.nc.subscribe(names.cancel_subject("*"), cb=on_cancel)
            await presence.publish()
            presence_task = asyncio.create_task(presence.keep(work_done), name="runner-presence")
            heartbeat_task = asyncio.create_task(handler.keep_alive(work_done), name="runner-heartbeat")
            slots = Slots(settings.concurrency, sharers=len(settings.pools))
            http_slots = Slots(settings.http_concurrency, sharers=len(settings.pools))
            for pool in settings.pools:
                sub = await self._bind(bus.js, pool)
                pulls.append(sub)
                fetchers.append(
                    asyncio.create_task(
                        self._fetch(sub, pool, slots, http_slots, handler, stopping), name=f"fetch-{pool}"
                    )
                )
            log.info(
                "runner %s serving pools %s with %d slots and %d more for HTTP runs",
                settings.instance_id,
                ",".join(settings.pools),
                settings.concurrency,
                settings.http_concurrency,
            )
            metrics.RUNNER_CAPACITY.set(settings.concurrency + settings.http_concurrency)
            for pool in settings.pools:
                metrics.RUNNER_POOLS.labels(pool).set(1)
            metrics.RUNS_IN_FLIGHT.set_function(lambda: len(self._runs))
            self.ready.set()
            await stopping.wait()
            await asyncio.wait(fetchers, timeout=FETCH_WAIT + 5.0)
            await self._finish_in_flight(handler)
        finally:
            work_done.set()
            for task in fetchers:
                if not task.done():
                    task.cancel()
            if fetchers:
                await asyncio.wait(fetchers, timeout=5.0)
            for keeper in (presence_task, heartbeat_task):
                if keeper is not None:
                    await asyncio.wait([keeper], timeout=5.0)
                    keeper.cancel()
            if presence is not None:
                await presence.withdraw()
            # Unsubscribe first: draining a pull subscription waits on fetch bookkeeping that
            # never completes once fetching has stopped.
            subscriptions: list[Subscription | JetStreamContext.PullSubscription] = list(pulls)
            if cancel_sub is not None:
                subscriptions.append(cancel_sub)
            for subscription in subscriptions:
                try:
                    await subscription.unsubscribe()
                except Exception as exc:
                    log.debug("unsubscribe on stop: %s", exc)
            await streams.close()
            await http.close()
            await reaper.close()
            await bus.close()

    async def _bind(self, js: JetStreamContext, pool: str) -> JetStreamContext.PullSubscription:
        names = self.settings.names
        config = ConsumerConfig(
            durable_name=names.runner_consumer(pool),
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.settings.ack_wait,
            deliver_policy=DeliverPolicy.ALL,
            filter_subject=names.dispatch_pool(pool),
        )
        # Runners of one pool start together; the second `add_consumer` of the same config is
        # harmless, so retry briefly instead of failing the service.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10.0
        while True:
            try:
                return await js.pull_subscribe(
                    names.dispatch_pool(pool),
                    durable=names.runner_consumer(pool),
                    stream=names.dispatch_stream,
                    config=config,
                )
            except (nats.errors.Error, nats.js.errors.Error) as exc:
                if loop.time() > deadline:
                    raise
                log.info("binding consumer for pool %s: %s; retrying", pool, exc)
                await asyncio.sleep(0.2)

    async def _fetch(
        self,
        sub: JetStreamContext.PullSubscription,
        pool: str,
        slots: Slots,
        http_slots: Slots,
        handler: RunHandler,
        stopping: asyncio.Event,
    ) -> None:
        """Fetch as many dispatches as there are free slots, and start them.

        An HTTP run takes a free HTTP slot, and only when there is none one of the slots. While
        the pool's last batch held only HTTP runs, a fetch asks for the free HTTP slots too (a
        fair share of them), so an HTTP pool is not fetched `concurrency` messages at a time.
        A run that needs a slot and finds none free (fetched for the HTTP capacity) goes back
        to the pool at once, and the next fetches ask for the slots only. No fetched message
        ever waits to start.
        """
        http_pool = False
        consumer = self.settings.names.runner_consumer(pool)
        pending = metrics.CONSUMER_PENDING.labels(self.settings.names.dispatch_stream, consumer)
        while not stopping.is_set():
            count = await slots.take(stopping)
            if count == 0:
                return
            extra = http_slots.take_now() if http_pool else 0
            msgs: list[Msg] = []
            try:
                msgs = await sub.fetch(batch=count + extra, timeout=FETCH_WAIT)
            except nats.errors.TimeoutError:
                pass
            except Exception as exc:
                # NATS restarting, or the consumer briefly unavailable: keep trying.
                # Some nats-py errors have no message: name the type.
                log.warning("fetching from pool %s failed: %s", pool, brief(exc))
                slots.give(count)
                http_slots.give(extra)
                try:
                    await asyncio.wait_for(stopping.wait(), timeout=0.5)
                except TimeoutError:
                    pass
                continue
            if msgs:
                http_pool = True
                # What the last delivery says is still pending, once per batch.
                pending.set(msgs[-1].metadata.num_pending)
            for msg in msgs:
                if stopping.is_set():
                    # Fetched while stopping began: give it straight back to another runner.
                    await _nak_quietly(msg)
                    continue
                dispatch = _decoded(msg)
                is_http = dispatch is not None and isinstance(dispatch.spec.executor, HttpExecutor)
                held: Slots
                if is_http and extra:
                    extra -= 1
                    held = http_slots
                elif is_http and http_slots.try_take_one():
                    held = http_slots
                elif count:
                    count -= 1
                    held = slots
                else:
                    await _nak_quietly(msg)
                    http_pool = False
                    continue
                if not is_http:
                    http_pool = False
                task = asyncio.create_task(handler.handle(msg, dispatch), name=f"run-{msg.subject}")
                self._runs.add(task)
                task.add_done_callback(self._runs.discard)
                task.add_done_callback(held.give_one)
            slots.give(count)
            http_slots.give(extra)

    async def _finish_in_flight(self, handler: RunHandler) -> None:
        """Let in-flight runs finish within the grace period; hand the rest back."""
        if not self._runs:
            return
        log.info("waiting up to %.0fs for %d run(s) in flight", self.settings.grace_period, len(self._runs))
        _, late = await asyncio.wait(set(self._runs), timeout=self.settings.grace_period)
        if not late:
            return
        log.warning("handing back %d run(s) that did not finish within the grace period", len(late))
        handler.hand_back_all()
        _, stuck = await asyncio.wait(late, timeout=30.0)
        for task in stuck:
            log.error("run task %s did not stop; cancelling it", task.get_name())
            task.cancel()


def _decoded(msg: Msg) -> RunDispatched | None:
    """The dispatch, or None when it is malformed (the handler reports that)."""
    try:
        return decode_dispatch(msg.data)
    except MalformedEvent:
        return None


async def _nak_quietly(msg: Msg) -> None:
    try:
        await msg.nak()
    except Exception as exc:
        log.warning("nak on stop failed (%s); the message comes back after ack_wait", exc)


def create_service(settings: Settings) -> RunnerService:
    # A wrong allow-list is an operator's error: refuse to start, saying which entry.
    parse_passthrough(settings.job_env_passthrough)
    return RunnerService(settings)
