"""JetStream publishes and reads whose replies all come back to one inbox of the runner's.

A busy runner makes two JetStream requests per run (store `run.started`, store
`run.finished`; a run with history also reads its last event). nats-py's `request` gives each
its own timer (`asyncio.wait_for`), a random token and a JSON parse; here a reply inbox is
numbered, the timeouts of the requests sent within one `TIMEOUT_TICK` share one timer, and the
replies are decoded with msgspec.
"""

from __future__ import annotations

import asyncio
import itertools
import logging

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from cronbus.shared.bus import ApiErrorWire, PubAckWire

log = logging.getLogger(__name__)

# Requests sent within one tick share the timer that ends those still unanswered.
TIMEOUT_TICK = 0.1
NO_RESPONDERS = "503"


class StreamError(Exception):
    """JetStream answered with an error."""

    def __init__(self, code: int, err_code: int | None, description: str) -> None:
        super().__init__(f"{description} (status {code}, error {err_code})")
        self.code = code
        self.err_code = err_code


class MessageNotFound(StreamError):
    pass


class _StoredMessage(msgspec.Struct):
    data: bytes = b""


class _MsgGetReply(msgspec.Struct):
    message: _StoredMessage | None = None
    error: ApiErrorWire | None = None


_pub_ack = msgspec.json.Decoder(PubAckWire)
_msg_get = msgspec.json.Decoder(_MsgGetReply)
_last_by_subject = msgspec.json.Encoder()
# `no message found`, the answer to reading a subject with no messages.
_NO_MESSAGE = 10037
# `wrong last sequence`: a publish's `Nats-Expected-Last-Subject-Sequence` did not hold.
WRONG_LAST_SEQUENCE = 10071


def _raise(error: ApiErrorWire) -> None:
    if error.err_code == _NO_MESSAGE:
        raise MessageNotFound(error.code, error.err_code, error.description)
    raise StreamError(error.code, error.err_code, error.description)


class StreamClient:
    """Stores messages (waiting for their PubAck) and reads a subject's last message.

    `open()` before use, `close()` after; every wait ends after `timeout` seconds at most
    (plus one tick) with `nats.errors.TimeoutError`.
    """

    def __init__(self, nc: NATS, *, timeout: float = 5.0, api_prefix: str = "$JS.API") -> None:
        self.nc = nc
        self.timeout = timeout
        self.api_prefix = api_prefix
        self._inbox = ""
        self._numbers = itertools.count()
        self._waiting: dict[str, asyncio.Future[Msg]] = {}
        # Reply subjects by the tick whose timer ends their wait.
        self._ticks: dict[int, list[str]] = {}
        self._sub: Subscription | None = None

    async def open(self) -> None:
        self._inbox = self.nc.new_inbox() + "."
        self._sub = await self.nc.subscribe(self._inbox + "*", cb=self._on_reply)

    async def close(self) -> None:
        for tick in list(self._ticks):
            self._expire(tick)
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception as exc:
                log.debug("unsubscribe on stop: %s", exc)
            self._sub = None

    async def publish(
        self, subject: str, payload: bytes, headers: dict[str, str] | None = None
    ) -> PubAckWire:
        """Store a message; its PubAck once it says the message is stored (`duplicate` when
        a message with its `Nats-Msg-Id` already was)."""
        reply = await self._request(subject, payload, headers)
        ack = _pub_ack.decode(reply.data)
        if ack.error is not None:
            _raise(ack.error)
        return ack

    async def last_message(self, stream: str, subject: str) -> bytes | None:
        """The data of the last message on `subject` in `stream`, None when it has none."""
        request = _last_by_subject.encode({"last_by_subj": subject})
        reply = await self._request(f"{self.api_prefix}.STREAM.MSG.GET.{stream}", request, None)
        answer = _msg_get.decode(reply.data)
        if answer.error is not None:
            if answer.error.err_code == _NO_MESSAGE:
                return None
            _raise(answer.error)
        assert answer.message is not None
        return answer.message.data

    async def _request(self, subject: str, payload: bytes, headers: dict[str, str] | None) -> Msg:
        if self._sub is None:
            raise RuntimeError("StreamClient.open() was not called")
        reply = f"{self._inbox}{next(self._numbers)}"
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Msg] = loop.create_future()
        self._waiting[reply] = future
        try:
            self._expire_at(loop, reply)
            await self.nc.publish(subject, payload, reply=reply, headers=headers)
            msg = await future
        finally:
            self._waiting.pop(reply, None)
        if msg.headers and msg.headers.get("Status") == NO_RESPONDERS:
            raise nats.errors.NoRespondersError
        return msg

    def _expire_at(self, loop: asyncio.AbstractEventLoop, reply: str) -> None:
        tick = int((loop.time() + self.timeout) / TIMEOUT_TICK) + 1
        due = self._ticks.get(tick)
        if due is None:
            due = self._ticks[tick] = []
            loop.call_at(tick * TIMEOUT_TICK, self._expire, tick)
        due.append(reply)

    def _expire(self, tick: int) -> None:
        for reply in self._ticks.pop(tick, ()):
            future = self._waiting.get(reply)
            if future is not None and not future.done():
                future.set_exception(nats.errors.TimeoutError())

    async def _on_reply(self, msg: Msg) -> None:
        future = self._waiting.get(msg.subject)
        if future is not None and not future.done():
            future.set_result(msg)
