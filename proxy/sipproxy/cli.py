"""Command line: `sipproxy --config FILE` and `sipproxy db init [--db-url-file FILE] [--table-name NAME]`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sipproxy.supervisor.config import Config, ConfigError, load_config

if TYPE_CHECKING:
    from sipproxy.supervisor.handover import HandoverServer, Predecessor
    from sipproxy.supervisor.mi.listeners import MiAccess, MiListeners
    from sipproxy.supervisor.supervisor import Supervisor

log = logging.getLogger("sipproxy")


def _run(coro: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


async def serve(config: Config, access: MiAccess) -> int:
    from sipproxy.supervisor import handover
    from sipproxy.supervisor.mi.listeners import MiListeners
    from sipproxy.supervisor.mi.methods import make_methods, metrics_text
    from sipproxy.supervisor.supervisor import Supervisor

    # With handover, the older proxy of the fleet on this host (if any) hands its sockets over: they are
    # taken instead of bound, and its MI and metrics listeners once this proxy serves every socket.
    predecessor = None
    if config.handover is not None:
        predecessor = await handover.find_predecessor(config.handover.name)
    sup = Supervisor(config, config.log_level, predecessor)
    server: handover.HandoverServer | None = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def serving() -> bool:
        return sup.ready and all(w.alive for w in sup.workers)

    def ready() -> bool:
        # /readyz: a proxy that handed its sockets to a successor answers not ready (unless the successor
        # dies), so that HTTP probes of the successor, which reach this proxy's metrics port until it lets go
        # of it, never report the successor ready too early. The ready file is per process (`serving`).
        handing_over = server is not None and server.attached
        return serving() and not handing_over

    listeners = MiListeners(config, access, make_methods(sup), ready, lambda: metrics_text(sup))
    if predecessor is None:
        try:
            await listeners.start()
        except OSError as exc:
            log.error("%s", exc)
            return 1
    code = 0
    tasks: list[asyncio.Task[None]] = []
    if config.ready_file is not None:
        # A file left by a previous run (killed before it could remove it) must not say ready meanwhile.
        _set_ready_file(config.ready_file, False)
        tasks.append(loop.create_task(_keep_ready_file(config.ready_file, serving)))
    try:
        starting = loop.create_task(sup.start())
        stopped = loop.create_task(stop.wait())
        await asyncio.wait([starting, stopped], return_when=asyncio.FIRST_COMPLETED)
        if starting.done() and starting.exception() is None:
            if config.handover is not None:
                server = await _take_over(config.handover.name, sup, listeners, predecessor, stop, tasks)
            if server is not None or config.handover is None:
                log.info(
                    "sipproxy ready: %d static sockets, %d workers",
                    len(sup.static_entries()),
                    len(sup.workers),
                )
                await stopped
            else:
                code = 1
                stopped.cancel()
        elif starting.done():
            log.error("start-up failed: %s", starting.exception())
            code = 1
            stopped.cancel()
        else:
            starting.cancel()
        log.info("stopping")
    finally:
        for task in tasks:
            task.cancel()
        if config.ready_file is not None:
            _set_ready_file(config.ready_file, False)
        if server is not None:
            await server.close()
        await listeners.stop()
        await sup.stop()
        if predecessor is not None:
            # Last: the predecessor (if still there) takes its MI and metrics ports back when this closes.
            predecessor.close()
    return code


def _set_ready_file(path: str, ready: bool) -> None:
    try:
        if ready:
            with open(path, "w") as f:
                f.write("ready\n")
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.error("ready_file %s: %s", path, exc)


async def _keep_ready_file(path: str, serving: Callable[[], bool]) -> None:
    """The file exists while the proxy serves every socket (checked twice a second)."""
    state: bool | None = None
    while True:
        now = serving()
        if now != state:
            _set_ready_file(path, now)
            state = now
        await asyncio.sleep(0.5)


async def _take_over(
    name: str,
    sup: Supervisor,
    listeners: MiListeners,
    predecessor: Predecessor | None,
    stop: asyncio.Event,
    tasks: list[asyncio.Task[None]],
) -> HandoverServer | None:
    """Every socket is served: take the predecessor's MI and metrics listeners (if there is one), then serve
    successors. None when the MI cannot listen (start-up failed)."""
    from sipproxy.supervisor import handover

    if predecessor is not None:
        await predecessor.release()
        try:
            await listeners.start(predecessor.take_listeners)
        except OSError as exc:
            log.error("%s", exc)
            return None
        predecessor.close_unused_listeners()

        async def predecessor_gone(pred: Predecessor) -> None:
            await pred.until_gone()
            log.info(
                "handover %s: predecessor pid %d is stopping; the sockets are ours alone", name, pred.pid
            )

        tasks.append(asyncio.get_running_loop().create_task(predecessor_gone(predecessor)))
    listener = None
    if predecessor is not None:
        listener, predecessor.handover = predecessor.handover, None
    if listener is None:
        try:
            listener = handover.bind_handover(name)
        except OSError as exc:
            # Someone else holds the name (and was refused above): this proxy serves, but cannot hand over.
            log.error("handover %s: cannot listen for a successor: %s", name, exc)

    async def reclaim() -> None:
        while not stop.is_set():
            try:
                await listeners.start()
                log.info("handover %s: MI and metrics listeners taken back", name)
                return
            except OSError as exc:  # the successor's process still holds them for a moment
                log.warning("handover %s: cannot take the MI and metrics listeners back yet: %s", name, exc)
                await asyncio.sleep(0.5)

    def offer() -> list[tuple[handover.Offered, socket.socket]]:
        return handover.sip_offer(sup.open_sockets()) + handover.listener_offer(listeners.sockets, listener)

    server = handover.HandoverServer(name, listener, handover.Holder(offer, listeners.stop, reclaim))
    server.start()
    return server


async def db_init(db_url: str, table_name: str, tls_table_name: str = "tls_mgm") -> int:
    from sipproxy.shared.schema import init_db
    from sipproxy.shared.tls_table import init_tls_mgm
    from sipproxy.supervisor.db_reader import make_engine

    engine = make_engine(db_url)
    try:
        created = await init_db(engine, table_name)
        tls_created = await init_tls_mgm(engine, tls_table_name)
    finally:
        await engine.dispose()
    print(f"sipproxy db init: {'created' if created else 'already present'} ({table_name}, version)")
    print(f"sipproxy db init: {'created' if tls_created else 'already present'} ({tls_table_name}, version)")
    return 0


DB_URL_ENV = "SIPSOCKETS_DB_URL"
DB_URL_FILE_ENV = "SIPSOCKETS_DB_URL_FILE"


def db_url_from(url: str | None, url_file: str | None, environ: Mapping[str, str]) -> str:
    """The db_url of `sipproxy db init`: --db-url, else --db-url-file, else SIPSOCKETS_DB_URL, else the file
    SIPSOCKETS_DB_URL_FILE names (the operator's variables). Raises ValueError naming the problem.

    A URL on the command line is readable by every local user (/proc/PID/cmdline) and carries the database
    password: pods read it from a mounted Secret file instead."""
    if url:
        return url
    source = "--db-url-file"
    if not url_file:
        if environ.get(DB_URL_ENV):
            return environ[DB_URL_ENV]
        url_file, source = environ.get(DB_URL_FILE_ENV), DB_URL_FILE_ENV
    if not url_file:
        raise ValueError(f"a database URL is required: --db-url-file FILE, {DB_URL_FILE_ENV}, {DB_URL_ENV}")
    try:
        text = Path(url_file).read_text().strip()
    except OSError as exc:
        raise ValueError(f"{source}: cannot read {url_file}: {exc.strerror or exc}") from None
    if not text:
        raise ValueError(f"{source}: {url_file} is empty")
    return text


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["db"]:
        parser = argparse.ArgumentParser(prog="sipproxy db")
        sub = parser.add_subparsers(dest="command", required=True)
        init = sub.add_parser(
            "init",
            help="create the sockets, tls_mgm and version tables when missing",
            description="Create the sockets, tls_mgm and version tables when missing (never alters existing "
            "ones). "
            f"The database URL comes from --db-url-file, or the environment: {DB_URL_ENV} (the URL) or "
            f"{DB_URL_FILE_ENV} (a file holding it, e.g. a mounted Secret).",
        )
        source = init.add_mutually_exclusive_group()
        source.add_argument(
            "--db-url-file",
            metavar="FILE",
            help=f"file holding the OpenSIPS-style db_url [env {DB_URL_FILE_ENV}]",
        )
        source.add_argument(
            "--db-url",
            metavar="URL",
            help=f"OpenSIPS-style db_url; local use only, as a command line is public [env {DB_URL_ENV}]",
        )
        init.add_argument("--table-name", metavar="NAME", default="sockets", help="default: sockets")
        init.add_argument(
            "--tls-table-name",
            metavar="NAME",
            default="tls_mgm",
            help="the TLS domains table; default: tls_mgm",
        )
        args = parser.parse_args(argv[1:])
        try:
            db_url = db_url_from(args.db_url, args.db_url_file, os.environ)
            return _run(db_init(db_url, args.table_name, args.tls_table_name))
        except ValueError as exc:
            print(f"sipproxy db init: {exc}", file=sys.stderr)
            return 2
        except Exception as exc:
            print(f"sipproxy db init: cannot initialise the database: {exc}", file=sys.stderr)
            return 1
    parser = argparse.ArgumentParser(prog="sipproxy", description="asyncio SIP proxy with runtime sockets")
    parser.add_argument("--config", required=True, help="YAML config file")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        from sipproxy.supervisor.mi.listeners import load_access

        access = load_access(config)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s supervisor[%(process)d] %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from sipproxy.shared.fdlimit import raise_fd_limit

    raise_fd_limit()
    return _run(serve(config, access))


if __name__ == "__main__":
    sys.exit(main())
