"""The benchmarks' HTTP receiver: counts each request once, however the bytes arrive."""

from __future__ import annotations

import asyncio

import httpx

from tests.bench.seed import Receiver


async def test_the_receiver_counts_keep_alive_pipelined_and_split_requests():
    receiver = Receiver()
    server = await asyncio.get_running_loop().create_server(receiver.connection, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            for i in (1, 2, 2):
                answer = await client.post(f"/hit/{i}", content=b"{}")
                assert (answer.status_code, answer.text) == (200, "ok")
            assert (await client.get("/other")).status_code == 200

        # Two requests in one write, then one split inside its headers and inside its body.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        one = b"POST /hit/7 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
        writer.write(one + one.replace(b"/7", b"/8"))
        writer.write(one[:20])
        await writer.drain()
        writer.write(one[20:-1])
        await writer.drain()
        writer.write(one[-1:])
        await writer.drain()
        answers = b""
        while answers.count(b"HTTP/1.1 200 OK") < 3:
            answers += await asyncio.wait_for(reader.read(4096), timeout=5)
        writer.close()
    finally:
        server.close()
    assert {i: len(times) for i, times in receiver.hits.items()} == {1: 1, 2: 2, 7: 2, 8: 1}
