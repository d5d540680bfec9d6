"""``python -m bench.relay TARGET:PORT DELAY_MS``: a TCP relay that delays every chunk.

The host-count benchmark's stand-in for ``tc netem`` on kernels without the netem qdisc:
it listens on 127.0.0.1 (a free port, printed as the first line on stdout), forwards each
connection to ``TARGET:PORT`` and holds every chunk it reads for ``DELAY_MS`` before
passing it on, in both directions, so each round trip through it takes ``2 x DELAY_MS``
longer — what a delay on both ends of a link does. Chunks keep their order and are not
throttled: only latency is added.

Only loopback and the testbed's own 198.18.0.0/15 may be targets (DESIGN.md §8).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import sys
from collections.abc import Awaitable, Callable

LISTEN = "127.0.0.1"
CHUNK = 65536
ALLOWED = (ipaddress.ip_network("198.18.0.0/15"), ipaddress.ip_network("127.0.0.0/8"))

Queue = asyncio.Queue[tuple[float, bytes]]


def check_target(address: str) -> None:
    """Refuse any target outside loopback and the testbed's range (names included)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise SystemExit(f"relay target {address!r}: give an IPv4 address, not a name") from None
    if not any(ip in network for network in ALLOWED):
        raise SystemExit(f"relay target {address}: only 127.0.0.0/8 and 198.18.0.0/15 are allowed")


async def _read(reader: asyncio.StreamReader, queue: Queue, delay: float) -> None:
    """Queue every chunk with the time it may be passed on; an empty chunk marks the end."""
    loop = asyncio.get_running_loop()
    try:
        while data := await reader.read(CHUNK):
            queue.put_nowait((loop.time() + delay, data))
    except OSError:
        pass
    queue.put_nowait((loop.time() + delay, b""))


async def _write(writer: asyncio.StreamWriter, queue: Queue) -> None:
    """Pass each chunk on once its delay is over; at the end, half-close the other side."""
    loop = asyncio.get_running_loop()
    while True:
        due, data = await queue.get()
        wait = due - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        if not data:
            with contextlib.suppress(OSError):
                if writer.can_write_eof():
                    writer.write_eof()
            return
        writer.write(data)
        try:
            await writer.drain()
        except OSError:
            return


async def _direction(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float
) -> None:
    queue: Queue = asyncio.Queue()
    await asyncio.gather(_read(reader, queue, delay), _write(writer, queue))


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _handler(target: str, port: int, delay: float) -> Handler:
    """A connection handler that relays to ``target:port`` with ``delay`` each way."""

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(target, port)
        except OSError:
            client_w.close()
            return
        try:
            await asyncio.gather(
                _direction(client_r, server_w, delay), _direction(server_r, client_w, delay)
            )
        finally:
            for writer in (client_w, server_w):
                writer.close()

    return handle


async def serve(target: str, port: int, delay: float) -> None:
    """Listen on a free loopback port, print it, relay until killed."""
    server = await asyncio.start_server(_handler(target, port, delay), LISTEN, 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str]) -> int:
    """Parse ``TARGET:PORT DELAY_MS`` and relay."""
    if len(argv) != 2 or ":" not in argv[0]:
        print("usage: python -m bench.relay TARGET:PORT DELAY_MS", file=sys.stderr)
        return 2
    address, _, port = argv[0].rpartition(":")
    check_target(address)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(address, int(port), int(argv[1]) / 1000))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
