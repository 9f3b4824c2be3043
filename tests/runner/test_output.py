"""The pure output chunker: order, sequence numbers, chunk sizes, the cap and its marker."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from cronbus.runner.output import Chunker, truncation_marker

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
