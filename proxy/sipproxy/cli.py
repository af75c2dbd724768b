"""Command line: `sipproxy --config FILE` and `sipproxy db init --db-url URL [--table-name sockets]`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Coroutine
from typing import Any

from sipproxy.supervisor.config import Config, ConfigError, load_config

log = logging.getLogger("sipproxy")


def _run(coro: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


async def serve(config: Config, token: str | None) -> int:
    from sipproxy.supervisor.mi.methods import make_methods, metrics_text
    from sipproxy.supervisor.mi.server import make_app
    from sipproxy.supervisor.mi.server import serve as serve_mi
    from sipproxy.supervisor.supervisor import Supervisor

    sup = Supervisor(config, config.log_level)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    app = make_app(
        config.mi.root,
        make_methods(sup),
        token,
        ready=lambda: sup.ready and all(w.alive for w in sup.workers),
        metrics=lambda: metrics_text(sup),
    )
    try:
        runner = await serve_mi(app, config.mi.listen_host, config.mi.listen_port)
    except OSError as exc:
        log.error("mi.listen %s:%s: %s", config.mi.listen_host, config.mi.listen_port, exc)
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
        await runner.cleanup()
        await sup.stop()
    return code


async def db_init(db_url: str, table_name: str) -> int:
    from sipproxy.shared.schema import init_db
    from sipproxy.supervisor.db_reader import make_engine

    engine = make_engine(db_url)
    try:
        created = await init_db(engine, table_name)
    finally:
        await engine.dispose()
    print(f"sipproxy db init: {'created' if created else 'already present'} ({table_name}, version)")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["db"]:
        parser = argparse.ArgumentParser(prog="sipproxy db")
        sub = parser.add_subparsers(dest="command", required=True)
        init = sub.add_parser("init", help="create the sockets and version tables when missing")
        init.add_argument("--db-url", required=True, help="OpenSIPS-style db_url")
        init.add_argument("--table-name", default="sockets")
        args = parser.parse_args(argv[1:])
        try:
            return _run(db_init(args.db_url, args.table_name))
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
        from sipproxy.supervisor.mi.token import load_token

        try:
            token = load_token(config.mi.token_file)
        except (OSError, ValueError) as exc:
            raise ConfigError("mi.token_file", str(exc)) from None
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
    return _run(serve(config, token))


if __name__ == "__main__":
    sys.exit(main())
