"""Background processes the harness starts and must always stop: recorded by pid so another run can stop them.

`make demo` leaves its processes running after the Python process that started them exits, so each one is
recorded in a JSON file of the work dir; `make demo-down` (a new Python process) reads it to stop them.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); reap it if it is ours.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return _not_zombie(pid)
    return done == 0


def _not_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def terminate(pid: int, timeout: float = 15.0) -> None:
    """SIGTERM the process group led by pid, then SIGKILL what is left after timeout."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        except PermissionError:
            os.kill(pid, sig)
        deadline = time.monotonic() + (timeout if sig == signal.SIGTERM else 5.0)
        while time.monotonic() < deadline:
            if not alive(pid):
                return
            time.sleep(0.05)


class ProcessTable:
    """name -> pid, persisted in `<workdir>/processes.json`."""

    def __init__(self, workdir: Path) -> None:
        self.path = workdir / "processes.json"

    def load(self) -> dict[str, int]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): int(v) for k, v in data.items()}

    def _save(self, table: Mapping[str, int]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dict(table), indent=1))
        tmp.rename(self.path)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        log: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            # A session of its own: the process and its children are stopped as one group.
            proc = subprocess.Popen(
                list(argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )
        table = self.load()
        table[name] = proc.pid
        self._save(table)
        return proc

    def stop(self, name: str, timeout: float = 15.0) -> None:
        table = self.load()
        pid = table.pop(name, None)
        if pid is not None:
            terminate(pid, timeout)
        self._save(table)

    def stop_all(self, order: Sequence[str] = ()) -> None:
        names = [n for n in order if n in self.load()]
        names += [n for n in reversed(list(self.load())) if n not in names]
        for name in names:
            self.stop(name)
