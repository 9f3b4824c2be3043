"""Batch sizes: big batches for small events, bounded memory for output."""

from __future__ import annotations

from cronbus.logs.projector import Pacing, feeds
from cronbus.runner.output import DEFAULT_CHUNK_SIZE
from cronbus.shared.names import Names


def test_a_batch_of_output_chunks_holds_at_most_16_mib():
    pacing = Pacing()
    assert pacing.batch_for("logs") * DEFAULT_CHUNK_SIZE <= 16 * 1024 * 1024


def test_the_other_feeds_take_whole_batches():
    pacing = Pacing()
    kinds = {feed.kind for feed in feeds(Names("t"))} - {"logs"}
    assert kinds == {"jobs", "dispatch", "runs", "audit"}
    assert all(pacing.batch_for(kind) == pacing.batch == 1024 for kind in kinds)


def test_a_smaller_batch_also_bounds_the_output_feed():
    assert Pacing(batch=64).batch_for("logs") == 64
