"""StreamClient against a real nats-server: PubAcks, last-message reads, errors, timeouts."""

from __future__ import annotations

import nats.errors
import pytest

from cronbus.runner.streams import WRONG_LAST_SEQUENCE, StreamClient, StreamError
from cronbus.shared.bus import EXPECTED_LAST_SUBJECT_SEQ, MSG_ID, Bus
from cronbus.shared.settings import Settings


async def test_publishes_are_stored_and_the_last_message_of_a_subject_is_read(settings: Settings):
    bus = await Bus.open(settings, "test")
    streams = StreamClient(bus.nc)
    await streams.open()
    try:
        names = settings.names
        subject = names.run_subject("job-1", "run-1")
        assert await streams.last_message(names.runs_stream, subject) is None
        first = await streams.publish(subject, b"one", {MSG_ID: "m1", EXPECTED_LAST_SUBJECT_SEQ: "0"})
        second = await streams.publish(subject, b"two", {MSG_ID: "m2"})
        assert second.seq > first.seq
        assert not first.duplicate and not second.duplicate
        # A second copy of a stored message id is acknowledged, not stored again.
        again = await streams.publish(subject, b"two again", {MSG_ID: "m2"})
        assert (again.seq, again.duplicate) == (second.seq, True)
        assert await streams.last_message(names.runs_stream, subject) == b"two"
        stored = await bus.js.get_msg(names.runs_stream, second.seq)
        assert stored.data == b"two"
        # "Only as the subject's first message" is refused once the subject has one.
        with pytest.raises(StreamError) as refused:
            await streams.publish(subject, b"three", {MSG_ID: "m3", EXPECTED_LAST_SUBJECT_SEQ: "0"})
        assert refused.value.err_code == WRONG_LAST_SEQUENCE
    finally:
        await streams.close()
        await bus.close()


async def test_errors_and_silence_are_raised(settings: Settings):
    bus = await Bus.open(settings, "test")
    streams = StreamClient(bus.nc, timeout=0.3)
    await streams.open()
    silent = await bus.nc.subscribe("quiet.subject")
    try:
        names = settings.names
        with pytest.raises(StreamError, match="expected stream"):
            await streams.publish(
                names.run_subject("job-1", "run-1"), b"x", {"Nats-Expected-Stream": "NO_SUCH"}
            )
        with pytest.raises(nats.errors.NoRespondersError):
            await streams.publish("no.stream.here", b"x")
        with pytest.raises(StreamError):
            await streams.last_message("NO_SUCH_STREAM", "any")
        # A responder that never answers: the wait ends with the timeout.
        with pytest.raises(nats.errors.TimeoutError):
            await streams.publish("quiet.subject", b"x")
    finally:
        await silent.unsubscribe()
        await streams.close()
        await bus.close()
