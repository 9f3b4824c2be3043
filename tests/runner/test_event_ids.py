"""The runner's event ids: the form of `new_event_id()`'s, and distinct."""

from __future__ import annotations

import uuid

from cronbus.runner.runs import event_id
from cronbus.shared.events import new_event_id


def test_event_ids_are_random_version_4_uuids_like_the_shared_ones():
    ids = [event_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    for one in ids[:100]:
        parsed = uuid.UUID(hex=one)
        assert (parsed.version, parsed.variant, parsed.hex) == (4, uuid.RFC_4122, one)
    shared = new_event_id()
    assert (len(shared), uuid.UUID(hex=shared).version) == (len(ids[0]), 4)
