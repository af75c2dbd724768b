"""A worker process: `python -m sipproxy.worker --control-fd N` (the supervisor starts it so).

A worker of a UDP pool also gets `--udp-pool RECRUIT_FD,HEARTBEAT_FD --pool-member I` and runs asyncio's
own event loop on a `PoolSelector` (udp_loop.py: one datagram wakes one worker); the others run uvloop."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys

from sipproxy.shared.channel import Channel
from sipproxy.shared.control import decode_command
from sipproxy.shared.fdlimit import raise_fd_limit
from sipproxy.shared.udp_pool import PoolFds
from sipproxy.worker.udp_loop import PoolEventLoop, PoolSelector, PoolState
from sipproxy.worker.worker import Worker


async def amain(
    control_fd: int, name: str, index: int, relay_prefix: str, selector: PoolSelector | None
) -> None:
    sock = socket.socket(fileno=control_fd)
    channel = Channel(sock, decode_command)
    worker = Worker(channel, name, index, relay_prefix, selector)
    loop = asyncio.get_running_loop()
    task = loop.create_task(worker.run())
    # SIGTERM to the whole group (e.g. a terminal's ^C or a kill of the group): stop like on Stop.
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        await worker.shutdown()
    channel.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sipproxy-worker")
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--name", default="worker")
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--relay-prefix", default=f"sipproxy-{os.getppid()}")
    parser.add_argument("--udp-pool", type=PoolFds.from_arg, help="RECRUIT_FD,HEARTBEAT_FD of its UDP pool")
    parser.add_argument("--pool-member", type=int, default=0, help="its place in the pool (0: always serves)")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format=f"%(asctime)s {args.name}[%(process)d] %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when workers stop
    raise_fd_limit()
    # Development aid: SIPPROXY_PROFILE_DIR=/dir writes a cProfile file per worker when it stops.
    profile_dir = os.environ.get("SIPPROXY_PROFILE_DIR")
    profiler = None
    if profile_dir:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    if args.udp_pool is not None:
        member = args.pool_member
        selector = PoolSelector(PoolState(args.udp_pool), always_active=member == 0, watches=member in (1, 2))
        with asyncio.Runner(loop_factory=lambda: PoolEventLoop(selector)) as runner:
            runner.run(amain(args.control_fd, args.name, args.index, args.relay_prefix, selector))
    else:
        try:
            import uvloop

            uvloop.run(amain(args.control_fd, args.name, args.index, args.relay_prefix, None))
        except ImportError:
            asyncio.run(amain(args.control_fd, args.name, args.index, args.relay_prefix, None))
    if profiler is not None and profile_dir:
        profiler.disable()
        profiler.dump_stats(os.path.join(profile_dir, f"worker-{args.index}-{os.getpid()}.prof"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
