"""The status values services keep in KV, as other versions of them read them."""

from __future__ import annotations

from cronbus.shared.status import decode_runner_presence


def test_a_presence_from_before_the_slot_counts_still_reads() -> None:
    """Runners of an earlier version publish no `slots`/`http_slots`: an API of this version
    reads their presence with 0 for both instead of failing on the whole list."""
    older = (
        b'{"id":"r1","host":"h","pid":7,"pools":["default"],"running":2,"capacity":8,'
        b'"version":"0.1.0","started_at":"2026-12-01T00:00:00Z","updated_at":"2026-12-01T00:00:01Z"}'
    )
    presence = decode_runner_presence(older)
    assert (presence.running, presence.capacity, presence.slots, presence.http_slots) == (2, 8, 0, 0)
