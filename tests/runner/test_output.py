"""The output chunker (order, sequence numbers, chunk sizes, the cap and its marker) and where
LiveOutput puts an attempt's output: inline in its outcome, or on LOGS."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cronbus.runner.output import Chunk, Chunker, LiveOutput, truncation_marker

writes = st.lists(st.tuples(st.sampled_from(["stdout", "stderr"]), st.binary(max_size=300)), max_size=40)


@given(writes=writes, cap=st.integers(0, 2000), chunk_size=st.integers(1, 256), takes=st.integers(1, 5))
def test_chunks_keep_order_and_the_cap(writes, cap, chunk_size, takes):
    chunker = Chunker(cap=cap, chunk_size=chunk_size)
    chunks = []
    for i, (stream, data) in enumerate(writes):
        chunker.add(stream, data)
        if i % takes == 0:
            chunks.extend(chunker.take())
    chunks.extend(chunker.take())
    produced = b"".join(d for _, d in writes)
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    assert all(0 < len(c.data) <= chunk_size for c in chunks)
    kept = b"".join(c.data for c in chunks if c.stream != "system")
    assert kept == produced[:cap]
    assert chunker.total_bytes == len(produced)
    assert chunker.truncated == (len(produced) > cap)
    system = b"".join(c.data for c in chunks if c.stream == "system")
    assert system == (truncation_marker(cap) if len(produced) > cap else b"")


def test_notes_are_system_lines_outside_the_cap():
    chunker = Chunker(cap=3, chunk_size=1000)
    chunker.add("stdout", b"abcdef")
    chunker.note("hello")
    chunks = chunker.take()
    assert [(c.stream, c.data) for c in chunks] == [
        ("stdout", b"abc"),
        ("system", truncation_marker(3) + b"hello\n"),
    ]


class Recorder:
    """A LiveOutput publisher that keeps what it is given."""

    def __init__(self) -> None:
        self.published: list[Chunk] = []

    async def __call__(self, chunks: list[Chunk]) -> None:
        self.published.extend(chunks)


async def test_short_output_of_an_attempt_stays_inline_and_nothing_is_published():
    recorder = Recorder()
    async with LiveOutput(recorder, Chunker(cap=100), inline_limit=300) as output:
        await output.note("HTTP 200 OK")
        await output.write("stderr", b"e")
        await output.write("stdout", b"x" * 200)
    assert recorder.published == []
    assert output.inline is not None
    streams = [(c.seq, c.stream) for c in output.inline]
    assert streams == [(0, "system"), (1, "stderr"), (2, "stdout"), (3, "system")]
    # What is counted against the limit is what would be stored: capped, with notes and marker.
    stored = len(b"HTTP 200 OK\n") + 100 + len(truncation_marker(100))
    assert sum(len(c.data) for c in output.inline) == stored


async def test_output_over_the_inline_limit_all_goes_to_logs():
    recorder = Recorder()
    async with LiveOutput(recorder, Chunker(), inline_limit=10) as output:
        await output.write("stdout", b"x" * 11)
    assert output.inline is None
    assert b"".join(c.data for c in recorder.published) == b"x" * 11


async def test_output_at_the_inline_limit_stays_inline():
    recorder = Recorder()
    async with LiveOutput(recorder, Chunker(), inline_limit=10) as output:
        await output.write("stdout", b"x" * 10)
    assert recorder.published == []
    assert output.inline is not None and b"".join(c.data for c in output.inline) == b"x" * 10


async def test_once_some_output_was_published_the_rest_follows_it_to_logs():
    recorder = Recorder()
    async with LiveOutput(recorder, Chunker(), inline_limit=1000) as output:
        await output.write("stdout", b"first ")
        await output.flush()
        await output.write("stdout", b"second")
    assert output.inline is None
    assert [(c.seq, c.data) for c in recorder.published] == [(0, b"first "), (1, b"second")]


async def test_the_output_of_an_attempt_that_broke_off_is_published():
    recorder = Recorder()
    output = LiveOutput(recorder, Chunker(), inline_limit=1000)

    async def broken_attempt() -> None:
        async with output:
            await output.write("stdout", b"partial")
            raise RuntimeError("broke")

    with pytest.raises(RuntimeError):
        await broken_attempt()
    assert output.inline is None
    assert b"".join(c.data for c in recorder.published) == b"partial"
