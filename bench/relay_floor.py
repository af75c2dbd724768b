"""The runtime floor: a UDP relay on the same runtime as a sipproxy worker (Python, asyncio on uvloop, one
DatagramProtocol), doing no SIP work at all. What comes from the uas goes to the last client address seen,
everything else goes to the uas. Measured like the proxies (bench/proxy_cpu.py `--with-floor`), it tells how
much of a worker's CPU per call is the event loop and socket calls alone.

    python -m bench.relay_floor --listen 127.0.0.1:5060 --uas 127.0.0.1:5070
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

import uvloop


class Relay(asyncio.DatagramProtocol):
    def __init__(self, uas: tuple[str, int]) -> None:
        self.uas = uas
        self.client: tuple[str, int] | None = None
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        assert self.transport is not None
        if (addr[0], addr[1]) == self.uas:
            if self.client is not None:
                self.transport.sendto(data, self.client)
        else:
            self.client = (addr[0], addr[1])
            self.transport.sendto(data, self.uas)


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def main(listen: tuple[str, int], uas: tuple[str, int]) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    transport, _ = await loop.create_datagram_endpoint(lambda: Relay(uas), local_addr=listen)
    try:
        await stop.wait()
    finally:
        transport.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.relay_floor")
    parser.add_argument("--listen", required=True)
    parser.add_argument("--uas", required=True)
    args = parser.parse_args()
    uvloop.run(main(_hostport(args.listen), _hostport(args.uas)))
