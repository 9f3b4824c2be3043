"""The JOBS feed reads a delivery's place from its reply subject as nats-py's metadata does."""

from __future__ import annotations

import pytest
from nats.aio.msg import Msg

from cronbus.scheduler.feed import delivery_place

REPLIES = [
    # The form older servers send, and the one with <domain>.<account hash> and a last token.
    "$JS.ACK.P_JOBS.cons.1.4711.12.1767225600000000000.3",
    "$JS.ACK.hub.ACCHASH.P_JOBS.cons.2.4711.13.1767225600000000000.0.rnd",
    "$JS.ACK._.ACCHASH.P_JOBS.cons.1.99.1.1767225600000000000.250000",
]


@pytest.mark.parametrize("reply", REPLIES)
def test_the_place_is_what_nats_py_reads(reply: str) -> None:
    msg = Msg(_client=None, subject="p.job.a", reply=reply, data=b"{}")  # type: ignore[arg-type]
    meta = msg.metadata
    assert delivery_place(msg) == (meta.sequence.stream, meta.num_pending)
