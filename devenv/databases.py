"""Private PostgreSQL and MariaDB server instances for tests.

Each server is its own data directory and process on 127.0.0.1:<free port>, started from the Debian packages'
binaries without systemd, and removed entirely by `stop()`. Tests create databases with OpenSIPS-style URLs.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

TEST_USER = "sipsockets"
TEST_PASSWORD = "sipsockets-test"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes] | None, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"database server exited early ({proc.returncode}); log:\n{_tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"database server not listening on 127.0.0.1:{port} after {timeout}s:\n{_tail(log)}")


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-3000:]
    except OSError:
        return "(no log)"


def _check_name(name: str) -> str:
    if not name.replace("_", "").isalnum() or name[0].isdigit():
        raise ValueError(f"database name {name!r}: use letters, digits and _")
    return name


class PostgresServer:
    """initdb + postgres run as the Debian `postgres` OS user (PostgreSQL refuses root)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.port = 0
        self._datadir: Path | None = None
        self._bindir = Path(sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1])

    def _as_postgres(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            ["runuser", "-u", "postgres", "--", *args],
            check=check,
            capture_output=True,
            cwd="/",
            timeout=120,
        )

    def _psql(self, sql: str, database: str = "postgres") -> None:
        assert self._datadir is not None
        result = self._as_postgres(
            str(self._bindir / "psql"),
            "-h",
            str(self._datadir),
            "-p",
            str(self.port),
            "-d",
            database,
            "-v",
            "ON_ERROR_STOP=1",
            "-qc",
            sql,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"psql {sql!r}: {result.stderr.decode(errors='replace')}")

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # The data directory lives where the postgres user can reach it: test workdirs are often 0700 root.
        self._datadir = Path(tempfile.mkdtemp(prefix="sipsockets-pg-"))
        shutil.chown(self._datadir, "postgres", "postgres")
        self.port = free_port()
        self._as_postgres(
            str(self._bindir / "initdb"),
            "-D",
            str(self._datadir / "data"),
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--no-sync",
        )
        self._start_server()
        self._psql(f"CREATE ROLE {TEST_USER} LOGIN CREATEDB PASSWORD '{TEST_PASSWORD}'")

    def _start_server(self) -> None:
        assert self._datadir is not None
        log = self._datadir / "server.log"
        opts = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self._datadir} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        result = self._as_postgres(
            str(self._bindir / "pg_ctl"),
            "-D",
            str(self._datadir / "data"),
            "-o",
            opts,
            "-l",
            str(log),
            "-w",
            "-t",
            "60",
            "start",
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {result.stderr.decode(errors='replace')}\n{_tail(log)}")
        _wait_port(self.port, None, 30, log)

    def halt(self) -> None:
        """Stop the server (an outage: connections refused), keeping its data for `resume`."""
        assert self._datadir is not None
        self._as_postgres(
            str(self._bindir / "pg_ctl"), "-D", str(self._datadir / "data"), "-m", "fast", "-w", "stop"
        )

    def resume(self) -> None:
        """Start the halted server again on the same port and data."""
        self._start_server()

    def stop(self) -> None:
        if self._datadir is None:
            return
        data = self._datadir / "data"
        if (data / "postmaster.pid").exists():
            self._as_postgres(
                str(self._bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop", check=False
            )
        shutil.rmtree(self._datadir, ignore_errors=True)
        self._datadir = None

    def create_database(self, name: str) -> str:
        self._psql(f"CREATE DATABASE {_check_name(name)} OWNER {TEST_USER}")
        return f"postgres://{TEST_USER}:{TEST_PASSWORD}@127.0.0.1:{self.port}/{name}"

    def drop_database(self, name: str) -> None:
        self._psql(f"DROP DATABASE IF EXISTS {_check_name(name)} WITH (FORCE)")


class MariaDBServer:
    """mariadbd on its own data directory; administration over its private unix socket as root."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._datadir: Path | None = None

    @property
    def _socket(self) -> Path:
        assert self._datadir is not None
        return self._datadir / "mysqld.sock"

    def _sql(self, sql: str) -> None:
        result = subprocess.run(
            ["mariadb", "--no-defaults", "-S", str(self._socket), "-u", "root", "-e", sql],
            capture_output=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"mariadb {sql!r}: {result.stderr.decode(errors='replace')}")

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._datadir = Path(tempfile.mkdtemp(prefix="sipsockets-maria-"))
        shutil.chown(self._datadir, "mysql", "mysql")
        data = self._datadir / "data"
        log = self._datadir / "server.log"
        result = subprocess.run(
            [
                "mariadb-install-db",
                "--no-defaults",
                "--user=mysql",
                f"--datadir={data}",
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
            ],
            capture_output=True,
            timeout=180,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"mariadb-install-db failed: {result.stderr.decode(errors='replace')}")
        self.port = free_port()
        with open(log, "wb") as out:
            self._proc = subprocess.Popen(
                [
                    "mariadbd",
                    "--no-defaults",
                    "--user=mysql",
                    f"--datadir={data}",
                    f"--socket={self._socket}",
                    f"--pid-file={self._datadir / 'mysqld.pid'}",
                    "--bind-address=127.0.0.1",
                    f"--port={self.port}",
                    "--skip-log-bin",
                    "--innodb-buffer-pool-size=32M",
                    "--innodb-flush-log-at-trx-commit=0",
                    "--skip-name-resolve",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _wait_port(self.port, self._proc, 90, log)
        deadline = time.monotonic() + 30
        while True:
            try:
                self._sql(
                    f"CREATE USER '{TEST_USER}'@'127.0.0.1' IDENTIFIED BY '{TEST_PASSWORD}';"
                    f"CREATE USER '{TEST_USER}'@'localhost' IDENTIFIED BY '{TEST_PASSWORD}';"
                )
                break
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def stop(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(timeout=30)
            self._proc = None
        if self._datadir is not None:
            shutil.rmtree(self._datadir, ignore_errors=True)
            self._datadir = None

    def create_database(self, name: str) -> str:
        name = _check_name(name)
        self._sql(
            f"CREATE DATABASE {name};"
            f"GRANT ALL ON {name}.* TO '{TEST_USER}'@'127.0.0.1';"
            f"GRANT ALL ON {name}.* TO '{TEST_USER}'@'localhost';"
        )
        return f"mysql://{TEST_USER}:{TEST_PASSWORD}@127.0.0.1:{self.port}/{name}"

    def drop_database(self, name: str) -> None:
        self._sql(f"DROP DATABASE IF EXISTS {_check_name(name)}")


__all__ = ["MariaDBServer", "PostgresServer", "free_port"]

if __name__ == "__main__":  # a quick manual check: python -m devenv.databases
    for cls in (PostgresServer, MariaDBServer):
        server = cls(Path(tempfile.mkdtemp()))
        t0 = time.monotonic()
        server.start()
        print(cls.__name__, server.create_database("smoke"), f"{time.monotonic() - t0:.1f}s", os.getpid())
        server.drop_database("smoke")
        server.stop()
