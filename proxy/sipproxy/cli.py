"""Command line: `sipproxy --config FILE` and `sipproxy db init [--db-url-file FILE] [--table-name NAME]`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sipproxy.supervisor.config import Config, ConfigError, load_config

if TYPE_CHECKING:
    from sipproxy.supervisor.mi.listeners import MiAccess

log = logging.getLogger("sipproxy")


def _run(coro: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


async def serve(config: Config, access: MiAccess) -> int:
    from sipproxy.supervisor.mi.listeners import start_listeners
    from sipproxy.supervisor.mi.methods import make_methods, metrics_text
    from sipproxy.supervisor.supervisor import Supervisor

    sup = Supervisor(config, config.log_level)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        runners = await start_listeners(
            config,
            access,
            make_methods(sup),
            ready=lambda: sup.ready and all(w.alive for w in sup.workers),
            metrics=lambda: metrics_text(sup),
        )
    except OSError as exc:
        log.error("%s", exc)
        return 1
    code = 0
    try:
        starting = loop.create_task(sup.start())
        stopped = loop.create_task(stop.wait())
        await asyncio.wait([starting, stopped], return_when=asyncio.FIRST_COMPLETED)
        if starting.done() and starting.exception() is None:
            log.info(
                "sipproxy ready: %d static sockets, %d workers", len(sup.static_entries()), len(sup.workers)
            )
            await stopped
        elif starting.done():
            log.error("start-up failed: %s", starting.exception())
            code = 1
            stopped.cancel()
        else:
            starting.cancel()
        log.info("stopping")
    finally:
        for runner in runners:
            await runner.cleanup()
        await sup.stop()
    return code


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
