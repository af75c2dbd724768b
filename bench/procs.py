"""Processes a benchmark starts: each in a session of its own, all stopped on the way out (errors, Ctrl-C)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType


def free_udp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_tcp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def udp_port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


class Processes:
    """Started processes, stopped in reverse order on exit: SIGTERM to the group, then SIGKILL."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.started: list[tuple[str, asyncio.subprocess.Process]] = []

    async def __aenter__(self) -> Processes:
        self.logdir.mkdir(parents=True, exist_ok=True)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Shielded: a Ctrl-C that cancelled the benchmark must not also cancel the clean-up.
        await asyncio.shield(self.stop_all())

    async def start(
        self, name: str, argv: Sequence[str], stdout_to_log: bool = True
    ) -> asyncio.subprocess.Process:
        log = (self.logdir / f"{name}.log").open("ab")
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=subprocess.DEVNULL,
                stdout=log if stdout_to_log else subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
            )
        finally:
            log.close()
        self.started.append((name, proc))
        return proc

    async def stop(self, proc: asyncio.subprocess.Process, grace: float = 10.0) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if proc.returncode is not None:
                break
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), grace)
        # Children that outlived their group leader (a crashed supervisor's workers) share its group id.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        self.started = [(n, p) for n, p in self.started if p is not proc]

    async def stop_all(self) -> None:
        for _, proc in reversed(list(self.started)):
            await self.stop(proc)

    def log_tail(self, name: str, lines: int = 20) -> str:
        try:
            text = (self.logdir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])
