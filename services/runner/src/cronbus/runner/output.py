"""A run's output on its way to the LOGS stream: masked, capped, cut into chunks, flushed live.

`Chunker` is the pure part (secret masking, cap, ordering, sequence numbers); `LiveOutput`
drives it: it publishes as soon as `chunk_size` bytes are pending, and otherwise at most
`interval` seconds after the first pending byte, but never sooner than `interval` after the
run began or after the last publish. So a quiet job's lines appear within `interval`, a chatty
job's output is batched, and a run that ends within `interval` (a typical HTTP call)
publishes all its output once, at the end. The chunks of one publish go out pipelined.

An attempt that ends before any of its output was published, with at most `inline_limit`
bytes of it left, publishes none: `LiveOutput.inline` holds its chunks for the attempt's
`run.finished` (one event instead of a chunk and an outcome). So an attempt's output is
either all inline or all on LOGS, never split.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from cronbus.runner.masking import Masker
from cronbus.shared.events import INLINE_OUTPUT_LIMIT, OutputStream

log = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 64 * 1024
DEFAULT_OUTPUT_CAP = 10 * 1024 * 1024
DEFAULT_FLUSH_INTERVAL = 0.1


@dataclass(frozen=True, slots=True)
class Chunk:
    seq: int
    stream: OutputStream
    data: bytes


def truncation_marker(cap: int) -> bytes:
    return (
        f"\n[cronbus: output truncated after {cap} bytes; the rest of this run's output was "
        "discarded (raise CRONBUS_OUTPUT_CAP to keep more)]\n"
    ).encode()


class Chunker:
    """Collects a run's output in order, masks `secrets` in it, keeps at most `cap` bytes of it,
    and cuts chunks. `finish()` releases what masking kept back once the output has ended."""

    def __init__(
        self,
        *,
        cap: int = DEFAULT_OUTPUT_CAP,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        secrets: Sequence[str] = (),
    ) -> None:
        self.cap = cap
        self.chunk_size = chunk_size
        self._secrets = tuple(secrets)
        self._maskers: dict[OutputStream, Masker] = {}
        self.next_seq = 0
        # Everything the job wrote, kept or not.
        self.total_bytes = 0
        self.kept_bytes = 0
        self.truncated = False
        self._pending: list[tuple[OutputStream, bytearray]] = []
        self.pending_bytes = 0

    def add(self, stream: OutputStream, data: bytes) -> None:
        """Job output: masked, kept up to the cap; past it only counted, after one truncation
        marker. `total_bytes` counts what the job wrote; the cap applies to what is kept."""
        self.total_bytes += len(data)
        if self._secrets:
            data = self._masker(stream).feed(data)
        self._keep(stream, data)

    def finish(self) -> None:
        """The output has ended: what masking kept back (a possible start of a secret) goes out."""
        for stream, masker in self._maskers.items():
            self._keep(stream, masker.finish())

    def _masker(self, stream: OutputStream) -> Masker:
        masker = self._maskers.get(stream)
        if masker is None:
            masker = self._maskers[stream] = Masker(self._secrets)
        return masker

    def _keep(self, stream: OutputStream, data: bytes) -> None:
        room = self.cap - self.kept_bytes
        if room >= len(data):
            self._append(stream, data)
            self.kept_bytes += len(data)
            return
        if room > 0:
            self._append(stream, data[:room])
            self.kept_bytes += room
        if not self.truncated:
            self.truncated = True
            self._append("system", truncation_marker(self.cap))

    def note(self, text: str) -> None:
        """A message from cronbus itself (stream `system`); not counted against the cap."""
        data = text.encode() if text.endswith("\n") else (text + "\n").encode()
        self._append("system", self._masker("system").mask(data) if self._secrets else data)

    @property
    def full(self) -> bool:
        return self.pending_bytes >= self.chunk_size

    def take(self) -> list[Chunk]:
        """Everything pending, as chunks of at most `chunk_size` bytes, numbered in order."""
        chunks: list[Chunk] = []
        for stream, data in self._pending:
            for start in range(0, len(data), self.chunk_size):
                chunks.append(Chunk(self.next_seq, stream, bytes(data[start : start + self.chunk_size])))
                self.next_seq += 1
        self._pending.clear()
        self.pending_bytes = 0
        return chunks

    def _append(self, stream: OutputStream, data: bytes) -> None:
        if not data:
            return
        if self._pending and self._pending[-1][0] == stream:
            self._pending[-1][1].extend(data)
        else:
            self._pending.append((stream, bytearray(data)))
        self.pending_bytes += len(data)


class LiveOutput:
    """Publishes a Chunker's chunks in order while the run goes on. Use as an async context.

    A timer, not a task, waits for the window: a run that ends within it costs no extra task.
    """

    def __init__(
        self,
        publish: Callable[[list[Chunk]], Awaitable[None]],
        chunker: Chunker,
        *,
        interval: float = DEFAULT_FLUSH_INTERVAL,
        inline_limit: int = INLINE_OUTPUT_LIMIT,
    ) -> None:
        self._publish = publish
        self.chunker = chunker
        self._interval = interval
        self._inline_limit = inline_limit
        # Set before the first publish is tried: a failed one may still have stored chunks.
        self.published = False
        # After `close()`: the whole output, when it goes inline instead of to LOGS.
        self.inline: list[Chunk] | None = None
        self._lock = asyncio.Lock()
        self._last_flush = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timed_flush: asyncio.Task[None] | None = None
        self._closed = False

    async def __aenter__(self) -> LiveOutput:
        # The first output waits for the window too: a short run publishes once, at its end.
        self._last_flush = asyncio.get_running_loop().time()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        # An attempt that broke off has no `run.finished` of this runner to carry its output.
        await self.close(inline=exc_type is None)

    async def write(self, stream: OutputStream, data: bytes) -> None:
        """Job output. Awaits a publish when a chunk is full, which slows a fast writer down."""
        self.chunker.add(stream, data)
        if self.chunker.full:
            await self.flush()
        else:
            self._schedule()

    async def note(self, text: str) -> None:
        self.chunker.note(text)
        self._schedule()

    async def flush(self) -> None:
        async with self._lock:
            chunks = self.chunker.take()
            if chunks:
                self.published = True
                await self._publish(chunks)
            self._last_flush = asyncio.get_running_loop().time()

    async def close(self, *, inline: bool = True) -> None:
        """Stop the timer and publish what is left, or keep it in `inline` when nothing was
        published and it is small enough (never raises: the run's outcome comes next)."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._timed_flush is not None:
            # Let a flush under way finish (its publisher is bounded), so no chunk is lost.
            await asyncio.wait({self._timed_flush})
        self.chunker.finish()
        if inline and not self.published and self.chunker.pending_bytes <= self._inline_limit:
            self.inline = self.chunker.take()
            return
        try:
            await self.flush()
        except Exception:
            # The publisher already retried. The work is done: losing the end of its output must
            # not make the run go back to the pool and run again.
            log.exception("publishing the last output failed")

    def _schedule(self) -> None:
        """Publish what is pending at the end of the window (now, if it is already over)."""
        if self._closed or self._timer is not None or self._timed_flush is not None:
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, self._last_flush + self._interval - loop.time())
        self._timer = loop.call_later(delay, self._start_timed_flush)

    def _start_timed_flush(self) -> None:
        self._timer = None
        self._timed_flush = asyncio.create_task(self._flush_on_time(), name="output-flush")

    async def _flush_on_time(self) -> None:
        try:
            await self.flush()
        except Exception:
            # The publisher already retried; the job keeps running and the next flush tries
            # again with whatever is pending then.
            log.exception("publishing output failed")
        finally:
            self._timed_flush = None
        if self.chunker.pending_bytes:
            # Output that came while this flush was publishing.
            self._schedule()
